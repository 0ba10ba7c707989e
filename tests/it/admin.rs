//! Operator endpoints: the supervision snapshot and a forced restart through
//! the real supervisor path, visible in the next snapshot.

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{TestApp, assert_error};

#[actix_web::test]
async fn supervision_snapshot_and_forced_restart() {
    let app = TestApp::spawn().await;
    let admin = app.bootstrap_token().await;
    app.create_project(&admin, "Book", "book").await;
    let scoped = app.scoped_token(&admin, "book").await;

    let (s, b) = app.get("/admin/supervision", &scoped).await;
    assert_error(s, &b, 403, "forbidden");
    let (s, snap) = app.get("/admin/supervision", &admin).await;
    assert_eq!(s, StatusCode::OK, "{snap}");
    let actor = |snap: &serde_json::Value, name: &str| {
        snap["actors"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no actor {name} in {snap}"))
    };
    for name in [
        "project",
        "cost",
        "audit",
        "webhooks",
        "background",
        "agent",
    ] {
        assert_eq!(actor(&snap, name)["status"], "running");
        assert_eq!(actor(&snap, name)["restarts"], 0);
        // Idle: nothing waiting (counting is unit-tested in the registry).
        assert_eq!(actor(&snap, name)["mailbox_depth"], 0);
    }
    assert_eq!(snap["queue"]["queued_runs"], 0);
    assert!(snap["node_id"].as_str().unwrap().starts_with("node-"));

    let (s, r) = app
        .post("/admin/actors/project/restart", &admin, json!({}))
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(r["restarts"], 1);
    let (_, snap) = app.get("/admin/supervision", &admin).await;
    let project = actor(&snap, "project");
    assert_eq!(project["restarts"], 1);
    assert_eq!(project["status"], "running");
    assert!(project["last_restart_at"].is_string());

    // The engine still works after the restart.
    let (s, b) = app
        .post(
            "/api/projects/book/runs/trigger",
            &admin,
            json!({"mode": "run", "scene_refs": ["sample:1"], "stage": "style", "candidates": 1, "wait": true}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["run"]["status"], "done");

    let (s, b) = app
        .post("/admin/actors/nope/restart", &admin, json!({}))
        .await;
    assert_error(s, &b, 404, "not_found");
    let (s, b) = app
        .post("/admin/actors/cost/restart", &scoped, json!({}))
        .await;
    assert_error(s, &b, 403, "forbidden");
}

#[actix_web::test]
async fn metrics_in_prometheus_text_format() {
    let app = TestApp::spawn().await;
    let token = app.bootstrap_token().await;
    let res = app
        .client
        .get(format!("{}/metrics", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    app.create_project(&token, "Book", "book").await;
    let (s, b) = app
        .post(
            "/api/projects/book/runs/trigger",
            &token,
            json!({"mode": "run", "scene_refs": ["sample:1"], "stage": "time", "candidates": 2, "wait": true}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let res = app
        .client
        .get(format!("{}/metrics", app.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = res.text().await.unwrap();
    let value = |line_start: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(line_start))
            .unwrap_or_else(|| panic!("no {line_start} in\n{text}"))
            .rsplit(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert_eq!(value("atelier_runs{status=\"done\"}"), 1.0);
    assert_eq!(value("atelier_jobs{status=\"done\"}"), 2.0);
    assert_eq!(value("atelier_candidates{status=\"done\"}"), 4.0);
    assert_eq!(
        value("atelier_provider_calls{provider=\"local\",status=\"succeeded\"}"),
        4.0
    );
    // Process-wide (other tests in the same process may add to it).
    assert!(value("atelier_provider_call_seconds_count{provider=\"local\",outcome=\"ok\"}") >= 4.0);
    assert_eq!(value("atelier_actor_restarts{actor=\"project\"}"), 0.0);
    assert!(text.contains("# TYPE atelier_provider_call_seconds histogram"));
    assert!(text.contains("\natelier_feed_clients "));
}

#[actix_web::test]
async fn pausing_all_processing_holds_runs_until_resumed() {
    let app = TestApp::spawn_with(|s| s.engine.heartbeat_ms = 100).await;
    let token = app.bootstrap_token().await;
    app.create_project(&token, "Book", "book").await;
    let scoped = app.scoped_token(&token, "book").await;
    let (s, b) = app.post("/admin/pause", &scoped, json!({})).await;
    assert_error(s, &b, 403, "forbidden");
    let (s, b) = app.post("/admin/pause", &token, json!({})).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["paused_all"], true);
    let (_, b) = app
        .post(
            "/api/projects/book/runs/trigger",
            &token,
            json!({"mode": "run", "scene_refs": ["sample:1"], "stage": "style", "candidates": 1}),
        )
        .await;
    let run_id = b["run_id"].as_str().unwrap().to_string();
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    let (_, run) = app
        .get(&format!("/api/projects/book/runs/{run_id}"), &token)
        .await;
    assert_eq!(run["run"]["status"], "queued", "{run}");
    let (_, snap) = app.get("/admin/supervision", &token).await;
    assert_eq!(snap["paused_all"], true);
    assert_eq!(snap["queue"]["queued_runs"], 1);
    let (s, b) = app.post("/admin/resume", &token, json!({})).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (_, run) = app
            .get(&format!("/api/projects/book/runs/{run_id}"), &token)
            .await;
        if run["run"]["status"] == "done" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "run did not resume: {run}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Every node serving from one database records itself and beats its heart
/// there; the others see one that stops beating as dead once the timeout
/// has passed. Operators only.
#[actix_web::test]
async fn nodes_on_one_database_see_each_other_and_a_dead_one() {
    use crate::binary::{Deployment, eventually};
    use reqwest::Method;
    use std::time::Duration;
    let mut deploy = Deployment::new(&[
        ("ATELIER_ENGINE__HEARTBEAT_MS", "200"),
        ("ATELIER_ENGINE__NODE_TIMEOUT_MS", "1000"),
    ])
    .await;
    let mut a = deploy.start_node("node-a").await;
    let b = deploy.start_node("node-b").await;
    let client = deploy.client.clone();
    let token = a.bootstrap(&client).await;
    let nodes = |alive_a: bool| {
        let (b, client, token) = (&b, &client, &token);
        async move {
            let (s, body) = b
                .call(client, Method::GET, "/admin/nodes", Some(token), None)
                .await;
            assert_eq!(s, StatusCode::OK, "{body}");
            let list = body["nodes"].as_array().unwrap().clone();
            let find = |id: &str| list.iter().find(|n| n["id"] == id).cloned();
            match (find("node-a"), find("node-b")) {
                (Some(na), Some(nb)) if na["alive"] == alive_a && nb["alive"] == true => {
                    Some((na, nb))
                }
                _ => None,
            }
        }
    };
    let (na, nb) = eventually("both nodes alive", Duration::from_secs(10), || nodes(true)).await;
    assert_eq!(nb["this_node"], true, "{nb}");
    assert_eq!(na["this_node"], false, "{na}");
    assert_eq!(na["address"], a.base.trim_start_matches("http://"), "{na}");
    assert_eq!(nb["address"], b.base.trim_start_matches("http://"), "{nb}");
    assert_eq!(nb["version"], env!("CARGO_PKG_VERSION"));
    a.kill9();
    let (na, _) = eventually("node-a seen dead", Duration::from_secs(10), || nodes(false)).await;
    assert_eq!(na["alive"], false, "{na}");
    // Operators only.
    let (s, body) = b
        .call(
            &client,
            Method::POST,
            "/api/projects",
            Some(&token),
            Some(json!({"name": "Scoped", "slug": "scoped"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let (s, body) = b
        .call(
            &client,
            Method::POST,
            "/auth/token",
            Some(&token),
            Some(json!({"project_slug": "scoped"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let scoped = body["auth_token"]["token"].as_str().unwrap().to_string();
    let (s, body) = b
        .call(&client, Method::GET, "/admin/nodes", Some(&scoped), None)
        .await;
    assert_error(s, &body, 403, "forbidden");
}

/// A pause of all processing given to one node holds on every node on the
/// database and across a restart, until it is resumed on any node; a
/// project's paused queue likewise.
#[actix_web::test]
async fn a_pause_given_to_one_node_holds_on_every_node_and_across_restarts() {
    use crate::binary::{Deployment, Server, eventually};
    use reqwest::Method;
    use std::time::Duration;
    async fn paused_on(server: &Server, client: &reqwest::Client, token: &str) -> bool {
        let (s, body) = server
            .call(client, Method::GET, "/admin/supervision", Some(token), None)
            .await;
        assert_eq!(s, StatusCode::OK, "{body}");
        body["paused_all"].as_bool().unwrap()
    }
    async fn post(
        server: &Server,
        client: &reqwest::Client,
        token: &str,
        path: &str,
    ) -> serde_json::Value {
        let body = (path == "/api/projects")
            .then(|| json!({"name": "Book", "slug": "book"}))
            .or_else(|| {
                path.ends_with("/trigger").then(|| {
                    json!({"mode": "run", "scene_refs": ["sample:1"], "stage": "style", "candidates": 1})
                })
            })
            .unwrap_or_else(|| json!({}));
        let (s, body) = server
            .call(client, Method::POST, path, Some(token), Some(body))
            .await;
        assert_eq!(s, StatusCode::OK, "{path}: {body}");
        body
    }
    async fn status(server: &Server, client: &reqwest::Client, token: &str, run: &str) -> String {
        let path = format!("/api/projects/book/runs/{run}");
        let (_, body) = server
            .call(client, Method::GET, &path, Some(token), None)
            .await;
        body["run"]["status"].as_str().unwrap().to_string()
    }
    let mut deploy = Deployment::new(&[("ATELIER_ENGINE__HEARTBEAT_MS", "200")]).await;
    let a = deploy.start_node("node-a").await;
    let mut b = deploy.start_node("node-b").await;
    let client = deploy.client.clone();
    let token = a.bootstrap(&client).await;
    let (c, t) = (&client, token.as_str());
    post(&a, c, t, "/api/projects").await;
    post(&a, c, t, "/admin/pause").await;
    eventually("node-b paused", Duration::from_secs(10), || async {
        paused_on(&b, c, t).await.then_some(())
    })
    .await;
    let triggered = post(&b, c, t, "/api/projects/book/runs/trigger").await;
    let run = triggered["run_id"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(status(&b, c, t, &run).await, "queued");
    // A restart of node-b keeps the pause: it is read before any run resumes.
    let (clean, _) = b.terminate(Duration::from_secs(20));
    assert!(clean);
    let b = deploy.start_node("node-b").await;
    assert!(paused_on(&b, c, t).await);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(status(&b, c, t, &run).await, "queued");
    // A project's paused queue, given to node-a, holds on node-b too.
    post(&a, c, t, "/api/projects/book/queue/pause").await;
    // Other nodes follow within a heartbeat.
    tokio::time::sleep(Duration::from_millis(600)).await;
    post(&b, c, t, "/admin/resume").await;
    eventually("node-a resumed", Duration::from_secs(10), || async {
        (!paused_on(&a, c, t).await).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        status(&b, c, t, &run).await,
        "queued",
        "its project's queue is paused"
    );
    post(&a, c, t, "/api/projects/book/queue/resume").await;
    eventually("the run done", Duration::from_secs(20), || async {
        (status(&b, c, t, &run).await == "done").then_some(())
    })
    .await;
}
