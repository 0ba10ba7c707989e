//! The IPC command surface: one generic `api` command that carries any call
//! of the frozen contract, and typed commands for the calls a frontend makes
//! first. Every command resolves with the body the HTTP API answers and
//! rejects with its error envelope (see [`crate::envelope`]); argument names
//! are snake_case, like the contract's keys.

use base64::Engine as _;
use serde_json::{Map, Value, json};
use tauri::{AppHandle, Runtime, State};

use crate::envelope::{ShellError, with_status};
use crate::feed::Feeds;
use crate::service::EmbeddedService;

/// Larger answers (a big asset file) are refused over IPC: the window can
/// fetch them from the service's URL instead.
const MAX_IPC_RESPONSE_BYTES: usize = 64 * 1024 * 1024;
const MAX_PATH_CHARS: usize = 2048;

/// The shell's state: the embedded service, a client for it, the live feeds.
pub struct Shell {
    service: EmbeddedService,
    http: reqwest::Client,
    pub(crate) feeds: Feeds,
}

/// What an IPC call sends as the request body.
pub enum Body {
    None,
    Json(Value),
    Bytes {
        bytes: Vec<u8>,
        content_type: String,
    },
}

impl Shell {
    pub fn new(service: EmbeddedService) -> Self {
        Self {
            service,
            http: reqwest::Client::new(),
            feeds: Feeds::default(),
        }
    }

    pub fn service(&self) -> &EmbeddedService {
        &self.service
    }

    /// Stops the feeds, then the service (see [`EmbeddedService::stop`]).
    pub fn stop(&self) {
        self.feeds.stop_all();
        self.service.stop();
    }

    /// One call of the contract, as an HTTP client would make it.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        query: Option<&Map<String, Value>>,
        body: Body,
    ) -> Result<Value, Value> {
        let method = parse_method(method)?;
        let mut url = self.url(path)?;
        if let Some(query) = query {
            let pairs = query_pairs(query)?;
            url.query_pairs_mut().extend_pairs(pairs);
        }
        let mut request = self
            .http
            .request(method, url)
            .bearer_auth(self.service.token());
        request = match body {
            Body::None => request,
            Body::Json(value) => request.json(&value),
            Body::Bytes {
                bytes,
                content_type,
            } => request
                .header(reqwest::header::CONTENT_TYPE, content_type)
                .body(bytes),
        };
        let response = request.send().await.map_err(|e| {
            ShellError::unavailable(format!("The embedded service did not answer: {e}"))
        })?;
        answer(response).await
    }

    /// `path` on the embedded service, and only there.
    fn url(&self, path: &str) -> Result<reqwest::Url, ShellError> {
        let refuse = |why: &str| ShellError::invalid("invalid_ipc_path", why.to_string());
        if !path.starts_with('/') {
            return Err(refuse("Field 'path' must start with '/'"));
        }
        if path.chars().count() > MAX_PATH_CHARS {
            return Err(refuse("Field 'path' is too long"));
        }
        if path
            .chars()
            .any(|c| c.is_control() || c.is_whitespace() || matches!(c, '?' | '#' | '\\'))
        {
            return Err(refuse(
                "Field 'path' may not hold spaces, control characters, '?', '#' or '\\' (pass the query in 'query')",
            ));
        }
        let url = reqwest::Url::parse(&format!("{}{path}", self.service.base_url()))
            .map_err(|_| refuse("Field 'path' is not a valid path"))?;
        let same_origin = url.host_str() == Some(&self.service.addr().ip().to_string())
            && url.port() == Some(self.service.addr().port());
        if !same_origin {
            return Err(refuse("Field 'path' must stay on the embedded service"));
        }
        Ok(url)
    }

    /// `ws://…` for a feed path with its query.
    pub(crate) fn ws_url(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<String, ShellError> {
        let mut url = self.url(path)?;
        url.query_pairs_mut()
            .extend_pairs(query.iter().map(|(k, v)| (*k, v.as_str())));
        url.set_scheme("ws")
            .map_err(|()| ShellError::invalid("invalid_ipc_path", "not a feed path"))?;
        Ok(url.to_string())
    }

    pub(crate) fn token(&self) -> &str {
        self.service.token()
    }
}

