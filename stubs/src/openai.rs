//! OpenAI's Images API on loopback: `POST /v1/images/edits` (multipart) and
//! `POST /v1/images/generations` (JSON), `GET /v1/models[/{model}]`. Every
//! request is checked against `facts/openai-images.json` (fields, types,
//! values per model, retired models, image parts) and refused the way
//! OpenAI refuses it; accepted ones are answered with an image, the token
//! `usage` and rate-limit headers, or with what the test scripted.

use std::collections::{HashMap, VecDeque};
use std::io::Cursor;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use base64::Engine as _;
use serde_json::{Value, json};

use crate::{Window, go_duration, hash, is_image, parse_multipart};

pub const KEY: &str = "sk-stub-test-key-0123456789";

/// The facts the stub holds the adapter to.
pub fn facts() -> Value {
    serde_json::from_str(include_str!("../facts/openai-images.json")).expect("valid facts file")
}

/// What the stub answers to the next accepted call (default: a good image).
#[derive(Clone, Debug)]
pub enum Reply {
    Image,
    /// An error status with OpenAI's error body (and `Retry-After`).
    Error {
        status: u16,
        code: &'static str,
        retry_after: Option<u32>,
    },
    /// Sleeps this long before answering with an image.
    Slow(Duration),
    /// The image is made (and billed), the headers and half the body go
    /// out, then the connection drops.
    Truncated,
    /// A gateway's HTML page with status 200 (nothing was generated).
    NotJson,
    /// 200 with usage but no image (billed).
    NoImage,
    /// 200 with usage and a broken image (billed).
    BadBase64,
}

