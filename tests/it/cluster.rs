//! Several nodes on one database (SQLite and PostgreSQL): what holds across
//! nodes besides adoption and fencing (see `recovery` for those).

use std::time::Duration;

use reqwest::{Method, StatusCode};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use serde_json::json;
use uuid::Uuid;

use crate::binary::Server;
use crate::openai_stub::OpenAiStub;
use crate::recovery::deployment;

async fn trigger(server: &Server, client: &reqwest::Client, token: &str) -> Uuid {
    let (s, body) = server
        .call(
            client,
            Method::POST,
            "/api/projects/book/runs/trigger",
            Some(token),
            Some(json!({
                "mode": "run", "provider": "openai", "confirm_spend": true,
                "scene_refs": ["sample:1", "sample:2"], "stage": "style", "candidates": 1,
            })),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    body["run_id"].as_str().unwrap().parse().unwrap()
}

/// `max_runs_per_project` holds across nodes: runs of one project submitted
/// to two nodes at once never execute together; each waits for the other's
/// end and both finish.
#[actix_web::test]
async fn nodes_together_never_run_more_of_a_project_than_its_limit() {
    let stub = OpenAiStub::start().await;
    stub.set_latency(Duration::from_millis(250));
    let mut deploy = deployment(
        &stub,
        &[
            ("ATELIER_ENGINE__MAX_RUNS_PER_PROJECT", "1"),
            ("ATELIER_ENGINE__HEARTBEAT_MS", "200"),
        ],
    )
    .await;
    let a = deploy.start_node("node-a").await;
    let b = deploy.start_node("node-b").await;
    let client = deploy.client.clone();
    let token = a.bootstrap(&client).await;
    a.create_project(&client, &token, "Book", "book").await;
    let (first, second, third) = tokio::join!(
        trigger(&a, &client, &token),
        trigger(&b, &client, &token),
        trigger(&b, &client, &token),
    );
    let db = deploy.connect().await;
    let ids = [first, second, third];
    let started = std::time::Instant::now();
    let mut most_at_once = 0;
    let runs = loop {
        let runs = entities::runs::Entity::find()
            .filter(entities::runs::Column::Id.is_in(ids))
            .all(&db)
            .await
            .unwrap();
        let running = runs.iter().filter(|r| r.status == "running").count();
        most_at_once = most_at_once.max(running);
        if runs.iter().all(|r| r.status == "done") {
            break runs;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "runs did not finish: {runs:#?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(most_at_once, 1, "seen running together");
    let mut spans: Vec<_> = runs
        .iter()
        .map(|r| (r.started_at.unwrap(), r.finished_at.unwrap()))
        .collect();
    spans.sort();
    for pair in spans.windows(2) {
        assert!(pair[0].1 <= pair[1].0, "overlapping runs: {spans:?}");
    }
}
