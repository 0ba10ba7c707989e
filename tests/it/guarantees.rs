//! The README's guarantees against the real `atelier serve` binary
//! (multi-threaded runtime, its own process, debug logging captured): a
//! budget raced by concurrent runs, cancel against completion, the feed,
//! webhooks, and no secret in its log.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::binary::{Deployment, Server, eventually};

async fn call(
    server: &Server,
    client: &reqwest::Client,
    token: &str,
    method: Method,
    path: &str,
    body: Value,
) -> Value {
    let (s, b) = server
        .call(client, method, path, Some(token), Some(body))
        .await;
    assert_eq!(s, StatusCode::OK, "{path}: {b}");
    b
}

async fn runs_finished(db: &DatabaseConnection, ids: &[Uuid]) -> Vec<entities::runs::Model> {
    eventually("every run finished", Duration::from_secs(60), || async {
        let runs = entities::runs::Entity::find()
            .filter(entities::runs::Column::Id.is_in(ids.to_vec()))
            .all(db)
            .await
            .unwrap();
        runs.iter()
            .all(|r| ["done", "failed", "partial", "canceled"].contains(&r.status.as_str()))
            .then_some(runs)
    })
    .await
}

/// Four runs start together and race for a budget that pays for ten
/// images out of the sixteen they want. Whatever the interleaving, exactly
/// ten calls are paid, the spend equals the budget, and every refused call
/// was refused before it was sent.
#[actix_web::test]
async fn concurrent_runs_never_spend_past_the_project_budget() {
    let mut deploy = Deployment::new(&[
        ("ATELIER_PROVIDERS__LOCAL__PRICE_USD", "0.05"),
        ("ATELIER_PROVIDERS__LOCAL__LATENCY_MS", "150"),
        ("ATELIER_ENGINE__MAX_RUNS_PER_PROJECT", "4"),
        ("ATELIER_ENGINE__MAX_JOBS_PER_RUN", "4"),
    ])
    .await;
    let server = deploy.start().await;
    let client = deploy.client.clone();
    let token = server.bootstrap(&client).await;
    call(
        &server,
        &client,
        &token,
        Method::POST,
        "/api/projects",
        json!({"name": "Race", "slug": "race"}),
    )
    .await;
    // Accepted while paused, so all four are checked against an empty ledger
    // and then start at once.
    call(
        &server,
        &client,
        &token,
        Method::POST,
        "/api/projects/race/queue/pause",
        json!({}),
    )
    .await;
    let mut ids = Vec::new();
    for n in 0..4 {
        let b = call(
            &server,
            &client,
            &token,
            Method::POST,
            "/api/projects/race/runs/trigger",
            json!({"mode": "run", "confirm_spend": true,
                   "scene_refs": [format!("sample:{}@64x48", 2 * n + 1), format!("sample:{}@64x48", 2 * n + 2)],
                   "stage": "style", "candidates": 2,
                   "manifest": {"policy": {"project_budget_usd": 0.50}}}),
        )
        .await;
        ids.push(b["run_id"].as_str().unwrap().parse::<Uuid>().unwrap());
    }
    call(
        &server,
        &client,
        &token,
        Method::POST,
        "/api/projects/race/queue/resume",
        json!({}),
    )
    .await;
    let db = deploy.connect().await;
    runs_finished(&db, &ids).await;

    let calls = entities::provider_calls::Entity::find()
        .filter(entities::provider_calls::Column::RunId.is_in(ids.clone()))
        .all(&db)
        .await
        .unwrap();
    let paid: Vec<_> = calls.iter().filter(|c| c.status == "succeeded").collect();
    assert_eq!(paid.len(), 10, "{calls:#?}");
    assert!(paid.iter().all(|c| c.sent_attempts == 1));
    for refused in calls.iter().filter(|c| c.status != "succeeded") {
        assert_eq!(
            refused.error_code.as_deref(),
            Some("project_budget_exceeded"),
            "{refused:#?}"
        );
        assert_eq!(refused.sent_attempts, 0, "sent: {refused:#?}");
    }
    let spent: f64 = entities::cost_events::Entity::find()
        .all(&db)
        .await
        .unwrap()
        .iter()
        .map(|c| c.total_cost_usd)
        .sum();
    assert!((spent - 0.50).abs() < 1e-9, "spent {spent}");
    // It was a race: calls of different runs were in flight together.
    let overlapping = paid.iter().any(|a| {
        paid.iter().any(|b| {
            a.run_id != b.run_id && a.started_at < b.finished_at && b.started_at < a.finished_at
        })
    });
    assert!(overlapping, "the runs did not overlap: {paid:#?}");
}