#[derive(Default)]
pub struct State {
    key: String,
    facts: Value,
    script: Mutex<VecDeque<Reply>>,
    /// Accepted requests per idempotency key.
    calls: Mutex<HashMap<String, u32>>,
    /// Images produced per key: what OpenAI would bill.
    served: Mutex<HashMap<String, u32>>,
    images_per_call: Mutex<Vec<usize>>,
    /// Requests the facts refused: what a correct adapter never sends.
    violations: Mutex<Vec<String>>,
    /// The accepted requests' parameters, for assertions.
    requests: Mutex<Vec<Value>>,
    latency: Mutex<Duration>,
    output_size: Mutex<(u32, u32)>,
    unverified: Mutex<bool>,
    with_usage: Mutex<bool>,
    window: Mutex<Window>,
    throttled: Mutex<u64>,
    served_signal: tokio::sync::Notify,
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
            facts: facts(),
            output_size: Mutex::new((64, 48)),
            with_usage: Mutex::new(true),
            ..State::default()
        });
        let shared = web::Data::from(state.clone());
        let port = crate::serve_loopback(2, move |cfg| {
            cfg.app_data(shared.clone())
                .route("/v1/images/edits", web::post().to(edits))
                .route("/v1/images/generations", web::post().to(generations))
                .route("/v1/models", web::get().to(models))
                .route("/v1/models/{model}", web::get().to(model));
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

    /// The size of the images it returns (default 64x48).
    pub fn set_output_size(&self, width: u32, height: u32) {
        *self.state.output_size.lock().unwrap() = (width, height);
    }

    /// Answers 403 as for an organization not verified for image models.
    pub fn set_unverified(&self, unverified: bool) {
        *self.state.unverified.lock().unwrap() = unverified;
    }

    /// Leaves `usage` out of answers (some OpenAI-compatible gateways do).
    pub fn set_usage(&self, with_usage: bool) {
        *self.state.with_usage.lock().unwrap() = with_usage;
    }

    /// At most `requests` accepted per `window`; more are answered 429
    /// with `retry-after-ms` and `x-ratelimit-*` headers.
    pub fn set_rate_limit(&self, requests: usize, window: Duration) {
        self.state.window.lock().unwrap().limit = Some((requests.max(1), window));
    }

    /// Accepted calls per idempotency key.
    pub fn calls(&self) -> HashMap<String, u32> {
        self.state.calls.lock().unwrap().clone()
    }

    /// Images produced per idempotency key: what a paid provider bills,
    /// including answers that were cut off in transit.
    pub fn images_served(&self) -> HashMap<String, u32> {
        self.state.served.lock().unwrap().clone()
    }

    pub fn served_total(&self) -> u32 {
        self.state.served.lock().unwrap().values().sum()
    }

    /// Waits until at least `n` images were served in all.
    pub async fn wait_served(&self, n: u32) {
        loop {
            let notified = self.state.served_signal.notified();
            if self.served_total() >= n {
                return;
            }
            notified.await;
        }
    }

    /// How many image parts each accepted call carried.
    pub fn images_per_call(&self) -> Vec<usize> {
        self.state.images_per_call.lock().unwrap().clone()
    }

    /// Requests the facts refused (an adapter that matches the API sends none).
    pub fn violations(&self) -> Vec<String> {
        self.state.violations.lock().unwrap().clone()
    }

    /// The parameters of every accepted request, in order.
    pub fn requests(&self) -> Vec<Value> {
        self.state.requests.lock().unwrap().clone()
    }

    /// 429s answered because of the rate limit.
    pub fn throttled(&self) -> u64 {
        *self.state.throttled.lock().unwrap()
    }
}

fn error(
    status: u16,
    kind: &str,
    code: Option<&str>,
    param: Option<&str>,
    message: String,
) -> HttpResponse {
    HttpResponse::build(StatusCode::from_u16(status).unwrap())
        .insert_header(("x-request-id", "req_stub_error"))
        .json(
            json!({ "error": { "message": message, "type": kind, "param": param, "code": code } }),
        )
}

/// An error from the facts' catalogue of errors, with `{…}` filled in.
fn known_error(
    state: &State,
    name: &str,
    param: Option<&str>,
    fill: &[(&str, &str)],
) -> HttpResponse {
    let e = &state.facts["errors"][name];
    let mut message = e["message"].as_str().unwrap_or(name).to_string();
    for (k, v) in fill {
        message = message.replace(&format!("{{{k}}}"), v);
    }
    error(
        e["status"].as_u64().unwrap_or(400) as u16,
        e["type"].as_str().unwrap_or("invalid_request_error"),
        e["code"].as_str(),
        param,
        message,
    )
}

fn refuse(state: &State, why: String, response: HttpResponse) -> HttpResponse {
    state.violations.lock().unwrap().push(why);
    response
}

fn authorized(req: &HttpRequest, state: &State) -> bool {
    req.headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        == Some(&format!("Bearer {}", state.key))
}

fn unauthorized(req: &HttpRequest, state: &State) -> HttpResponse {
    // OpenAI shows the key's first and last characters.
    let sent = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let shown = if sent.len() > 8 {
        format!("{}***{}", &sent[..6], &sent[sent.len() - 3..])
    } else {
        "***".to_string()
    };
    known_error(state, "invalid_api_key", None, &[("key", &shown)])
}

fn idempotency_key(req: &HttpRequest) -> String {
    req.headers()
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

fn today() -> String {
    chrono::Utc::now().date_naive().to_string()
}

/// The free model list (what a credentials check asks for).
async fn models(req: HttpRequest, state: web::Data<State>) -> HttpResponse {
    if !authorized(&req, &state) {
        return unauthorized(&req, &state);
    }
    let today = today();
    let data: Vec<Value> = state.facts["models"]
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(_, m)| m["retired_on"].as_str().is_none_or(|d| d > today.as_str()))
        .map(|(id, _)| json!({ "id": id, "object": "model", "owned_by": "system" }))
        .collect();
    HttpResponse::Ok().json(json!({ "object": "list", "data": data }))
}

async fn model(req: HttpRequest, path: web::Path<String>, state: web::Data<State>) -> HttpResponse {
    if !authorized(&req, &state) {
        return unauthorized(&req, &state);
    }
    let name = path.into_inner();
    let m = &state.facts["models"][&name];
    if m.is_null()
        || m["retired_on"]
            .as_str()
            .is_some_and(|d| d <= today().as_str())
    {
        return known_error(&state, "model_not_found", None, &[("model", &name)]);
    }
    HttpResponse::Ok().json(json!({ "id": name, "object": "model", "owned_by": "system" }))
}

/// A request's parameters, as strings, whichever encoding carried them.
struct Params {
    text: HashMap<String, Value>,
    images: Vec<Vec<u8>>,
}

/// Checks a request against the facts; `Err` is OpenAI's refusal.
#[allow(clippy::result_large_err)] // test code: one response per refused request
fn check(state: &State, endpoint: &str, p: &Params) -> Result<(String, Value), HttpResponse> {
    let facts = &state.facts;
    let spec = &facts["endpoints"][endpoint];
    let known = |name: &str| {
        spec["text_fields"].get(name).is_some()
            || spec["file_fields"]
                .as_array()
                .is_some_and(|f| f.iter().any(|x| x == name))
    };
    for name in p.text.keys() {
        if !known(name) {
            return Err(refuse(
                state,
                format!("{endpoint}: unknown parameter '{name}'"),
                known_error(state, "unknown_parameter", Some(name), &[("param", name)]),
            ));
        }
    }
    for name in spec["required"].as_array().into_iter().flatten() {
        let name = name.as_str().unwrap_or_default();
        let present = if name == "image" {
            !p.images.is_empty()
        } else {
            p.text.contains_key(name)
        };
        if !present {
            return Err(refuse(
                state,
                format!("{endpoint}: missing '{name}'"),
                known_error(
                    state,
                    "missing_required_parameter",
                    Some(name),
                    &[("param", name)],
                ),
            ));
        }
    }
    // Types: multipart values are strings that must parse.
    for (name, value) in &p.text {
        let ok = match spec["text_fields"][name].as_str().unwrap_or("string") {
            "integer" => {
                value.as_i64().is_some() || value.as_str().is_some_and(|s| s.parse::<i64>().is_ok())
            }
            "boolean" => {
                value.is_boolean() || value.as_str().is_some_and(|s| s == "true" || s == "false")
            }
            _ => value.is_string(),
        };
        if !ok {
            return Err(refuse(
                state,
                format!("{endpoint}: '{name}' has the wrong type ({value})"),
                known_error(
                    state,
                    "invalid_value",
                    Some(name),
                    &[
                        ("value", &value.to_string()),
                        ("allowed", "a value of the documented type"),
                    ],
                ),
            ));
        }
    }
    let text = |name: &str| {
        p.text.get(name).and_then(|v| {
            v.as_str()
                .map(str::to_string)
                .or_else(|| Some(v.to_string()))
        })
    };
    let model_name = text("model").unwrap_or_else(|| {
        spec["default_model"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    });
    let model = &facts["models"][&model_name];
    if model.is_null() {
        let allowed: Vec<&str> = facts["models"]
            .as_object()
            .map(|m| m.keys().map(String::as_str).collect())
            .unwrap_or_default();
        return Err(refuse(
            state,
            format!("{endpoint}: unknown model '{model_name}'"),
            known_error(
                state,
                "invalid_value",
                Some("model"),
                &[("value", &model_name), ("allowed", &allowed.join(", "))],
            ),
        ));
    }
    if model["retired_on"]
        .as_str()
        .is_some_and(|d| d <= today().as_str())
    {
        return Err(refuse(
            state,
            format!("{endpoint}: retired model '{model_name}'"),
            known_error(state, "model_not_found", None, &[("model", &model_name)]),
        ));
    }
    let listed = |key: &str, value: &str| {
        model[key]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x == value))
    };
    if !listed("endpoints", endpoint) {
        return Err(refuse(
            state,
            format!("{endpoint}: model '{model_name}' does not serve this endpoint"),
            known_error(
                state,
                "invalid_value",
                Some("model"),
                &[
                    ("value", &model_name),
                    ("allowed", "a model this endpoint serves"),
                ],
            ),
        ));
    }
    for (param, list) in [
        ("size", "sizes"),
        ("quality", "qualities"),
        ("background", "backgrounds"),
        ("output_format", "output_formats"),
        ("input_fidelity", "input_fidelity"),
    ] {
        if let Some(value) = text(param)
            && !listed(list, &value)
        {
            let allowed: Vec<String> = model[list]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect();
            return Err(refuse(
                state,
                format!("{endpoint}: {param} '{value}' is not accepted by {model_name}"),
                known_error(
                    state,
                    "invalid_value",
                    Some(param),
                    &[("value", &value), ("allowed", &allowed.join(", "))],
                ),
            ));
        }
    }
    if text("background").as_deref() == Some("transparent")
        && text("output_format").as_deref() == Some("jpeg")
    {
        return Err(refuse(
            state,
            format!("{endpoint}: transparent background with jpeg"),
            error(
                400,
                "invalid_request_error",
                Some("invalid_value"),
                Some("background"),
                "Transparent background requires output_format png or webp.".into(),
            ),
        ));
    }
    if let Some(n) = text("n").and_then(|n| n.parse::<i64>().ok())
        && !(facts["n"]["min"].as_i64().unwrap_or(1)..=facts["n"]["max"].as_i64().unwrap_or(10))
            .contains(&n)
    {
        return Err(refuse(
            state,
            format!("{endpoint}: n = {n}"),
            known_error(
                state,
                "invalid_value",
                Some("n"),
                &[("value", &n.to_string()), ("allowed", "1 to 10")],
            ),
        ));
    }
    let max_images = facts["max_images"].as_u64().unwrap_or(16) as usize;
    if p.images.len() > max_images || p.images.iter().any(|i| !is_image(i)) {
        return Err(refuse(
            state,
            format!(
                "{endpoint}: {} images, or one that is not png/jpeg/webp",
                p.images.len()
            ),
            error(
                400,
                "invalid_request_error",
                Some("invalid_image"),
                Some("image"),
                "Invalid image: each must be a png, webp or jpg file, at most 16.".into(),
            ),
        ));
    }
    let prompt_chars = text("prompt").map(|s| s.chars().count()).unwrap_or(0);
    if prompt_chars > facts["max_prompt_chars"].as_u64().unwrap_or(32000) as usize {
        return Err(refuse(
            state,
            format!("{endpoint}: prompt of {prompt_chars} characters"),
            error(
                400,
                "invalid_request_error",
                Some("string_above_max_length"),
                Some("prompt"),
                "The prompt is too long.".into(),
            ),
        ));
    }
    let params = json!({
        "endpoint": endpoint, "model": model_name, "size": text("size"), "quality": text("quality"),
        "background": text("background"), "output_format": text("output_format"),
        "input_fidelity": text("input_fidelity"), "images": p.images.len(), "prompt_chars": prompt_chars,
    });
    Ok((model_name, params))
}

