//! A loopback server speaking remove.bg's (`POST /v1.0/removebg`, header
//! `X-Api-Key`) and PhotoRoom's (`POST /v1/segment`, header `x-api-key`) wire
//! formats: multipart `image_file` in, the cut-out PNG out, each service's
//! own JSON error bodies; scripted per test.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::json;

pub const KEY: &str = "bg-stub-key-0123456789";

#[derive(Clone, Debug)]
pub enum Reply {
    Image,
    Error { status: u16, code: &'static str },
    Slow(Duration),
    NotAnImage,
}

#[derive(Default)]
pub struct State {
    key: String,
    script: Mutex<VecDeque<Reply>>,
    calls: Mutex<u32>,
}

pub struct BgStub {
    pub removebg_url: String,
    pub photoroom_url: String,
    state: Arc<State>,
}

impl BgStub {
    pub async fn start() -> Self {
        Self::start_with_key(KEY).await
    }

    /// A stub that accepts `key` instead of [`KEY`].
    pub async fn start_with_key(key: &str) -> Self {
        let state = Arc::new(State {
            key: key.to_string(),
            ..State::default()
        });
        let shared = web::Data::from(state.clone());
        let port = crate::helpers::serve_loopback(1, move |cfg| {
            cfg.app_data(shared.clone())
                .route("/v1.0/removebg", web::post().to(removebg))
                .route("/v1/segment", web::post().to(segment))
                .route("/v1.0/account", web::get().to(account))
                .route("/v1/account", web::get().to(account));
        });
        Self {
            removebg_url: format!("http://127.0.0.1:{port}/v1.0"),
            photoroom_url: format!("http://127.0.0.1:{port}/v1"),
            state,
        }
    }

    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.state.script.lock().unwrap().extend(replies);
    }

    pub fn calls(&self) -> u32 {
        *self.state.calls.lock().unwrap()
    }
}

fn cutout() -> Vec<u8> {
    let img = image::RgbaImage::from_fn(64, 48, |x, y| {
        if (16..48).contains(&x) && (12..36).contains(&y) {
            image::Rgba([40, 40, 40, 255])
        } else {
            image::Rgba([0, 0, 0, 0])
        }
    });
    imaging::encode_png(&img).unwrap()
}

/// `None` when the upload is well formed; else the status to refuse it with.
fn refused(req: &HttpRequest, body: &[u8], header: &str, key: &str) -> Option<u16> {
    let key_ok = req.headers().get(header).and_then(|v| v.to_str().ok()) == Some(key);
    let text = String::from_utf8_lossy(body);
    let shape_ok = text.contains("name=\"image_file\"") && body.windows(4).any(|w| w == b"\x89PNG");
    match (key_ok, shape_ok) {
        (false, _) => Some(403),
        (_, false) => Some(400),
        _ => None,
    }
}

async fn answer(state: &State, error: impl Fn(u16, &str) -> HttpResponse) -> HttpResponse {
    *state.calls.lock().unwrap() += 1;
    // Bound first: the lock must not be held across the awaits below.
    let reply = state
        .script
        .lock()
        .unwrap()
        .pop_front()
        .unwrap_or(Reply::Image);
    match reply {
        Reply::Image => HttpResponse::Ok()
            .content_type("image/png")
            .insert_header(("x-request-id", "bg_req_1"))
            .body(cutout()),
        Reply::Slow(d) => {
            tokio::time::sleep(d).await;
            HttpResponse::Ok().content_type("image/png").body(cutout())
        }
        Reply::NotAnImage => HttpResponse::Ok().content_type("image/png").body("nope"),
        Reply::Error { status, code } => error(status, code),
    }
}

async fn removebg(req: HttpRequest, body: web::Bytes, state: web::Data<State>) -> HttpResponse {
    let error = |status: u16, code: &str| {
        HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap())
            .json(json!({ "errors": [{ "title": format!("stub {code}"), "code": code }] }))
    };
    if let Some(status) = refused(&req, &body, "x-api-key", &state.key) {
        return error(status, "auth_failed");
    }
    answer(&state, error).await
}

/// The account's credits: what a credentials check asks for.
async fn account(req: HttpRequest, state: web::Data<State>) -> HttpResponse {
    let key_ok =
        req.headers().get("x-api-key").and_then(|v| v.to_str().ok()) == Some(state.key.as_str());
    if !key_ok {
        return HttpResponse::Forbidden()
            .json(json!({ "errors": [{ "title": "Invalid API key", "code": "auth_failed" }] }));
    }
    HttpResponse::Ok().json(json!({ "data": { "attributes": { "credits": { "total": 50 } } } }))
}

async fn segment(req: HttpRequest, body: web::Bytes, state: web::Data<State>) -> HttpResponse {
    let error = |status: u16, code: &str| {
        HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap())
            .json(json!({ "detail": format!("stub {code}"), "status_code": status, "type": code }))
    };
    if let Some(status) = refused(&req, &body, "x-api-key", &state.key) {
        return error(status, "forbidden");
    }
    answer(&state, error).await
}
