//! Webhooks end to end: a real receiver on loopback, signed deliveries,
//! retries with backoff, delivery records, validation and secrecy.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{HttpRequest, HttpResponse, web};
use reqwest::StatusCode;
use sea_orm::EntityTrait;
use serde_json::{Value, json};

use crate::helpers::{TestApp, assert_error};

#[derive(Clone, Debug)]
struct Received {
    event: String,
    delivery: String,
    timestamp: i64,
    signature: String,
    body: Vec<u8>,
}

#[derive(Default)]
struct Receiver {
    statuses: Mutex<VecDeque<u16>>,
    received: Mutex<Vec<Received>>,
}

async fn receive(req: HttpRequest, body: web::Bytes, state: web::Data<Receiver>) -> HttpResponse {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    state.received.lock().unwrap().push(Received {
        event: header("x-atelier-event"),
        delivery: header("x-atelier-delivery"),
        timestamp: header("x-atelier-timestamp").parse().unwrap_or(0),
        signature: header("x-atelier-signature"),
        body: body.to_vec(),
    });
    let status = state.statuses.lock().unwrap().pop_front().unwrap_or(200);
    HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap()).finish()
}

async fn receiver() -> (String, Arc<Receiver>) {
    let state = Arc::new(Receiver::default());
    let data = web::Data::from(state.clone());
    let port = crate::helpers::serve_loopback(1, move |cfg| {
        cfg.app_data(data.clone())
            .route("/hook", web::post().to(receive));
    });
    (format!("http://127.0.0.1:{port}/hook"), state)
}

async fn fast_app(max_attempts: i32) -> TestApp {
    TestApp::spawn_with(|s| {
        s.webhooks.retry_base_ms = 50;
        s.webhooks.poll_ms = 20;
        s.webhooks.timeout_ms = 2_000;
        s.webhooks.max_attempts = max_attempts;
    })
    .await
}

