//! The agent worker end to end: a loopback agent endpoint that answers
//! done, failed, needs-input, slowly, with 5xx, garbage or 10 MB; the
//! instruction's guarded state machine, its events, leases, cancels, the
//! outbound policy and secrecy.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{HttpRequest, HttpResponse, web};
use reqwest::StatusCode;
use sea_orm::{ActiveModelTrait, EntityTrait, IntoActiveModel, Set};
use serde_json::{Value, json};

use crate::helpers::TestApp;

const TOKEN: &str = "agent-tok-5ecret";

/// How the agent answers one request.
#[derive(Clone)]
enum Reply {
    Json(u16, Value),
    Raw(u16, Vec<u8>),
    /// Answers `done` after this long.
    Slow(Duration),
    /// Sends the worker elsewhere.
    Redirect(&'static str),
}

#[derive(Default)]
struct Agent {
    replies: Mutex<VecDeque<Reply>>,
    received: Mutex<Vec<(String, Value)>>,
}

async fn answer(req: HttpRequest, body: web::Bytes, agent: web::Data<Agent>) -> HttpResponse {
    let auth = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    agent.received.lock().unwrap().push((auth, body));
    let reply = agent
        .replies
        .lock()
        .unwrap()
        .pop_front()
        .unwrap_or(Reply::Json(200, json!({"status": "done"})));
    let status = |c: u16| actix_web::http::StatusCode::from_u16(c).unwrap();
    match reply {
        Reply::Json(c, v) => HttpResponse::build(status(c)).json(v),
        Reply::Raw(c, bytes) => HttpResponse::build(status(c)).body(bytes),
        Reply::Redirect(to) => HttpResponse::Found()
            .insert_header(("location", to))
            .finish(),
        Reply::Slow(d) => {
            tokio::time::sleep(d).await;
            HttpResponse::Ok().json(json!({"status": "done"}))
        }
    }
}

async fn agent_endpoint(replies: Vec<Reply>) -> (String, Arc<Agent>) {
    let agent = Arc::new(Agent {
        replies: Mutex::new(replies.into()),
        ..Agent::default()
    });
    let data = web::Data::from(agent.clone());
    let port = crate::helpers::serve_loopback(1, move |cfg| {
        cfg.app_data(data.clone())
            .route("/agent", web::post().to(answer));
    });
    (format!("http://127.0.0.1:{port}/agent"), agent)
}

async fn app_with_agent(tweak: impl FnOnce(&mut atelier::settings::Settings)) -> (TestApp, String) {
    let app = TestApp::spawn_with(|s| {
        s.agent.poll_ms = 20;
        s.agent.retry_backoff_ms = 50;
        s.agent.timeout_ms = 1_000;
        s.agent.max_attempts = 3;
        tweak(s);
    })
    .await;
    let token = app.bootstrap_token().await;
    app.create_project(&token, "Book", "book").await;
    (app, token)
}

async fn point_at(app: &TestApp, token: &str, url: &str) {
    for (name, value) in [("url", url), ("token", TOKEN)] {
        let (s, b) = app
            .post(
                "/api/projects/book/secrets",
                token,
                json!({"provider_code": "agent_api", "secret_name": name, "secret_value": value}),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{b}");
    }
}

const BASE: &str = "/api/projects/book/agent/instructions";

async fn confirmed(app: &TestApp, token: &str, text: &str) -> String {
    let (s, b) = app
        .post(BASE, token, json!({"instruction_text": text}))
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let id = b["instruction"]["id"].as_str().unwrap().to_string();
    let (s, b) = app
        .post(&format!("{BASE}/{id}/confirm"), token, json!({}))
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    id
}

/// Polls the instruction until its status is `want` (10 s at most).
async fn until_status(app: &TestApp, token: &str, id: &str, want: &str) -> Value {
    for _ in 0..500 {
        let (s, b) = app.get(&format!("{BASE}/{id}"), token).await;
        assert_eq!(s, StatusCode::OK, "{b}");
        if b["instruction"]["status"] == want {
            return b["instruction"].clone();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("instruction {id} never became {want}");
}

async fn events(app: &TestApp, token: &str, id: &str) -> Vec<(String, String)> {
    let (_, b) = app.get(&format!("{BASE}/{id}/events"), token).await;
    b["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["event_type"].as_str().unwrap().to_string(),
                e["message"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[actix_web::test]
async fn confirmed_instructions_reach_the_agent_and_settle_by_its_answer() {
    let (url, agent) = agent_endpoint(vec![
        Reply::Json(
            200,
            json!({"status": "done", "message": "made 3 runs", "echo": TOKEN}),
        ),
        Reply::Json(200, json!({"status": "failed", "message": "no such scene"})),
        Reply::Json(
            200,
            json!({"status": "needs_input", "message": "which scene?"}),
        ),
    ])
    .await;
    let (app, token) = app_with_agent(|_| {}).await;
    point_at(&app, &token, &url).await;

    let a = confirmed(&app, &token, "make three runs").await;
    let done = until_status(&app, &token, &a, "done").await;
    assert_eq!(done["attempts"], 1);
    assert_eq!(done["agent_response"]["message"], "made 3 runs");
    assert_eq!(
        done["agent_response"]["echo"], "***",
        "an echoed token is not stored"
    );
    assert_eq!(
        events(&app, &token, &a).await.last().unwrap(),
        &("result".to_string(), "done: made 3 runs".to_string())
    );
    {
        let received = agent.received.lock().unwrap();
        let (auth, body) = &received[0];
        assert_eq!(auth, &format!("Bearer {TOKEN}"));
        assert_eq!(body["instruction_id"], json!(a));
        assert_eq!(body["project_slug"], "book");
        assert_eq!(body["instruction_type"], "agent_instruction");
        assert_eq!(body["objective"], "make three runs");
        assert_eq!(body["payload"]["instruction_text"], "make three runs");
    }

    // A remote failure is final: no retry.
    let b = confirmed(&app, &token, "edit scene 9").await;
    until_status(&app, &token, &b, "failed").await;
    // Needs input: back to pending; confirming it again sends it again.
    let c = confirmed(&app, &token, "redo the sky").await;
    until_status(&app, &token, &c, "pending").await;
    let (s, _) = app
        .post(&format!("{BASE}/{c}/confirm"), &token, json!({}))
        .await;
    assert_eq!(s, StatusCode::OK);
    let again = until_status(&app, &token, &c, "done").await;
    assert_eq!(again["attempts"], 2);
    assert_eq!(
        agent.received.lock().unwrap().len(),
        4,
        "one request per attempt"
    );
}

#[actix_web::test]
async fn failed_attempts_are_retried_then_fail_with_a_scrubbed_error() {
    let (url, agent) = agent_endpoint(vec![
        Reply::Raw(
            500,
            format!("boom: bad token {TOKEN}\n at line 3").into_bytes(),
        ),
        Reply::Raw(200, b"<html>not json</html>".to_vec()),
        Reply::Raw(200, vec![b'x'; 10 * 1024 * 1024]),
        // A slow answer times out; the next attempt succeeds.
        Reply::Slow(Duration::from_millis(1_500)),
    ])
    .await;
    let (app, token) = app_with_agent(|_| {}).await;
    point_at(&app, &token, &url).await;
    let id = confirmed(&app, &token, "retry me").await;
    let failed = until_status(&app, &token, &id, "failed").await;
    assert_eq!(failed["attempts"], 3);
    let last_error = failed["last_error"].as_str().unwrap();
    assert!(last_error.contains("agent_answer_invalid"), "{last_error}");
    let trail = events(&app, &token, &id).await;
    let kinds: Vec<&str> = trail.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "created",
            "confirmed",
            "retry_scheduled",
            "retry_scheduled",
            "error"
        ]
    );
    assert!(trail[2].1.contains("http_500: boom"), "{}", trail[2].1);
    assert!(trail[3].1.contains("not a JSON object"), "{}", trail[3].1);
    assert!(trail[4].1.contains("longer than"), "{}", trail[4].1);
    let everything = format!("{trail:?} {failed}");
    assert!(
        !everything.contains(TOKEN),
        "the token leaked: {everything}"
    );
    assert!(!everything.contains('\n'));
    assert_eq!(agent.received.lock().unwrap().len(), 3);

    // A timeout is retried; the next attempt gets the answer.
    let id = confirmed(&app, &token, "slow agent").await;
    let done = until_status(&app, &token, &id, "done").await;
    assert_eq!(done["attempts"], 2);
    let trail = events(&app, &token, &id).await;
    let timeout = &trail[trail.len() - 2];
    assert_eq!(timeout.0, "retry_scheduled");
    assert!(timeout.1.contains("timeout"), "{}", timeout.1);
}

#[actix_web::test]
async fn a_cancel_while_the_agent_works_is_never_overwritten() {
    let (url, agent) = agent_endpoint(vec![Reply::Slow(Duration::from_millis(600))]).await;
    let (app, token) = app_with_agent(|_| {}).await;
    point_at(&app, &token, &url).await;
    let id = confirmed(&app, &token, "long job").await;
    until_status(&app, &token, &id, "running").await;
    let (s, b) = app
        .post(&format!("{BASE}/{id}/cancel"), &token, json!({}))
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["instruction"]["status"], "canceled");
    // The agent's answer arrives after the cancel and changes nothing.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert_eq!(agent.received.lock().unwrap().len(), 1);
    let (_, d) = app.get(&format!("{BASE}/{id}"), &token).await;
    assert_eq!(d["instruction"]["status"], "canceled");
    let kinds: Vec<String> = events(&app, &token, &id)
        .await
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(kinds, ["created", "confirmed", "canceled"]);
}

#[actix_web::test]
async fn inward_agent_urls_are_refused_and_redirects_never_followed() {
    let (url, agent) = agent_endpoint(vec![]).await;
    // No allow-list: loopback is an internal address.
    let (app, token) = app_with_agent(|s| s.network.outbound_allow.clear()).await;
    point_at(&app, &token, &url).await;
    let id = confirmed(&app, &token, "reach inside").await;
    let failed = until_status(&app, &token, &id, "failed").await;
    assert_eq!(failed["attempts"], 1, "a refused URL is not retried");
    assert!(
        failed["last_error"]
            .as_str()
            .unwrap()
            .contains("does not send to"),
        "{failed}"
    );
    assert!(agent.received.lock().unwrap().is_empty());

    // Allowed, but redirecting inward: the worker never follows a redirect.
    let (url, agent) = agent_endpoint(vec![
        Reply::Redirect("http://169.254.169.254/latest/meta-data/"),
        Reply::Redirect("http://10.0.0.1/agent"),
        Reply::Redirect("http://169.254.169.254/latest/meta-data/"),
    ])
    .await;
    let (app, token) = app_with_agent(|_| {}).await;
    point_at(&app, &token, &url).await;
    let id = confirmed(&app, &token, "follow me").await;
    let failed = until_status(&app, &token, &id, "failed").await;
    assert!(
        failed["last_error"]
            .as_str()
            .unwrap()
            .starts_with("http_302"),
        "{failed}"
    );
    assert_eq!(
        agent.received.lock().unwrap().len(),
        3,
        "one request per attempt, none followed"
    );

    // No endpoint at all: the attempts are used up, then it fails clearly.
    let (app, token) = app_with_agent(|_| {}).await;
    let id = confirmed(&app, &token, "nowhere to go").await;
    let failed = until_status(&app, &token, &id, "failed").await;
    assert_eq!(failed["last_error"], "missing_agent_api_url");
    assert_eq!(failed["attempts"], 3);
}

#[actix_web::test]
async fn a_live_lease_is_left_alone_and_an_expired_one_is_taken_over() {
    let (url, agent) = agent_endpoint(vec![]).await;
    // The service's own worker is off: this test is the worker.
    let (app, token) = app_with_agent(|s| s.agent.enabled = false).await;
    point_at(&app, &token, &url).await;
    let id = confirmed(&app, &token, "crashed mid-way").await;
    let uuid: uuid::Uuid = id.parse().unwrap();
    // Another worker holds it, as if it were sending it right now.
    let row = entities::agent_instructions::Entity::find_by_id(uuid)
        .one(&app.db)
        .await
        .unwrap()
        .unwrap();
    let mut held = row.into_active_model();
    held.status = Set("running".into());
    held.locked_by = Set(Some("worker-gone".into()));
    held.locked_at = Set(Some(domain::time::now()));
    held.attempts = Set(1);
    let held = held.update(&app.db).await.unwrap();

    let config = domain::agent::AgentConfig {
        worker_id: "worker-test".into(),
        lease: Duration::from_secs(60),
        ..domain::agent::AgentConfig::default()
    };
    let outbound = domain::netpolicy::OutboundPolicy::new(&["127.0.0.0/8".into()]).unwrap();
    let http = outbound.client(Duration::from_secs(5));
    let keys =
        atelier::startup::secret_keys(&crate::helpers::base_settings(&app.data_path(), None));
    let pass = || domain::agent::dispatch_due(&app.db, &http, &outbound, &config, Some(&keys), 8);
    assert!(
        pass().await.unwrap().is_empty(),
        "a live lease is not taken"
    );
    assert!(agent.received.lock().unwrap().is_empty());

    // Its worker died: the lease expires and the instruction is sent again.
    let mut expired = held.into_active_model();
    expired.locked_at = Set(Some(domain::time::now() - chrono::Duration::minutes(5)));
    expired.update(&app.db).await.unwrap();
    let handled = pass().await.unwrap();
    assert_eq!(
        handled,
        [(uuid, domain::agent::Handled::Settled("done".into()))]
    );
    let done = until_status(&app, &token, &id, "done").await;
    assert_eq!(done["attempts"], 2, "the lost attempt counts");
    assert_eq!(agent.received.lock().unwrap().len(), 1);

    // "Still running" at the agent: the lease is renewed, so it is not sent
    // again until that lease expires; then the agent is asked again.
    agent
        .replies
        .lock()
        .unwrap()
        .push_back(Reply::Json(200, json!({"status": "running"})));
    let id = confirmed(&app, &token, "long at the agent").await;
    let uuid: uuid::Uuid = id.parse().unwrap();
    assert_eq!(
        pass().await.unwrap(),
        [(uuid, domain::agent::Handled::Settled("running".into()))]
    );
    assert!(pass().await.unwrap().is_empty(), "its lease was renewed");
    let row = entities::agent_instructions::Entity::find_by_id(uuid)
        .one(&app.db)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.locked_by.as_deref(), Some("worker-test"));
    let mut expired = row.into_active_model();
    expired.locked_at = Set(Some(domain::time::now() - chrono::Duration::minutes(5)));
    expired.update(&app.db).await.unwrap();
    assert_eq!(
        pass().await.unwrap(),
        [(uuid, domain::agent::Handled::Settled("done".into()))]
    );
    assert_eq!(agent.received.lock().unwrap().len(), 3);
}

#[actix_web::test]
async fn the_agent_worker_command_handles_one_instruction_and_reports_it() {
    let (url, agent) = agent_endpoint(vec![]).await;
    let (app, token) = app_with_agent(|s| s.agent.enabled = false).await;
    let id = confirmed(&app, &token, "from a script").await;
    // The service's endpoint and token from its configuration (the project
    // names none), the token through the variable `agent.token_env` names.
    let config = app.data_path().join("agent.toml");
    let mut toml = format!(
        "[network]\noutbound_allow = [\"127.0.0.0/8\"]\n[agent]\nurl = \"{url}\"\ntoken_env = \"TEST_AGENT_TOKEN\"\n"
    );
    if let Some(db) = app.database_url() {
        toml = format!("database_url = \"{db}\"\n{toml}");
    }
    std::fs::write(&config, toml).unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_atelier"))
        .arg("--data-dir")
        .arg(app.data_path())
        .arg("--config")
        .arg(&config)
        .args(["agent-worker", "--once", "--worker-id", "script-1"])
        .env("TEST_AGENT_TOKEN", TOKEN)
        .env("RUST_LOG", "warn")
        .env_remove("DATABASE_URL")
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        printed,
        json!({"ok": true, "worker_id": "script-1", "processed": 1})
    );
    until_status(&app, &token, &id, "done").await;
    let received = agent.received.lock().unwrap();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].0, format!("Bearer {TOKEN}"));
    let logs = String::from_utf8_lossy(&out.stderr);
    assert!(!logs.contains(TOKEN), "the token reached a log: {logs}");
}
