//! Crash safety and graceful shutdown of the real binary, on SQLite and on
//! PostgreSQL, with a loopback OpenAI stub that counts what it served per
//! idempotency key (what the provider would bill):
//! - a panicking job body is contained and retried;
//! - `kill -9` right after a paid result arrived (heavy passes on): nothing
//!   delivered is bought again, every delivered image is in the ledger;
//! - `kill -9` with calls in flight: those are settled as possibly billed,
//!   never sent again, and the run finishes;
//! - SIGTERM drains: no new call after it, calls in flight finish and are
//!   stored, unsent work is released and resumes at once after a restart;
//! - cancel right after a crash settles every reservation and job;
//! - several nodes: a live node adopts a dead one's runs within seconds, a
//!   cancel on one node stops work on another, and a node that wakes after
//!   losing its lease (SIGSTOP, SIGCONT) has its late writes refused.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter};
use serde_json::json;
use uuid::Uuid;

use crate::binary::{Deployment, Server, eventually};
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
    assert_eq!(app.get("/api/projects", &token).await.0, StatusCode::OK);
}

/// A deployment whose `openai` provider is `stub`.
pub(crate) async fn deployment(stub: &OpenAiStub, extra: &[(&str, &str)]) -> Deployment {
    deployment_on(crate::helpers::TestDb::create().await, stub, extra)
}

/// [`deployment`] on the database `db`.
pub(crate) fn deployment_on(
    db: crate::helpers::TestDb,
    stub: &OpenAiStub,
    extra: &[(&str, &str)],
) -> Deployment {
    let mut env = vec![
        ("ATELIER_PROVIDERS__OPENAI__ENABLED", "true"),
        (
            "ATELIER_PROVIDERS__OPENAI__BASE_URL",
            stub.base_url.as_str(),
        ),
        ("OPENAI_API_KEY", openai_stub::KEY),
        ("ATELIER_ENGINE__HEARTBEAT_MS", "200"),
        ("ATELIER_ENGINE__RETRY_BASE_MS", "5"),
        ("ATELIER_ENGINE__RETRY_MAX_MS", "20"),
    ];
    env.extend_from_slice(extra);
    Deployment::on(db, &env)
}

