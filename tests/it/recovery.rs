//! Crash safety: a panicking job body is contained and retried; `kill -9` of
//! the server mid-run followed by a restart completes the run without
//! repeating any provider call whose result was already stored (a loopback
//! OpenAI-compatible provider counts every call it receives).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use serde_json::json;

use crate::helpers::TestApp;
use crate::openai_stub::{self, OpenAiStub};

#[actix_web::test]
async fn a_panicking_worker_is_recovered() {
    let app = TestApp::spawn_with(|s| s.providers.local.fault_panic_first_attempt = true).await;
    let token = app.bootstrap_token().await;
    app.create_project(&token, "Book", "book").await;
    let (s, b) = app
        .post("/api/projects/book/runs/trigger", &token, json!({"mode": "run", "scene_refs": ["sample:1"], "stage": "time", "candidates": 2, "wait": true}))
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["run"]["status"], "done", "{b}");
    for job in b["jobs"].as_array().unwrap() {
        assert_eq!(job["status"], "done");
        assert!(
            job["attempt"].as_i64().unwrap() >= 2,
            "the panicking attempt was not retried: {job}"
        );
        assert!(
            job["last_error"].as_str().unwrap().contains("panicked"),
            "{job}"
        );
    }
    let run_id = b["run_id"].as_str().unwrap();
    let (_, ev) = app
        .get(&format!("/api/projects/book/runs/{run_id}/events"), &token)
        .await;
    assert!(
        ev["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["event_type"] == "job.retry_scheduled")
    );
    // The service is still serving.
    assert_eq!(app.get("/api/projects", &token).await.0, StatusCode::OK);
}

struct Server {
    child: Child,
    base: String,
}

fn start_server(data_dir: &std::path::Path, provider_url: &str) -> Server {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(env!("CARGO_BIN_EXE_atelier"))
        .arg("--data-dir")
        .arg(data_dir)
        .args(["serve", "--bind", &format!("127.0.0.1:{port}")])
        .env_remove("DATABASE_URL")
        .env("RUST_LOG", "warn")
        .env("ATELIER_PROVIDERS__OPENAI__ENABLED", "true")
        .env("ATELIER_PROVIDERS__OPENAI__BASE_URL", provider_url)
        .env("OPENAI_API_KEY", openai_stub::KEY)
        .env("ATELIER_ENGINE__LEASE_SECONDS", "1")
        .env("ATELIER_ENGINE__HEARTBEAT_MS", "200")
        .env("ATELIER_ENGINE__MAX_JOBS_PER_RUN", "2")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Server {
        child,
        base: format!("http://127.0.0.1:{port}"),
    }
}

async fn wait_healthy(client: &reqwest::Client, base: &str) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        if let Ok(r) = client.get(format!("{base}/health")).send().await
            && r.status() == StatusCode::OK
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("server at {base} did not come up");
}