fn parse_method(raw: &str) -> Result<reqwest::Method, ShellError> {
    match raw.trim().to_ascii_uppercase().as_str() {
        "GET" => Ok(reqwest::Method::GET),
        "POST" => Ok(reqwest::Method::POST),
        "PUT" => Ok(reqwest::Method::PUT),
        "PATCH" => Ok(reqwest::Method::PATCH),
        "DELETE" => Ok(reqwest::Method::DELETE),
        _ => Err(ShellError::invalid(
            "invalid_ipc_method",
            "Field 'method' must be one of GET, POST, PUT, PATCH, DELETE",
        )),
    }
}

/// Query values as the HTTP API reads them: strings, numbers and booleans;
/// `null` leaves the key out.
fn query_pairs(query: &Map<String, Value>) -> Result<Vec<(String, String)>, ShellError> {
    let mut pairs = Vec::with_capacity(query.len());
    for (key, value) in query {
        let text = match value {
            Value::Null => continue,
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            Value::Array(_) | Value::Object(_) => {
                return Err(ShellError::invalid(
                    "invalid_ipc_query",
                    format!("Query value '{key}' must be a string, a number or a boolean"),
                ));
            }
        };
        pairs.push((key.clone(), text));
    }
    Ok(pairs)
}

/// The service's answer as the command's outcome: a JSON body as it is (an
/// error body with its status added); any other body base64-encoded.
async fn answer(response: reqwest::Response) -> Result<Value, Value> {
    let status = response.status();
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    if response
        .content_length()
        .is_some_and(|n| n > MAX_IPC_RESPONSE_BYTES as u64)
    {
        return Err(too_large().into());
    }
    let bytes = response
        .bytes()
        .await
        .map_err(|e| ShellError::unavailable(format!("The answer was cut off: {e}")))?;
    if bytes.len() > MAX_IPC_RESPONSE_BYTES {
        return Err(too_large().into());
    }
    if content_type.starts_with("application/json") {
        let body: Value = serde_json::from_slice(&bytes).map_err(|_| unexpected(status))?;
        return if status.is_success() {
            Ok(body)
        } else {
            Err(with_status(body, status.as_u16()))
        };
    }
    if !status.is_success() {
        return Err(unexpected(status).into());
    }
    Ok(json!({
        "ok": true,
        "content_type": content_type,
        "body_base64": base64::engine::general_purpose::STANDARD.encode(&bytes),
    }))
}

fn too_large() -> ShellError {
    ShellError {
        http_status: 413,
        kind: "validation",
        code: "ipc_response_too_large",
        message: format!(
            "The answer is larger than {} MiB; fetch it from the service's URL instead",
            MAX_IPC_RESPONSE_BYTES / (1024 * 1024)
        ),
    }
}

fn unexpected(status: reqwest::StatusCode) -> ShellError {
    ShellError {
        http_status: 502,
        kind: "infra",
        code: "unexpected_response",
        message: format!("The service answered {status} without an error envelope"),
    }
}

/// One path segment, percent-encoded (a slug or an id cannot add segments).
pub(crate) fn segment(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for byte in raw.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    if out.is_empty() || out == "." || out == ".." {
        // Never an empty or a relative segment: the API answers 404 for it.
        out = "%2E%2E%2E".into();
    }
    out
}

/// A required text argument. Every command takes its arguments as JSON
/// values and checks them itself, so a missing or mistyped one is refused
/// in the envelope too (Tauri's own argument errors are bare strings).
fn text(name: &str, value: Option<Value>) -> Result<String, ShellError> {
    match optional_text(name, value)? {
        Some(text) => Ok(text),
        None => Err(ShellError::invalid(
            "missing_field",
            format!("Field '{name}' is required"),
        )),
    }
}