async fn trigger(
    server: &Server,
    client: &reqwest::Client,
    token: &str,
    body: serde_json::Value,
) -> Uuid {
    server.create_project(client, token, "Crash", "crash").await;
    let (s, b) = server
        .call(
            client,
            Method::POST,
            "/api/projects/crash/runs/trigger",
            Some(token),
            Some(body),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    b["run_id"].as_str().unwrap().parse().unwrap()
}

/// Waits until the run's calls are settled and its jobs closed (a cancel
/// settles both after the run's row flips), and gives its calls.
async fn settled(db: &DatabaseConnection, run_id: Uuid) -> Vec<entities::provider_calls::Model> {
    eventually(
        "every call settled and no job left open",
        Duration::from_secs(30),
        || async {
            let all = calls(db, run_id).await;
            let jobs = entities::run_jobs::Entity::find()
                .filter(entities::run_jobs::Column::RunId.eq(run_id))
                .all(db)
                .await
                .unwrap();
            let calls_done = all.iter().all(|c| c.status != "pending");
            let jobs_closed = jobs
                .iter()
                .all(|j| !["pending", "running", "blocked"].contains(&j.status.as_str()));
            (calls_done && jobs_closed).then_some(all)
        },
    )
    .await
}

/// How many `run.finished` events the run has.
async fn finished_events(db: &DatabaseConnection, run_id: Uuid) -> usize {
    entities::run_events::Entity::find()
        .filter(entities::run_events::Column::RunId.eq(run_id))
        .filter(entities::run_events::Column::EventType.eq("run.finished"))
        .all(db)
        .await
        .unwrap()
        .len()
}

async fn calls(db: &DatabaseConnection, run_id: Uuid) -> Vec<entities::provider_calls::Model> {
    entities::provider_calls::Entity::find()
        .filter(entities::provider_calls::Column::RunId.eq(run_id))
        .all(db)
        .await
        .unwrap()
}

async fn finished(db: &DatabaseConnection, run_id: Uuid, limit: Duration) -> entities::runs::Model {
    eventually("the run to finish", limit, || async {
        let run = entities::runs::Entity::find_by_id(run_id)
            .one(db)
            .await
            .unwrap()
            .unwrap();
        ["done", "failed", "partial", "canceled"]
            .contains(&run.status.as_str())
            .then_some(run)
    })
    .await
}

/// Every image the stub served is in the ledger (billed, or possibly billed
/// for an answer that was lost), and none was served twice.
async fn every_served_image_is_accounted_for(
    db: &DatabaseConnection,
    stub: &OpenAiStub,
    run_id: Uuid,
) {
    let calls = calls(db, run_id).await;
    let costs = entities::cost_events::Entity::find()
        .filter(entities::cost_events::Column::RunId.eq(run_id))
        .all(db)
        .await
        .unwrap();
    for (key, n) in stub.images_served() {
        assert_eq!(n, 1, "{key} was bought {n} times");
        let call = calls
            .iter()
            .find(|c| c.idempotency_key == key)
            .unwrap_or_else(|| panic!("{key}: served without a record"));
        assert!(
            ["succeeded", "unknown"].contains(&call.status.as_str()),
            "{key}: served, but the call is {}",
            call.status
        );
        let events = costs
            .iter()
            .filter(|c| c.provider_call_id == Some(call.id))
            .count();
        assert_eq!(events, 1, "{key}: one ledger row per served image");
    }
    // Nothing is left in flight.
    assert!(calls.iter().all(|c| c.status != "pending"), "{calls:#?}");
}

/// A run of one scene whose candidates are made one at a time, each output
/// big enough that its passes take a while after it is delivered.
async fn heavy_passes_run(stub: &OpenAiStub) -> (Deployment, Server, String, Uuid) {
    stub.set_output_size(768, 1152);
    let mut deploy = deployment(
        stub,
        &[
            ("ATELIER_ENGINE__MAX_JOBS_PER_RUN", "1"),
            ("ATELIER_ENGINE__PROVIDER_CONCURRENCY", "1"),
        ],
    )
    .await;
    let client = deploy.client.clone();
    let first = deploy.start().await;
    let token = first.bootstrap(&client).await;
    let run_id = trigger(&first, &client, &token, json!({
        "mode": "run", "provider": "openai", "confirm_spend": true,
        "scene_refs": ["sample:1"], "stage": "style", "candidates": 3,
        "postprocess": {"bg_remove": true, "upscale": true, "upscale_factor": 2, "color": true, "color_profile": "cinematic_warm"},
    }))
    .await;
    (deploy, first, token, run_id)
}

#[actix_web::test]
async fn a_paid_result_is_durable_before_its_passes_run() {
    let stub = OpenAiStub::start().await;
    // Each call takes long enough that the next result cannot also arrive
    // between the first one's record and the kill: the second server has
    // results of its own to deliver (and to measure below).
    stub.set_latency(Duration::from_millis(500));
    let (mut deploy, mut first, token, run_id) = heavy_passes_run(&stub).await;
    let db = deploy.connect().await;
    // The first result is on record as paid and stored ...
    let stored = eventually("a stored paid result", Duration::from_secs(60), || async {
        calls(&db, run_id)
            .await
            .into_iter()
            .find(|c| c.status == "succeeded")
    })
    .await;
    // ... while its candidate (committed after the passes) is not: the worst
    // point to lose the process.
    first.kill9();
    let candidates = entities::run_candidates::Entity::find()
        .filter(entities::run_candidates::Column::RunId.eq(run_id))
        .all(&db)
        .await
        .unwrap();
    assert!(
        candidates.iter().all(|c| i64::from(c.candidate_index)
            != stored.request_json["candidate_index"].as_i64().unwrap()),
        "the result was durable before its passes finished: {candidates:#?}"
    );
    let asset = entities::assets::Entity::find_by_id(stored.result_asset_id.unwrap())
        .one(&db)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        stored.response_json["sha256"].as_str(),
        asset.sha256.as_deref()
    );

    let second = deploy.start().await;
    let run = finished(&db, run_id, Duration::from_secs(120)).await;
    assert!(
        ["done", "partial", "failed"].contains(&run.status.as_str()),
        "{run:?}"
    );
    every_served_image_is_accounted_for(&db, &stub, run_id).await;
    let after = calls(&db, run_id).await;
    let reused = after.iter().find(|c| c.id == stored.id).unwrap();
    assert_eq!(reused.status, "succeeded");
    assert_eq!(reused.result_asset_id, stored.result_asset_id);
    assert_eq!(
        stub.calls().get(&stored.idempotency_key),
        Some(&1),
        "not bought again"
    );
    // Its candidate was decided from the stored file after the restart.
    let decided = entities::run_candidates::Entity::find()
        .filter(entities::run_candidates::Column::RunId.eq(run_id))
        .filter(
            entities::run_candidates::Column::CandidateIndex
                .eq(stored.request_json["candidate_index"].as_i64().unwrap() as i32),
        )
        .one(&db)
        .await
        .unwrap()
        .expect("candidate decided after the restart");
    assert_eq!(decided.output_asset_id, stored.result_asset_id);
    // The window a delivered result is exposed, measured by the second
    // server for its own deliveries.
    let (s, metrics) = second
        .call(&deploy.client, Method::GET, "/metrics", Some(&token), None)
        .await;
    assert_eq!(s, StatusCode::OK);
    let text = metrics["raw"].as_str().unwrap();
    assert!(
        text.lines()
            .any(|l| l.starts_with("atelier_delivery_durable_seconds_count{provider=\"openai\"}")),
        "no durable-window histogram: {text}"
    );
}

