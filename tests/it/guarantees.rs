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
