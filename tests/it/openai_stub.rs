//! A loopback server speaking OpenAI's Images wire format
//! (`POST /v1/images/edits`, multipart in; `POST /v1/images/generations`, JSON
//! in; `data[0].b64_json` out, OpenAI's error bodies), scripted per test and counting calls per idempotency key.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{HttpRequest, HttpResponse, web};
use base64::Engine as _;
use serde_json::json;

pub const KEY: &str = "sk-stub-test-key-0123456789";

/// What the stub answers to the next call (default: a good image).
#[derive(Clone, Debug)]
pub enum Reply {
    Image,
    /// An error status with OpenAI's error body.
    Error {
        status: u16,
        code: &'static str,
        retry_after: Option<u32>,
    },
    /// Sleeps this long before answering with an image.
    Slow(Duration),
    /// Sends half a body, then drops the connection.
    Truncated,
    NotJson,
    NoImage,
    BadBase64,
}

#[derive(Default)]
pub struct State {
    /// The API key it accepts.
    key: String,
    script: Mutex<VecDeque<Reply>>,
    calls: Mutex<HashMap<String, u32>>,
    images_served: Mutex<HashMap<String, u32>>,
    images_per_call: Mutex<Vec<usize>>,
    latency: Mutex<Duration>,
}

pub struct OpenAiStub {
    pub base_url: String,
    pub state: Arc<State>,
}

impl OpenAiStub {
    pub async fn start() -> Self {
        Self::start_with_key(KEY).await
    }

    /// Accepting `key` (a test can name an environment variable that is
    /// always set, instead of changing the process environment).
    pub async fn start_with_key(key: &str) -> Self {
        let state = Arc::new(State {
            key: key.to_string(),
            ..State::default()
        });
        let shared = web::Data::from(state.clone());
        let port = crate::helpers::serve_loopback(2, move |cfg| {
            cfg.app_data(shared.clone())
                .route("/v1/images/edits", web::post().to(edits))
                .route("/v1/images/generations", web::post().to(generations))
                .route("/v1/models", web::get().to(models));
        });
        Self {
            base_url: format!("http://127.0.0.1:{port}/v1"),
            state,
        }
    }

    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.state.script.lock().unwrap().extend(replies);
    }

    pub fn set_latency(&self, latency: Duration) {
        *self.state.latency.lock().unwrap() = latency;
    }

    /// Calls received per idempotency key.
    pub fn calls(&self) -> HashMap<String, u32> {
        self.state.calls.lock().unwrap().clone()
    }

    /// How many `image[]` parts each accepted call carried.
    pub fn images_per_call(&self) -> Vec<usize> {
        self.state.images_per_call.lock().unwrap().clone()
    }

    /// Images served per idempotency key (what a paid provider bills).
    pub fn images_served(&self) -> HashMap<String, u32> {
        self.state.images_served.lock().unwrap().clone()
    }
}

fn error_body(status: u16, code: &str) -> HttpResponse {
    let message = match code {
        "invalid_api_key" => "Incorrect API key provided: sk-stu***789.".to_string(),
        "moderation_blocked" => "Your request was rejected by the safety system.".to_string(),
        _ => format!("stub error {code}"),
    };
    HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap())
        .insert_header(("x-request-id", "req_stub_error"))
        .json(json!({ "error": { "message": message, "type": "invalid_request_error", "param": null, "code": code } }))
}

/// A grey image marked with the request's idempotency key, as a real
/// provider's outputs differ from call to call.
fn image_b64(key: &str) -> String {
    // FNV-1a of the key, one byte per pixel of the first row: distinct keys,
    // distinct images (a one-byte shade would collide).
    let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    let mut img = image::RgbaImage::from_pixel(64, 48, image::Rgba([120, 120, 120, 255]));
    for (x, byte) in hash.to_le_bytes().into_iter().enumerate() {
        img.put_pixel(x as u32, 0, image::Rgba([byte, byte, byte, 255]));
    }
    let png = imaging::encode_png(&img).unwrap();
    base64::engine::general_purpose::STANDARD.encode(png)
}

fn image_body(b64: String) -> serde_json::Value {
    json!({
        "created": 1_764_000_000,
        "data": [{ "b64_json": b64 }],
        "usage": { "total_tokens": 100, "input_tokens": 50, "output_tokens": 50 }
    })
}

fn authorized(req: &HttpRequest, state: &State) -> bool {
    req.headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        == Some(&format!("Bearer {}", state.key))
}