#[actix_web::test]
async fn kill_right_after_a_paid_result_arrives_buys_nothing_again() {
    let stub = OpenAiStub::start().await;
    let (mut deploy, mut first, _token, run_id) = heavy_passes_run(&stub).await;
    // The worst moment: the provider has just delivered (and billed) an
    // image; the service has it in hand and is making it durable.
    stub.wait_served(1).await;
    first.kill9();
    let db = deploy.connect().await;
    let before: Vec<_> = calls(&db, run_id)
        .await
        .into_iter()
        .filter(|c| c.status == "succeeded")
        .collect();
    let _second = deploy.start().await;
    let run = finished(&db, run_id, Duration::from_secs(120)).await;
    assert!(
        ["done", "partial", "failed"].contains(&run.status.as_str()),
        "{run:?}"
    );
    // Whether the kill came before or after the durable write: nothing was
    // bought twice, and the image is in the ledger (billed, or possibly
    // billed when its answer died with the process).
    every_served_image_is_accounted_for(&db, &stub, run_id).await;
    let after = calls(&db, run_id).await;
    for b in &before {
        let a = after.iter().find(|c| c.id == b.id).unwrap();
        assert_eq!(
            (a.status.as_str(), a.result_asset_id),
            ("succeeded", b.result_asset_id)
        );
        assert_eq!(
            a.sent_attempts, b.sent_attempts,
            "{} was sent again",
            b.idempotency_key
        );
    }
}

#[actix_web::test]
async fn kill_with_calls_in_flight_settles_them_and_never_sends_them_again() {
    let stub = OpenAiStub::start().await;
    stub.set_latency(Duration::from_millis(800));
    let mut deploy = deployment(
        &stub,
        &[
            ("ATELIER_ENGINE__MAX_JOBS_PER_RUN", "2"),
            ("ATELIER_ENGINE__PROVIDER_CONCURRENCY", "2"),
        ],
    )
    .await;
    let client = deploy.client.clone();
    let mut first = deploy.start().await;
    let token = first.bootstrap(&client).await;
    let run_id = trigger(
        &first,
        &client,
        &token,
        json!({
            "mode": "run", "provider": "openai", "confirm_spend": true,
            "scene_refs": ["sample:1", "sample:2", "sample:3"], "stage": "time", "candidates": 2,
        }),
    )
    .await;
    // Some results stored, and exactly the governor's two calls in flight.
    eventually(
        "two stored results and two calls in flight",
        Duration::from_secs(60),
        || async {
            let served = stub.served_total();
            let received: u32 = stub.calls().values().sum();
            (served >= 2 && received == served + 2).then_some(())
        },
    )
    .await;
    let in_flight: Vec<String> = {
        let served = stub.images_served();
        stub.calls()
            .into_keys()
            .filter(|k| !served.contains_key(k))
            .collect()
    };
    first.kill9();
    assert_eq!(
        in_flight.len(),
        2,
        "the provider concurrency bounds what is in flight"
    );

    let _second = deploy.start().await;
    let db = deploy.connect().await;
    let run = finished(&db, run_id, Duration::from_secs(120)).await;
    assert!(
        ["done", "partial"].contains(&run.status.as_str()),
        "{run:?}"
    );
    let all = calls(&db, run_id).await;
    let received = stub.calls();
    for key in &in_flight {
        let call = all.iter().find(|c| &c.idempotency_key == key).unwrap();
        // Sent before the kill, answer never read: possibly billed, and by
        // the default policy (OpenAI honours no idempotency key) not sent again.
        assert_eq!(call.status, "unknown", "{key}: {call:?}");
        assert!(call.possibly_billed_usd > 0.0);
        assert_eq!(received.get(key), Some(&1), "{key} was sent again");
    }
    for (key, n) in &received {
        assert_eq!(*n, 1, "{key} received {n} times");
    }
    every_served_image_is_accounted_for(&db, &stub, run_id).await;
    // The answers the dead server never made durable (at least the two in
    // flight when it was killed) are each in the ledger as possibly billed.
    let possibly = entities::cost_events::Entity::find()
        .filter(entities::cost_events::Column::RunId.eq(run_id))
        .filter(entities::cost_events::Column::Billing.eq("possibly_billed"))
        .all(&db)
        .await
        .unwrap();
    let unknown = all.iter().filter(|c| c.status == "unknown").count();
    assert_eq!(possibly.len(), unknown);
    assert!(unknown >= in_flight.len());
}