fn optional_text(name: &str, value: Option<Value>) -> Result<Option<String>, ShellError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text)),
        Some(_) => Err(ShellError::invalid(
            "invalid_field_type",
            format!("Field '{name}' must be a string"),
        )),
    }
}

fn optional_int(name: &str, value: Option<Value>) -> Result<Option<i64>, ShellError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) if n.is_i64() => Ok(n.as_i64()),
        Some(_) => Err(ShellError::invalid(
            "invalid_field_type",
            format!("Field '{name}' must be an integer"),
        )),
    }
}

fn object(name: &str, value: Option<Value>) -> Result<Value, ShellError> {
    match value {
        Some(Value::Object(map)) => Ok(Value::Object(map)),
        None | Some(Value::Null) => Err(ShellError::invalid(
            "missing_field",
            format!("Field '{name}' is required"),
        )),
        Some(_) => Err(ShellError::invalid(
            "invalid_field_type",
            format!("Field '{name}' must be an object"),
        )),
    }
}

/// Any call of the contract: `method`, `path` (from the service's root,
/// e.g. `/api/projects`), `query` (an object), and a JSON `body` or raw
/// bytes in `body_base64` with their `content_type` (an image upload).
#[tauri::command(rename_all = "snake_case")]
pub async fn api(
    shell: State<'_, Shell>,
    method: Option<Value>,
    path: Option<Value>,
    query: Option<Value>,
    body: Option<Value>,
    body_base64: Option<Value>,
    content_type: Option<Value>,
) -> Result<Value, Value> {
    let method = text("method", method)?;
    let path = text("path", path)?;
    let query = match query {
        None | Some(Value::Null) => None,
        Some(Value::Object(map)) => Some(map),
        Some(_) => {
            return Err(ShellError::invalid(
                "invalid_field_type",
                "Field 'query' must be an object",
            )
            .into());
        }
    };
    let body = match (body, optional_text("body_base64", body_base64)?) {
        (Some(_), Some(_)) => {
            return Err(ShellError::invalid(
                "invalid_ipc_body",
                "Give either 'body' or 'body_base64', not both",
            )
            .into());
        }
        (Some(json), None) => Body::Json(json),
        (None, Some(encoded)) => Body::Bytes {
            bytes: base64::engine::general_purpose::STANDARD
                .decode(encoded.as_bytes())
                .map_err(|_| {
                    ShellError::invalid("invalid_ipc_body", "Field 'body_base64' is not base64")
                })?,
            content_type: optional_text("content_type", content_type)?
                .unwrap_or_else(|| "application/octet-stream".into()),
        },
        (None, None) => Body::None,
    };
    shell.call(&method, &path, query.as_ref(), body).await
}

/// `GET /health`.
#[tauri::command(rename_all = "snake_case")]
pub async fn health(shell: State<'_, Shell>) -> Result<Value, Value> {
    shell.call("GET", "/health", None, Body::None).await
}

/// `GET /api/projects`.
#[tauri::command(rename_all = "snake_case")]
pub async fn projects_list(shell: State<'_, Shell>) -> Result<Value, Value> {
    shell.call("GET", "/api/projects", None, Body::None).await
}

/// `POST /api/projects` with `project` as the body (create, or update by
/// slug).
#[tauri::command(rename_all = "snake_case")]
pub async fn project_upsert(
    shell: State<'_, Shell>,
    project: Option<Value>,
) -> Result<Value, Value> {
    let project = object("project", project)?;
    shell
        .call("POST", "/api/projects", None, Body::Json(project))
        .await
}

