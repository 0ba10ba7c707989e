//! The ops console: a static page served by the service itself (no frontend
//! build step), compiled into the binary. It talks to the public API with the
//! operator's token, which it keeps in the tab's session storage.

use actix_web::http::header;
use actix_web::{HttpResponse, web};

const INDEX: &str = include_str!("../../console/index.html");
const SCRIPT: &str = include_str!("../../console/console.js");
const STYLE: &str = include_str!("../../console/console.css");

/// Scripts and styles from this origin only; images and the feed too.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; \
                   connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn file(content_type: &str, body: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(content_type)
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header((header::CONTENT_SECURITY_POLICY, CSP))
        .insert_header(("X-Content-Type-Options", "nosniff"))
        .insert_header(("Referrer-Policy", "no-referrer"))
        .body(body)
}

/// Mounted outside the OpenAPI document: these are pages, not API routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route(
        "/console",
        web::get().to(|| async { file("text/html; charset=utf-8", INDEX) }),
    )
    .route(
        "/console/console.js",
        web::get().to(|| async { file("text/javascript; charset=utf-8", SCRIPT) }),
    )
    .route(
        "/console/console.css",
        web::get().to(|| async { file("text/css; charset=utf-8", STYLE) }),
    );
}
