//! remove.bg and PhotoRoom on loopback, as their API documents describe
//! them: remove.bg on one host (`POST /v1.0/removebg`, `GET /v1.0/account`,
//! header `X-Api-Key`, credits in `X-Credits-Charged`, rate limits in
//! `X-RateLimit-*`); PhotoRoom's segmentation on its SDK host
//! (`POST /v1/segment`) and its account on a different host, the image API
//! (`GET /v1/account`), both with `x-api-key`. Requests are checked against
//! `facts/removebg.json` and `facts/photoroom.json`.

use std::collections::VecDeque;
use std::io::Cursor;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::{Value, json};

use crate::{Window, is_image, parse_multipart};

pub const KEY: &str = "bg-stub-key-0123456789";

pub fn removebg_facts() -> Value {
    serde_json::from_str(include_str!("../facts/removebg.json")).expect("valid facts file")
}

pub fn photoroom_facts() -> Value {
    serde_json::from_str(include_str!("../facts/photoroom.json")).expect("valid facts file")
}

/// What a service answers to the next accepted call (default: a cut-out).
#[derive(Clone, Debug)]
pub enum Reply {
    Image,
    /// An error status with the service's own error body.
    Error {
        status: u16,
        code: &'static str,
    },
    Slow(Duration),
    /// 200 with a body that is not an image.
    NotAnImage,
    /// The cut-out is made (and charged), half of it is sent, then the
    /// connection drops.
    Truncated,
}

#[derive(Default)]
pub struct Service {
    key: String,
    facts: Value,
    script: Mutex<VecDeque<Reply>>,
    calls: Mutex<u32>,
    /// Cut-outs made (charged), including ones cut off in transit.
    served: Mutex<u32>,
    violations: Mutex<Vec<String>>,
    /// remove.bg: credits left (`size=auto` returns a preview below 1).
    credits: Mutex<f64>,
    window: Mutex<Window>,
}

impl Service {
    fn new(key: &str, facts: Value) -> Arc<Self> {
        Arc::new(Self {
            key: key.to_string(),
            facts,
            credits: Mutex::new(1000.0),
            ..Self::default()
        })
    }

    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.script.lock().unwrap().extend(replies);
    }

    pub fn calls(&self) -> u32 {
        *self.calls.lock().unwrap()
    }

    pub fn served(&self) -> u32 {
        *self.served.lock().unwrap()
    }

    pub fn violations(&self) -> Vec<String> {
        self.violations.lock().unwrap().clone()
    }

    pub fn set_credits(&self, credits: f64) {
        *self.credits.lock().unwrap() = credits;
    }

    pub fn credits(&self) -> f64 {
        *self.credits.lock().unwrap()
    }

    pub fn set_rate_limit(&self, requests: usize, window: Duration) {
        self.window.lock().unwrap().limit = Some((requests.max(1), window));
    }

    fn refuse(&self, why: String, response: HttpResponse) -> HttpResponse {
        self.violations.lock().unwrap().push(why);
        response
    }
}

pub struct RemovalStub {
    /// remove.bg's API base (`…/v1.0`).
    pub removebg_url: String,
    /// PhotoRoom's segmentation base (`…/v1` on the SDK host).
    pub photoroom_url: String,
    /// PhotoRoom's image API base for the account (`…/v1` on another host).
    pub photoroom_account_url: String,
    pub removebg: Arc<Service>,
    pub photoroom: Arc<Service>,
}

impl RemovalStub {
    pub async fn start() -> Self {
        Self::start_with_key(KEY).await
    }

    /// Services that accept `key` instead of [`KEY`].
    pub async fn start_with_key(key: &str) -> Self {
        let removebg = Service::new(key, removebg_facts());
        let photoroom = Service::new(key, photoroom_facts());
        let rb = web::Data::from(removebg.clone());
        let removebg_port = crate::serve_loopback(1, move |cfg| {
            cfg.app_data(rb.clone())
                .route("/v1.0/removebg", web::post().to(removebg_remove))
                .route("/v1.0/account", web::get().to(removebg_account));
        });
        let pr = web::Data::from(photoroom.clone());
        let sdk_port = crate::serve_loopback(1, move |cfg| {
            cfg.app_data(pr.clone())
                .route("/v1/segment", web::post().to(photoroom_segment));
        });
        let pr = web::Data::from(photoroom.clone());
        let image_api_port = crate::serve_loopback(1, move |cfg| {
            cfg.app_data(pr.clone())
                .route("/v1/account", web::get().to(photoroom_account));
        });
        Self {
            removebg_url: format!("http://127.0.0.1:{removebg_port}/v1.0"),
            photoroom_url: format!("http://127.0.0.1:{sdk_port}/v1"),
            photoroom_account_url: format!("http://127.0.0.1:{image_api_port}/v1"),
            removebg,
            photoroom,
        }
    }

