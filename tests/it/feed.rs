//! The WebSocket progress feed with a real WebSocket client: ordering,
//! replay without gaps or duplicates, auth and scope, heartbeat and idle close.

use std::time::Duration;

use futures_util::StreamExt;
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
    // Join once a few events are persisted, asking for everything after
    // seq 2. (Whether the run is still going then is up to the machine;
    // the forced hand-off below does not depend on it.)
    let id: uuid::Uuid = run_id.parse().unwrap();
    crate::binary::eventually(
        "three events persisted",
        Duration::from_secs(20),
        || async {
            let n = domain::runs::events::list_since(&app.db, id, 0, 3)
                .await
                .unwrap()
                .len();
            (n >= 3).then_some(())
        },
    )
    .await;
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
    assert_eq!(
        seqs.first(),
        Some(&1),
        "subscribed before the run began: {seqs:?}"
    );
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
    // A client that never reads (so never pongs) is closed as idle. A raw
    // socket, so nothing answers pings on the test's behalf.
    let addr = app.base.trim_start_matches("http://").to_string();
    let mut raw = tokio::net::TcpStream::connect(&addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    raw.write_all(
        format!(
            "GET /api/projects/book/events/ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\nAuthorization: Bearer {token}\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    // Everything the server sends until it closes the connection.
    let mut bytes = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), raw.read_to_end(&mut bytes)).await;
    let head_end = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a handshake answer")
        + 4;
    assert!(
        bytes.starts_with(b"HTTP/1.1 101"),
        "{:?}",
        String::from_utf8_lossy(&bytes)
    );
    // Server frames are unmasked; control frames carry < 126 bytes.
    let mut frames = Vec::new();
    let mut at = head_end;
    while at + 2 <= bytes.len() {
        let (opcode, len) = (bytes[at] & 0x0f, usize::from(bytes[at + 1] & 0x7f));
        frames.push((
            opcode,
            bytes[at + 2..(at + 2 + len).min(bytes.len())].to_vec(),
        ));
        at += 2 + len;
    }
    assert!(
        frames.iter().filter(|(op, _)| *op == 0x9).count() >= 2,
        "pinged first: {frames:?}"
    );
    let close = frames
        .iter()
        .find(|(op, _)| *op == 0x8)
        .expect("a close frame");
    assert_eq!(
        u16::from_be_bytes([close.1[0], close.1[1]]),
        1001,
        "going away (idle)"
    );
}

/// The guarantees of a run feed, forced rather than left to timing: live
/// events after the replay, a hole in the live stream filled from the
/// database, and a reader that falls behind the hub's buffer made whole
/// again; a project feed that falls behind is told and closed (4001).
#[actix_web::test]
async fn hand_off_holes_and_lag_are_made_whole() {
    use domain::runs::events;
    let app = TestApp::spawn_with(|s| s.engine.event_buffer = 16).await;
    let token = app.bootstrap_token().await;
    app.create_project(&token, "Book", "book").await;
    let (s, b) = app
        .post(
            "/api/projects/book/runs/trigger",
            &token,
            json!({"mode": "run", "scene_refs": ["sample:1@64x48"], "stage": "style", "candidates": 1, "wait": true}),
        )
        .await;
    assert_eq!(s, reqwest::StatusCode::OK, "{b}");
    let run_id: uuid::Uuid = b["run_id"].as_str().unwrap().parse().unwrap();
    let project_id: uuid::Uuid = b["run"]["project_id"].as_str().unwrap().parse().unwrap();
    let persisted = events::list_since(&app.db, run_id, 0, 10_000)
        .await
        .unwrap();
    let last = persisted.last().unwrap().seq;
    // Appends `n` events to the run (committed, as the engine does) and
    // returns them; publishing is the test's choice.
    let append = |n: usize| {
        let db = app.db.clone();
        async move {
            let txn = domain::db::begin_write(&db).await.unwrap();
            let out = events::append_many(
                &txn,
                run_id,
                project_id,
                (0..n)
                    .map(|i| ("test.tick", None, json!({ "i": i })))
                    .collect(),
            )
            .await
            .unwrap();
            domain::db::commit(txn).await.unwrap();
            out
        }
    };
    let mut run_feed = connect(
        &app,
        &format!("/api/projects/book/events/ws?run_id={run_id}&since=0"),
        Some(&token),
    )
    .await
    .unwrap();
    let mut project_feed = connect(&app, "/api/projects/book/events/ws", Some(&token))
        .await
        .unwrap();
    let replayed = read_events(&mut run_feed, persisted.len()).await;
    assert_eq!(seqs(&replayed), (1..=last).collect::<Vec<_>>());

    // Hand-off: an event committed and published after the replay.
    let one = append(1).await;
    app.hub.publish(one[0].clone());
    assert_eq!(seqs(&read_events(&mut run_feed, 1).await), vec![last + 1]);
    assert_eq!(
        seqs(&read_events(&mut project_feed, 1).await),
        vec![last + 1]
    );

    // A hole: two committed, only the second published.
    let two = append(2).await;
    app.hub.publish(two[1].clone());
    assert_eq!(
        seqs(&read_events(&mut run_feed, 2).await),
        vec![last + 2, last + 3],
        "the missing event came from the database, in order"
    );

    // Lag: 400 events published in a tight loop into a buffer of 16 (a
    // reader writes each to its socket, far slower than a publish).
    let many = append(400).await;
    for e in &many {
        app.hub.publish(e.clone());
    }
    let caught_up = read_events(&mut run_feed, 400).await;
    assert_eq!(
        seqs(&caught_up),
        (last + 4..=last + 403).collect::<Vec<_>>()
    );
    // Nothing more: no duplicate from what was still in the buffer.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), next_text(&mut run_feed))
            .await
            .is_err(),
        "a duplicate followed"
    );
    // The project feed cannot replay (numbers are per run): told and closed.
    let mut lagged = false;
    let mut close = None;
    while let Ok(Some(Ok(msg))) =
        tokio::time::timeout(Duration::from_secs(10), project_feed.next()).await
    {
        match msg {
            Message::Text(t) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                lagged |= v["type"] == "lagged";
            }
            Message::Close(frame) => {
                close = frame;
                break;
            }
            _ => {}
        }
    }
    assert!(lagged, "the project feed was not told it fell behind");
    assert_eq!(close.expect("closed").code, CloseCode::Library(4001));
}

