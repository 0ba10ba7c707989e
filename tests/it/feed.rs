//! The WebSocket progress feed with a real WebSocket client: ordering,
//! replay without gaps or duplicates, auth and scope, heartbeat and idle close.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::helpers::TestApp;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(app: &TestApp, path_and_query: &str, token: Option<&str>) -> Result<Ws, WsError> {
    let url = format!("{}{path_and_query}", app.base.replace("http://", "ws://"));
    let mut request = url.into_client_request().unwrap();
    if let Some(t) = token {
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    tokio_tungstenite::connect_async(request)
        .await
        .map(|(ws, _)| ws)
}

/// Event messages until `run.finished` (or the timeout).
async fn events_until_finished(ws: &mut Ws) -> Vec<Value> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while let Ok(Some(msg)) = tokio::time::timeout_at(deadline, ws.next()).await {
        if let Message::Text(text) = msg.unwrap() {
            let v: Value = serde_json::from_str(&text).unwrap();
            let done = v["event_type"] == "run.finished";
            out.push(v);
            if done {
                break;
            }
        }
    }
    out
}

async fn started_run(app: &TestApp, token: &str) -> String {
    let (s, b) = app
        .post(
            "/api/projects/book/runs/trigger",
            token,
            json!({"mode": "run", "scene_refs": ["sample:1", "sample:2"], "stage": "time", "candidates": 2}),
        )
        .await;
    assert_eq!(s, reqwest::StatusCode::OK, "{b}");
    b["run_id"].as_str().unwrap().to_string()
}

#[actix_web::test]
async fn replay_then_live_without_gaps_or_duplicates() {
    let app = TestApp::spawn_with(|s| s.providers.local.latency_ms = 60).await;
    let token = app.bootstrap_token().await;
    app.create_project(&token, "Book", "book").await;
    let run_id = started_run(&app, &token).await;
    // Join mid-run, asking for everything after seq 2.
    tokio::time::sleep(Duration::from_millis(150)).await;
    let mut ws = connect(
        &app,
        &format!("/api/projects/book/events/ws?run_id={run_id}&since=2"),
        Some(&token),
    )
    .await
    .unwrap();
    let got = events_until_finished(&mut ws).await;
    let seqs: Vec<i64> = got.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    assert_eq!(seqs.first(), Some(&3), "{seqs:?}");
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "gap or duplicate: {seqs:?}"
    );
    assert_eq!(got.last().unwrap()["event_type"], "run.finished");
    for e in &got {
        assert_eq!(e["type"], "event");
        assert_eq!(e["run_id"], run_id.as_str());
        assert!(e["timestamp"].is_string() && e["payload"].is_object());
    }
    // The same events as the persisted list, in the same order.
    let (_, list) = app
        .get(
            &format!("/api/projects/book/runs/{run_id}/events?since=2"),
            &token,
        )
        .await;
    let listed: Vec<(i64, String)> = list["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["seq"].as_i64().unwrap(),
                e["event_type"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let streamed: Vec<(i64, String)> = got
        .iter()
        .map(|e| {
            (
                e["seq"].as_i64().unwrap(),
                e["event_type"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(streamed, listed);
    // Reconnecting with since = last - 3 replays exactly the last three.
    let last = *seqs.last().unwrap();
    let mut again = connect(
        &app,
        &format!(
            "/api/projects/book/events/ws?run_id={run_id}&since={}",
            last - 3
        ),
        Some(&token),
    )
    .await
    .unwrap();
    let tail = events_until_finished(&mut again).await;
    let tail_seqs: Vec<i64> = tail.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    assert_eq!(tail_seqs, vec![last - 2, last - 1, last]);
    again.close(None).await.unwrap();
}

#[actix_web::test]
async fn a_project_feed_streams_live_events_of_its_runs_in_order() {
    let app = TestApp::spawn_with(|s| s.providers.local.latency_ms = 40).await;
    let token = app.bootstrap_token().await;
    app.create_project(&token, "Book", "book").await;
    let mut ws = connect(&app, "/api/projects/book/events/ws", Some(&token))
        .await
        .unwrap();
    let run_id = started_run(&app, &token).await;
    let got = events_until_finished(&mut ws).await;
    assert!(got.len() > 5);
    assert!(got.iter().all(|e| e["run_id"] == run_id.as_str()));
    let seqs: Vec<i64> = got.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
}

#[actix_web::test]
async fn feed_auth_and_scope() {
    let app = TestApp::spawn().await;
    let admin = app.bootstrap_token().await;
    app.create_project(&admin, "Alpha", "alpha").await;
    app.create_project(&admin, "Beta", "beta").await;
    let alpha = app.scoped_token(&admin, "alpha").await;
    let status = |e: WsError| match e {
        WsError::Http(r) => r.status().as_u16(),
        other => panic!("expected an HTTP refusal, got {other}"),
    };
    assert_eq!(
        status(
            connect(&app, "/api/projects/alpha/events/ws", None)
                .await
                .unwrap_err()
        ),
        401
    );
    assert_eq!(
        status(
            connect(
                &app,
                "/api/projects/alpha/events/ws?token=kroma_wrong",
                None
            )
            .await
            .unwrap_err()
        ),
        401
    );
    // A project-scoped token sees only its project.
    assert_eq!(
        status(
            connect(&app, "/api/projects/beta/events/ws", Some(&alpha))
                .await
                .unwrap_err()
        ),
        403
    );
    assert!(
        connect(
            &app,
            &format!("/api/projects/alpha/events/ws?token={alpha}"),
            None
        )
        .await
        .is_ok()
    );
    assert_eq!(
        status(
            connect(&app, "/api/projects/alpha/events/ws?since=3", Some(&admin))
                .await
                .unwrap_err()
        ),
        400
    );
    let missing = uuid::Uuid::now_v7();
    assert_eq!(
        status(
            connect(
                &app,
                &format!("/api/projects/alpha/events/ws?run_id={missing}"),
                Some(&admin)
            )
            .await
            .unwrap_err()
        ),
        404
    );
}

#[actix_web::test]
async fn heartbeat_pings_and_a_silent_client_is_closed() {
    let app = TestApp::spawn_with(|s| {
        s.http.ws_heartbeat_ms = 100;
        s.http.ws_idle_timeout_ms = 400;
    })
    .await;
    let token = app.bootstrap_token().await;
    app.create_project(&token, "Book", "book").await;
    let mut ws = connect(&app, "/api/projects/book/events/ws", Some(&token))
        .await
        .unwrap();
    // Reading answers pings automatically: the connection stays up.
    let mut pings = 0;
    let until = tokio::time::Instant::now() + Duration::from_millis(700);
    while let Ok(Some(Ok(msg))) = tokio::time::timeout_at(until, ws.next()).await {
        if matches!(msg, Message::Ping(_)) {
            pings += 1;
        }
    }
    assert!(pings >= 3, "{pings} pings");
    // A client that stops reading (so never pongs) is closed as idle.
    let mut silent = connect(&app, "/api/projects/book/events/ws", Some(&token))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(900)).await;
    let mut close = None;
    while let Ok(Some(Ok(msg))) = tokio::time::timeout(Duration::from_secs(2), silent.next()).await
    {
        if let Message::Close(frame) = msg {
            close = frame;
            break;
        }
    }
    let frame = close.expect("the server closed the idle connection");
    assert_eq!(frame.code, CloseCode::Away);
    let _ = silent.send(Message::Close(None)).await;
}