    /// Scripts both services.
    pub fn script(&self, replies: impl IntoIterator<Item = Reply> + Clone) {
        self.removebg.script(replies.clone());
        self.photoroom.script(replies);
    }

    /// Accepted calls to both services.
    pub fn calls(&self) -> u32 {
        self.removebg.calls() + self.photoroom.calls()
    }

    pub fn violations(&self) -> Vec<String> {
        let mut v = self.removebg.violations();
        v.extend(self.photoroom.violations());
        v
    }
}

fn header<'a>(req: &'a HttpRequest, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

fn removebg_error(
    status: u16,
    code: Option<&str>,
    title: &str,
    detail: Option<&str>,
) -> HttpResponse {
    let mut e = json!({ "title": title });
    if let Some(c) = code {
        e["code"] = json!(c);
    }
    if let Some(d) = detail {
        e["detail"] = json!(d);
    }
    HttpResponse::build(StatusCode::from_u16(status).unwrap()).json(json!({ "errors": [e] }))
}

fn removebg_known(state: &Service, name: &str) -> HttpResponse {
    let e = &state.facts["errors"][name];
    removebg_error(
        e["status"].as_u64().unwrap_or(400) as u16,
        e["code"].as_str(),
        e["title"].as_str().unwrap_or(name),
        e["detail"].as_str(),
    )
}

/// A cut-out of `input`: a transparent margin around an opaque middle,
/// scaled to at most `max_pixels`.
fn cutout(input: &[u8], max_pixels: Option<u64>) -> (Vec<u8>, u32, u32) {
    let img = image::load_from_memory(input)
        .map(|i| i.to_rgba8())
        .unwrap_or_else(|_| image::RgbaImage::from_pixel(64, 48, image::Rgba([90, 90, 90, 255])));
    let img = match max_pixels {
        Some(max) if u64::from(img.width()) * u64::from(img.height()) > max => {
            let scale = (max as f64 / (f64::from(img.width()) * f64::from(img.height()))).sqrt();
            let (w, h) = (
                ((f64::from(img.width()) * scale) as u32).max(1),
                ((f64::from(img.height()) * scale) as u32).max(1),
            );
            image::imageops::resize(&img, w, h, image::imageops::FilterType::Triangle)
        }
        _ => img,
    };
    let (w, h) = img.dimensions();
    let out = image::RgbaImage::from_fn(w, h, |x, y| {
        let inside = x >= w / 4 && x < w - w / 4 && y >= h / 4 && y < h - h / 4;
        let p = img.get_pixel(x, y);
        if inside {
            image::Rgba([p[0], p[1], p[2], 255])
        } else {
            image::Rgba([0, 0, 0, 0])
        }
    });
    let mut bytes = Cursor::new(Vec::new());
    out.write_to(&mut bytes, image::ImageFormat::Png).unwrap();
    (bytes.into_inner(), w, h)
}

/// The scripted answer to an accepted call: the cut-out, an error, or a
/// broken answer.
async fn answered(
    state: &Service,
    reply: Reply,
    ok: impl FnOnce() -> HttpResponse,
    err: impl FnOnce(u16, &str) -> HttpResponse,
    charged_body: Vec<u8>,
) -> HttpResponse {
    match reply {
        Reply::Image => {
            *state.served.lock().unwrap() += 1;
            ok()
        }
        Reply::Slow(d) => {
            tokio::time::sleep(d).await;
            *state.served.lock().unwrap() += 1;
            ok()
        }
        Reply::Error { status, code } => err(status, code),
        Reply::NotAnImage => {
            *state.served.lock().unwrap() += 1;
            HttpResponse::Ok()
                .content_type("image/png")
                .body("<html>not an image</html>")
        }
        Reply::Truncated => {
            *state.served.lock().unwrap() += 1;
            let half = web::Bytes::from(charged_body[..charged_body.len() / 2].to_vec());
            let chunks = futures_util::StreamExt::chain(
                futures_util::stream::iter([Ok::<_, std::io::Error>(half)]),
                futures_util::stream::once(async {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Err(std::io::Error::other("connection dropped"))
                }),
            );
            HttpResponse::Ok()
                .content_type("image/png")
                .streaming(chunks)
        }
    }
}

