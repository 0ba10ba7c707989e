//! The execution engine over HTTP: staged runs with chained lineage, dry runs,
//! validation and policy before spend, cancel, retries, the output guard and
//! concurrency bounds.

use std::collections::HashMap;

use reqwest::StatusCode;
use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter};
use serde_json::{Value, json};

use crate::helpers::{TestApp, assert_error};

async fn project(app: &TestApp) -> String {
    let token = app.bootstrap_token().await;
    app.create_project(&token, "Book", "book").await;
    token
}

/// A run's cost events.
async fn costs_of(app: &TestApp, run_id: uuid::Uuid) -> Vec<entities::cost_events::Model> {
    entities::cost_events::Entity::find()
        .filter(entities::cost_events::Column::RunId.eq(run_id))
        .all(&app.db)
        .await
        .unwrap()
}

/// A run's provider calls of one operation (`bg_remove`, `bg_refine`, …).
async fn pass_calls_of(
    app: &TestApp,
    run_id: uuid::Uuid,
    operation: &str,
) -> Vec<entities::provider_calls::Model> {
    entities::provider_calls::Entity::find()
        .filter(entities::provider_calls::Column::RunId.eq(run_id))
        .filter(entities::provider_calls::Column::Operation.eq(operation))
        .all(&app.db)
        .await
        .unwrap()
}

async fn trigger(app: &TestApp, token: &str, body: Value) -> (StatusCode, Value) {
    app.post("/api/projects/book/runs/trigger", token, body)
        .await
}

#[actix_web::test]
async fn staged_run_completes_with_chained_lineage() {
    let app = TestApp::spawn().await;
    let token = project(&app).await;
    let (s, body) = trigger(
        &app,
        &token,
        json!({
            "mode": "run", "scene_refs": ["sample:1", "sample:2"], "stage": "weather",
            "time": "night", "weather": "rain", "candidates": 2, "wait": true,
        }),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["run"]["status"], "done", "{body}");
    let jobs = body["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 6);
    let by_id: HashMap<&str, &Value> = jobs
        .iter()
        .map(|j| (j["id"].as_str().unwrap(), j))
        .collect();
    for job in jobs {
        assert_eq!(job["status"], "done", "{job}");
        assert_eq!(job["candidates"].as_array().unwrap().len(), 2);
        assert!(job["final_asset_id"].is_string());
        // Chaining: a stage's input is the previous stage's winner.
        match job["parent_job_id"].as_str() {
            Some(parent) => assert_eq!(
                job["input_asset_id"], by_id[parent]["final_asset_id"],
                "{job}"
            ),
            None => assert_eq!(job["stage"], "style"),
        }
        // Numbered from 1, as in v1.
        let winner = job["selected_candidate_index"].as_i64().unwrap();
        assert!(winner >= 1, "{job}");
        let chosen = &job["candidates"][(winner - 1) as usize];
        assert_eq!(chosen["candidate_index"], winner);
        assert_eq!(chosen["final_asset_id"], job["final_asset_id"]);
    }
    assert_eq!(jobs.iter().filter(|j| j["stage"] == "weather").count(), 2);

    // Every candidate is a stored, hashed asset derived from its job's input.
    let run_id: uuid::Uuid = body["run_id"].as_str().unwrap().parse().unwrap();
    let assets = entities::assets::Entity::find()
        .filter(entities::assets::Column::RunId.eq(run_id))
        .filter(entities::assets::Column::Kind.eq("generated"))
        .all(&app.db)
        .await
        .unwrap();
    // 12 candidates; identical outputs (the local provider's time grading
    // ignores the candidate index) may share one asset.
    let outputs: std::collections::HashSet<String> = jobs
        .iter()
        .flat_map(|j| j["candidates"].as_array().unwrap().iter())
        .map(|c| c["output_asset_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        jobs.iter()
            .map(|j| j["candidates"].as_array().unwrap().len())
            .sum::<usize>(),
        12
    );
    assert!(outputs.len() <= 12 && outputs.len() <= assets.len());
    for out in &outputs {
        assert!(assets.iter().any(|a| &a.id.to_string() == out), "{out}");
    }
    let root = app.data_path().join("projects/book");
    for a in &assets {
        let bytes = std::fs::read(root.join(&a.storage_key)).unwrap();
        assert_eq!(
            a.sha256.as_deref(),
            Some(domain::assets::sha256_hex(&bytes).as_str())
        );
        assert_eq!(a.byte_size, Some(bytes.len() as i64));
        image::load_from_memory(&bytes).unwrap();
    }
    let links = entities::asset_links::Entity::find()
        .all(&app.db)
        .await
        .unwrap();
    let edges: std::collections::HashSet<(String, String)> = jobs
        .iter()
        .flat_map(|j| {
            j["candidates"].as_array().unwrap().iter().map(|c| {
                (
                    j["input_asset_id"].as_str().unwrap().to_string(),
                    c["output_asset_id"].as_str().unwrap().to_string(),
                )
            })
        })
        .collect();
    let derived = links
        .iter()
        .filter(|l| l.link_type == "derived_from")
        .count();
    assert_eq!(derived, edges.len(), "one edge per input and output");
    for job in jobs {
        let input: uuid::Uuid = job["input_asset_id"].as_str().unwrap().parse().unwrap();
        for c in job["candidates"].as_array().unwrap() {
            let out: uuid::Uuid = c["output_asset_id"].as_str().unwrap().parse().unwrap();
            assert!(links.iter().any(|l| l.parent_asset_id == input
                && l.child_asset_id == out
                && l.link_type == "derived_from"));
        }
    }
    // Stages produce visibly different images: night is darker than style.
    let mean = |id: &str| {
        let a = assets.iter().find(|a| a.id.to_string() == id).unwrap();
        let img = image::open(root.join(&a.storage_key)).unwrap().to_luma8();
        img.pixels().map(|p| f64::from(p[0])).sum::<f64>() / f64::from(img.width() * img.height())
    };
    let style = jobs.iter().find(|j| j["stage"] == "style").unwrap();
    let time = jobs
        .iter()
        .find(|j| j["stage"] == "time" && j["parent_job_id"] == style["id"])
        .unwrap();
    assert!(
        mean(time["final_asset_id"].as_str().unwrap())
            < mean(style["final_asset_id"].as_str().unwrap()) * 0.7
    );

    let qr = entities::quality_reports::Entity::find()
        .all(&app.db)
        .await
        .unwrap();
    assert_eq!(qr.len(), 12);

    // Events: contiguous sequence numbers, the expected kinds, replay with since.
    let (_, ev) = app
        .get(&format!("/api/projects/book/runs/{run_id}/events"), &token)
        .await;
    let events = ev["events"].as_array().unwrap();
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e["seq"], json!(i as i64 + 1));
    }
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["event_type"].as_str().unwrap())
        .collect();
    for k in [
        "run.queued",
        "run.started",
        "job.started",
        "candidate.ready",
        "job.winner_selected",
        "stage.completed",
        "run.finished",
    ] {
        assert!(kinds.contains(&k), "missing {k}: {kinds:?}");
    }
    assert_eq!(kinds.first(), Some(&"run.queued"));
    assert_eq!(kinds.last(), Some(&"run.finished"));
    let (_, tail) = app
        .get(
            &format!("/api/projects/book/runs/{run_id}/events?since=5"),
            &token,
        )
        .await;
    assert_eq!(
        tail["count"],
        json!(events.len() - 5),
        "{kinds:?} then {tail}"
    );
    assert_eq!(tail["events"][0]["seq"], json!(6));

    let (_, list) = app.get("/api/projects/book/runs", &token).await;
    assert_eq!(list["count"], json!(1));
    let (_, detail) = app
        .get(&format!("/api/projects/book/runs/{run_id}"), &token)
        .await;
    assert_eq!(detail["jobs"].as_array().unwrap().len(), 6);
    let (_, jobs_list) = app
        .get(&format!("/api/projects/book/runs/{run_id}/jobs"), &token)
        .await;
    assert_eq!(jobs_list["count"], json!(6));
    assert_eq!(jobs_list["run_id"], json!(run_id));
    let (_, p) = app.get("/api/projects/book", &token).await;
    assert_eq!(p["counts"]["runs"], json!(1));
    assert_eq!(p["counts"]["jobs"], json!(6));
}