async fn generations(req: HttpRequest, body: web::Bytes, state: web::Data<State>) -> HttpResponse {
    if !authorized(&req, &state) {
        return unauthorized(&req, &state);
    }
    if !content_type_is(&req, "application/json") {
        return refuse(
            &state,
            "generations: not JSON".into(),
            error(
                400,
                "invalid_request_error",
                None,
                None,
                "Expected a JSON body.".into(),
            ),
        );
    }
    let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(&body) else {
        return refuse(
            &state,
            "generations: body is not a JSON object".into(),
            error(
                400,
                "invalid_request_error",
                None,
                None,
                "We could not parse the JSON body of your request.".into(),
            ),
        );
    };
    let params = Params {
        text: map.into_iter().collect(),
        images: Vec::new(),
    };
    let answer = accept(&req, &state, "generations", params).await;
    if answer.status().is_success() || answer.status().as_u16() >= 500 {
        state.images_per_call.lock().unwrap().push(0);
    }
    answer
}

async fn edits(req: HttpRequest, body: web::Bytes, state: web::Data<State>) -> HttpResponse {
    if !authorized(&req, &state) {
        return unauthorized(&req, &state);
    }
    let content_type = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    if !content_type.starts_with("multipart/form-data") {
        return refuse(
            &state,
            "edits: not multipart".into(),
            error(
                400,
                "invalid_request_error",
                None,
                None,
                "Expected multipart/form-data.".into(),
            ),
        );
    }
    let form = match parse_multipart(&content_type, body).await {
        Ok(f) => f,
        Err(e) => {
            return refuse(
                &state,
                format!("edits: broken multipart: {e}"),
                error(
                    400,
                    "invalid_request_error",
                    None,
                    None,
                    "Could not parse multipart form.".into(),
                ),
            );
        }
    };
    let mut text: HashMap<String, Value> = form
        .text
        .into_iter()
        .map(|(k, v)| (k, Value::String(v)))
        .collect();
    let mut images = Vec::new();
    for (name, bytes) in form.files {
        match name.as_str() {
            "image" | "image[]" => images.push(bytes),
            // A mask is checked like an image but not counted as one.
            "mask" => {}
            other => {
                text.insert(other.to_string(), Value::String("<file>".into()));
            }
        }
    }
    let per_call = images.len();
    let params = Params { text, images };
    let answer = accept(&req, &state, "edits", params).await;
    if answer.status().is_success() || answer.status().as_u16() >= 500 {
        state.images_per_call.lock().unwrap().push(per_call);
    }
    answer
}

