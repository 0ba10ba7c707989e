//! What a run pays, against the official-mode provider stub: the default
//! configuration completes a run; cost follows the usage the provider
//! reports; an answer cut off in transit is in the ledger as possibly
//! billed and is never bought again silently; a request the model cannot
//! serve is refused before anything is stored or sent.

use std::collections::HashMap;

use reqwest::StatusCode;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use serde_json::{Value, json};

use crate::helpers::{TestApp, assert_error};
use crate::openai_stub::{OpenAiStub, Reply};

/// A service whose `openai` provider is the stub in its default (official)
/// configuration; the key comes from a variable the test runner always sets.
async fn with_openai(
    tweak: impl FnOnce(&mut atelier::settings::Settings),
) -> (OpenAiStub, TestApp, String) {
    let stub = OpenAiStub::start_with_key(env!("CARGO_MANIFEST_DIR")).await;
    let url = stub.base_url.clone();
    let app = TestApp::spawn_with(move |s| {
        s.providers.openai.enabled = true;
        s.providers.openai.base_url = url;
        s.providers.openai.api_key_env = "CARGO_MANIFEST_DIR".into();
        s.engine.retry_base_ms = 1;
        s.engine.retry_max_ms = 5;
        tweak(s);
    })
    .await;
    let token = app.bootstrap_token().await;
    app.create_project(&token, "Paid", "paid").await;
    (stub, app, token)
}

async fn trigger(app: &TestApp, token: &str, body: Value) -> (StatusCode, Value) {
    app.post("/api/projects/paid/runs/trigger", token, body)
        .await
}

fn run_body(extra: Value) -> Value {
    let mut body = json!({"mode": "run", "provider": "openai", "confirm_spend": true,
        "scene_refs": ["sample:1", "sample:2", "sample:3", "sample:4", "sample:5"],
        "stage": "style", "candidates": 2, "wait": true});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    body
}

async fn calls_of(app: &TestApp, run_id: &str) -> Vec<entities::provider_calls::Model> {
    entities::provider_calls::Entity::find()
        .filter(entities::provider_calls::Column::RunId.eq(run_id.parse::<uuid::Uuid>().unwrap()))
        .all(&app.db)
        .await
        .unwrap()
}

async fn costs_of(app: &TestApp, run_id: &str) -> Vec<entities::cost_events::Model> {
    entities::cost_events::Entity::find()
        .filter(entities::cost_events::Column::RunId.eq(run_id.parse::<uuid::Uuid>().unwrap()))
        .all(&app.db)
        .await
        .unwrap()
}

#[actix_web::test]
async fn the_default_configuration_completes_a_run_priced_from_reported_usage() {
    let (stub, app, token) = with_openai(|_| {}).await;
    let (s, b) = trigger(&app, &token, run_body(json!({}))).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["run"]["status"], "done", "{b}");
    assert!(stub.violations().is_empty(), "{:?}", stub.violations());
    let run_id = b["run_id"].as_str().unwrap();
    let calls = calls_of(&app, run_id).await;
    assert_eq!(calls.len(), 10);
    let costs = costs_of(&app, run_id).await;
    assert_eq!(costs.len(), 10, "one ledger row per paid call");
    for call in &calls {
        assert_eq!(call.status, "succeeded");
        assert_eq!(call.model_name.as_deref(), Some("gpt-image-1.5"));
        let actual = call.actual_cost_usd.unwrap();
        // Reserved the catalogue's bound; recorded what the usage says.
        assert!(
            actual > 0.0 && actual <= call.reserved_cost_usd,
            "{actual} vs {}",
            call.reserved_cost_usd
        );
        assert!(
            actual < call.reserved_cost_usd,
            "the bound is an upper bound, not the price"
        );
        assert_eq!(call.error_code, None);
        let event = costs
            .iter()
            .find(|c| c.provider_call_id == Some(call.id))
            .unwrap();
        assert_eq!(event.billing, "billed");
        assert!((event.total_cost_usd - actual).abs() < 1e-12);
        assert_eq!(event.meta_json["cost"]["basis"], "reported_usage");
        assert!(
            event.meta_json["cost"]["tokens"]["image_output"]
                .as_u64()
                .unwrap()
                > 0
        );
    }
    // The plan's estimate was made of the same bounds.
    let bound: f64 = calls.iter().map(|c| c.reserved_cost_usd).sum();
    assert!(
        (b["run"]["estimated_cost_usd"].as_f64().unwrap() - bound).abs() < 1e-9,
        "{b}"
    );
    // The ledger's totals show it; nothing was possibly billed.
    let (_, summary) = app.get("/api/projects/paid/cost-summary", &token).await;
    assert_eq!(summary["summary"]["possibly_billed_usd"], 0.0, "{summary}");
    let (_, ledger) = app.get("/api/projects/paid/cost-events", &token).await;
    assert!(
        ledger["cost_events"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["billing"] == "billed")
    );
}