/// Polls the webhook's deliveries until `done` holds (10 s at most).
async fn deliveries_until(
    app: &TestApp,
    token: &str,
    hook: &str,
    done: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    for _ in 0..500 {
        let (s, b) = app
            .get(
                &format!("/api/projects/book/webhooks/{hook}/deliveries"),
                token,
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{b}");
        let list = b["deliveries"].as_array().unwrap().clone();
        if done(&list) {
            return list;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("deliveries never reached the expected state");
}

/// What a receiver computes to check a delivery, written from RFC 2104
/// (HMAC over SHA-256, 64-byte blocks) rather than with the service's code.
fn receiver_signature(secret: &str, timestamp: i64, body: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let mut key = secret.as_bytes().to_vec();
    if key.len() > 64 {
        key = Sha256::digest(&key).to_vec();
    }
    key.resize(64, 0);
    let pad = |byte: u8| key.iter().map(|k| k ^ byte).collect::<Vec<u8>>();
    let mut inner = Sha256::new();
    inner.update(pad(0x36));
    inner.update(format!("{timestamp}.").as_bytes());
    inner.update(body);
    let mut outer = Sha256::new();
    outer.update(pad(0x5c));
    outer.update(inner.finalize());
    format!("v1={}", hex::encode(outer.finalize()))
}

#[actix_web::test]
async fn a_finished_run_is_delivered_signed_and_retried_until_accepted() {
    let app = fast_app(5).await;
    let token = app.bootstrap_token().await;
    app.create_project(&token, "Book", "book").await;
    let (url, rx) = receiver().await;
    rx.statuses.lock().unwrap().extend([500, 503]);
    let secret_query = "sig=receiver-credential";
    let (s, created) = app
        .post(
            "/api/projects/book/webhooks",
            &token,
            json!({"url": format!("{url}?{secret_query}"), "description": "studio bot"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{created}");
    let secret = created["signing_secret"].as_str().unwrap().to_string();
    assert!(secret.starts_with("whsec_"));
    assert_eq!(
        created["webhook"]["events"],
        json!(["run.finished", "run.failed"])
    );
    let hook = created["webhook"]["id"].as_str().unwrap().to_string();

    let (s, b) = app
        .post("/api/projects/book/runs/trigger", &token, json!({"mode": "run", "scene_refs": ["sample:1@64x48"], "stage": "style", "candidates": 1, "wait": true}))
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let run_id = b["run_id"].as_str().unwrap().to_string();

    let list = deliveries_until(&app, &token, &hook, |l| {
        l.first().is_some_and(|d| d["status"] == "delivered")
    })
    .await;
    assert_eq!(list.len(), 1, "one delivery per run outcome");
    let d = &list[0];
    assert_eq!(d["attempts"], 3, "two refusals, then accepted: {d}");
    assert_eq!(d["last_status_code"], 200);
    assert_eq!(d["event_type"], "run.finished");
    assert_eq!(d["run_id"], json!(run_id));

    let got = rx.received.lock().unwrap().clone();
    assert_eq!(got.len(), 3);
    for r in &got {
        assert_eq!(r.event, "run.finished");
        assert_eq!(
            r.delivery,
            d["id"].as_str().unwrap(),
            "same id on every retry"
        );
        assert_eq!(
            r.signature,
            receiver_signature(&secret, r.timestamp, &r.body),
            "signed with the secret over timestamp and body"
        );
        assert_ne!(
            r.signature,
            receiver_signature("whsec_other", r.timestamp, &r.body)
        );
        let body: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(body["type"], "run.finished");
        assert_eq!(body["run"]["id"], json!(run_id));
        assert_eq!(body["run"]["status"], "done");
        assert!((r.timestamp - chrono::Utc::now().timestamp()).abs() < 60);
    }
    assert_eq!(
        got[0].body, got[2].body,
        "the body is the same on every attempt"
    );

    // The secret is never shown again, nor the receiver's URL credential audited.
    let (_, listed) = app.get("/api/projects/book/webhooks", &token).await;
    assert_eq!(listed["count"], 1);
    assert!(!listed.to_string().contains(&secret));
    assert!(listed["webhooks"][0].get("signing_secret").is_none());
    // At rest it is encrypted like project secrets.
    let stored = entities::webhooks::Entity::find()
        .all(&app.db)
        .await
        .unwrap();
    assert!(stored[0].signing_secret.starts_with("enc:v1:"));
    assert!(!stored[0].signing_secret.contains(&secret));
    let audits = entities::audit_events::Entity::find()
        .all(&app.db)
        .await
        .unwrap();
    let text = serde_json::to_string(&audits).unwrap();
    assert!(
        !text.contains(&secret) && !text.contains(secret_query),
        "{text}"
    );

    // Deleting removes it and its records; another project's token cannot see it.
    app.create_project(&token, "Other", "other").await;
    let scoped = app.scoped_token(&token, "other").await;
    let (s, _) = app
        .get(
            &format!("/api/projects/book/webhooks/{hook}/deliveries"),
            &scoped,
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, e) = app
        .get(
            &format!("/api/projects/other/webhooks/{hook}/deliveries"),
            &token,
        )
        .await;
    assert_error(s, &e, 404, "not_found");
    let (s, del) = app
        .call(
            reqwest::Method::DELETE,
            &format!("/api/projects/book/webhooks/{hook}"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{del}");
    assert_eq!(del["deleted"], true);
    let (_, listed) = app.get("/api/projects/book/webhooks", &token).await;
    assert_eq!(listed["count"], 0);
}

#[actix_web::test]
async fn unreachable_receivers_fail_after_the_attempts_and_subscriptions_filter() {
    let app = fast_app(2).await;
    let token = app.bootstrap_token().await;
    app.create_project(&token, "Book", "book").await;
    // A port nothing listens on.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let (_, dead) = app
        .post(
            "/api/projects/book/webhooks",
            &token,
            json!({"url": format!("http://127.0.0.1:{closed}/hook")}),
        )
        .await;
    let (url, rx) = receiver().await;
    let (_, failures_only) = app
        .post(
            "/api/projects/book/webhooks",
            &token,
            json!({"url": url, "events": ["run.failed"]}),
        )
        .await;
    let (s, b) = app
        .post("/api/projects/book/runs/trigger", &token, json!({"mode": "run", "scene_refs": ["sample:2@64x48"], "stage": "style", "candidates": 1, "wait": true}))
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let dead_id = dead["webhook"]["id"].as_str().unwrap();
    let list = deliveries_until(&app, &token, dead_id, |l| {
        l.first().is_some_and(|d| d["status"] == "failed")
    })
    .await;
    assert_eq!(list[0]["attempts"], 2);
    assert!(list[0]["last_status_code"].is_null());
    let error = list[0]["last_error"].as_str().unwrap();
    assert!(
        !error.is_empty() && !error.contains(&closed.to_string()),
        "no URL in errors: {error}"
    );
    // The run succeeded: the failures-only webhook was not told.
    let (_, none) = app
        .get(
            &format!(
                "/api/projects/book/webhooks/{}/deliveries",
                failures_only["webhook"]["id"].as_str().unwrap()
            ),
            &token,
        )
        .await;
    assert_eq!(none["count"], 0);
    assert!(rx.received.lock().unwrap().is_empty());
}

#[actix_web::test]
async fn webhook_bodies_are_validated_and_nothing_is_stored_on_error() {
    let app = fast_app(2).await;
    let token = app.bootstrap_token().await;
    app.create_project(&token, "Book", "book").await;
    let cases = [
        (json!({}), 400, "field_required"),
        (json!({"url": "ftp://example.com/x"}), 400, "invalid_url"),
        (json!({"url": "no url"}), 400, "invalid_url"),
        (
            json!({"url": "http://127.0.0.1:9/hook", "events": ["job.done"]}),
            400,
            "invalid_events",
        ),
        (
            json!({"url": "http://127.0.0.1:9/hook", "events": []}),
            400,
            "invalid_events",
        ),
        (json!({"url": 5}), 422, "invalid_field_type"),
        (
            json!({"url": "http://127.0.0.1:9/hook", "events": "run.failed"}),
            422,
            "invalid_field_type",
        ),
    ];
    for (body, status, code) in cases {
        let (s, e) = app
            .post("/api/projects/book/webhooks", &token, body.clone())
            .await;
        assert_error(s, &e, status, code);
    }
    let (_, listed) = app.get("/api/projects/book/webhooks", &token).await;
    assert_eq!(listed["count"], 0);
    // Unknown fields are ignored: a caller cannot choose the secret.
    let (s, b) = app
        .post(
            "/api/projects/book/webhooks",
            &token,
            json!({"url": "http://127.0.0.1:9/hook", "signing_secret": "mine"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_ne!(b["signing_secret"], "mine");
    let (s, e) = app
        .post(
            "/api/projects/nope/webhooks",
            &token,
            json!({"url": "http://127.0.0.1:9/hook"}),
        )
        .await;
    assert_error(s, &e, 404, "not_found");
}