async fn removebg_remove(
    req: HttpRequest,
    body: web::Bytes,
    state: web::Data<Service>,
) -> HttpResponse {
    let facts = state.facts["removebg"].clone();
    match header(&req, facts["key_header"].as_str().unwrap_or("X-Api-Key")) {
        None => return removebg_known(&state, "missing_key"),
        Some(k) if k != state.key => return removebg_known(&state, "auth_failed"),
        _ => {}
    }
    let content_type = header(&req, "content-type").unwrap_or("").to_string();
    let form = match parse_multipart(&content_type, body).await {
        Ok(f) => f,
        Err(e) => {
            return state.refuse(
                format!("removebg: broken multipart: {e}"),
                removebg_known(&state, "missing_source"),
            );
        }
    };
    let sources: Vec<&String> = form
        .files
        .iter()
        .map(|(n, _)| n)
        .chain(form.text.iter().map(|(n, _)| n))
        .filter(|n| {
            facts["image_sources"]
                .as_array()
                .is_some_and(|a| a.iter().any(|x| x == *n))
        })
        .collect();
    if sources.len() != 1 {
        return state.refuse(
            format!("removebg: {} image sources", sources.len()),
            removebg_known(&state, "missing_source"),
        );
    }
    for (name, value) in &form.text {
        let known = facts["fields"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x == name))
            || facts["image_sources"]
                .as_array()
                .is_some_and(|a| a.iter().any(|x| x == name));
        if !known {
            // remove.bg ignores what it does not know; a correct adapter sends none.
            state
                .violations
                .lock()
                .unwrap()
                .push(format!("removebg: unknown field '{name}'"));
        }
        if let Some(allowed) = facts["enums"][name].as_array()
            && !allowed.iter().any(|x| x == value)
        {
            let error = match name.as_str() {
                "size" => "invalid_size",
                "format" => "invalid_format",
                _ => "invalid_size",
            };
            return state.refuse(
                format!("removebg: {name} '{value}'"),
                removebg_known(&state, error),
            );
        }
    }
    let Some((_, image)) = form.files.iter().find(|(n, _)| n == "image_file") else {
        return state.refuse(
            "removebg: only image_file uploads are expected".into(),
            removebg_known(&state, "missing_source"),
        );
    };
    if !is_image(image) {
        return state.refuse(
            "removebg: the upload is not an image".into(),
            removebg_known(&state, "invalid_file_type"),
        );
    }
    if image.len() as u64 > facts["max_file_bytes"].as_u64().unwrap_or(12 << 20) {
        return state.refuse(
            "removebg: file too large".into(),
            removebg_error(
                400,
                Some("file_too_large"),
                "File too large",
                Some("File exceeds limit of 12MB"),
            ),
        );
    }
    let window = state.window.lock().unwrap().admit();
    if let Some(w) = &window
        && w.retry_after.is_some()
    {
        let mut r = removebg_known(&state, "rate_limit");
        window_headers(&mut r, w, true);
        return r;
    }
    *state.calls.lock().unwrap() += 1;
    let size = form
        .text
        .iter()
        .find(|(n, _)| n == "size")
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| "preview".into());
    // What it costs: the requested size's credits; `auto` gives less when
    // credits are low.
    let mut charge = facts["credits"][&size].as_f64().unwrap_or(1.0);
    let mut preview = charge < 1.0;
    {
        let mut credits = state.credits.lock().unwrap();
        if size == "auto" && *credits < 1.0 {
            charge = 0.25;
            preview = true;
        }
        if *credits < charge {
            return removebg_known(&state, "insufficient_credits");
        }
        *credits -= charge;
    }
    let max = preview.then(|| (facts["preview_megapixels"].as_f64().unwrap_or(0.25) * 1e6) as u64);
    let (png, w, h) = cutout(image, max);
    let reply = state
        .script
        .lock()
        .unwrap()
        .pop_front()
        .unwrap_or(Reply::Image);
    if let Reply::Error { .. } = reply {
        // Refused calls are not charged.
        *state.credits.lock().unwrap() += charge;
    }
    let ok_png = png.clone();
    let mut r = answered(
        &state,
        reply,
        move || {
            HttpResponse::Ok()
                .content_type("image/png")
                .insert_header(("X-Credits-Charged", charge.to_string()))
                .insert_header(("X-Width", w.to_string()))
                .insert_header(("X-Height", h.to_string()))
                .insert_header(("X-Type", "other"))
                .body(ok_png)
        },
        |status, code| {
            let detail = match code {
                "unknown_foreground" => None,
                _ => Some("stub error"),
            };
            removebg_error(status, Some(code), &format!("stub error {code}"), detail)
        },
        png,
    )
    .await;
    if let Some(w) = &window {
        window_headers(&mut r, w, false);
    }
    r
}

fn window_headers(r: &mut HttpResponse, w: &crate::WindowState, refused: bool) {
    use actix_web::http::header::{HeaderName, HeaderValue};
    let reset = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| (d + w.reset_after).as_secs())
        .unwrap_or(0);
    let mut set = |name: &'static str, value: String| {
        if let Ok(v) = HeaderValue::from_str(&value) {
            r.headers_mut().insert(HeaderName::from_static(name), v);
        }
    };
    set("x-ratelimit-limit", w.limit.to_string());
    set("x-ratelimit-remaining", w.remaining.to_string());
    set("x-ratelimit-reset", reset.to_string());
    if refused && let Some(wait) = w.retry_after {
        set("retry-after", wait.as_secs().max(1).to_string());
    }
}