#[actix_web::test]
async fn a_request_the_model_cannot_serve_is_refused_before_anything_is_stored() {
    let (stub, app, token) = with_openai(|_| {}).await;
    let cases = [
        (
            json!({"manifest": {"generation": {"image": {"model": "gpt-image-1"}}}}),
            "retired",
        ),
        (
            json!({"manifest": {"generation": {"image": {"model": "gpt-image-42"}}}}),
            "unknown model",
        ),
        (
            json!({"manifest": {"generation": {"image": {"model": "gpt-image-2", "input_fidelity": "high"}}}}),
            "input_fidelity",
        ),
        (
            json!({"manifest": {"generation": {"image": {"size": "4096x4096"}}}}),
            "size",
        ),
        (
            json!({"scene_refs": ["prompt:a harbour at dawn"], "manifest": {"generation": {"image": {"model": "chatgpt-image-latest"}}}}),
            "prompt alone",
        ),
    ];
    for (extra, says) in cases {
        let (s, e) = trigger(&app, &token, run_body(extra.clone())).await;
        assert_error(s, &e, 400, "unsupported_parameter");
        assert!(e["error"].as_str().unwrap().contains(says), "{extra}: {e}");
    }
    let (_, runs) = app.get("/api/projects/paid/runs", &token).await;
    assert_eq!(runs["count"], 0, "{runs}");
    assert!(stub.calls().is_empty(), "nothing was sent");
    // A current model the request names is used.
    let (s, b) = trigger(&app, &token, run_body(json!({"scene_refs": ["sample:1"], "candidates": 1,
        "manifest": {"generation": {"image": {"model": "gpt-image-2", "quality": "low", "size": "1024x1024"}}}}))).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["run"]["status"], "done", "{b}");
    let sent = &stub.requests()[0];
    assert_eq!(
        (sent["model"].as_str(), sent["quality"].as_str()),
        (Some("gpt-image-2"), Some("low"))
    );
    assert_eq!(sent["input_fidelity"], Value::Null);
}

/// Every image the provider produced is in the ledger: billed (stored) or
/// possibly billed (answer lost); none was bought twice.
async fn ledger_accounts_for_every_served_image(
    app: &TestApp,
    stub: &OpenAiStub,
    run_id: &str,
    max_per_key: u32,
) -> (usize, usize) {
    let calls = calls_of(app, run_id).await;
    let costs = costs_of(app, run_id).await;
    let served = stub.images_served();
    let by_key: HashMap<&str, &entities::provider_calls::Model> = calls
        .iter()
        .map(|c| (c.idempotency_key.as_str(), c))
        .collect();
    let (mut stored, mut lost) = (0, 0);
    for (key, n) in &served {
        assert!(*n <= max_per_key, "{key} served {n} times");
        let call = by_key
            .get(key.as_str())
            .unwrap_or_else(|| panic!("{key} has no record"));
        let events: Vec<_> = costs
            .iter()
            .filter(|c| c.provider_call_id == Some(call.id))
            .collect();
        let billed = events.iter().filter(|e| e.billing == "billed").count();
        let possibly = events
            .iter()
            .filter(|e| e.billing == "possibly_billed")
            .count();
        match call.status.as_str() {
            "succeeded" => stored += 1,
            "unknown" => lost += 1,
            other => panic!("{key}: served but the call is {other}"),
        }
        assert_eq!(
            billed + possibly,
            *n as usize,
            "{key}: {n} images served, {billed} billed + {possibly} possibly billed in the ledger"
        );
    }
    let possibly_total: f64 = calls.iter().map(|c| c.possibly_billed_usd).sum();
    let possibly_events: f64 = costs
        .iter()
        .filter(|c| c.billing == "possibly_billed")
        .map(|c| c.total_cost_usd)
        .sum();
    assert!(
        (possibly_total - possibly_events).abs() < 1e-9,
        "{possibly_total} vs {possibly_events}"
    );
    (stored, lost)
}

