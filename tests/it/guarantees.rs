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