/// Every secret a deployment handles — provider keys (the server's and a
/// project's), S3 credentials, webhook signing secrets, bearer tokens (also
/// one sent in a URL), the master key — is used for real in one session on
/// the real binary logging at debug level, and none appears in its log.
#[actix_web::test]
async fn no_secret_reaches_the_log_even_at_debug_level() {
    let project_key = "sk-proj-LOGCHECK-7f3a9c1e5b";
    let stub = crate::openai_stub::OpenAiStub::start_with_key(project_key).await;
    let env_key = "sk-env-LOGCHECK-unused-2d4f6a";
    let s3_secret = "s3SECRET-LOGCHECK-9b8c7d6e5f";
    let (endpoint, bucket) = crate::storage::fresh_bucket().await;
    let mut deploy = Deployment::new(&[
        ("ATELIER_PROVIDERS__OPENAI__ENABLED", "true"),
        (
            "ATELIER_PROVIDERS__OPENAI__BASE_URL",
            stub.base_url.as_str(),
        ),
        ("OPENAI_API_KEY", env_key),
        ("ATELIER_WEBHOOKS__RETRY_BASE_MS", "10"),
        ("ATELIER_WEBHOOKS__POLL_MS", "50"),
    ])
    .await;
    let server = deploy.start().await;
    let client = deploy.client.clone();
    let admin = server.bootstrap(&client).await;
    let p = "/api/projects/vault";
    call(
        &server,
        &client,
        &admin,
        Method::POST,
        "/api/projects",
        json!({"name": "Vault", "slug": "vault"}),
    )
    .await;
    let scoped = call(
        &server,
        &client,
        &admin,
        Method::POST,
        "/auth/token",
        json!({"project_slug": "vault"}),
    )
    .await["auth_token"]["token"]
        .as_str()
        .unwrap()
        .to_string();
    for (provider, name, value) in [
        ("openai", "api_key", project_key),
        ("s3", "access_key_id", "AKIALOGCHECK"),
        ("s3", "secret_access_key", s3_secret),
    ] {
        call(
            &server,
            &client,
            &scoped,
            Method::POST,
            &format!("{p}/secrets"),
            json!({"provider_code": provider, "secret_name": name, "secret_value": value}),
        )
        .await;
    }
    call(
        &server,
        &client,
        &admin,
        Method::PUT,
        &format!("{p}/storage/s3"),
        json!({"enabled": true, "bucket": bucket, "endpoint_url": endpoint}),
    )
    .await;
    let hook = call(
        &server,
        &client,
        &scoped,
        Method::POST,
        &format!("{p}/webhooks"),
        json!({"url": "http://127.0.0.1:9/hook?sig=receiver-credential-LOGCHECK"}),
    )
    .await;
    let signing = hook["signing_secret"].as_str().unwrap().to_string();
    // A paid run: the project's key goes to the provider, files to S3, the
    // webhook is signed and attempted.
    let run = call(
        &server,
        &client,
        &scoped,
        Method::POST,
        &format!("{p}/runs/trigger"),
        json!({"mode": "run", "provider": "openai", "confirm_spend": true,
               "scene_refs": ["sample:1@64x48"], "stage": "style", "candidates": 1, "wait": true}),
    )
    .await;
    assert_eq!(run["run"]["status"], "done", "{run}");
    assert!(
        stub.calls().values().sum::<u32>() >= 1,
        "the provider was called"
    );
    let assets = call(
        &server,
        &client,
        &scoped,
        Method::GET,
        &format!("{p}/assets?kind=generated"),
        json!(null),
    )
    .await;
    let asset = assets["assets"][0]["id"].as_str().unwrap().to_string();
    assert_eq!(assets["assets"][0]["storage_backend"], "s3");
    // A token in a URL, as `<img src>` clients send it.
    let res = client
        .get(format!(
            "{}{p}/assets/{asset}/content?token={scoped}",
            server.base
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let db = deploy.connect().await;
    eventually("the webhook attempted", Duration::from_secs(20), || async {
        let rows = entities::webhook_deliveries::Entity::find()
            .all(&db)
            .await
            .unwrap();
        rows.iter().any(|d| d.attempts > 0).then_some(())
    })
    .await;
    let master = std::fs::read_to_string(deploy.dir.path().join("backend/master.key")).unwrap();

    let logs = deploy.logs();
    assert!(
        logs.contains("DEBUG"),
        "the log was captured at debug level"
    );
    for (what, secret) in [
        ("the project's provider key", project_key),
        ("the server's provider key", env_key),
        ("the S3 secret key", s3_secret),
        ("the webhook signing secret", signing.as_str()),
        (
            "the receiver's URL credential",
            "receiver-credential-LOGCHECK",
        ),
        ("the bootstrap token", admin.as_str()),
        ("the scoped token", scoped.as_str()),
        ("the master key", master.trim()),
    ] {
        assert!(!secret.is_empty());
        let leaks: Vec<&str> = logs
            .lines()
            .filter(|l| l.contains(secret))
            .take(3)
            .collect();
        assert!(leaks.is_empty(), "{what} is in the log: {leaks:#?}");
    }
}

/// On the real binary: the feed streams a run in order without gaps while
/// its paid passes (PhotoRoom removal through the loopback stub) are paid
/// once per candidate; then a cancel beats completion — the feed ends with
/// the cancel, and nothing is called after every job has stopped.
#[actix_web::test]
async fn feed_paid_passes_and_cancel_on_the_real_binary() {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let removal = crate::bg_stub::RemovalStub::start_with_key("photoroom-key-guarantees").await;
    let mut deploy = Deployment::new(&[
        ("ATELIER_PROVIDERS__PHOTOROOM__ENABLED", "true"),
        (
            "ATELIER_PROVIDERS__PHOTOROOM__BASE_URL",
            removal.photoroom_url.as_str(),
        ),
        (
            "ATELIER_PROVIDERS__PHOTOROOM__API_KEY_ENV",
            "GUARANTEES_PHOTOROOM_KEY",
        ),
        ("GUARANTEES_PHOTOROOM_KEY", "photoroom-key-guarantees"),
        ("ATELIER_PROVIDERS__LOCAL__LATENCY_MS", "60"),
        ("ATELIER_ENGINE__MAX_JOBS_PER_RUN", "1"),
        ("ATELIER_ENGINE__PROVIDER_CONCURRENCY", "1"),
    ])
    .await;
    let server = deploy.start().await;
    let client = deploy.client.clone();
    let token = server.bootstrap(&client).await;
    call(
        &server,
        &client,
        &token,
        Method::POST,
        "/api/projects",
        json!({"name": "Live", "slug": "live"}),
    )
    .await;
    let ws_url = format!(
        "{}/api/projects/live/events/ws",
        server.base.replace("http://", "ws://")
    );
    let connect = || async {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut request = ws_url.as_str().into_client_request().unwrap();
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        tokio_tungstenite::connect_async(request).await.unwrap().0
    };
    // Events of one run until its run.finished.
    async fn until_finished(
        ws: &mut tokio_tungstenite::WebSocketStream<
            tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
        >,
    ) -> Vec<Value> {
        let mut out = Vec::new();
        while let Ok(Some(Ok(msg))) = tokio::time::timeout(Duration::from_secs(30), ws.next()).await
        {
            if let Message::Text(t) = msg {
                let v: Value = serde_json::from_str(&t).unwrap();
                let done = v["event_type"] == "run.finished";
                out.push(v);
                if done {
                    break;
                }
            }
        }
        out
    }
    let mut ws = connect().await;
    let pp = json!({"bg_remove": true, "bg_remove_backends": ["local", "photoroom"],
        "bg_remove_settings": {"tolerance": 0.0, "min_removed_fraction": 0.9}});
    let run = call(&server, &client, &token, Method::POST, "/api/projects/live/runs/trigger",
        json!({"mode": "run", "confirm_spend": true, "scene_refs": ["sample:2@64x48"], "stage": "style",
               "candidates": 2, "postprocess": pp})).await;
    let run_id = run["run_id"].as_str().unwrap().to_string();
    let events = until_finished(&mut ws).await;
    let seqs: Vec<i64> = events.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    assert_eq!(seqs.first(), Some(&1), "{seqs:?}");
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "gap or duplicate: {seqs:?}"
    );
    assert!(events.iter().all(|e| e["run_id"] == run_id.as_str()));
    assert_eq!(
        events.last().unwrap()["payload"]["status"],
        "done",
        "{:?}",
        events.last()
    );
    assert_eq!(removal.calls(), 2, "one paid removal per candidate");
    let db = deploy.connect().await;
    let run_uuid: Uuid = run_id.parse().unwrap();
    let passes = entities::provider_calls::Entity::find()
        .filter(entities::provider_calls::Column::RunId.eq(run_uuid))
        .filter(entities::provider_calls::Column::ProviderCode.eq("photoroom"))
        .all(&db)
        .await
        .unwrap();
    assert_eq!(passes.len(), 2);
    assert!(
        passes
            .iter()
            .all(|c| c.status == "succeeded" && c.sent_attempts == 1),
        "{passes:#?}"
    );

    // Cancel mid-run: the feed ends with it; no call after the jobs stop.
    let run = call(
        &server,
        &client,
        &token,
        Method::POST,
        "/api/projects/live/runs/trigger",
        json!({"mode": "run", "scene_refs": ["sample:3@64x48", "sample:4@64x48", "sample:5@64x48"],
               "stage": "time", "candidates": 2}),
    )
    .await;
    let run_id = run["run_id"].as_str().unwrap().to_string();
    let run_uuid: Uuid = run_id.parse().unwrap();
    let calls_of = || {
        let db = db.clone();
        async move {
            entities::provider_calls::Entity::find()
                .filter(entities::provider_calls::Column::RunId.eq(run_uuid))
                .all(&db)
                .await
                .unwrap()
        }
    };
    eventually(
        "a first call of the run done",
        Duration::from_secs(20),
        || async {
            calls_of()
                .await
                .iter()
                .any(|c| c.status == "succeeded")
                .then_some(())
        },
    )
    .await;
    let c = call(
        &server,
        &client,
        &token,
        Method::POST,
        &format!("/api/projects/live/runs/{run_id}/cancel"),
        json!({}),
    )
    .await;
    assert_eq!(c["run"]["status"], "canceled");
    let events = until_finished(&mut ws).await;
    let last = events.last().expect("the feed reported the end");
    assert_eq!(last["run_id"], run_id.as_str());
    assert_eq!(last["payload"]["status"], "canceled", "{last}");
    eventually("every job stopped", Duration::from_secs(20), || async {
        let jobs = entities::run_jobs::Entity::find()
            .filter(entities::run_jobs::Column::RunId.eq(run_uuid))
            .all(&db)
            .await
            .unwrap();
        jobs.iter()
            .all(|j| !["pending", "running"].contains(&j.status.as_str()))
            .then_some(())
    })
    .await;
    let settled = calls_of().await;
    assert!(
        settled.iter().all(|c| c.status != "pending"),
        "{settled:#?}"
    );
    let made = settled.iter().filter(|c| c.status == "succeeded").count();
    // 3 jobs x 2 candidates were planned; with one call at a time, the
    // cancel stops the rest.
    assert!(made < 6, "every call was made despite the cancel");
    let (s, r) = server
        .call(
            &client,
            Method::GET,
            &format!("/api/projects/live/runs/{run_id}"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        r["run"]["status"], "canceled",
        "cancel won over completion: {r}"
    );
}