fn content_type_is(req: &HttpRequest, wanted: &str) -> bool {
    req.headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with(wanted))
}

/// A request that passed the facts: rate limit, verification, the script.
async fn accept(req: &HttpRequest, state: &State, endpoint: &str, p: Params) -> HttpResponse {
    let (model_name, params) = match check(state, endpoint, &p) {
        Ok(v) => v,
        Err(refusal) => return refusal,
    };
    if *state.unverified.lock().unwrap() {
        return known_error(
            state,
            "unverified_organization",
            None,
            &[("model", &model_name)],
        );
    }
    let window = state.window.lock().unwrap().admit();
    if let Some(w) = &window
        && let Some(wait) = w.retry_after
    {
        *state.throttled.lock().unwrap() += 1;
        let mut r = known_error(
            state,
            "rate_limit_exceeded",
            None,
            &[("wait", &go_duration(wait))],
        );
        rate_headers(&mut r, w);
        return r;
    }
    let key = idempotency_key(req);
    *state.calls.lock().unwrap().entry(key.clone()).or_default() += 1;
    state.requests.lock().unwrap().push(params.clone());
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
    let mut answer = answer(state, &key, &params, &p, reply).await;
    if let Some(w) = &window {
        rate_headers(&mut answer, w);
    }
    answer
}

