//! The hot reads reuse what they rendered (project rows by slug, run and
//! asset lists, details, jobs, events, candidates). This node's writes show at
//! once whatever the window; other nodes' writes within `http.read_cache_ms`.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use sea_orm::{ConnectionTrait, Statement};
use serde_json::{Value, json};

use crate::helpers::TestApp;

async fn ok(app: &TestApp, path: &str, token: &str) -> Value {
    let (s, b) = app.get(path, token).await;
    assert_eq!(s, StatusCode::OK, "{path}: {b}");
    b
}

#[actix_web::test]
async fn this_nodes_writes_show_in_every_hot_read_at_once() {
    // A window far longer than the test: only invalidation can refresh.
    let app = TestApp::spawn_with(|s| s.http.read_cache_ms = 600_000).await;
    let token = app.bootstrap_token().await;
    app.create_project(&token, "Cached", "cached").await;
    let p = "/api/projects/cached";
    // Everything read (and kept) while the project is empty.
    let detail = ok(&app, p, &token).await;
    assert_eq!(detail["counts"], json!({"runs": 0, "jobs": 0, "assets": 0}));
    assert_eq!(ok(&app, &format!("{p}/runs"), &token).await["count"], 0);
    assert_eq!(ok(&app, &format!("{p}/assets"), &token).await["count"], 0);

    let (s, b) = app
        .post(
            &format!("{p}/runs/trigger"),
            &token,
            json!({"mode": "run", "scene_refs": ["sample:1@64x48"], "stage": "time", "candidates": 2}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let run_id = b["run_id"].as_str().unwrap().to_string();
    let run_path = format!("{p}/runs/{run_id}");
    // Polled while the engine works: each answer must follow its writes.
    let started = Instant::now();
    let run = loop {
        let run = ok(&app, &run_path, &token).await;
        if run["run"]["status"] == "done" {
            break run;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "{run}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let jobs = run["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 2);
    assert!(jobs.iter().all(|j| j["status"] == "done"), "{run}");

    // The run log is stored just after the run is marked done.
    let started = Instant::now();
    while ok(&app, &format!("{p}/assets?kind=run_log"), &token).await["count"] != 1 {
        assert!(started.elapsed() < Duration::from_secs(30), "no run log");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let detail = ok(&app, p, &token).await;
    assert_eq!(detail["counts"]["runs"], 1);
    assert_eq!(detail["counts"]["jobs"], 2);
    let assets = ok(&app, &format!("{p}/assets"), &token).await;
    assert!(assets["count"].as_u64().unwrap() >= 5, "{assets}");
    assert_eq!(detail["counts"]["assets"], assets["count"]);
    let runs = ok(&app, &format!("{p}/runs"), &token).await;
    assert_eq!(runs["count"], 1);
    assert_eq!(runs["runs"][0]["status"], "done");
    let listed = ok(&app, &format!("{run_path}/jobs"), &token).await;
    assert_eq!(listed["jobs"], run["jobs"]);
    let events = ok(&app, &format!("{run_path}/events"), &token).await;
    assert!(
        events["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["event_type"] == "run.finished"),
        "{events}"
    );
    let job_id = jobs[1]["id"].as_str().unwrap();
    let candidates = ok(
        &app,
        &format!("{run_path}/jobs/{job_id}/candidates"),
        &token,
    )
    .await;
    assert_eq!(candidates["count"], 2);

    // A rename through the API shows in the detail at once.
    let (s, _) = app
        .post(
            "/api/projects",
            &token,
            json!({"name": "Cached Again", "slug": "cached"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(ok(&app, p, &token).await["project"]["name"], "Cached Again");
}

#[actix_web::test]
async fn other_nodes_writes_show_within_the_read_cache_window() {
    let window = Duration::from_millis(300);
    let app = TestApp::spawn_with(|s| s.http.read_cache_ms = window.as_millis() as u64).await;
    let token = app.bootstrap_token().await;
    app.create_project(&token, "Shared", "shared").await;
    let p = "/api/projects/shared";
    assert_eq!(ok(&app, p, &token).await["project"]["name"], "Shared");
    assert_eq!(ok(&app, &format!("{p}/runs"), &token).await["count"], 0);

    // Another node renames the project and deletes it: writes this process
    // never saw, straight in the database.
    let exec = |sql: &str| {
        let backend = app.db.get_database_backend();
        app.db
            .execute_raw(Statement::from_string(backend, sql.to_string()))
    };
    let written = Instant::now();
    exec("UPDATE projects SET name = 'Shared Elsewhere' WHERE slug = 'shared'")
        .await
        .unwrap();
    loop {
        if ok(&app, p, &token).await["project"]["name"] == "Shared Elsewhere" {
            break;
        }
        assert!(
            written.elapsed() < window * 4,
            "not visible within the window"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let written = Instant::now();
    exec("DELETE FROM projects WHERE slug = 'shared'")
        .await
        .unwrap();
    loop {
        let (s, _) = app.get(&format!("{p}/runs"), &token).await;
        if s == StatusCode::NOT_FOUND {
            break;
        }
        assert_eq!(s, StatusCode::OK);
        assert!(
            written.elapsed() < window * 4,
            "deletion not visible within the window"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
