//! A real headless Chromium driven over the DevTools protocol (a WebSocket of
//! JSON messages), for testing the pages the service serves. The binary is
//! `chromium` (Debian's package, installed by .ci/run) or `$ATELIER_CHROMIUM`.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub struct Browser {
    child: Child,
    _profile: tempfile::TempDir,
    page: Socket,
    next_id: u64,
}

impl Browser {
    /// Starts Chromium and opens `url` in a new page.
    pub async fn open(url: &str) -> Self {
        let profile = tempfile::tempdir().unwrap();
        let binary = std::env::var("ATELIER_CHROMIUM").unwrap_or_else(|_| "chromium".into());
        let child = Command::new(&binary)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--remote-debugging-port=0",
                "--remote-allow-origins=*",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {binary} (apt install chromium): {e}"));
        let port = devtools_port(profile.path()).await;
        let target: Value = reqwest::Client::new()
            // The target URL is the query; its fragment must not end the request URL.
            .put(format!(
                "http://127.0.0.1:{port}/json/new?{}",
                url.replace('%', "%25").replace('#', "%23")
            ))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let ws_url = target["webSocketDebuggerUrl"].as_str().unwrap().to_string();
        let (page, _) = tokio_tungstenite::connect_async(ws_url.as_str())
            .await
            .unwrap();
        Self {
            child,
            _profile: profile,
            page,
            next_id: 1,
        }
    }

    /// Evaluates a JavaScript expression in the page (promises awaited) and
    /// returns its value; a thrown exception fails the test.
    pub async fn eval(&mut self, expression: &str) -> Value {
        self.try_eval(expression)
            .await
            .unwrap_or_else(|e| panic!("page threw evaluating {expression}: {e}"))
    }

    /// Like `eval`, with a thrown exception as `Err`.
    pub async fn try_eval(&mut self, expression: &str) -> Result<Value, String> {
        let id = self.next_id;
        self.next_id += 1;
        let call = json!({
            "id": id, "method": "Runtime.evaluate",
            "params": { "expression": expression, "returnByValue": true, "awaitPromise": true },
        });
        self.page
            .send(Message::Text(call.to_string().into()))
            .await
            .unwrap();
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(10), self.page.next())
                .await
                .expect("DevTools answered in time")
                .unwrap()
                .unwrap();
            let Message::Text(text) = msg else { continue };
            let reply: Value = serde_json::from_str(&text).unwrap();
            if reply["id"] != json!(id) {
                continue; // an event
            }
            if let Some(e) = reply["result"].get("exceptionDetails") {
                return Err(e.to_string());
            }
            return Ok(reply["result"]["result"]["value"].clone());
        }
    }

    /// Polls `expression` until it is truthy (returned), or panics after `timeout`
    /// with `context` (an expression describing the page). An exception (the
    /// page not there yet) counts as not yet.
    pub async fn wait_for(&mut self, expression: &str, timeout: Duration, context: &str) -> Value {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let v = self.try_eval(expression).await.unwrap_or(Value::Null);
            let truthy = match &v {
                Value::Null => false,
                Value::Bool(b) => *b,
                Value::Number(n) => n.as_f64() != Some(0.0),
                Value::String(s) => !s.is_empty(),
                _ => true,
            };
            if truthy {
                return v;
            }
            if tokio::time::Instant::now() >= deadline {
                let seen = self.try_eval(context).await;
                panic!("timed out waiting for {expression}; page: {seen:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Chromium writes the port it picked to `DevToolsActivePort` in its profile.
async fn devtools_port(profile: &Path) -> u16 {
    let file = profile.join("DevToolsActivePort");
    for _ in 0..300 {
        if let Some(port) = std::fs::read_to_string(&file)
            .ok()
            .and_then(|s| s.lines().next().and_then(|l| l.trim().parse().ok()))
        {
            return port;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("Chromium did not open its DevTools port");
}