#[actix_web::test]
async fn sigterm_drains_finishes_calls_in_flight_and_resumes_at_once() {
    let stub = OpenAiStub::start().await;
    stub.set_latency(Duration::from_millis(1500));
    let mut deploy = deployment(
        &stub,
        &[
            ("ATELIER_ENGINE__MAX_JOBS_PER_RUN", "1"),
            ("ATELIER_ENGINE__PROVIDER_CONCURRENCY", "1"),
            // One attempt per call: a reserved attempt that was never sent must
            // not use it up.
            ("ATELIER_ENGINE__PROVIDER_MAX_ATTEMPTS", "1"),
            // Leases far longer than the test: resuming must not wait for them.
            ("ATELIER_ENGINE__LEASE_SECONDS", "120"),
            ("ATELIER_HTTP__SHUTDOWN_TIMEOUT_SECONDS", "10"),
        ],
    )
    .await;
    let client = deploy.client.clone();
    let mut first = deploy.start().await;
    let token = first.bootstrap(&client).await;
    let run_id = trigger(
        &first,
        &client,
        &token,
        json!({
            "mode": "run", "provider": "openai", "confirm_spend": true,
            "scene_refs": ["sample:1"], "stage": "style", "candidates": 3,
        }),
    )
    .await;
    eventually("a call in flight", Duration::from_secs(30), || async {
        (stub.calls().len() == 1 && stub.served_total() == 0).then_some(())
    })
    .await;
    let (clean, took) = first.terminate(Duration::from_secs(15));
    assert!(
        clean,
        "serve did not exit cleanly after SIGTERM: {}",
        deploy.logs()
    );
    // It waited for the call in flight (1.5 s), not longer than the window.
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_secs(10),
        "{took:?}"
    );
    assert_eq!(stub.calls().len(), 1, "no call was started after SIGTERM");
    assert_eq!(stub.served_total(), 1, "the call in flight finished");
    let db = deploy.connect().await;
    let drained = calls(&db, run_id).await;
    let stored: Vec<_> = drained.iter().filter(|c| c.status == "succeeded").collect();
    assert_eq!(
        stored.len(),
        1,
        "its result was stored before the exit: {drained:#?}"
    );
    for c in drained.iter().filter(|c| c.status != "succeeded") {
        assert_eq!(c.sent_attempts, 0, "{c:?}");
        assert!(c.sent_at.is_none());
    }
    let jobs = entities::run_jobs::Entity::find()
        .filter(entities::run_jobs::Column::RunId.eq(run_id))
        .all(&db)
        .await
        .unwrap();
    assert!(
        jobs.iter()
            .all(|j| j.lease_owner.is_none() && j.status == "pending"),
        "leases released: {jobs:#?}"
    );
    assert!(
        jobs.iter().all(|j| j.attempt == 0),
        "the interrupted attempt was not used up: {jobs:#?}"
    );
    assert!(deploy.logs().contains("engine drained"));

    let started = std::time::Instant::now();
    let _second = deploy.start().await;
    let run = finished(&db, run_id, Duration::from_secs(60)).await;
    assert_eq!(run.status, "done", "{run:?}");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "resumed without waiting for leases"
    );
    // The delivered result was reused; the unsent ones were sent once each.
    assert!(stub.calls().values().all(|n| *n == 1), "{:?}", stub.calls());
    assert_eq!(stub.served_total(), 3);
    every_served_image_is_accounted_for(&db, &stub, run_id).await;
}

/// What the crash-and-cancel tests start from: a paid run with one call in
/// flight (1 s latency, one call at a time) and others reserved, then
/// `kill -9`. The dead server is kept for its log.
struct Crashed {
    stub: OpenAiStub,
    deploy: Deployment,
    first: Server,
    token: String,
    run_id: Uuid,
    db: DatabaseConnection,
}

async fn crash_with_calls_in_flight() -> Crashed {
    let stub = OpenAiStub::start().await;
    stub.set_latency(Duration::from_millis(1000));
    let mut deploy = deployment(
        &stub,
        &[
            ("ATELIER_ENGINE__MAX_JOBS_PER_RUN", "2"),
            ("ATELIER_ENGINE__PROVIDER_CONCURRENCY", "1"),
            ("ATELIER_ENGINE__LEASE_SECONDS", "120"),
        ],
    )
    .await;
    let client = deploy.client.clone();
    let mut first = deploy.start().await;
    let token = first.bootstrap(&client).await;
    let run_id = trigger(
        &first,
        &client,
        &token,
        json!({
            "mode": "run", "provider": "openai", "confirm_spend": true,
            "scene_refs": ["sample:1", "sample:2"], "stage": "time", "candidates": 2,
        }),
    )
    .await;
    let db = deploy.connect().await;
    // One call in flight, others reserved and waiting for the provider.
    eventually(
        "one call in flight and others reserved",
        Duration::from_secs(30),
        || async {
            let pending = calls(&db, run_id)
                .await
                .into_iter()
                .filter(|c| c.status == "pending" && c.attempt > 0)
                .count();
            (stub.calls().len() == 1 && pending >= 2).then_some(())
        },
    )
    .await;
    first.kill9();
    Crashed {
        stub,
        deploy,
        first,
        token,
        run_id,
        db,
    }
}