/// `POST /api/projects/{slug}/runs/trigger` with `request` as the body.
#[tauri::command(rename_all = "snake_case")]
pub async fn run_trigger(
    shell: State<'_, Shell>,
    slug: Option<Value>,
    request: Option<Value>,
) -> Result<Value, Value> {
    let slug = text("slug", slug)?;
    let request = object("request", request)?;
    let path = format!("/api/projects/{}/runs/trigger", segment(&slug));
    shell.call("POST", &path, None, Body::Json(request)).await
}

/// `GET /api/projects/{slug}/runs/{run_id}`.
#[tauri::command(rename_all = "snake_case")]
pub async fn run_detail(
    shell: State<'_, Shell>,
    slug: Option<Value>,
    run_id: Option<Value>,
) -> Result<Value, Value> {
    let path = format!(
        "/api/projects/{}/runs/{}",
        segment(&text("slug", slug)?),
        segment(&text("run_id", run_id)?)
    );
    shell.call("GET", &path, None, Body::None).await
}

/// `GET /api/projects/{slug}/runs/{run_id}/events?since=&limit=`.
#[tauri::command(rename_all = "snake_case")]
pub async fn events_since(
    shell: State<'_, Shell>,
    slug: Option<Value>,
    run_id: Option<Value>,
    since: Option<Value>,
    limit: Option<Value>,
) -> Result<Value, Value> {
    let path = format!(
        "/api/projects/{}/runs/{}/events",
        segment(&text("slug", slug)?),
        segment(&text("run_id", run_id)?)
    );
    let mut query = Map::new();
    query.insert("since".into(), optional_int("since", since)?.into());
    query.insert("limit".into(), optional_int("limit", limit)?.into());
    shell.call("GET", &path, Some(&query), Body::None).await
}

/// Opens the project's progress feed (one run's, replayed after `since`,
/// with `run_id`) and forwards every message on the
/// [`crate::feed::FEED_EVENT`] event; resolves with the subscription's id.
#[tauri::command(rename_all = "snake_case")]
pub async fn feed_subscribe<R: Runtime>(
    app: AppHandle<R>,
    shell: State<'_, Shell>,
    slug: Option<Value>,
    run_id: Option<Value>,
    since: Option<Value>,
) -> Result<Value, Value> {
    let slug = text("slug", slug)?;
    let run_id = optional_text("run_id", run_id)?;
    let since = optional_int("since", since)?;
    let id = crate::feed::subscribe(app, &shell, &slug, run_id, since).await?;
    Ok(json!({ "ok": true, "subscription": id }))
}

/// Closes a feed opened by `feed_subscribe`.
#[tauri::command(rename_all = "snake_case")]
pub async fn feed_unsubscribe(
    shell: State<'_, Shell>,
    subscription: Option<Value>,
) -> Result<Value, Value> {
    let Some(id) = optional_int("subscription", subscription)? else {
        return Err(
            ShellError::invalid("missing_field", "Field 'subscription' is required").into(),
        );
    };
    let stopped = u64::try_from(id).is_ok_and(|id| shell.feeds.stop(id));
    Ok(json!({ "ok": true, "subscription": id, "stopped": stopped }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_segment_cannot_add_or_climb_segments() {
        assert_eq!(segment("harbour_tales"), "harbour_tales");
        assert_eq!(segment("../admin"), "..%2Fadmin");
        assert_eq!(segment(".."), "%2E%2E%2E");
        assert_eq!(segment(""), "%2E%2E%2E");
        assert_eq!(segment("a b?c#d"), "a%20b%3Fc%23d");
    }

    #[test]
    fn query_values_are_scalars() {
        let mut q = Map::new();
        q.insert("since".into(), json!(3));
        q.insert("kind".into(), json!("final"));
        q.insert("gone".into(), Value::Null);
        assert_eq!(
            query_pairs(&q).unwrap(),
            vec![
                ("kind".into(), "final".into()),
                ("since".into(), "3".into())
            ]
        );
        q.insert("bad".into(), json!({"a": 1}));
        assert_eq!(query_pairs(&q).unwrap_err().code, "invalid_ipc_query");
    }
}