#[actix_web::test]
async fn kill_dash_nine_mid_run_then_restart_completes_without_repeating_paid_calls() {
    atelier::startup::install_runtime_defaults();
    let dir = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();
    let provider = OpenAiStub::start().await;
    provider.set_latency(Duration::from_millis(120));
    let mut first = start_server(dir.path(), &provider.base_url);
    wait_healthy(&client, &first.base).await;
    let token = client
        .post(format!("{}/auth/token", first.base))
        .json(&json!({}))
        .send()
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap()["auth_token"]["token"]
        .as_str()
        .unwrap()
        .to_string();
    let created = client
        .post(format!("{}/api/projects", first.base))
        .bearer_auth(&token)
        .json(&json!({"name": "Crash"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::OK);
    let trig: serde_json::Value = client
        .post(format!("{}/api/projects/crash/runs/trigger", first.base))
        .bearer_auth(&token)
        .json(&json!({"mode": "run", "provider": "openai", "confirm_spend": true, "scene_refs": ["sample:1", "sample:2", "sample:3"], "style_refs": ["sample:7@32x32"], "stage": "weather", "candidates": 2}))
        .send().await.unwrap().json().await.unwrap();
    let run_id: uuid::Uuid = trig["run_id"].as_str().unwrap().parse().unwrap();

    // Watch the real SQLite file until some calls have completed, then kill -9.
    let db = sea_orm::Database::connect(format!(
        "sqlite://{}?mode=rw",
        dir.path().join("backend/app.db").display()
    ))
    .await
    .unwrap();
    let succeeded = || async {
        entities::provider_calls::Entity::find()
            .filter(entities::provider_calls::Column::Status.eq("succeeded"))
            .all(&db)
            .await
            .unwrap()
    };
    let start = Instant::now();
    while succeeded().await.len() < 5 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "run made no progress"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.child.kill().unwrap(); // SIGKILL
    first.child.wait().unwrap();
    let before = succeeded().await;
    assert!(
        before.len() < 18,
        "the run finished before the kill; nothing to recover"
    );

    let mut second = start_server(dir.path(), &provider.base_url);
    wait_healthy(&client, &second.base).await;
    let start = Instant::now();
    let run = loop {
        let run = entities::runs::Entity::find_by_id(run_id)
            .one(&db)
            .await
            .unwrap()
            .unwrap();
        if ["done", "failed", "partial", "canceled"].contains(&run.status.as_str()) {
            break run;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "run did not resume: {}",
            run.status
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    second.child.kill().ok();
    second.child.wait().ok();

    assert_eq!(run.status, "done");
    let jobs = entities::run_jobs::Entity::find()
        .filter(entities::run_jobs::Column::RunId.eq(run_id))
        .all(&db)
        .await
        .unwrap();
    assert_eq!(jobs.len(), 9);
    assert!(
        jobs.iter()
            .all(|j| j.status == "done" && j.final_asset_id.is_some())
    );
    let calls = entities::provider_calls::Entity::find()
        .all(&db)
        .await
        .unwrap();
    assert_eq!(calls.len(), 18, "one record per (job, candidate)");
    assert!(calls.iter().all(|c| c.status == "succeeded"));
    // No call whose result was stored before the crash was made again.
    for b in &before {
        let after = calls.iter().find(|c| c.id == b.id).unwrap();
        assert_eq!(
            after.attempt, b.attempt,
            "completed call {} was repeated",
            b.idempotency_key
        );
        assert_eq!(after.result_asset_id, b.result_asset_id);
        assert_eq!(after.finished_at, b.finished_at);
    }
    // The provider's own count: every image stored before the kill was served
    // exactly once, and no call ever reached it without a record of the attempt.
    let served = provider.images_served();
    let received = provider.calls();
    for b in &before {
        assert_eq!(
            served.get(&b.idempotency_key),
            Some(&1),
            "paid twice for {}",
            b.idempotency_key
        );
    }
    for c in &calls {
        let got = received.get(&c.idempotency_key).copied().unwrap_or(0);
        assert!(
            got >= 1 && got <= c.attempt as u32,
            "{}: {got} calls received, {} recorded",
            c.idempotency_key,
            c.attempt
        );
    }
    assert!(
        provider.images_per_call().iter().all(|n| *n == 2),
        "every call carried the input and the style reference"
    );
    let costs = entities::cost_events::Entity::find()
        .filter(entities::cost_events::Column::RunId.eq(run_id))
        .all(&db)
        .await
        .unwrap();
    assert_eq!(costs.len(), 18, "one cost event per stored paid call");
    assert!(costs.iter().all(|c| c.total_cost_usd == 0.25));
    // Nothing persisted was lost or duplicated.
    let candidates = entities::run_candidates::Entity::find()
        .filter(entities::run_candidates::Column::RunId.eq(run_id))
        .all(&db)
        .await
        .unwrap();
    assert_eq!(candidates.len(), 18);
    let generated = entities::assets::Entity::find()
        .filter(entities::assets::Column::RunId.eq(run_id))
        .filter(entities::assets::Column::Kind.eq("generated"))
        .all(&db)
        .await
        .unwrap();
    assert!(generated.len() >= 18);
    for b in &before {
        assert!(generated.iter().any(|a| Some(a.id) == b.result_asset_id));
    }
}