#[actix_web::test]
async fn cancel_right_after_a_crash_settles_every_reservation_and_job() {
    let Crashed {
        stub: _stub,
        mut deploy,
        first: _first,
        token,
        run_id,
        db,
    } = crash_with_calls_in_flight().await;
    let client = deploy.client.clone();
    let second = deploy.start().await;
    let (s, b) = second
        .call(
            &client,
            Method::POST,
            &format!("/api/projects/crash/runs/{run_id}/cancel"),
            Some(&token),
            Some(json!({})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let run = finished(&db, run_id, Duration::from_secs(30)).await;
    assert_eq!(run.status, "canceled");
    let settled = settled(&db, run_id).await;
    // The call in flight at the kill is possibly billed; reserved-but-unsent
    // ones are released.
    let in_flight: Vec<_> = settled.iter().filter(|c| c.status == "unknown").collect();
    assert_eq!(in_flight.len(), 1, "{settled:#?}");
    let lost = in_flight[0].possibly_billed_usd;
    // The restarted engine may resume the run and complete a call before
    // the cancel lands: that is real spend too.
    let paid: f64 = settled
        .iter()
        .filter(|c| c.status == "succeeded")
        .filter_map(|c| c.actual_cost_usd)
        .sum();
    // A later run fits a budget that counts only those (not the released
    // reservations).
    let bound = in_flight[0].reserved_cost_usd;
    let cap = lost + paid + 2.5 * bound;
    let (s, b) = second
        .call(&client, Method::POST, "/api/projects/crash/runs/trigger", Some(&token), Some(json!({
            "mode": "run", "provider": "openai", "confirm_spend": true, "scene_refs": ["sample:3"],
            "stage": "style", "candidates": 2, "manifest": {"policy": {"project_budget_usd": cap}}, "wait": true,
        })))
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["run"]["status"], "done", "{b}");
}

/// The cancel committed, then the process died before its workers settled
/// (here: the cancel's own writes, made while the service was down). The
/// next start drives the canceled run only to settle what it left: the call
/// in flight is possibly billed, the reserved ones released, every job
/// closed, nothing sent again, and the run is told finished once.
#[actix_web::test]
async fn a_cancel_that_landed_just_before_a_crash_is_settled_at_the_next_start() {
    let Crashed {
        stub,
        mut deploy,
        first: _first,
        token: _,
        run_id,
        db,
    } = crash_with_calls_in_flight().await;
    // What `POST .../cancel` writes: waiting jobs and the run canceled; the
    // jobs the dead workers held are still `running` under their lease.
    use sea_orm::sea_query::Expr;
    entities::run_jobs::Entity::update_many()
        .col_expr(entities::run_jobs::Column::Status, Expr::value("canceled"))
        .filter(entities::run_jobs::Column::RunId.eq(run_id))
        .filter(entities::run_jobs::Column::Status.is_in(["pending", "blocked"]))
        .exec(&db)
        .await
        .unwrap();
    entities::runs::Entity::update_many()
        .col_expr(entities::runs::Column::Status, Expr::value("canceled"))
        .filter(entities::runs::Column::Id.eq(run_id))
        .exec(&db)
        .await
        .unwrap();
    let _second = deploy.start().await;
    let settled = settled(&db, run_id).await;
    let unknown: Vec<_> = settled.iter().filter(|c| c.status == "unknown").collect();
    assert_eq!(unknown.len(), 1, "{settled:#?}");
    assert!(unknown[0].possibly_billed_usd > 0.0, "{settled:#?}");
    assert!(
        settled
            .iter()
            .filter(|c| c.status != "unknown")
            .all(|c| c.status == "failed" && c.actual_cost_usd.is_none()),
        "{settled:#?}"
    );
    assert_eq!(
        stub.calls().values().sum::<u32>(),
        1,
        "nothing is sent after a cancel"
    );
    eventually("the run told finished", Duration::from_secs(10), || async {
        (finished_events(&db, run_id).await >= 1).then_some(())
    })
    .await;
    assert_eq!(finished_events(&db, run_id).await, 1);
    let run = entities::runs::Entity::find_by_id(run_id)
        .one(&db)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(run.status, "canceled");
}

/// A node that died left a job of a run running under its lease; on the
/// node that takes over, the run waits in its project's queue behind
/// another. Canceling it there settles that job and its call once the dead
/// node's lease runs out, without waiting for the run ahead of it.
#[actix_web::test]
async fn canceling_a_queued_run_settles_the_job_a_dead_node_held() {
    let stub = OpenAiStub::start().await;
    stub.set_latency(Duration::from_millis(2000));
    let mut deploy = deployment(
        &stub,
        &[
            ("ATELIER_ENGINE__MAX_JOBS_PER_RUN", "1"),
            ("ATELIER_ENGINE__MAX_RUNS_PER_PROJECT", "2"),
            ("ATELIER_ENGINE__PROVIDER_CONCURRENCY", "2"),
            ("ATELIER_ENGINE__LEASE_SECONDS", "3"),
            ("ATELIER_ENGINE__NODE_TIMEOUT_MS", "1000"),
        ],
    )
    .await;
    let client = deploy.client.clone();
    let mut first = deploy.start_node("node-a").await;
    let token = first.bootstrap(&client).await;
    // The run ahead: one job in flight, another waiting for it.
    let ahead = trigger(
        &first,
        &client,
        &token,
        json!({
            "mode": "run", "provider": "openai", "confirm_spend": true,
            "scene_refs": ["sample:1", "sample:2"], "stage": "style", "candidates": 1,
        }),
    )
    .await;
    let (s, b) = first
        .call(
            &client,
            Method::POST,
            "/api/projects/crash/runs/trigger",
            Some(&token),
            Some(json!({
                "mode": "run", "provider": "openai", "confirm_spend": true,
                "scene_refs": ["sample:3"], "stage": "style", "candidates": 1,
            })),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let behind: Uuid = b["run_id"].as_str().unwrap().parse().unwrap();
    let db = deploy.connect().await;
    eventually(
        "both runs with a call in flight",
        Duration::from_secs(30),
        || async {
            let sent = |calls: Vec<entities::provider_calls::Model>| {
                calls.iter().filter(|c| c.sent_at.is_some()).count()
            };
            (stub.calls().len() == 2
                && sent(calls(&db, ahead).await) == 1
                && sent(calls(&db, behind).await) == 1)
                .then_some(())
        },
    )
    .await;
    first.kill9();
    // Another node, with room for one run per project: the later run waits.
    deploy
        .env
        .push(("ATELIER_ENGINE__MAX_RUNS_PER_PROJECT".into(), "1".into()));
    let second = deploy.start_node("node-b").await;
    let (s, b) = second
        .call(
            &client,
            Method::POST,
            &format!("/api/projects/crash/runs/{behind}/cancel"),
            Some(&token),
            Some(json!({})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let settled = settled(&db, behind).await;
    assert_eq!(settled.len(), 1, "{settled:#?}");
    assert_eq!(settled[0].status, "unknown", "{settled:#?}");
    assert!(settled[0].possibly_billed_usd > 0.0);
    assert_eq!(
        stub.calls().get(&settled[0].idempotency_key),
        Some(&1),
        "the canceled run's call is not sent again"
    );
    eventually(
        "the canceled run told finished",
        Duration::from_secs(10),
        || async { (finished_events(&db, behind).await == 1).then_some(()) },
    )
    .await;
    // The run ahead is untouched by it and finishes.
    let run = finished(&db, ahead, Duration::from_secs(30)).await;
    assert_ne!(run.status, "canceled");
    assert_eq!(finished_events(&db, behind).await, 1);
}

/// `kill -9` while a paid speech call is in flight: at the next start the
/// request ends failed with its call possibly billed, and nothing is sent
/// again.
#[actix_web::test]
async fn a_voice_call_in_flight_at_a_crash_is_possibly_billed_and_never_sent_again() {
    use stubs::audio::{AudioStub, KEY, Reply};
    let stub = AudioStub::start().await;
    stub.script([Reply::Slow(Duration::from_secs(3))]);
    let mut deploy = Deployment::new(&[
        ("ATELIER_PROVIDERS__OPENAI_VOICE__ENABLED", "true"),
        (
            "ATELIER_PROVIDERS__OPENAI_VOICE__BASE_URL",
            stub.base_url.as_str(),
        ),
        ("OPENAI_API_KEY", KEY),
    ])
    .await;
    let client = deploy.client.clone();
    let mut first = deploy.start().await;
    let token = first.bootstrap(&client).await;
    first
        .create_project(&client, &token, "Crash", "crash")
        .await;
    let (s, b) = first
        .call(
            &client,
            Method::POST,
            "/api/projects/crash/voice/speech",
            Some(&token),
            Some(json!({"text": "Lost in transit.", "confirm_spend": true})),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{b}");
    let id: Uuid = b["voice_request"]["id"].as_str().unwrap().parse().unwrap();
    let db = deploy.connect().await;
    let in_flight = || async {
        entities::provider_calls::Entity::find()
            .filter(entities::provider_calls::Column::Operation.eq("speech"))
            .one(&db)
            .await
            .unwrap()
    };
    // Sent, and arrived at the provider (which answers after 3 s).
    eventually(
        "the speech call in flight",
        Duration::from_secs(30),
        || async {
            in_flight()
                .await
                .filter(|c| c.sent_at.is_some() && stub.requests().len() == 1)
                .map(|_| ())
        },
    )
    .await;
    first.kill9();
    let _second = deploy.start().await;
    let request = eventually("the request settled", Duration::from_secs(30), || async {
        entities::voice_requests::Entity::find_by_id(id)
            .one(&db)
            .await
            .unwrap()
            .filter(|r| r.status == "failed")
    })
    .await;
    assert_eq!(
        request.meta_json["error_code"], "provider_outcome_unknown",
        "{request:?}"
    );
    let call = in_flight().await.unwrap();
    assert_eq!(call.status, "unknown", "{call:?}");
    assert!(call.possibly_billed_usd > 0.0, "{call:?}");
    let ledger = entities::cost_events::Entity::find()
        .filter(entities::cost_events::Column::ProviderCallId.eq(call.id))
        .all(&db)
        .await
        .unwrap();
    assert_eq!(ledger.len(), 1, "{ledger:?}");
    assert_eq!(ledger[0].billing, "possibly_billed");
    // Give a wrongly resumed request time to call again: it must not.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(stub.requests().len(), 1, "sent again after the crash");
}

/// Two nodes on one database; the node driving a run is killed with a call
/// in flight. The other sees it dead after `node_timeout`, adopts the run,
/// takes back its job leases at once (the lease itself runs for two more
/// minutes) and finishes the run: the call in flight is possibly billed and
/// never sent again, nothing paid is bought twice.
#[actix_web::test]
async fn a_live_node_adopts_the_runs_of_a_dead_one_within_seconds() {
    let stub = OpenAiStub::start().await;
    stub.set_latency(Duration::from_millis(800));
    let mut deploy = deployment(
        &stub,
        &[
            ("ATELIER_ENGINE__MAX_JOBS_PER_RUN", "2"),
            ("ATELIER_ENGINE__PROVIDER_CONCURRENCY", "1"),
            ("ATELIER_ENGINE__LEASE_SECONDS", "120"),
            ("ATELIER_ENGINE__NODE_TIMEOUT_MS", "1000"),
        ],
    )
    .await;
    let mut a = deploy.start_node("node-a").await;
    let _b = deploy.start_node("node-b").await;
    let client = deploy.client.clone();
    let token = a.bootstrap(&client).await;
    let run_id = trigger(
        &a,
        &client,
        &token,
        json!({
            "mode": "run", "provider": "openai", "confirm_spend": true,
            "scene_refs": ["sample:1", "sample:2", "sample:3"], "stage": "style", "candidates": 1,
        }),
    )
    .await;
    let db = deploy.connect().await;
    eventually(
        "a call in flight on node-a",
        Duration::from_secs(30),
        || async {
            let sent = calls(&db, run_id)
                .await
                .into_iter()
                .filter(|c| c.status == "pending" && c.sent_at.is_some())
                .count();
            (stub.calls().len() == 1 && sent == 1).then_some(())
        },
    )
    .await;
    a.kill9();
    let killed = std::time::Instant::now();
    let run = finished(&db, run_id, Duration::from_secs(40)).await;
    // Well before the dead node's leases (120 s) would have run out.
    assert!(killed.elapsed() < Duration::from_secs(40));
    assert!(
        ["done", "partial"].contains(&run.status.as_str()),
        "{run:?}"
    );
    let owner = entities::run_owners::Entity::find_by_id(run_id)
        .one(&db)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(owner.node_id, "node-b");
    let settled = settled(&db, run_id).await;
    let unknown: Vec<_> = settled.iter().filter(|c| c.status == "unknown").collect();
    assert_eq!(unknown.len(), 1, "{settled:#?}");
    // Every key was served at most once: nothing paid was bought again.
    assert!(
        stub.images_served().values().all(|n| *n <= 1),
        "{:?}",
        stub.images_served()
    );
    let done = settled.iter().filter(|c| c.status == "succeeded").count();
    assert_eq!(
        done, 2,
        "the two other scenes were generated by node-b: {settled:#?}"
    );
}

/// A cancel received by one node stops a run another node drives: that
/// node's workers see it before their next provider call, so at most the
/// calls already on their way are sent after it, and the run ends canceled
/// with every reservation settled.
#[actix_web::test]
async fn a_cancel_on_one_node_stops_the_run_another_node_drives() {
    let stub = OpenAiStub::start().await;
    stub.set_latency(Duration::from_millis(400));
    let mut deploy = deployment(
        &stub,
        &[
            ("ATELIER_ENGINE__MAX_JOBS_PER_RUN", "2"),
            ("ATELIER_ENGINE__PROVIDER_CONCURRENCY", "1"),
        ],
    )
    .await;
    let a = deploy.start_node("node-a").await;
    let b = deploy.start_node("node-b").await;
    let client = deploy.client.clone();
    let token = a.bootstrap(&client).await;
    let scenes: Vec<String> = (1..=10).map(|i| format!("sample:{i}")).collect();
    // Submitted to node-b: node-b drives it.
    let run_id = trigger(
        &b,
        &client,
        &token,
        json!({
            "mode": "run", "provider": "openai", "confirm_spend": true,
            "scene_refs": scenes, "stage": "style", "candidates": 1,
        }),
    )
    .await;
    eventually(
        "node-b calling the provider",
        Duration::from_secs(30),
        || async { (stub.calls().len() >= 2).then_some(()) },
    )
    .await;
    let (s, body) = a
        .call(
            &client,
            Method::POST,
            &format!("/api/projects/crash/runs/{run_id}/cancel"),
            Some(&token),
            Some(json!({})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let sent_at_cancel = stub.calls().values().sum::<u32>();
    let db = deploy.connect().await;
    let run = finished(&db, run_id, Duration::from_secs(30)).await;
    assert_eq!(run.status, "canceled");
    let settled = settled(&db, run_id).await;
    // Only calls already on their way (one per job slot) went out after it.
    let sent = stub.calls().values().sum::<u32>();
    assert!(
        sent <= sent_at_cancel + 2,
        "{sent} calls sent, {sent_at_cancel} at the cancel: {settled:#?}"
    );
    assert!(sent < 10, "the whole run was sent: {settled:#?}");
    assert!(
        settled.iter().all(|c| c.status != "pending"),
        "{settled:#?}"
    );
}

/// The zombie writer: a node frozen (SIGSTOP) with a paid call in flight,
/// for longer than the cluster's node timeout, is declared dead; another
/// node adopts its run, reclaims the job (its lease epoch rises) and
/// finishes the run. When the frozen node wakes (SIGCONT) and its call's
/// answer arrives, every write it tries is refused by the job's lease
/// epoch: no asset, no candidate, the call's record stays as the new owner
/// settled it — and nothing is bought again.
#[actix_web::test]
async fn a_node_that_wakes_after_losing_its_lease_writes_nothing() {
    let stub = OpenAiStub::start().await;
    stub.set_latency(Duration::from_millis(2500));
    let mut deploy = deployment(
        &stub,
        &[
            ("ATELIER_ENGINE__HEARTBEAT_MS", "400"),
            ("ATELIER_ENGINE__LEASE_SECONDS", "120"),
            ("ATELIER_ENGINE__NODE_TIMEOUT_MS", "1200"),
        ],
    )
    .await;
    let a = deploy.start_node("node-a").await;
    let _b = deploy.start_node("node-b").await;
    let client = deploy.client.clone();
    let token = a.bootstrap(&client).await;
    let run_id = trigger(
        &a,
        &client,
        &token,
        json!({
            "mode": "run", "provider": "openai", "confirm_spend": true,
            "scene_refs": ["sample:1"], "stage": "style", "candidates": 1,
        }),
    )
    .await;
    let db = deploy.connect().await;
    let (job, call) = eventually(
        "a paid call in flight on node-a",
        Duration::from_secs(30),
        || async {
            let call = calls(&db, run_id)
                .await
                .into_iter()
                .find(|c| c.status == "pending" && c.sent_at.is_some())?;
            let job = entities::run_jobs::Entity::find_by_id(call.job_id?)
                .one(&db)
                .await
                .unwrap()?;
            (stub.calls().len() == 1).then_some((job, call))
        },
    )
    .await;
    assert_eq!(job.lease_owner.as_deref(), Some("node-a"));
    a.signal("STOP");
    // node-b declares node-a dead, adopts the run, reclaims the job and
    // finishes the run (the call's outcome is unknown: not sent again).
    let run = finished(&db, run_id, Duration::from_secs(30)).await;
    a.signal("CONT");
    // node-a's worker ends (its answer arrived while it was frozen), then
    // its RunActor sees the run is node-b's and stops driving it.
    eventually(
        "node-a to stop driving the run",
        Duration::from_secs(20),
        || async {
            deploy
                .logs()
                .contains("another node drives this run now")
                .then_some(())
        },
    )
    .await;
    let owner = entities::run_owners::Entity::find_by_id(run_id)
        .one(&db)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(owner.node_id, "node-b");
    let job_now = entities::run_jobs::Entity::find_by_id(job.id)
        .one(&db)
        .await
        .unwrap()
        .unwrap();
    assert!(job_now.lease_epoch > job.lease_epoch, "{job_now:?}");
    assert_eq!(job_now.status, "failed", "{job_now:?}");
    let call_now = entities::provider_calls::Entity::find_by_id(call.id)
        .one(&db)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(call_now.status, "unknown", "{call_now:?}");
    assert!(call_now.result_asset_id.is_none(), "{call_now:?}");
    let assets = entities::assets::Entity::find()
        .filter(entities::assets::Column::JobId.eq(job.id))
        .all(&db)
        .await
        .unwrap();
    assert!(
        assets.is_empty(),
        "node-a's late delivery was recorded: {assets:#?}"
    );
    let candidates = entities::run_candidates::Entity::find()
        .filter(entities::run_candidates::Column::JobId.eq(job.id))
        .all(&db)
        .await
        .unwrap();
    assert!(
        candidates.iter().all(|c| c.final_asset_id.is_none()),
        "{candidates:#?}"
    );
    // The run's outcome stands as node-b recorded it.
    let after = entities::runs::Entity::find_by_id(run_id)
        .one(&db)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(after.status, run.status);
    assert_eq!(finished_events(&db, run_id).await, 1);
    assert!(
        stub.images_served().values().all(|n| *n <= 1),
        "{:?}",
        stub.images_served()
    );
    assert!(
        deploy
            .logs()
            .contains("lease lost: a late write was refused"),
        "node-a tried no write after waking?"
    );
}