#[actix_web::test]
async fn answers_cut_off_in_transit_are_possibly_billed_and_never_bought_again() {
    let (stub, app, token) = with_openai(|_| {}).await;
    // 3 of 10 answers cut off after the provider made (and billed) the image.
    stub.script([
        Reply::Image,
        Reply::Truncated,
        Reply::Image,
        Reply::Image,
        Reply::Truncated,
        Reply::Image,
        Reply::Image,
        Reply::Truncated,
        Reply::Image,
        Reply::Image,
    ]);
    let (s, b) = trigger(&app, &token, run_body(json!({}))).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let run_id = b["run_id"].as_str().unwrap();
    // The default policy for OpenAI (no idempotency): an unknown outcome is
    // not sent again, so the provider made exactly one image per candidate.
    assert_eq!(stub.served_total(), 10);
    assert!(stub.calls().values().all(|n| *n == 1), "{:?}", stub.calls());
    let (stored, lost) = ledger_accounts_for_every_served_image(&app, &stub, run_id, 1).await;
    assert_eq!((stored, lost), (7, 3));
    let (_, summary) = app.get("/api/projects/paid/cost-summary", &token).await;
    assert!(
        summary["summary"]["possibly_billed_usd"].as_f64().unwrap() > 0.0,
        "{summary}"
    );
    // Visible in the run's events too.
    let (_, ev) = app
        .get(&format!("/api/projects/paid/runs/{run_id}/events"), &token)
        .await;
    let unknown: Vec<_> = ev["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["payload"]["outcome"] == "unknown")
        .collect();
    assert_eq!(unknown.len(), 3, "{ev}");
    assert!(
        unknown
            .iter()
            .all(|e| e["event_type"] == "candidate.failed")
    );
}

#[actix_web::test]
async fn with_retries_of_unknown_outcomes_allowed_the_policy_bounds_the_repeats() {
    let (stub, app, token) = with_openai(|s| {
        s.providers.openai.retry_unknown_outcome = Some(true);
        s.engine.provider_max_attempts = 3;
    })
    .await;
    // About 30% of answers cut off, some twice in a row.
    let mut script = Vec::new();
    for i in 0..30 {
        script.push(if i % 10 < 3 {
            Reply::Truncated
        } else {
            Reply::Image
        });
    }
    stub.script(script);
    let (s, b) = trigger(&app, &token, run_body(json!({}))).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let run_id = b["run_id"].as_str().unwrap();
    // Each key is sent at most `provider_max_attempts` times.
    assert!(stub.calls().values().all(|n| *n <= 3), "{:?}", stub.calls());
    assert!(stub.served_total() <= 30);
    let calls = calls_of(&app, run_id).await;
    for call in &calls {
        let served = stub
            .images_served()
            .get(&call.idempotency_key)
            .copied()
            .unwrap_or(0);
        let events = costs_of(&app, run_id)
            .await
            .into_iter()
            .filter(|c| c.provider_call_id == Some(call.id))
            .count();
        assert_eq!(
            events, served as usize,
            "{}: every served image is in the ledger",
            call.idempotency_key
        );
    }
    assert!(
        calls
            .iter()
            .any(|c| c.possibly_billed_usd > 0.0 && c.status == "succeeded"),
        "a retried unknown outcome keeps its possibly billed spend"
    );
}

#[actix_web::test]
async fn possibly_billed_spend_counts_against_the_budget() {
    let (stub, app, token) = with_openai(|_| {}).await;
    stub.script([Reply::Truncated, Reply::Truncated]);
    let (_, first) = trigger(&app, &token, run_body(json!({"scene_refs": ["sample:1"]}))).await;
    let run_id = first["run_id"].as_str().unwrap();
    let lost: f64 = calls_of(&app, run_id)
        .await
        .iter()
        .map(|c| c.possibly_billed_usd)
        .sum();
    assert!(lost > 0.0);
    // A project budget just above what was possibly billed: a second run of
    // two calls no longer fits (its reservations would pass the cap).
    let cap = lost + 0.01;
    let (s, e) = trigger(
        &app,
        &token,
        run_body(json!({"scene_refs": ["sample:2"],
        "manifest": {"policy": {"project_budget_usd": cap}}})),
    )
    .await;
    assert_error(s, &e, 400, "project_budget_exceeded");
}

#[actix_web::test]
async fn a_call_that_succeeds_after_a_failed_attempt_carries_no_old_error() {
    let (stub, app, token) = with_openai(|_| {}).await;
    stub.script([Reply::Error {
        status: 500,
        code: "server_error",
        retry_after: None,
    }]);
    let (s, b) = trigger(
        &app,
        &token,
        run_body(json!({"scene_refs": ["sample:1"], "candidates": 1})),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["run"]["status"], "done", "{b}");
    let calls = calls_of(&app, b["run_id"].as_str().unwrap()).await;
    assert_eq!(calls.len(), 1);
    let call = &calls[0];
    assert_eq!(call.status, "succeeded");
    assert_eq!((call.attempt, call.sent_attempts), (2, 2));
    assert_eq!(call.error_code, None, "{call:?}");
    assert_eq!(call.error_message, None);
}

/// Reservations racing from many tasks at once — as from several nodes,
/// each with its own CostActor, on one database — never take more than the
/// budget: the check and the reservation are one atomic step in the
/// database, not in a process.
#[actix_web::test]
async fn racing_reservations_never_take_more_than_the_budget_whoever_asks() {
    use domain::ports::SpendRequest;
    let app = TestApp::spawn().await;
    let token = app.bootstrap_token().await;
    let project = app.create_project(&token, "Race", "race").await;
    let project_id: uuid::Uuid = project["project"]["id"].as_str().unwrap().parse().unwrap();
    // Twenty calls of 0.05 USD each, outside any run, against 0.50 USD.
    let calls: Vec<entities::provider_calls::Model> = (0..20)
        .map(|i| crate::helpers::pending_call(project_id, format!("race:{i}"), "openai", "speech"))
        .collect();
    entities::provider_calls::Entity::insert_many(
        calls
            .iter()
            .cloned()
            .map(entities::provider_calls::ActiveModel::from),
    )
    .exec(&app.db)
    .await
    .unwrap();
    let outcomes = futures_util::future::join_all(calls.iter().map(|c| {
        let db = app.db.clone();
        let request = SpendRequest {
            fence: None,
            call_id: c.id,
            project_id,
            run_id: None,
            attempt: 1,
            amount: 0.05,
            run_budget: None,
            project_budget: Some(0.50),
        };
        // Each on a task of its own, so the transactions truly overlap.
        tokio::spawn(async move { domain::runs::budget::reserve(&db, &request).await })
    }))
    .await;
    let granted = outcomes.iter().filter(|o| matches!(o, Ok(Ok(())))).count();
    let refused = outcomes
        .iter()
        .filter(|o| {
            matches!(o, Ok(Err(domain::ServiceError::Policy { code, .. })) if *code == "project_budget_exceeded")
        })
        .count();
    assert_eq!((granted, refused), (10, 10), "{outcomes:?}");
    let reserved: f64 = entities::provider_calls::Entity::find()
        .filter(entities::provider_calls::Column::ProjectId.eq(project_id))
        .filter(entities::provider_calls::Column::Attempt.gt(0))
        .all(&app.db)
        .await
        .unwrap()
        .iter()
        .map(|c| c.reserved_cost_usd)
        .sum();
    assert!((reserved - 0.50).abs() < 1e-9, "reserved {reserved}");
}