fn seqs(events: &[Value]) -> Vec<i64> {
    events.iter().map(|e| e["seq"].as_i64().unwrap()).collect()
}

/// The next text message (pings and pongs skipped).
async fn next_text(ws: &mut Ws) -> Value {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => return serde_json::from_str(&t).unwrap(),
            Some(Ok(_)) => {}
            other => panic!("feed ended: {other:?}"),
        }
    }
}

/// Exactly `n` event messages (within 10 s).
async fn read_events(ws: &mut Ws, n: usize) -> Vec<Value> {
    let mut out = Vec::new();
    while out.len() < n {
        let v = tokio::time::timeout(Duration::from_secs(10), next_text(ws))
            .await
            .unwrap_or_else(|_| panic!("{} of {n} events arrived: {out:?}", out.len()));
        assert_eq!(v["type"], "event", "{v}");
        out.push(v);
    }
    out
}

/// An export started through the API reports its progress and its end on
/// the project's live feed (not on a run's).
#[actix_web::test]
async fn an_export_reports_progress_and_its_end_on_the_project_feed() {
    let app = TestApp::spawn().await;
    let token = app.bootstrap_token().await;
    app.create_project(&token, "Book", "book").await;
    let (s, b) = app
        .post(
            "/api/projects/book/runs/trigger",
            &token,
            json!({"mode": "run", "scene_refs": ["sample:1", "sample:2"], "stage": "time", "candidates": 2, "wait": true}),
        )
        .await;
    assert_eq!(s, reqwest::StatusCode::OK, "{b}");
    let mut ws = connect(&app, "/api/projects/book/events/ws", Some(&token))
        .await
        .unwrap();
    let (s, started) = app
        .post(
            "/api/projects/book/exports",
            &token,
            json!({"format": "zip"}),
        )
        .await;
    assert_eq!(s, reqwest::StatusCode::ACCEPTED, "{started}");
    let id = started["export"]["id"].as_str().unwrap().to_string();
    let mut events = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while let Ok(Some(msg)) = tokio::time::timeout_at(deadline, ws.next()).await {
        if let Message::Text(text) = msg.unwrap() {
            let v: Value = serde_json::from_str(&text).unwrap();
            if v["run_id"] == json!(id) {
                let done = v["event_type"] == "export.finished";
                events.push(v);
                if done {
                    break;
                }
            }
        }
    }
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["event_type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds.last(), Some(&"export.finished"), "{events:?}");
    let progress: Vec<&Value> = events
        .iter()
        .filter(|e| e["event_type"] == "export.progress")
        .collect();
    let last = progress.last().expect("progress before the end");
    assert_eq!(
        last["payload"]["files_written"], last["payload"]["files"],
        "{last}"
    );
    let seqs: Vec<i64> = events.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as i64).collect::<Vec<_>>(),
        "in order, no gap"
    );
    let end = &events.last().unwrap()["payload"];
    assert_eq!(end["status"], "completed");
    let (_, detail) = app
        .get(&format!("/api/projects/book/exports/{id}"), &token)
        .await;
    assert_eq!(end["checksum_sha256"], detail["export"]["checksum_sha256"]);
}