#[actix_web::test]
async fn dry_run_plans_and_calls_nothing() {
    let app = TestApp::spawn_with(|s| s.providers.local.price_usd = 0.04).await;
    let token = project(&app).await;
    let (s, body) = trigger(
        &app,
        &token,
        json!({"scene_refs": ["sample:3"], "stage": "time", "time": "dusk", "candidates": 3}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["run"]["status"], "planned");
    assert_eq!(body["run"]["run_mode"], "dry");
    assert_eq!(body["plan"]["jobs"], json!(2));
    assert_eq!(body["plan"]["provider_calls"], json!(6));
    assert!((body["plan"]["estimated_cost_usd"].as_f64().unwrap() - 0.24).abs() < 1e-9);
    assert!(
        body["plan"]["stages"][1]["prompt"]
            .as_str()
            .unwrap()
            .contains("Dusk")
    );
    assert!(
        body["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .all(|j| j["status"] == "planned")
    );
    let calls = entities::provider_calls::Entity::find()
        .all(&app.db)
        .await
        .unwrap();
    assert!(calls.is_empty());
}

#[actix_web::test]
async fn bad_triggers_fail_before_any_spend() {
    let app = TestApp::spawn_with(|s| s.providers.local.price_usd = 0.05).await;
    let token = project(&app).await;
    // Body checks come before the project lookup.
    let (s, b) = app
        .post(
            "/api/projects/ghost/runs/trigger",
            &token,
            json!({"mode": "fast"}),
        )
        .await;
    assert_error(s, &b, 400, "invalid_mode");
    let (s, b) = app
        .post(
            "/api/projects/ghost/runs/trigger",
            &token,
            json!({"scene_refs": ["sample:1"]}),
        )
        .await;
    assert_error(s, &b, 404, "not_found");

    std::fs::create_dir_all(app.data_path().join("projects/book/scenes")).unwrap();
    std::fs::write(
        app.data_path().join("projects/book/scenes/broken.png"),
        b"\x89PNG\r\n\x1a\nnot really",
    )
    .unwrap();
    let cases = [
        (
            json!({"scene_refs": ["scenes/missing.png"]}),
            400,
            "scene_not_found",
        ),
        (
            json!({"scene_refs": ["../../etc/passwd"]}),
            400,
            "invalid_scene",
        ),
        (
            json!({"scene_refs": ["scenes/broken.png"]}),
            400,
            "invalid_scene",
        ),
        (
            json!({"scene_refs": ["sample:1"], "candidates": 7}),
            400,
            "candidates_over_limit",
        ),
        (
            json!({"scene_refs": ["sample:1", "sample:2"], "candidates": 3, "manifest": {"safe_batch_limit": 5}}),
            400,
            "batch_over_limit",
        ),
        (
            json!({"scene_refs": ["sample:1"], "provider": "nope"}),
            400,
            "unknown_provider",
        ),
        (
            json!({"scene_refs": ["sample:1"], "manifest": {"generation": {"candidates": 0}}}),
            400,
            "config_validation_failed",
        ),
        (
            json!({"mode": "run", "scene_refs": ["sample:1"]}),
            400,
            "spend_confirmation_required",
        ),
        (
            json!({"mode": "run", "confirm_spend": true, "scene_refs": ["sample:1"], "candidates": 2, "budget_usd": 0.05}),
            400,
            "budget_exceeded",
        ),
        (
            json!({"mode": "run", "confirm_spend": true, "scene_refs": ["sample:1"], "manifest": {"policy": {"project_budget_usd": 0.01}}}),
            400,
            "project_budget_exceeded",
        ),
    ];
    for (body, status, code) in cases {
        let (s, b) = trigger(&app, &token, body.clone()).await;
        assert_error(s, &b, status, code);
        if code.contains("budget") || code == "spend_confirmation_required" {
            assert_eq!(b["error_kind"], "policy", "{body}");
        }
    }
    let runs = entities::runs::Entity::find().all(&app.db).await.unwrap();
    assert!(runs.is_empty(), "a refused trigger persisted a run");
    assert!(
        entities::provider_calls::Entity::find()
            .all(&app.db)
            .await
            .unwrap()
            .is_empty()
    );

    // With confirmation and room in the budget, the paid run goes through and is costed.
    let (s, b) = trigger(&app, &token, json!({"mode": "run", "confirm_spend": true, "scene_refs": ["sample:1"], "candidates": 2, "budget_usd": 0.10, "wait": true})).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["run"]["status"], "done");
    let costs = entities::cost_events::Entity::find()
        .all(&app.db)
        .await
        .unwrap();
    assert_eq!(costs.len(), 2);
    // The AuditActor recorded each paid call.
    let paid = app
        .audit_codes()
        .await
        .iter()
        .filter(|c| *c == "provider.paid_call")
        .count();
    assert_eq!(paid, 2);
    assert!((costs.iter().map(|c| c.total_cost_usd).sum::<f64>() - 0.10).abs() < 1e-9);
}

#[actix_web::test]
async fn retryable_provider_failures_are_retried_and_recorded() {
    let app = TestApp::spawn_with(|s| {
        s.providers.local.failure_rate = 0.5;
        s.engine.provider_max_attempts = 30;
        s.engine.retry_base_ms = 1;
        s.engine.retry_max_ms = 5;
    })
    .await;
    let token = project(&app).await;
    let (s, b) = trigger(&app, &token, json!({"mode": "run", "scene_refs": ["sample:1", "sample:2"], "candidates": 4, "wait": true})).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["run"]["status"], "done", "{b}");
    let calls = entities::provider_calls::Entity::find()
        .all(&app.db)
        .await
        .unwrap();
    assert_eq!(calls.len(), 8);
    assert!(calls.iter().all(|c| c.status == "succeeded"));
    assert!(
        calls.iter().any(|c| c.attempt > 1),
        "no retry happened at a 50% failure rate"
    );
    let run_id = b["run_id"].as_str().unwrap();
    let (_, ev) = app
        .get(&format!("/api/projects/book/runs/{run_id}/events"), &token)
        .await;
    assert!(
        ev["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["event_type"] == "candidate.retry_scheduled")
    );
}

#[actix_web::test]
async fn output_guard_archives_hard_failures_and_fails_the_chain() {
    let app = TestApp::spawn().await;
    let token = project(&app).await;
    // Night grading tints blue: with grayscale enforced every time candidate fails.
    let (s, b) = trigger(&app, &token, json!({
        "mode": "run", "scene_refs": ["sample:4"], "stage": "weather", "time": "night", "candidates": 2,
        "manifest": {"output_guard": {"enforce_grayscale": true, "max_chroma_delta": 2.0}}, "wait": true,
    }))
    .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let jobs = b["jobs"].as_array().unwrap();
    let status: Vec<&str> = jobs.iter().map(|j| j["status"].as_str().unwrap()).collect();
    assert_eq!(status, vec!["done", "failed", "skipped"], "{b}");
    assert_eq!(b["run"]["status"], "partial");
    assert!(
        jobs[1]["candidates"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["status"] == "failed_output_guard")
    );
    let archived = entities::assets::Entity::find()
        .filter(entities::assets::Column::Kind.eq("archived"))
        .all(&app.db)
        .await
        .unwrap();
    // Both candidates are archived; identical ones share one asset.
    for c in jobs[1]["candidates"].as_array().unwrap() {
        assert!(
            archived
                .iter()
                .any(|a| a.id.to_string() == c["output_asset_id"].as_str().unwrap())
        );
    }
    assert!((1..=2).contains(&archived.len()));
    for a in archived {
        assert!(a.storage_key.starts_with("archive/"));
        assert!(
            app.data_path()
                .join("projects/book")
                .join(&a.storage_key)
                .exists()
        );
    }
}

#[actix_web::test]
async fn cancel_stops_further_calls_and_wins_over_completion() {
    let app = TestApp::spawn_with(|s| {
        s.providers.local.latency_ms = 150;
        s.engine.max_jobs_per_run = 1;
        s.engine.provider_concurrency = 1;
    })
    .await;
    let token = project(&app).await;
    let (s, b) = trigger(&app, &token, json!({"mode": "run", "scene_refs": ["sample:1", "sample:2", "sample:3"], "stage": "time", "candidates": 2})).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let run_id = b["run_id"].as_str().unwrap().to_string();
    // Mid-run: a first call has completed.
    crate::binary::eventually(
        "a first call done",
        std::time::Duration::from_secs(20),
        || async {
            let done = entities::provider_calls::Entity::find()
                .filter(entities::provider_calls::Column::Status.eq("succeeded"))
                .all(&app.db)
                .await
                .unwrap();
            (!done.is_empty()).then_some(())
        },
    )
    .await;
    let (s, c) = app
        .post(
            &format!("/api/projects/book/runs/{run_id}/cancel"),
            &token,
            json!({}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{c}");
    assert_eq!(c["run"]["status"], "canceled");
    // Calls made (the local provider never fails, so a made call succeeds).
    let started = || async {
        entities::provider_calls::Entity::find()
            .all(&app.db)
            .await
            .unwrap()
            .iter()
            .filter(|c| c.status == "succeeded")
            .count()
    };
    let calls_at_cancel = started().await;
    // Once every job has stopped, nothing more can be called.
    let run_uuid: uuid::Uuid = run_id.parse().unwrap();
    crate::binary::eventually(
        "every job stopped",
        std::time::Duration::from_secs(20),
        || async {
            let jobs = entities::run_jobs::Entity::find()
                .filter(entities::run_jobs::Column::RunId.eq(run_uuid))
                .all(&app.db)
                .await
                .unwrap();
            jobs.iter()
                .all(|j| !["pending", "running"].contains(&j.status.as_str()))
                .then_some(())
        },
    )
    .await;
    let calls_later = started().await;
    assert!(
        calls_later <= calls_at_cancel + 1,
        "calls continued after cancel: {calls_at_cancel} -> {calls_later}"
    );
    assert!(calls_later < 12);
    // Calls recorded but not made are marked, not left in flight.
    let calls = entities::provider_calls::Entity::find()
        .all(&app.db)
        .await
        .unwrap();
    assert!(
        calls
            .iter()
            .all(|c| c.status == "succeeded" || c.error_code.as_deref() == Some("canceled")),
        "{calls:?}"
    );
    let (_, detail) = app
        .get(&format!("/api/projects/book/runs/{run_id}"), &token)
        .await;
    assert_eq!(
        detail["run"]["status"], "canceled",
        "completion overwrote the cancel"
    );
    assert!(
        detail["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .all(|j| j["status"] != "pending" && j["status"] != "blocked")
    );
    // Canceling again, or a finished run, changes nothing.
    let (s, again) = app
        .post(
            &format!("/api/projects/book/runs/{run_id}/cancel"),
            &token,
            json!({}),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(again["run"]["status"], "canceled");
    let (s, b) = app
        .post(
            "/api/projects/book/runs/not-a-run/cancel",
            &token,
            json!({}),
        )
        .await;
    assert_error(s, &b, 404, "not_found");
}

#[actix_web::test]
async fn jobs_of_a_run_respect_the_concurrency_bound() {
    let app = TestApp::spawn_with(|s| {
        s.providers.local.latency_ms = 60;
        s.engine.max_jobs_per_run = 2;
    })
    .await;
    let token = project(&app).await;
    let (s, b) = trigger(&app, &token, json!({"mode": "run", "scene_refs": ["sample:1", "sample:2", "sample:3", "sample:4", "sample:5"], "candidates": 1, "wait": true})).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["run"]["status"], "done");
    let jobs = entities::run_jobs::Entity::find()
        .all(&app.db)
        .await
        .unwrap();
    let spans: Vec<_> = jobs
        .iter()
        .map(|j| (j.started_at.unwrap(), j.finished_at.unwrap()))
        .collect();
    let max_overlap = spans
        .iter()
        .map(|(start, _)| {
            spans
                .iter()
                .filter(|(s, e)| s <= start && start < e)
                .count()
        })
        .max()
        .unwrap();
    assert!(
        max_overlap <= 2,
        "{max_overlap} jobs ran at once with a bound of 2"
    );
    assert!(max_overlap >= 2, "jobs never ran in parallel");
}

/// A run that starts with room has its first ready jobs (up to the bound)
/// leased in the transaction that starts it: the same timestamp as the run's
/// start, their `job.started` numbered right after `run.started`; the rest
/// are leased by scheduling passes as jobs finish. With nothing of its
/// project waiting, that transaction is its trigger's own (one commit, the
/// run queued, started and at work); queued behind a pause, it is the
/// queue's start once resumed.
#[actix_web::test]
async fn a_run_starts_with_its_first_jobs_leased_in_the_same_transaction() {
    let app = TestApp::spawn_with(|s| s.engine.max_jobs_per_run = 2).await;
    let token = project(&app).await;
    let body = json!({"mode": "run", "scene_refs": ["sample:1", "sample:2", "sample:3"], "stage": "style", "candidates": 1, "wait": true});
    let (s, b) = trigger(&app, &token, body.clone()).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["run"]["status"], "done", "{b}");
    let (queued, started) = started_with_first_jobs(&app, b["run_id"].as_str().unwrap()).await;
    assert_eq!(queued, started, "not started by its trigger's transaction");

    let (s, q) = app
        .post("/api/projects/book/queue/pause", &token, json!({}))
        .await;
    assert_eq!(s, StatusCode::OK, "{q}");
    let mut queued_body = body;
    queued_body["wait"] = json!(false);
    let (s, b) = trigger(&app, &token, queued_body).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(
        b["run"]["status"], "queued",
        "a paused queue's run started: {b}"
    );
    let run_id = b["run_id"].as_str().unwrap();
    let (s, q) = app
        .post("/api/projects/book/queue/resume", &token, json!({}))
        .await;
    assert_eq!(s, StatusCode::OK, "{q}");
    wait_status(&app, &token, run_id, &["done"]).await;
    let (queued, started) = started_with_first_jobs(&app, run_id).await;
    assert!(queued < started, "started before its queue was resumed");
}

/// A trigger stores its scenes' inputs before its transaction, side by side:
/// the same image twice is still one asset (shared by both scenes' jobs),
/// and an image the project already holds is reused, not stored again.
#[actix_web::test]
async fn a_triggers_inputs_are_stored_once_per_content() {
    let app = TestApp::spawn().await;
    let token = project(&app).await;
    let inputs = |run_id: &str| {
        let run_id: uuid::Uuid = run_id.parse().unwrap();
        let db = app.db.clone();
        async move {
            let mut jobs = entities::run_jobs::Entity::find()
                .filter(entities::run_jobs::Column::RunId.eq(run_id))
                .all(&db)
                .await
                .unwrap();
            // In scene order, as the engine leases them.
            jobs.sort_by_key(|j| (j.created_at, j.id));
            jobs.iter()
                .map(|j| j.input_asset_id.unwrap())
                .collect::<Vec<_>>()
        }
    };
    let count = || async {
        entities::assets::Entity::find()
            .filter(entities::assets::Column::Kind.eq("input"))
            .count(&app.db)
            .await
            .unwrap()
    };
    let body = json!({"mode": "dry", "scene_refs": ["sample:5@32x32", "sample:6@32x32", "sample:5@32x32"], "stage": "style"});
    let (s, b) = trigger(&app, &token, body.clone()).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let first = inputs(b["run_id"].as_str().unwrap()).await;
    assert_eq!(first.len(), 3);
    assert_eq!(first[0], first[2], "the same image stored twice");
    assert_ne!(first[0], first[1]);
    assert_eq!(count().await, 2);
    let (s, b) = trigger(&app, &token, body).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let mut again = inputs(b["run_id"].as_str().unwrap()).await;
    let mut first = first;
    again.sort();
    first.sort();
    assert_eq!(again, first, "the project's inputs were not reused");
    assert_eq!(count().await, 2);
}

/// Checks a finished three-job run started with its first two jobs leased
/// (bound 2) and numbered gap-free; returns when `run.queued` and
/// `run.started` were recorded.
async fn started_with_first_jobs(
    app: &TestApp,
    run_id: &str,
) -> (chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>) {
    let run_id: uuid::Uuid = run_id.parse().unwrap();
    let run = entities::runs::Entity::find_by_id(run_id)
        .one(&app.db)
        .await
        .unwrap()
        .unwrap();
    let mut jobs = entities::run_jobs::Entity::find()
        .filter(entities::run_jobs::Column::RunId.eq(run_id))
        .all(&app.db)
        .await
        .unwrap();
    jobs.sort_by_key(|j| (j.created_at, j.id));
    let with_the_start: Vec<_> = jobs
        .iter()
        .map(|j| j.started_at == run.started_at)
        .collect();
    assert_eq!(with_the_start, [true, true, false], "{jobs:?}");
    assert!(jobs.iter().all(|j| j.attempt == 1 && j.lease_epoch == 1));
    let events = entities::run_events::Entity::find()
        .filter(entities::run_events::Column::RunId.eq(run_id))
        .all(&app.db)
        .await
        .unwrap();
    let at = |seq: i64| {
        let e = events.iter().find(|e| e.seq == seq).unwrap();
        (e.event_type.as_str(), e.job_id, e.created_at)
    };
    let queued = at(1);
    assert_eq!(queued.0, "run.queued");
    let started = at(2);
    assert_eq!(started.0, "run.started");
    for (seq, job) in [(3, &jobs[0]), (4, &jobs[1])] {
        assert_eq!(at(seq), ("job.started", Some(job.id), started.2));
    }
    let mut seqs: Vec<i64> = events.iter().map(|e| e.seq).collect();
    seqs.sort();
    assert_eq!(
        seqs,
        (1..=events.len() as i64).collect::<Vec<_>>(),
        "a gap in the run's events"
    );
    (queued.2, started.2)
}

async fn wait_status(app: &TestApp, token: &str, run_id: &str, want: &[&str]) -> Value {
    for _ in 0..200 {
        let (_, d) = app
            .get(&format!("/api/projects/book/runs/{run_id}"), token)
            .await;
        if want.contains(&d["run"]["status"].as_str().unwrap_or("")) {
            return d;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("run {run_id} never reached {want:?}");
}

#[actix_web::test]
async fn paused_queue_holds_runs_until_resumed() {
    let app = TestApp::spawn().await;
    let token = project(&app).await;
    let (s, q) = app
        .post("/api/projects/book/queue/pause", &token, json!({}))
        .await;
    assert_eq!(s, StatusCode::OK, "{q}");
    assert_eq!(q["paused"], json!(true));
    let (_, b) = trigger(
        &app,
        &token,
        json!({"mode": "run", "scene_refs": ["sample:1"]}),
    )
    .await;
    let run_id = b["run_id"].as_str().unwrap().to_string();
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    let (_, d) = app
        .get(&format!("/api/projects/book/runs/{run_id}"), &token)
        .await;
    assert_eq!(d["run"]["status"], "queued", "a paused queue started a run");
    let (_, q) = app.get("/api/projects/book/queue", &token).await;
    assert_eq!(q["queued"], json!(1));
    // The pause is stored with the project (it survives a restart).
    let p = entities::projects::Entity::find()
        .one(&app.db)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(p.settings_json["queue_paused"], json!(true));
    let (s, q) = app
        .post("/api/projects/book/queue/resume", &token, json!({}))
        .await;
    assert_eq!(s, StatusCode::OK, "{q}");
    assert_eq!(q["paused"], json!(false));
    wait_status(&app, &token, &run_id, &["done"]).await;
}

/// A cancel takes its row locks in the order every job transition does (the
/// run's jobs, then the run's row for the event's number), so on PostgreSQL
/// it waits for a transaction holding a job instead of deadlocking with it.
/// On SQLite (one writer at a time) the same cancel just settles the run.
#[actix_web::test]
async fn a_cancel_waits_for_a_job_transition_instead_of_deadlocking() {
    use sea_orm::sea_query::Expr;
    use sea_orm::{ConnectionTrait, TransactionTrait};
    let app = TestApp::spawn().await;
    let token = project(&app).await;
    let (s, q) = app
        .post("/api/projects/book/queue/pause", &token, json!({}))
        .await;
    assert_eq!(s, StatusCode::OK, "{q}");
    let (_, b) = trigger(
        &app,
        &token,
        json!({"mode": "run", "scene_refs": ["sample:1", "sample:2"]}),
    )
    .await;
    let run_id: uuid::Uuid = b["run_id"].as_str().unwrap().parse().unwrap();
    let url = format!("{}/api/projects/book/runs/{run_id}/cancel", app.base);
    let cancel = |client: reqwest::Client| {
        let (url, token) = (url.clone(), token.clone());
        async move {
            let r = client.post(url).bearer_auth(token).json(&json!({})).send();
            let r = r.await.unwrap();
            (r.status(), r.json::<Value>().await.unwrap())
        }
    };
    let (status, body) = if crate::helpers::on_postgres() {
        // A job transition in flight: the run's jobs locked, its run row next.
        let txn = app.db.begin().await.unwrap();
        entities::run_jobs::Entity::update_many()
            .col_expr(
                entities::run_jobs::Column::UpdatedAt,
                Expr::value(chrono::Utc::now()),
            )
            .filter(entities::run_jobs::Column::RunId.eq(run_id))
            .exec(&txn)
            .await
            .unwrap();
        let canceling = actix_web::rt::spawn(cancel(app.client.clone()));
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let numbered = txn
            .execute_unprepared(&format!(
                "UPDATE runs SET last_event_seq = last_event_seq WHERE id = '{run_id}'"
            ))
            .await;
        assert!(numbered.is_ok(), "the job transition lost: {numbered:?}");
        txn.commit().await.unwrap();
        canceling.await.unwrap()
    } else {
        cancel(app.client.clone()).await
    };
    assert_eq!(status, StatusCode::OK, "{body}");
    let run = entities::runs::Entity::find_by_id(run_id)
        .one(&app.db)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(run.status.as_str(), "canceled");
    let jobs = entities::run_jobs::Entity::find()
        .filter(entities::run_jobs::Column::RunId.eq(run_id))
        .all(&app.db)
        .await
        .unwrap();
    assert!(!jobs.is_empty());
    assert!(
        jobs.iter().all(|j| j.status.as_str() == "canceled"),
        "{jobs:#?}"
    );
}

#[actix_web::test]
async fn canceling_one_job_skips_its_chain_only() {
    let app = TestApp::spawn_with(|s| {
        s.providers.local.latency_ms = 80;
        s.engine.max_jobs_per_run = 1;
    })
    .await;
    let token = project(&app).await;
    let (_, b) = trigger(&app, &token, json!({"mode": "run", "scene_refs": ["sample:1", "sample:2"], "stage": "time", "candidates": 1})).await;
    let run_id = b["run_id"].as_str().unwrap().to_string();
    let second_style = b["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["job_key"] == "style_2_sample_2")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (s, c) = app
        .post(
            &format!("/api/projects/book/runs/{run_id}/jobs/{second_style}/cancel"),
            &token,
            json!({}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{c}");
    assert_eq!(c["job"]["status"], "canceled");
    let d = wait_status(&app, &token, &run_id, &["partial", "done", "failed"]).await;
    let status: HashMap<&str, &str> = d["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| {
            (
                j["job_key"].as_str().unwrap(),
                j["status"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(status["style_1_sample_1"], "done");
    assert_eq!(status["time_1_sample_1"], "done");
    assert_eq!(status["style_2_sample_2"], "canceled");
    assert_eq!(status["time_2_sample_2"], "skipped");
    assert_eq!(d["run"]["status"], "partial");
    let (s, b) = app
        .post(
            &format!("/api/projects/book/runs/{run_id}/jobs/not-a-job/cancel"),
            &token,
            json!({}),
        )
        .await;
    assert_error(s, &b, 404, "not_found");

    let job = d["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["job_key"] == "style_1_sample_1")
        .unwrap();
    let (_, cands) = app
        .get(
            &format!(
                "/api/projects/book/runs/{run_id}/jobs/{}/candidates",
                job["id"].as_str().unwrap()
            ),
            &token,
        )
        .await;
    assert_eq!(cands["count"], json!(1));
    assert_eq!(cands["job_id"], job["id"]);
}

#[actix_web::test]
async fn retry_gives_failed_jobs_a_linked_new_attempt_without_repaying() {
    let app = TestApp::spawn_with(|s| {
        s.providers.local.failure_rate = 0.5;
        s.engine.provider_max_attempts = 1;
    })
    .await;
    let token = project(&app).await;
    // Find a run in which some (not all) jobs failed; each run draws anew.
    let mut found = None;
    for _ in 0..12 {
        let (_, b) = trigger(&app, &token, json!({"mode": "run", "scene_refs": ["sample:1", "sample:2", "sample:3", "sample:4"], "candidates": 1, "wait": true})).await;
        if b["run"]["status"] == "partial" {
            found = Some(b);
            break;
        }
    }
    let b = found.expect("no partial run in 12 tries at a 50% failure rate");
    let run_id = b["run_id"].as_str().unwrap().to_string();
    let failed: Vec<String> = b["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|j| j["status"] == "failed")
        .map(|j| j["id"].as_str().unwrap().to_string())
        .collect();
    let succeeded_before: Vec<_> = entities::provider_calls::Entity::find()
        .filter(entities::provider_calls::Column::Status.eq("succeeded"))
        .all(&app.db)
        .await
        .unwrap();

    let (s, r) = app
        .post(
            &format!("/api/projects/book/runs/{run_id}/retry"),
            &token,
            json!({}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    let new_jobs = r["jobs"].as_array().unwrap();
    assert_eq!(new_jobs.len(), failed.len());
    for j in new_jobs {
        assert!(
            failed.contains(&j["retry_of_job_id"].as_str().unwrap().to_string()),
            "{j}"
        );
    }
    let d = wait_status(&app, &token, &run_id, &["done", "partial", "failed"]).await;
    let jobs = entities::run_jobs::Entity::find()
        .filter(entities::run_jobs::Column::RetryOfJobId.is_not_null())
        .all(&app.db)
        .await
        .unwrap();
    assert_eq!(jobs.len(), failed.len());
    for j in &jobs {
        assert!(
            failed.contains(&j.retry_of_job_id.unwrap().to_string()),
            "retry not linked to a failed job"
        );
        assert_ne!(j.status, "pending");
    }
    assert!(d["jobs"].as_array().unwrap().len() > 4);
    // Stored results were not paid for again.
    for b in &succeeded_before {
        let now = entities::provider_calls::Entity::find_by_id(b.id)
            .one(&app.db)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(now.attempt, b.attempt);
        assert_eq!(now.finished_at, b.finished_at);
    }
    // A run with nothing to retry says so. (Each run draws its failures
    // anew: a one-job run succeeds half the time; 30 tries all failing has
    // odds of 1 in 10^9.)
    let mut ok_run = None;
    for _ in 0..30 {
        let (_, b) = trigger(&app, &token, json!({"mode": "run", "scene_refs": ["sample:9"], "candidates": 1, "wait": true, "manifest": {}})).await;
        if b["run"]["status"] == "done" {
            ok_run = Some(b);
            break;
        }
    }
    let ok_run = ok_run.expect("no successful run in 30 tries at a 50% failure rate");
    let (s, e) = app
        .post(
            &format!(
                "/api/projects/book/runs/{}/retry",
                ok_run["run_id"].as_str().unwrap()
            ),
            &token,
            json!({}),
        )
        .await;
    assert_error(s, &e, 409, "run_not_retryable");
}

#[actix_web::test]
async fn the_cost_actor_stops_spend_at_the_project_budget_before_the_call() {
    let app = TestApp::spawn_with(|s| {
        s.providers.local.price_usd = 0.05;
        s.providers.local.latency_ms = 50;
    })
    .await;
    let token = project(&app).await;
    // Both runs pass the trigger check (nothing spent yet, each estimate fits),
    // but together they would exceed the project budget: the CostActor must
    // refuse the second run's calls before they are made.
    // The queue is paused while both are accepted, so the first cannot have
    // spent anything before the second is checked.
    let body = json!({"mode": "run", "confirm_spend": true, "scene_refs": ["sample:1"], "candidates": 2,
        "manifest": {"policy": {"project_budget_usd": 0.10}}});
    let (s, p) = app
        .post("/api/projects/book/queue/pause", &token, json!({}))
        .await;
    assert_eq!(s, StatusCode::OK, "{p}");
    let (s1, a) = trigger(&app, &token, body.clone()).await;
    let (s2, b) = trigger(&app, &token, body).await;
    assert_eq!((s1, s2), (StatusCode::OK, StatusCode::OK), "{a} {b}");
    let (s, p) = app
        .post("/api/projects/book/queue/resume", &token, json!({}))
        .await;
    assert_eq!(s, StatusCode::OK, "{p}");
    let ra = wait_status(
        &app,
        &token,
        a["run_id"].as_str().unwrap(),
        &["done", "failed", "partial"],
    )
    .await;
    let rb = wait_status(
        &app,
        &token,
        b["run_id"].as_str().unwrap(),
        &["done", "failed", "partial"],
    )
    .await;
    assert_eq!(ra["run"]["status"], "done");
    assert_eq!(rb["run"]["status"], "failed", "{rb}");
    let spent: f64 = entities::cost_events::Entity::find()
        .all(&app.db)
        .await
        .unwrap()
        .iter()
        .map(|c| c.total_cost_usd)
        .sum();
    assert!((spent - 0.10).abs() < 1e-9, "spent {spent}");
    let refused = entities::provider_calls::Entity::find()
        .filter(entities::provider_calls::Column::ErrorCode.eq("project_budget_exceeded"))
        .all(&app.db)
        .await
        .unwrap();
    assert_eq!(refused.len(), 2);
    assert!(
        refused
            .iter()
            .all(|c| c.attempt == 0 && c.actual_cost_usd.is_none())
    );
    // A third trigger is refused up front now that the budget is spent.
    let (s, e) = trigger(
        &app,
        &token,
        json!({"mode": "run", "confirm_spend": true, "scene_refs": ["sample:1"],
        "manifest": {"policy": {"project_budget_usd": 0.10}}}),
    )
    .await;
    assert_error(s, &e, 400, "project_budget_exceeded");
}

#[actix_web::test]
async fn validate_config_checks_layers_and_refuses_paths() {
    let app = TestApp::spawn().await;
    let token = project(&app).await;
    let url = "/api/projects/book/runs/validate-config";
    let (s, b) = app
        .post(
            "/api/projects/ghost/runs/validate-config",
            &token,
            json!({"project_root": "/etc"}),
        )
        .await;
    assert_error(s, &b, 404, "not_found");
    let (s, b) = app
        .post(
            url,
            &token,
            json!({"manifest": {"generation": {"candidates": 3}}}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(
        b["summary"]["manifest"]["generation"]["candidates"],
        json!(3)
    );
    assert_eq!(b["summary"]["project_settings_loaded"], json!(false));
    let (s, b) = app.post(url, &token, json!({"project_root": "/etc"})).await;
    assert_error(s, &b, 400, "project_root_managed");
    let (s, b) = app
        .post(url, &token, json!({"manifest_path": "/etc/passwd"}))
        .await;
    assert_error(s, &b, 400, "config_validation_failed");
    assert!(
        !b["error"].as_str().unwrap().contains("root:"),
        "file contents leaked"
    );
    let (s, b) = app
        .post(
            url,
            &token,
            json!({"manifest": {"output_guard": {"max_chroma_delta": -1}}}),
        )
        .await;
    assert_error(s, &b, 400, "config_validation_failed");
}

#[actix_web::test]
async fn workers_heartbeat_their_lease_while_a_slow_call_runs() {
    let app = TestApp::spawn_with(|s| {
        // A call longer than the lease, beats 20 times as often as the lease
        // runs out (room for a loaded machine).
        s.providers.local.latency_ms = 2_300;
        s.engine.lease_seconds = 2;
        s.engine.heartbeat_ms = 100;
    })
    .await;
    let token = project(&app).await;
    let (s, b) = trigger(
        &app,
        &token,
        json!({"mode": "run", "scene_refs": ["sample:1"], "candidates": 1, "wait": true}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["run"]["status"], "done");
    let job = entities::run_jobs::Entity::find()
        .one(&app.db)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        job.attempt, 1,
        "the job was reclaimed although its worker was alive"
    );
    let beat = job.heartbeat_at.unwrap() - job.started_at.unwrap();
    assert!(
        beat >= chrono::Duration::milliseconds(2_000),
        "no heartbeat during the call: {beat}"
    );
}

#[actix_web::test]
async fn a_busy_project_does_not_hold_up_another_projects_run() {
    let app = TestApp::spawn_with(|s| {
        s.providers.local.latency_ms = 300;
        s.engine.max_runs_per_project = 1;
    })
    .await;
    let token = project(&app).await;
    app.create_project(&token, "Other", "other").await;
    let mut busy = Vec::new();
    for i in 1..=3 {
        let (s, b) = trigger(
            &app,
            &token,
            json!({"mode": "run", "scene_refs": [format!("sample:{i}")], "stage": "style"}),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{b}");
        busy.push(b["run_id"].as_str().unwrap().to_string());
    }
    let (s, other) = app
        .post(
            "/api/projects/other/runs/trigger",
            &token,
            json!({"mode": "run", "scene_refs": ["sample:9"], "stage": "style", "wait": true}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{other}");
    assert_eq!(other["run"]["status"], "done");
    // The other project's run finished while the busy project's queue was
    // still waiting its turn (one run at a time there).
    let (_, last) = app
        .get(&format!("/api/projects/book/runs/{}", busy[2]), &token)
        .await;
    assert_eq!(last["run"]["status"], "queued", "{last}");
}

#[actix_web::test]
async fn post_process_passes_register_every_file_with_its_lineage() {
    let app = TestApp::spawn().await;
    let token = project(&app).await;
    let all_on = json!({
        "bg_remove": true, "upscale": true, "upscale_factor": 2,
        "color": true, "color_profile": "cinematic_warm"
    });
    let (s, b) = trigger(&app, &token, json!({"mode": "run", "scene_refs": ["sample:3@64x48"], "stage": "time", "time": "dusk", "candidates": 2, "postprocess": all_on, "wait": true})).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["run"]["status"], "done", "{b}");
    let run_id: uuid::Uuid = b["run_id"].as_str().unwrap().parse().unwrap();
    let assets = entities::assets::Entity::find()
        .filter(entities::assets::Column::RunId.eq(run_id))
        .all(&app.db)
        .await
        .unwrap();
    let links = entities::asset_links::Entity::find()
        .all(&app.db)
        .await
        .unwrap();
    let root = app.data_path().join("projects/book");
    for a in &assets {
        let bytes = std::fs::read(root.join(&a.storage_key)).unwrap();
        assert_eq!(
            a.sha256.as_deref(),
            Some(domain::assets::sha256_hex(&bytes).as_str())
        );
        // The run log (registered once the run is done) is JSON, not an image.
        if a.kind == "run_log" {
            continue;
        }
        let img = image::load_from_memory(&bytes).unwrap();
        assert_eq!(
            (Some(img.width() as i32), Some(img.height() as i32)),
            (a.width, a.height)
        );
    }
    let by_id = |id: &serde_json::Value| {
        assets
            .iter()
            .find(|a| a.id.to_string() == id.as_str().unwrap())
            .unwrap()
    };
    for job in b["jobs"].as_array().unwrap() {
        for c in job["candidates"].as_array().unwrap() {
            let out = by_id(&c["output_asset_id"]);
            let fin = by_id(&c["final_asset_id"]);
            if job["stage"] == "style" {
                // Passes run on the chain's last stage only.
                assert_eq!(out.id, fin.id);
                continue;
            }
            assert_eq!(fin.kind, "color");
            assert_eq!(fin.width, out.width.map(|w| w * 2), "upscaled 2x");
            // Walk the lineage back from the final file to the output (a
            // file identical to another candidate's is one asset, so the
            // lineage is a graph: search it).
            fn path(
                at: uuid::Uuid,
                to: uuid::Uuid,
                links: &[entities::asset_links::Model],
                assets: &[entities::assets::Model],
            ) -> Option<Vec<String>> {
                let kind = assets.iter().find(|a| a.id == at)?.kind.clone();
                if at == to {
                    return Some(vec![kind]);
                }
                links
                    .iter()
                    .filter(|l| l.child_asset_id == at && l.link_type == "derived_from")
                    .find_map(|l| path(l.parent_asset_id, to, links, assets))
                    .map(|mut rest| {
                        rest.insert(0, kind);
                        rest
                    })
            }
            let kinds = path(fin.id, out.id, &links, &assets).unwrap();
            assert_eq!(kinds.last().map(String::as_str), Some("generated"));
            assert!(kinds.contains(&"upscaled".to_string()), "{kinds:?}");
        }
        let winner = job["selected_candidate_index"].as_i64().unwrap() as usize;
        assert_eq!(
            job["final_asset_id"],
            job["candidates"][winner - 1]["final_asset_id"]
        );
    }

    // The project turns upscaling on (its settings are database-owned; the
    // settings API arrives with the journey contract); a request can turn it
    // off again.
    {
        use sea_orm::sea_query::Expr;
        entities::projects::Entity::update_many()
            .col_expr(
                entities::projects::Column::SettingsJson,
                Expr::value(json!({"manifest": {"postprocess": {"upscale": true}}})),
            )
            .filter(entities::projects::Column::Slug.eq("book"))
            .exec(&app.db)
            .await
            .unwrap();
    }
    let (_, off) = trigger(&app, &token, json!({"mode": "run", "scene_refs": ["sample:4@64x48"], "stage": "style", "candidates": 1, "postprocess": {"upscale": false}, "wait": true})).await;
    let (_, on) = trigger(&app, &token, json!({"mode": "run", "scene_refs": ["sample:5@64x48"], "stage": "style", "candidates": 1, "wait": true})).await;
    let kinds_of = |body: &serde_json::Value| {
        let id: uuid::Uuid = body["run_id"].as_str().unwrap().parse().unwrap();
        let db = app.db.clone();
        async move {
            entities::assets::Entity::find()
                .filter(entities::assets::Column::RunId.eq(id))
                .all(&db)
                .await
                .unwrap()
                .into_iter()
                .map(|a| a.kind)
                .collect::<Vec<_>>()
        }
    };
    assert!(!kinds_of(&off).await.contains(&"upscaled".to_string()));
    assert!(kinds_of(&on).await.contains(&"upscaled".to_string()));
    // Unknown profiles and factors are refused before anything is stored.
    let (s, e) = trigger(&app, &token, json!({"mode": "run", "scene_refs": ["sample:1"], "postprocess": {"color": true, "color_profile": "sepia"}})).await;
    crate::helpers::assert_error(s, &e, 400, "config_validation_failed");
    let (s, e) = trigger(
        &app,
        &token,
        json!({"mode": "run", "scene_refs": ["sample:1"], "postprocess": {"upscale_factor": 3}}),
    )
    .await;
    crate::helpers::assert_error(s, &e, 400, "config_validation_failed");
}

/// A PhotoRoom stub and a service using it. The key comes from a variable
/// the test runner always sets, so no test has to change the process
/// environment.
async fn with_photoroom(
    tweak: impl FnOnce(&mut atelier::settings::Settings),
) -> (crate::bg_stub::RemovalStub, TestApp) {
    let stub = crate::bg_stub::RemovalStub::start_with_key(env!("CARGO_MANIFEST_DIR")).await;
    let url = stub.photoroom_url.clone();
    let app = TestApp::spawn_with(move |s| {
        s.providers.photoroom.enabled = true;
        s.providers.photoroom.base_url = Some(url);
        s.providers.photoroom.api_key_env = Some("CARGO_MANIFEST_DIR".into());
        tweak(s);
    })
    .await;
    (stub, app)
}

#[actix_web::test]
async fn background_removal_falls_back_to_a_paid_service_with_spend_safety() {
    let (stub, app) = with_photoroom(|_| {}).await;
    let token = project(&app).await;
    // Local removal finds nothing at these settings, so PhotoRoom is asked.
    let pp = json!({
        "bg_remove": true, "bg_remove_backends": ["local", "photoroom"],
        "bg_remove_settings": {"tolerance": 0.0, "min_removed_fraction": 0.9}
    });
    let body = json!({"mode": "run", "scene_refs": ["sample:2@64x48"], "stage": "style", "candidates": 2, "postprocess": pp, "wait": true});
    let (s, e) = trigger(&app, &token, body.clone()).await;
    crate::helpers::assert_error(s, &e, 400, "spend_confirmation_required");
    let (s, e) = trigger(&app, &token, json!({"mode": "run", "scene_refs": ["sample:2"], "postprocess": {"bg_remove": true, "bg_remove_backends": ["removebg"]}})).await;
    crate::helpers::assert_error(s, &e, 400, "bg_remove_backend_not_configured");
    let mut confirmed = body;
    confirmed["confirm_spend"] = json!(true);
    let (s, b) = trigger(&app, &token, confirmed).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["run"]["status"], "done", "{b}");
    assert_eq!(b["plan"]["pass_calls"], 2, "{}", b["plan"]);
    assert_eq!(stub.calls(), 2, "one paid removal per candidate");
    let run_id: uuid::Uuid = b["run_id"].as_str().unwrap().parse().unwrap();
    let calls = pass_calls_of(&app, run_id, "bg_remove").await;
    assert_eq!(calls.len(), 2);
    assert!(
        calls
            .iter()
            .all(|c| c.status == "succeeded" && c.provider_code == "photoroom")
    );
    let costs = costs_of(&app, run_id).await;
    assert_eq!(costs.len(), 2);
    assert!(costs.iter().all(|c| c.total_cost_usd == 0.02));
    for c in b["jobs"][0]["candidates"].as_array().unwrap() {
        let fin: uuid::Uuid = c["final_asset_id"].as_str().unwrap().parse().unwrap();
        let asset = entities::assets::Entity::find_by_id(fin)
            .one(&app.db)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(asset.kind, "bg_removed");
        assert!(calls.iter().any(|call| call.result_asset_id == Some(fin)));
        // Derived from this candidate's output (the stub's identical
        // cut-outs are one asset with an edge from each output).
        let output: uuid::Uuid = c["output_asset_id"].as_str().unwrap().parse().unwrap();
        let link = entities::asset_links::Entity::find()
            .filter(entities::asset_links::Column::ChildAssetId.eq(fin))
            .filter(entities::asset_links::Column::ParentAssetId.eq(output))
            .one(&app.db)
            .await
            .unwrap();
        assert_eq!(link.map(|l| l.link_type).as_deref(), Some("derived_from"));
    }
}

#[actix_web::test]
async fn style_references_are_checked_stored_and_kept_with_the_run() {
    let app = TestApp::spawn().await;
    let token = project(&app).await;
    let (s, e) = trigger(
        &app,
        &token,
        json!({"mode": "run", "scene_refs": ["sample:1"], "style_refs": ["missing/ref.png"]}),
    )
    .await;
    crate::helpers::assert_error(s, &e, 400, "scene_not_found");
    let (s, b) = trigger(&app, &token, json!({"mode": "run", "scene_refs": ["sample:1@64x48"], "style_refs": ["sample:7@32x32"], "stage": "style", "candidates": 1, "wait": true})).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["run"]["status"], "done");
    let run_id: uuid::Uuid = b["run_id"].as_str().unwrap().parse().unwrap();
    let run = entities::runs::Entity::find_by_id(run_id)
        .one(&app.db)
        .await
        .unwrap()
        .unwrap();
    let ids = run.plan_json["style_ref_assets"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(ids.len(), 1);
    let reference = entities::assets::Entity::find_by_id(
        ids[0].as_str().unwrap().parse::<uuid::Uuid>().unwrap(),
    )
    .one(&app.db)
    .await
    .unwrap()
    .unwrap();
    assert_eq!(reference.kind, "reference");
    assert_eq!((reference.width, reference.height), (Some(32), Some(32)));
}

#[actix_web::test]
async fn a_failed_remote_removal_is_retried_and_only_success_is_paid() {
    let (stub, app) = with_photoroom(|s| s.engine.retry_base_ms = 10).await;
    let token = project(&app).await;
    // The first call meets a server error, the retry succeeds.
    stub.script([crate::bg_stub::Reply::Error {
        status: 503,
        code: "service_unavailable",
    }]);
    let pp = json!({"bg_remove": true, "bg_remove_backends": ["photoroom"]});
    let (s, b) = trigger(&app, &token, json!({"mode": "run", "confirm_spend": true, "scene_refs": ["sample:3@64x48"], "stage": "style", "candidates": 1, "postprocess": pp, "wait": true})).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["run"]["status"], "done", "{b}");
    let run_id: uuid::Uuid = b["run_id"].as_str().unwrap().parse().unwrap();
    let call = pass_calls_of(&app, run_id, "bg_remove").await.remove(0);
    assert_eq!(stub.calls(), 2, "one failure, one retry: {call:?}");
    assert_eq!((call.status.as_str(), call.attempt), ("succeeded", 2));
    let costs = costs_of(&app, run_id).await;
    assert_eq!(costs.len(), 1, "the failed attempt cost nothing");
    let fin = &b["jobs"][0]["candidates"][0]["final_asset_id"];
    assert_eq!(
        fin.as_str().map(str::to_string),
        call.result_asset_id.map(|id| id.to_string())
    );

    // A refusal that retrying cannot fix (no credits) is not retried: the
    // candidate goes on without a removed background.
    stub.script([crate::bg_stub::Reply::Error {
        status: 402,
        code: "insufficient_credits",
    }]);
    let (_, b) = trigger(&app, &token, json!({"mode": "run", "confirm_spend": true, "scene_refs": ["sample:4@64x48"], "stage": "style", "candidates": 1, "postprocess": pp, "wait": true})).await;
    assert_eq!(b["run"]["status"], "done", "{b}");
    assert_eq!(stub.calls(), 3, "not retried");
    let c = &b["jobs"][0]["candidates"][0];
    assert_eq!(c["final_asset_id"], c["output_asset_id"]);
    assert_eq!(
        c["meta_json"]["passes"][0]["skipped"],
        "no_backend_removed_a_background"
    );
}

#[actix_web::test]
async fn prompt_scenes_are_generated_from_their_description() {
    let app = TestApp::spawn().await;
    let token = project(&app).await;
    let (s, b) = trigger(&app, &token, json!({"mode": "run", "scene_refs": ["prompt:  a quiet harbour at dawn ", "sample:1@64x48"], "stage": "time", "candidates": 2, "wait": true})).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["run"]["status"], "done", "{b}");
    let jobs = b["jobs"].as_array().unwrap();
    let first = jobs
        .iter()
        .find(|j| j["job_key"] == "style_1_prompt")
        .unwrap();
    assert!(first["input_asset_id"].is_null());
    assert_eq!(first["meta_json"]["prompt_only"], true);
    assert_eq!(first["scene_ref"], "prompt:a quiet harbour at dawn");
    assert!(
        first["prompt_text"]
            .as_str()
            .unwrap()
            .starts_with("Scene: a quiet harbour at dawn.")
    );
    // The next stage works from the generated winner, knowing the scene too.
    let next = jobs
        .iter()
        .find(|j| j["parent_job_id"] == first["id"])
        .unwrap();
    assert_eq!(next["input_asset_id"], first["final_asset_id"]);
    assert!(
        next["prompt_text"]
            .as_str()
            .unwrap()
            .contains("a quiet harbour at dawn")
    );
    let out: uuid::Uuid = first["candidates"][0]["output_asset_id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let asset = entities::assets::Entity::find_by_id(out)
        .one(&app.db)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((asset.width, asset.height), (Some(512), Some(384)));
    // Nothing it was derived from.
    let parents = entities::asset_links::Entity::find()
        .filter(entities::asset_links::Column::ChildAssetId.eq(out))
        .filter(entities::asset_links::Column::LinkType.eq("derived_from"))
        .all(&app.db)
        .await
        .unwrap();
    assert!(parents.is_empty());

    for (body, code) in [
        (
            json!({"mode": "run", "scene_refs": ["prompt:   "]}),
            "invalid_scene",
        ),
        (
            json!({"mode": "run", "scene_refs": [format!("prompt:{}", "x".repeat(501))]}),
            "invalid_scene",
        ),
        (
            json!({"mode": "run", "scene_refs": ["sample:1"], "style_refs": ["prompt:ink"]}),
            "invalid_scene",
        ),
    ] {
        let (s, e) = trigger(&app, &token, body).await;
        crate::helpers::assert_error(s, &e, 400, code);
    }
}

/// An OpenAI stub and a service using it (key from a variable the test
/// runner always sets).
async fn with_openai() -> (crate::openai_stub::OpenAiStub, TestApp) {
    let stub = crate::openai_stub::OpenAiStub::start_with_key(env!("CARGO_MANIFEST_DIR")).await;
    let url = stub.base_url.clone();
    let app = TestApp::spawn_with(move |s| {
        s.providers.openai.enabled = true;
        s.providers.openai.base_url = url;
        s.providers.openai.api_key_env = "CARGO_MANIFEST_DIR".into();
    })
    .await;
    (stub, app)
}

#[actix_web::test]
async fn prompt_scenes_use_the_openai_generations_endpoint() {
    let (stub, app) = with_openai().await;
    let token = project(&app).await;
    let (s, b) = trigger(&app, &token, json!({"mode": "run", "provider": "openai", "confirm_spend": true, "scene_refs": ["prompt:a lighthouse in fog"], "stage": "time", "candidates": 1, "wait": true})).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["run"]["status"], "done", "{b}");
    // The first stage from the prompt alone, the second an edit of its winner.
    assert_eq!(stub.images_per_call(), vec![0, 1]);
}

#[actix_web::test]
async fn cut_outs_are_refined_by_a_provider_with_spend_safety() {
    let (stub, app) = with_openai().await;
    let token = project(&app).await;
    let pp = json!({"bg_remove": true, "bg_remove_refine": "openai"});
    let body = json!({"mode": "run", "scene_refs": ["sample:5@64x48"], "stage": "style", "candidates": 2, "postprocess": pp, "wait": true});
    // The refine step is paid (the run itself is on the free local provider).
    let (s, e) = trigger(&app, &token, body.clone()).await;
    crate::helpers::assert_error(s, &e, 400, "spend_confirmation_required");
    let (s, e) = trigger(&app, &token, json!({"mode": "run", "scene_refs": ["sample:5"], "postprocess": {"bg_remove": true, "bg_remove_refine": "midjourney"}})).await;
    crate::helpers::assert_error(s, &e, 400, "bg_remove_refine_not_configured");
    let mut confirmed = body;
    confirmed["confirm_spend"] = json!(true);
    let (s, b) = trigger(&app, &token, confirmed).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["run"]["status"], "done", "{b}");
    assert_eq!(b["plan"]["pass_calls"], 2);
    assert_eq!(
        stub.images_per_call(),
        vec![1, 1],
        "each cut-out sent alone, as an edit"
    );
    let run_id: uuid::Uuid = b["run_id"].as_str().unwrap().parse().unwrap();
    let calls = pass_calls_of(&app, run_id, "bg_refine").await;
    assert_eq!(calls.len(), 2);
    assert!(
        calls
            .iter()
            .all(|c| c.status == "succeeded" && c.provider_code == "openai")
    );
    let costs = costs_of(&app, run_id).await;
    assert_eq!(costs.len(), 2);
    for c in b["jobs"][0]["candidates"].as_array().unwrap() {
        let fin: uuid::Uuid = c["final_asset_id"].as_str().unwrap().parse().unwrap();
        let refined = entities::assets::Entity::find_by_id(fin)
            .one(&app.db)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(refined.kind, "bg_refined");
        // Refined from the local cut-out, which came from the output.
        let parent = entities::asset_links::Entity::find()
            .filter(entities::asset_links::Column::ChildAssetId.eq(fin))
            .filter(entities::asset_links::Column::LinkType.eq("derived_from"))
            .one(&app.db)
            .await
            .unwrap()
            .unwrap();
        let cutout = entities::assets::Entity::find_by_id(parent.parent_asset_id)
            .one(&app.db)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(cutout.kind, "bg_removed");
    }

    // The built-in provider refines for free (a matte clean-up): no cost, same lineage.
    let (_, free) = trigger(&app, &token, json!({"mode": "run", "scene_refs": ["sample:6@64x48"], "stage": "style", "candidates": 1, "postprocess": {"bg_remove": true, "bg_remove_refine": "local"}, "wait": true})).await;
    assert_eq!(free["run"]["status"], "done", "{free}");
    let fin: uuid::Uuid = free["jobs"][0]["candidates"][0]["final_asset_id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let refined = entities::assets::Entity::find_by_id(fin)
        .one(&app.db)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(refined.kind, "bg_refined");
    let run_id: uuid::Uuid = free["run_id"].as_str().unwrap().parse().unwrap();
    let costs = costs_of(&app, run_id).await;
    assert!(costs.is_empty());
}
