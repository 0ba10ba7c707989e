//! The progress feed in the window: each subscription is a client of the
//! service's own WebSocket feed (so replay after `since`, gap-free order
//! and the 4001/4002 close codes are exactly the contract's), and every
//! message it receives is emitted to the window as a Tauri event.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use futures_util::StreamExt;
use serde::Serialize;
use serde_json::{Value, json};
use tauri::{AppHandle, Emitter, Manager, Runtime};
use tokio_tungstenite::tungstenite::{self, Message, client::IntoClientRequest};

use crate::commands::{Shell, segment};
use crate::envelope::{ShellError, with_status};

/// The Tauri event every feed message is emitted on.
pub const FEED_EVENT: &str = "atelier:feed";

/// One feed message for the window: the WebSocket message's JSON as the
/// service sent it, under the subscription it belongs to. When the feed
/// ends, a last `{"type": "closed", "code", "reason"}` message says why.
#[derive(Clone, Debug, Serialize)]
pub struct FeedMessage {
    pub subscription: u64,
    pub message: Value,
}

/// The live subscriptions.
#[derive(Default)]
pub struct Feeds {
    next: AtomicU64,
    live: Mutex<HashMap<u64, tauri::async_runtime::JoinHandle<()>>>,
}

impl Feeds {
    /// Stops one subscription; `false` if it was not live.
    pub fn stop(&self, id: u64) -> bool {
        let handle = self.live.lock().ok().and_then(|mut l| l.remove(&id));
        handle.map(|h| h.abort()).is_some()
    }

    pub fn stop_all(&self) {
        if let Ok(mut live) = self.live.lock() {
            for (_, handle) in live.drain() {
                handle.abort();
            }
        }
    }
}

/// Connects to the project's feed and forwards it; the handshake's refusal
/// (unknown project, `since` without `run_id`, …) is the command's error.
pub async fn subscribe<R: Runtime>(
    app: AppHandle<R>,
    shell: &Shell,
    slug: &str,
    run_id: Option<String>,
    since: Option<i64>,
) -> Result<u64, Value> {
    let mut query = Vec::new();
    if let Some(run_id) = run_id {
        query.push(("run_id", run_id));
    }
    if let Some(since) = since {
        query.push(("since", since.to_string()));
    }
    let url = shell.ws_url(
        &format!("/api/projects/{}/events/ws", segment(slug)),
        &query,
    )?;
    let mut request = url
        .into_client_request()
        .map_err(|_| ShellError::invalid("invalid_ipc_path", "not a feed URL"))?;
    let bearer = format!("Bearer {}", shell.token())
        .parse()
        .map_err(|_| ShellError::unavailable("the shell's token is not a header value"))?;
    request
        .headers_mut()
        .insert(tungstenite::http::header::AUTHORIZATION, bearer);
    let (mut socket, _) = tokio_tungstenite::connect_async(request)
        .await
        .map_err(refused)?;
    let id = shell.feeds.next.fetch_add(1, Ordering::Relaxed) + 1;
    // Held while the task is spawned and registered, so a feed that ends at
    // once still finds its entry to remove.
    let Ok(mut live) = shell.feeds.live.lock() else {
        return Err(ShellError::unavailable("the shell's feed registry is unusable").into());
    };
    let forward = tauri::async_runtime::spawn(async move {
        let closed = loop {
            match socket.next().await {
                Some(Ok(Message::Text(text))) => {
                    let message = serde_json::from_str(text.as_str())
                        .unwrap_or_else(|_| Value::String(text.to_string()));
                    emit(&app, id, message);
                }
                Some(Ok(Message::Close(frame))) => {
                    break match frame {
                        Some(f) => {
                            json!({"type": "closed", "code": u16::from(f.code), "reason": f.reason.as_str()})
                        }
                        None => json!({"type": "closed", "code": 1005, "reason": ""}),
                    };
                }
                // Pings are answered by the client itself.
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    break json!({"type": "closed", "code": 1006, "reason": e.to_string()});
                }
                None => break json!({"type": "closed", "code": 1006, "reason": "connection lost"}),
            }
        };
        emit(&app, id, closed);
        if let Some(shell) = app.try_state::<Shell>()
            && let Ok(mut live) = shell.feeds.live.lock()
        {
            live.remove(&id);
        }
    });
    live.insert(id, forward);
    Ok(id)
}

fn emit<R: Runtime>(app: &AppHandle<R>, subscription: u64, message: Value) {
    let message = FeedMessage {
        subscription,
        message,
    };
    if let Err(e) = app.emit(FEED_EVENT, message) {
        tracing::warn!(error = %e, subscription, "cannot emit a feed message to the window");
    }
}

/// A refused handshake carries the service's error envelope in its body.
fn refused(e: tungstenite::Error) -> Value {
    if let tungstenite::Error::Http(response) = &e {
        let status = response.status().as_u16();
        if let Some(body) = response
            .body()
            .as_deref()
            .and_then(|b| serde_json::from_slice::<Value>(b).ok())
        {
            return with_status(body, status);
        }
    }
    ShellError::unavailable(format!("The feed could not be opened: {e}")).into()
}