fn rate_headers(r: &mut HttpResponse, w: &crate::WindowState) {
    use actix_web::http::header::{HeaderName, HeaderValue};
    let mut set = |name: &'static str, value: String| {
        if let Ok(v) = HeaderValue::from_str(&value) {
            r.headers_mut().insert(HeaderName::from_static(name), v);
        }
    };
    set("x-ratelimit-limit-requests", w.limit.to_string());
    set("x-ratelimit-remaining-requests", w.remaining.to_string());
    set("x-ratelimit-reset-requests", go_duration(w.reset_after));
    if let Some(wait) = w.retry_after {
        set("retry-after-ms", wait.as_millis().to_string());
        set("retry-after", wait.as_secs().max(1).to_string());
    }
}

fn mark_served(state: &State, key: &str) {
    *state
        .served
        .lock()
        .unwrap()
        .entry(key.to_string())
        .or_default() += 1;
    state.served_signal.notify_waiters();
}

/// The token usage OpenAI reports for such a request.
fn usage(state: &State, params: &Value) -> Value {
    let facts = &state.facts;
    let quality = params["quality"]
        .as_str()
        .filter(|q| *q != "auto")
        .unwrap_or("medium");
    let size = params["size"]
        .as_str()
        .filter(|s| *s != "auto")
        .unwrap_or("1024x1024");
    let out = facts["output_tokens"][quality][size]
        .as_u64()
        .unwrap_or(1056);
    let text_tokens = (params["prompt_chars"].as_u64().unwrap_or(0)).div_ceil(4);
    let fidelity = params["input_fidelity"].as_str().unwrap_or("high");
    let per_image = facts["typical_input_image_tokens"][fidelity]
        .as_u64()
        .unwrap_or(1000);
    let image_tokens = params["images"].as_u64().unwrap_or(0) * per_image;
    json!({
        "total_tokens": text_tokens + image_tokens + out,
        "input_tokens": text_tokens + image_tokens,
        "output_tokens": out,
        "input_tokens_details": { "text_tokens": text_tokens, "image_tokens": image_tokens },
        "output_tokens_details": { "image_tokens": out, "text_tokens": 0 },
    })
}