fn content_type_is(req: &HttpRequest, wanted: &str) -> bool {
    req.headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with(wanted))
}

fn idempotency_key(req: &HttpRequest) -> String {
    req.headers()
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

/// The model list: what a credentials check asks for (free).
async fn models(req: HttpRequest, state: web::Data<State>) -> HttpResponse {
    if !authorized(&req, &state) {
        return error_body(401, "invalid_api_key");
    }
    HttpResponse::Ok()
        .json(json!({ "object": "list", "data": [{ "id": "gpt-image-1", "object": "model" }] }))
}

/// Text to image: a JSON body with model, prompt and size, no image.
async fn generations(req: HttpRequest, body: web::Bytes, state: web::Data<State>) -> HttpResponse {
    if !authorized(&req, &state) {
        return error_body(401, "invalid_api_key");
    }
    let parsed: Option<serde_json::Value> = serde_json::from_slice(&body).ok();
    let valid = content_type_is(&req, "application/json")
        && parsed.as_ref().is_some_and(|b| {
            ["model", "prompt", "size", "quality"]
                .iter()
                .all(|f| b[f].is_string())
                && b.get("image").is_none()
        });
    if !valid {
        return error_body(400, "invalid_request");
    }
    let key = idempotency_key(&req);
    *state.calls.lock().unwrap().entry(key.clone()).or_default() += 1;
    state.images_per_call.lock().unwrap().push(0);
    answer(&state, key).await
}

async fn edits(req: HttpRequest, body: web::Bytes, state: web::Data<State>) -> HttpResponse {
    if !authorized(&req, &state) {
        return error_body(401, "invalid_api_key");
    }
    let multipart = content_type_is(&req, "multipart/form-data");
    let text = String::from_utf8_lossy(&body);
    let has_fields = ["model", "prompt", "size", "quality", "image[]"]
        .iter()
        .all(|f| text.contains(&format!("name=\"{f}\"")));
    let has_png = body.windows(4).any(|w| w == b"\x89PNG");
    if !multipart || !has_fields || !has_png {
        return error_body(400, "invalid_request");
    }
    let key = idempotency_key(&req);
    *state.calls.lock().unwrap().entry(key.clone()).or_default() += 1;
    state
        .images_per_call
        .lock()
        .unwrap()
        .push(text.matches("name=\"image[]\"").count());
    answer(&state, key).await
}

/// The scripted reply to an accepted call.
async fn answer(state: &State, key: String) -> HttpResponse {
    let reply = state
        .script
        .lock()
        .unwrap()
        .pop_front()
        .unwrap_or(Reply::Image);
    let latency = *state.latency.lock().unwrap();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let served = || {
        *state
            .images_served
            .lock()
            .unwrap()
            .entry(key.clone())
            .or_default() += 1
    };
    match reply {
        Reply::Image => {
            served();
            HttpResponse::Ok()
                .insert_header(("x-request-id", format!("req_{key}")))
                .json(image_body(image_b64(&key)))
        }
        Reply::Slow(d) => {
            tokio::time::sleep(d).await;
            served();
            HttpResponse::Ok().json(image_body(image_b64(&key)))
        }
        Reply::Error {
            status,
            code,
            retry_after,
        } => {
            let mut r = error_body(status, code);
            if let Some(s) = retry_after {
                r.headers_mut().insert(
                    actix_web::http::header::RETRY_AFTER,
                    actix_web::http::header::HeaderValue::from(s),
                );
            }
            r
        }
        Reply::Truncated => {
            let full = serde_json::to_vec(&image_body(image_b64(&key))).unwrap();
            let half = web::Bytes::copy_from_slice(&full[..full.len() / 2]);
            // The headers and half the body go out; then the connection drops.
            let chunks = futures_util::StreamExt::chain(
                futures_util::stream::iter([Ok::<_, std::io::Error>(half)]),
                futures_util::stream::once(async {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Err(std::io::Error::other("connection dropped"))
                }),
            );
            HttpResponse::Ok()
                .content_type("application/json")
                .streaming(chunks)
        }
        Reply::NotJson => HttpResponse::Ok()
            .content_type("text/html")
            .body("<html>gateway</html>"),
        Reply::NoImage => HttpResponse::Ok().json(json!({ "created": 1, "data": [] })),
        Reply::BadBase64 => HttpResponse::Ok().json(image_body("!!not base64!!".into())),
    }
}
