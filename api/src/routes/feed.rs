//! The live progress feed: `GET /api/projects/{slug}/events/ws`.
//!
//! With `run_id`, the feed first replays that run's persisted events after
//! `since`, then continues live; events are numbered per run, so the feed
//! skips what it already sent and fills any hole from the database — no gap,
//! no duplicate, even when the in-process hub drops messages for a slow
//! reader. Without `run_id` it streams every run of the project live (no
//! replay); if it falls behind the hub it says so and closes (4001) so the
//! client resyncs per run.
//!
//! Close codes: 4001 fell behind (resync with `since`), 4002 the client did
//! not read for `SEND_TIMEOUT`, 1001 idle (nothing heard, not even a pong,
//! within `http.ws_idle_timeout_ms`; pings go out every `http.ws_heartbeat_ms`).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use actix_web::{HttpRequest, HttpResponse, get, web};
use actix_ws::{CloseCode, CloseReason, Message};
use domain::DatabaseConnection;
use domain::projects;
use domain::runs::events::{self, LiveEvent, RunEvent};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;
use utoipa::IntoParams;
use uuid::Uuid;

use crate::AppState;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::principal_from_header_or;

const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// Events replayed per database read.
const REPLAY_PAGE: u64 = 500;

#[derive(Deserialize, IntoParams)]
pub struct FeedQuery {
    /// Narrow the feed to one run (needed for `since`).
    run_id: Option<Uuid>,
    /// Replay this run's events after this sequence number first.
    since: Option<i64>,
    /// The bearer token, for clients that cannot set headers (browsers).
    token: Option<String>,
}

/// Live run events over WebSocket: replay after `since`, then live, in order.
#[utoipa::path(
    tag = "runs",
    params(("slug" = String, Path), FeedQuery),
    responses(
        (status = 101, description = "switching to the WebSocket feed"),
        (status = 400, body = ErrorBody, description = "invalid_request: since without run_id, or not a WebSocket handshake"),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
    )
)]
#[get("/api/projects/{slug}/events/ws")]
pub async fn events_ws(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
    slug: web::Path<String>,
    query: web::Query<FeedQuery>,
) -> ApiResult<HttpResponse> {
    // Browsers cannot set headers on a WebSocket: they may offer the token
    // as a subprotocol (`atelier.bearer, <token>`), which keeps it out of
    // URLs; `?token=` is still read for older clients.
    let offered = subprotocol_token(&req);
    let principal =
        principal_from_header_or(&req, offered.as_deref().or(query.token.as_deref())).await?;
    let project = projects::authorize(&state.db, &principal, &slug).await?;
    if let Some(run_id) = query.run_id {
        domain::runs::store::get_run(&state.db, project.id, &run_id.to_string()).await?;
    } else if query.since.is_some() {
        return Err(ApiError::validation(
            "invalid_request",
            "since needs run_id (sequence numbers are per run)",
        ));
    }
    // Subscribed before the replay is read, so nothing falls in between.
    let live = state.engine.hub().subscribe();
    let (mut response, session, stream) = actix_ws::handle(&req, body).map_err(|e| {
        ApiError::validation("invalid_request", format!("WebSocket handshake: {e}"))
    })?;
    if offered.is_some() {
        // The client offered subprotocols: one must be chosen, or the
        // browser drops the connection.
        response.headers_mut().insert(
            actix_web::http::header::SEC_WEBSOCKET_PROTOCOL,
            actix_web::http::header::HeaderValue::from_static(BEARER_PROTOCOL),
        );
    }
    let feed = Feed {
        db: state.db.clone(),
        project_id: project.id,
        run_id: query.run_id,
        sent: HashMap::new(),
        heartbeat: state.config.ws_heartbeat,
        idle_timeout: state.config.ws_idle_timeout,
    };
    actix_web::rt::spawn(feed.run(session, stream, live, query.since.unwrap_or(0).max(0)));
    Ok(response)
}

const BEARER_PROTOCOL: &str = "atelier.bearer";

/// One event as the feed sends it.
fn wire_text(e: &RunEvent) -> String {
    json!({
        "type": "event",
        "run_id": e.run_id,
        "seq": e.seq,
        "event_type": e.event_type,
        "job_id": e.job_id,
        "timestamp": e.created_at,
        "payload": e.payload,
    })
    .to_string()
}

/// The token offered as `Sec-WebSocket-Protocol: atelier.bearer, <token>`.
fn subprotocol_token(req: &HttpRequest) -> Option<String> {
    let offered: Vec<String> = req
        .headers()
        .get_all(actix_web::http::header::SEC_WEBSOCKET_PROTOCOL)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_string())
        .collect();
    if !offered.iter().any(|p| p == BEARER_PROTOCOL) {
        return None;
    }
    offered
        .into_iter()
        .find(|p| p != BEARER_PROTOCOL && !p.is_empty())
}

struct Feed {
    db: DatabaseConnection,
    project_id: Uuid,
    run_id: Option<Uuid>,
    /// Highest sequence number sent, per run.
    sent: HashMap<Uuid, i64>,
    heartbeat: Duration,
    idle_timeout: Duration,
}

enum Stop {
    Done,
    Close(CloseReason),
}

fn reason(code: CloseCode, description: &str) -> CloseReason {
    CloseReason {
        code,
        description: Some(description.into()),
    }
}