async fn removebg_account(req: HttpRequest, state: web::Data<Service>) -> HttpResponse {
    match header(&req, "X-Api-Key") {
        None => removebg_known(&state, "missing_key"),
        Some(k) if k != state.key => removebg_known(&state, "auth_failed"),
        _ => {
            let credits = *state.credits.lock().unwrap();
            HttpResponse::Ok().json(json!({ "data": { "attributes": {
                "credits": { "total": credits, "subscription": credits, "payg": 0, "enterprise": 0 },
                "api": { "free_calls": 50, "sizes": "all" },
            }}}))
        }
    }
}

fn photoroom_error(state: &Service, name: &str, fill: &[(&str, &str)]) -> HttpResponse {
    let e = &state.facts["errors"][name];
    let mut detail = e["detail"].as_str().unwrap_or(name).to_string();
    for (k, v) in fill {
        detail = detail.replace(&format!("{{{k}}}"), v);
    }
    let status = e["status"].as_u64().unwrap_or(400);
    HttpResponse::build(StatusCode::from_u16(status as u16).unwrap())
        .json(json!({ "detail": detail, "status_code": status, "type": e["type"] }))
}

async fn photoroom_segment(
    req: HttpRequest,
    body: web::Bytes,
    state: web::Data<Service>,
) -> HttpResponse {
    let facts = state.facts["segment"].clone();
    if header(&req, "x-api-key") != Some(state.key.as_str()) {
        return photoroom_error(&state, "forbidden", &[]);
    }
    let content_type = header(&req, "content-type").unwrap_or("").to_string();
    let form = match parse_multipart(&content_type, body).await {
        Ok(f) => f,
        Err(e) => {
            return state.refuse(
                format!("photoroom: broken multipart: {e}"),
                photoroom_error(&state, "missing_image", &[]),
            );
        }
    };
    let known = |name: &str| {
        facts["fields"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x == name))
    };
    for (name, value) in &form.text {
        if !known(name) {
            return state.refuse(
                format!("photoroom: unknown field '{name}'"),
                photoroom_error(
                    &state,
                    "invalid_value",
                    &[("param", name), ("value", value)],
                ),
            );
        }
        if let Some(allowed) = facts["enums"][name].as_array()
            && !allowed.iter().any(|x| x == value)
        {
            return state.refuse(
                format!("photoroom: {name} '{value}'"),
                photoroom_error(
                    &state,
                    "invalid_value",
                    &[("param", name), ("value", value)],
                ),
            );
        }
    }
    let Some((_, image)) = form.files.iter().find(|(n, _)| n == "image_file") else {
        return state.refuse(
            "photoroom: no image_file".into(),
            photoroom_error(&state, "missing_image", &[]),
        );
    };
    if !is_image(image) {
        return state.refuse(
            "photoroom: the upload is not an image".into(),
            photoroom_error(&state, "missing_image", &[]),
        );
    }
    {
        let mut credits = state.credits.lock().unwrap();
        if *credits < 1.0 {
            return photoroom_error(&state, "payment_required", &[]);
        }
        *credits -= 1.0;
    }
    *state.calls.lock().unwrap() += 1;
    let (png, _, _) = cutout(image, None);
    let reply = state
        .script
        .lock()
        .unwrap()
        .pop_front()
        .unwrap_or(Reply::Image);
    let ok_png = png.clone();
    answered(
        &state,
        reply,
        move || {
            HttpResponse::Ok()
                .content_type("image/png")
                .insert_header(("x-uncertainty-score", "0.05"))
                .body(ok_png)
        },
        |status, code| {
            HttpResponse::build(StatusCode::from_u16(status).unwrap())
                .json(json!({ "detail": format!("stub error {code}"), "status_code": status, "type": code }))
        },
        png,
    )
    .await
}

async fn photoroom_account(req: HttpRequest, state: web::Data<Service>) -> HttpResponse {
    match header(&req, "x-api-key") {
        None => {
            HttpResponse::BadRequest().json(json!({ "error": { "message": "apiKey: Required" } }))
        }
        Some(k) if k != state.key => {
            HttpResponse::Forbidden().json(json!({ "error": { "message": "Invalid API key" } }))
        }
        _ => {
            let credits = *state.credits.lock().unwrap();
            HttpResponse::Ok()
                .json(json!({ "credits": { "available": credits, "subscription": credits } }))
        }
    }
}