/// An image marked with the full hash of the idempotency key (a real
/// provider's outputs differ from call to call), in the requested format.
fn image_bytes(state: &State, key: &str, format: &str) -> Vec<u8> {
    let (w, h) = *state.output_size.lock().unwrap();
    let bytes = hash(key).to_le_bytes();
    let img = image::RgbaImage::from_fn(w, h, |x, y| {
        if y == 0 && (x as usize) < bytes.len() {
            let b = bytes[x as usize];
            image::Rgba([b, b, b, 255])
        } else {
            image::Rgba([120, 120, 120, 255])
        }
    });
    let mut out = Cursor::new(Vec::new());
    let fmt = match format {
        "jpeg" => image::ImageFormat::Jpeg,
        "webp" => image::ImageFormat::WebP,
        _ => image::ImageFormat::Png,
    };
    if fmt == image::ImageFormat::Jpeg {
        image::DynamicImage::ImageRgba8(img)
            .to_rgb8()
            .write_to(&mut out, fmt)
            .unwrap();
    } else {
        img.write_to(&mut out, fmt).unwrap();
    }
    out.into_inner()
}

async fn answer(
    state: &State,
    key: &str,
    params: &Value,
    _p: &Params,
    reply: Reply,
) -> HttpResponse {
    let format = params["output_format"]
        .as_str()
        .unwrap_or("png")
        .to_string();
    let body = |b64: String| {
        let mut v = json!({
            "created": 1_764_000_000,
            "data": [{ "b64_json": b64 }],
            "background": "opaque",
            "output_format": format,
            "size": params["size"].as_str().filter(|s| *s != "auto").unwrap_or("1024x1024"),
            "quality": params["quality"].as_str().filter(|q| *q != "auto").unwrap_or("medium"),
        });
        if *state.with_usage.lock().unwrap() {
            v["usage"] = usage(state, params);
        }
        v
    };
    let encode = |bytes: Vec<u8>| base64::engine::general_purpose::STANDARD.encode(bytes);
    match reply {
        Reply::Image => {
            let b = body(encode(image_bytes(state, key, &format)));
            mark_served(state, key);
            HttpResponse::Ok()
                .insert_header(("x-request-id", format!("req_{key}")))
                .json(b)
        }
        Reply::Slow(d) => {
            tokio::time::sleep(d).await;
            let b = body(encode(image_bytes(state, key, &format)));
            mark_served(state, key);
            HttpResponse::Ok().json(b)
        }
        Reply::Error {
            status,
            code,
            retry_after,
        } => {
            let kind = if code == "insufficient_quota" {
                "insufficient_quota"
            } else {
                "invalid_request_error"
            };
            let mut r = error(status, kind, Some(code), None, format!("stub error {code}"));
            if let Some(s) = retry_after {
                r.headers_mut().insert(
                    actix_web::http::header::RETRY_AFTER,
                    actix_web::http::header::HeaderValue::from(s),
                );
            }
            r
        }
        Reply::Truncated => {
            let full = serde_json::to_vec(&body(encode(image_bytes(state, key, &format)))).unwrap();
            // The provider made (and billed) the image; the answer is lost.
            mark_served(state, key);
            let half = web::Bytes::copy_from_slice(&full[..full.len() / 2]);
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
        Reply::NoImage => {
            mark_served(state, key);
            let mut b = body(String::new());
            b["data"] = json!([]);
            HttpResponse::Ok().json(b)
        }
        Reply::BadBase64 => {
            mark_served(state, key);
            HttpResponse::Ok().json(body("!!not base64!!".into()))
        }
    }
}