impl Feed {
    /// Sends a replayed event (encoded for this client alone).
    async fn send(&mut self, session: &mut actix_ws::Session, e: &RunEvent) -> Result<(), Stop> {
        self.send_text(session, e.run_id, e.seq, wire_text(e).into())
            .await
    }

    /// Sends a live event: encoded once for every client of this process.
    async fn send_live(
        &mut self,
        session: &mut actix_ws::Session,
        e: &LiveEvent,
    ) -> Result<(), Stop> {
        self.send_text(session, e.run_id, e.seq, e.wire(wire_text))
            .await
    }

    async fn send_text(
        &mut self,
        session: &mut actix_ws::Session,
        run_id: Uuid,
        seq: i64,
        text: bytestring::ByteString,
    ) -> Result<(), Stop> {
        match tokio::time::timeout(SEND_TIMEOUT, session.text(text)).await {
            Ok(Ok(())) => {
                self.sent.insert(run_id, seq);
                Ok(())
            }
            Ok(Err(_)) => Err(Stop::Done),
            Err(_) => Err(Stop::Close(reason(
                CloseCode::Other(4002),
                "client too slow",
            ))),
        }
    }

    /// Sends the run's persisted events after what was already sent, up to
    /// `until` (inclusive) when given.
    async fn catch_up(
        &mut self,
        session: &mut actix_ws::Session,
        run_id: Uuid,
        until: Option<i64>,
    ) -> Result<(), Stop> {
        loop {
            let after = self.sent.get(&run_id).copied().unwrap_or(0);
            if until.is_some_and(|u| after >= u) {
                return Ok(());
            }
            let page = events::list_since(&self.db, run_id, after, REPLAY_PAGE)
                .await
                .map_err(|_| Stop::Close(reason(CloseCode::Error, "cannot read events")))?;
            let full = page.len() as u64 == REPLAY_PAGE;
            for e in page.iter().filter(|e| until.is_none_or(|u| e.seq <= u)) {
                self.send(session, e).await?;
            }
            if !full {
                return Ok(());
            }
        }
    }

    async fn on_live(
        &mut self,
        session: &mut actix_ws::Session,
        e: &LiveEvent,
    ) -> Result<(), Stop> {
        if e.project_id != self.project_id || self.run_id.is_some_and(|r| r != e.run_id) {
            return Ok(());
        }
        match self.sent.get(&e.run_id).copied() {
            Some(last) if e.seq <= last => Ok(()),
            // A hole (the hub dropped messages): fill it from the database.
            Some(last) if e.seq > last + 1 => {
                self.catch_up(session, e.run_id, Some(e.seq - 1)).await?;
                self.send_live(session, e).await
            }
            // A run-scoped feed always knows where it is; a project feed
            // starts each run at its first live event.
            None if self.run_id.is_some() => {
                self.catch_up(session, e.run_id, Some(e.seq - 1)).await?;
                self.send_live(session, e).await
            }
            _ => self.send_live(session, e).await,
        }
    }

    async fn run(
        mut self,
        mut session: actix_ws::Session,
        mut stream: actix_ws::MessageStream,
        mut live: tokio::sync::broadcast::Receiver<std::sync::Arc<LiveEvent>>,
        since: i64,
    ) {
        let stop = self
            .serve(&mut session, &mut stream, &mut live, since)
            .await;
        if let Stop::Close(r) = stop {
            let _ = session.close(Some(r)).await;
        }
    }

    async fn serve(
        &mut self,
        session: &mut actix_ws::Session,
        stream: &mut actix_ws::MessageStream,
        live: &mut tokio::sync::broadcast::Receiver<std::sync::Arc<LiveEvent>>,
        since: i64,
    ) -> Stop {
        if let Some(run_id) = self.run_id {
            self.sent.insert(run_id, since);
            if let Err(stop) = self.catch_up(session, run_id, None).await {
                return stop;
            }
        }
        let mut heartbeat = tokio::time::interval(self.heartbeat);
        let mut heard = Instant::now();
        loop {
            tokio::select! {
                event = live.recv() => {
                    let step = match event {
                        Ok(e) => self.on_live(session, &e).await,
                        Err(RecvError::Lagged(_)) => match self.run_id {
                            // Sequence numbers make a run feed whole again.
                            Some(run_id) => self.catch_up(session, run_id, None).await,
                            None => {
                                let _ = session.text(json!({"type": "lagged"}).to_string()).await;
                                Err(Stop::Close(reason(CloseCode::Other(4001), "fell behind; resync with run_id and since")))
                            }
                        },
                        Err(RecvError::Closed) => Err(Stop::Close(reason(CloseCode::Away, "server shutting down"))),
                    };
                    if let Err(stop) = step {
                        return stop;
                    }
                }
                msg = stream.next() => match msg {
                    Some(Ok(Message::Ping(bytes))) => {
                        heard = Instant::now();
                        if session.pong(&bytes).await.is_err() {
                            return Stop::Done;
                        }
                    }
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return Stop::Done,
                    Some(Ok(_)) => heard = Instant::now(),
                },
                _ = heartbeat.tick() => {
                    if heard.elapsed() > self.idle_timeout {
                        return Stop::Close(reason(CloseCode::Away, "idle timeout"));
                    }
                    if session.ping(b"").await.is_err() {
                        return Stop::Done;
                    }
                }
            }
        }
    }
}
