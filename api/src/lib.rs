//! Atelier's HTTP facade (actix-web): routes, the frozen v1 envelope, auth and
//! the generated OpenAPI document. No business logic lives here: handlers parse,
//! authorise, call a domain service in `actors`, and shape the response.

pub mod cache;
pub mod dto;
pub mod error;
pub mod extract;
mod openapi_truth;
mod routes;

use std::sync::Arc;
use std::time::SystemTime;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::http::{Method, StatusCode};
use actix_web::middleware::Compress;
use actix_web::{App, HttpMessage, HttpRequest, HttpResponse, web};
use domain::auth::TokenVerifier;
use domain::{DatabaseConnection, StorageRoots};
use tracing_actix_web::{DefaultRootSpanBuilder, RequestId, RootSpanBuilder, TracingLogger};
use utoipa::OpenApi;
use utoipa_actix_web::AppExt;

use crate::error::{ApiError, ErrorKind};

pub use domain::CONTRACT_VERSION;
pub const CONTRACT_HEADER: &str = "x-atelier-contract";
pub const SERVICE_NAME: &str = "atelier";

/// Facts fixed at startup.
#[derive(Clone, Debug)]
pub struct ApiConfig {
    pub dev_bypass: bool,
    /// First-token bootstrap allowed (setting on and the server bound to loopback).
    pub bootstrap_allowed: bool,
    pub json_limit_bytes: usize,
    pub database_backend: &'static str,
    pub schema_version: String,
    /// How long a rendered list may be served without revalidation (other
    /// nodes' writes become visible within this window; 0 always revalidates).
    pub read_cache_ms: u64,
    /// The WebSocket feed's ping interval and idle timeout.
    pub ws_heartbeat: std::time::Duration,
    pub ws_idle_timeout: std::time::Duration,
    /// Where project secrets' master key comes from (no key material).
    pub secret_keys: domain::secrets::cipher::KeySource,
    /// Largest accepted upload, and the image limits checked before decoding.
    pub upload_limit_bytes: usize,
    pub image_limits: domain::DecodeLimits,
    /// Where URLs given by users may point (webhooks, S3 endpoints).
    pub outbound: domain::netpolicy::OutboundPolicy,
}

/// Shared by every worker thread.
pub struct AppState {
    pub db: DatabaseConnection,
    pub tokens: Arc<TokenVerifier>,
    pub roots: StorageRoots,
    pub config: ApiConfig,
    pub started: SystemTime,
    pub routes: RouteCatalogue,
    /// The served `/openapi.json`, generated and encoded at its first request:
    /// building it runs the documentation code of every route and keeps
    /// megabytes that an idle service (a desktop app) has no use for.
    openapi: std::sync::OnceLock<actix_web::web::Bytes>,
    pub renders: cache::RenderCache,
    /// Project rows by slug for read requests (see `extract::ProjectAccess`).
    pub project_rows: cache::RowCache<entities::projects::Model>,
    pub engine: actors::engine::Engine,
}

impl AppState {
    /// What opening a project's files needs.
    pub fn file_access(&self) -> domain::projects::FileAccess<'_> {
        domain::projects::FileAccess {
            roots: &self.roots,
            keys: Some(&self.config.secret_keys),
            outbound: &self.config.outbound,
        }
    }

    pub fn new(
        db: DatabaseConnection,
        tokens: Arc<TokenVerifier>,
        roots: StorageRoots,
        config: ApiConfig,
        engine: actors::engine::Engine,
    ) -> Self {
        let read_cache_ms = config.read_cache_ms;
        Self {
            db,
            tokens,
            roots,
            config,
            started: SystemTime::now(),
            routes: routes::catalogue(),
            openapi: std::sync::OnceLock::new(),
            renders: cache::RenderCache::new(std::time::Duration::from_millis(read_cache_ms)),
            project_rows: cache::RowCache::new(std::time::Duration::from_millis(read_cache_ms)),
            engine,
        }
    }

    /// The served `/openapi.json` (see [`served_openapi`]), encoded once.
    pub fn openapi_document(&self) -> actix_web::web::Bytes {
        self.openapi
            .get_or_init(|| {
                let value = served_openapi(&openapi());
                serde_json::to_vec(&value).unwrap_or_default().into()
            })
            .clone()
    }
}

/// The mounted (method, path template) pairs, read from the handlers' own
/// route attributes (the list the OpenAPI document is generated from); used
/// for 404-vs-405 and `/health`.
#[derive(Clone, Debug, Default)]
pub struct RouteCatalogue {
    entries: Vec<(Method, String)>,
}

impl RouteCatalogue {
    fn add(&mut self, method: Method, template: String) {
        self.entries.push((method, template));
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// `(METHOD, path template)` pairs, sorted.
    pub fn pairs(&self) -> Vec<(String, String)> {
        let mut v: Vec<_> = self
            .entries
            .iter()
            .map(|(m, p)| (m.to_string(), p.clone()))
            .collect();
        v.sort();
        v
    }

    /// The methods served on `path` (empty: no such path).
    fn methods_on(&self, path: &str) -> Vec<String> {
        let mut methods: Vec<String> = self
            .entries
            .iter()
            .filter(|(_, template)| template_matches(template, path))
            .map(|(m, _)| m.to_string())
            .collect();
        methods.sort();
        methods.dedup();
        methods
    }
}

/// Whether `path` is an instance of the route `template`: its segments equal,
/// a `{param}` segment standing for any non-empty one (actix's `[^/]+`; no
/// route uses a custom pattern or a parameter inside a segment). Plain
/// comparison: the regular expressions actix would compile for this cost
/// ~30 KiB of memory per route.
fn template_matches(template: &str, path: &str) -> bool {
    let (mut template, mut path) = (template.split('/'), path.split('/'));
    loop {
        match (template.next(), path.next()) {
            (None, None) => return true,
            (Some(t), Some(p)) if t.starts_with('{') && t.ends_with('}') => {
                if p.is_empty() {
                    return false;
                }
            }
            (Some(t), Some(p)) if t == p => {}
            _ => return false,
        }
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Atelier API",
        description = "Project-first AI image studio backend. Frozen v1 contract: flat envelopes, \
                       errors as {ok:false, error, error_kind, error_code}."
    ),
    modifiers(&SecurityAddon),
    components(schemas(error::ErrorBody, error::ErrorKind))
)]
struct ApiDoc;

struct SecurityAddon;

impl utoipa::Modify for SecurityAddon {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearerAuth",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The served document: the generated one, completed with the failures
/// every route shares (see `openapi_truth`).
pub fn served_openapi(doc: &utoipa::openapi::OpenApi) -> serde_json::Value {
    let mut value = serde_json::to_value(doc).unwrap_or_default();
    openapi_truth::complete(&mut value);
    value
}

/// The OpenAPI document of every mounted route.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let (_, mut doc) = App::new()
        .into_utoipa_app()
        .openapi(ApiDoc::openapi())
        .configure(routes::configure_documented)
        .split_for_parts();
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    doc
}

/// The actix application: routes, extractor error handlers, default service,
/// tracing with request ids, and the contract/request-id response headers.
pub fn app(
    state: web::Data<AppState>,
) -> App<
    impl ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<impl MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    let limit = state.config.json_limit_bytes;
    App::new()
        .app_data(state)
        .app_data(web::PayloadConfig::new(limit))
        .app_data(web::QueryConfig::default().error_handler(extract::query_error_handler))
        .app_data(web::PathConfig::default().error_handler(extract::path_error_handler))
        .configure(routes::configure)
        .default_service(web::to(unmatched))
        .configure(routes::console::configure)
        // The API explorer (Swagger UI, assets compiled in) on the served
        // document, so it shows exactly what /openapi.json says.
        .route(
            "/docs",
            web::get().to(|| async {
                HttpResponse::PermanentRedirect()
                    .insert_header((actix_web::http::header::LOCATION, "/docs/"))
                    .finish()
            }),
        )
        .service(
            utoipa_swagger_ui::SwaggerUi::new("/docs/{_:.*}").config(
                utoipa_swagger_ui::Config::new(["/openapi.json"]).persist_authorization(true),
            ),
        )
        .wrap(Compress::default())
        .wrap(actix_web::middleware::from_fn(refuse_encoded_bodies))
        .wrap(actix_web::middleware::from_fn(response_headers))
        .wrap(TracingLogger::<RedactedSpan>::new())
}

/// The request log's span: like tracing-actix-web's default, but with the
/// path only — query strings may carry a token (the WebSocket feed accepts
/// one there for browsers) and never reach the log.
struct RedactedSpan;

impl RootSpanBuilder for RedactedSpan {
    fn on_request_start(request: &ServiceRequest) -> tracing::Span {
        let request_id = request
            .extensions()
            .get::<RequestId>()
            .map(|id| id.to_string())
            .unwrap_or_default();
        let route = request.match_pattern().unwrap_or_default();
        tracing::info_span!(
            "HTTP request",
            http.method = %request.method(),
            http.route = %route,
            http.target = %request.path(),
            http.status_code = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
            request_id = %request_id,
            exception.message = tracing::field::Empty,
            exception.details = tracing::field::Empty,
        )
    }

    fn on_request_end<B: MessageBody>(
        span: tracing::Span,
        outcome: &Result<ServiceResponse<B>, actix_web::Error>,
    ) {
        DefaultRootSpanBuilder::on_request_end(span, outcome);
    }
}

async fn response_headers(
    req: ServiceRequest,
    next: actix_web::middleware::Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let request_id = req.extensions().get::<RequestId>().map(|id| id.to_string());
    let mut res = next.call(req).await?;
    let headers = res.headers_mut();
    headers.insert(
        HeaderName::from_static(CONTRACT_HEADER),
        HeaderValue::from_static(CONTRACT_VERSION),
    );
    if let Some(id) = request_id.and_then(|id| HeaderValue::from_str(&id).ok()) {
        headers.insert(HeaderName::from_static("x-request-id"), id);
    }
    Ok(res)
}

/// Request bodies are taken as sent: a compressed body (`Content-Encoding:
/// gzip`, …) could inflate far beyond the size limit before it is checked,
/// so it is refused before anything reads it.
async fn refuse_encoded_bodies(
    req: ServiceRequest,
    next: actix_web::middleware::Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<actix_web::body::EitherBody<impl MessageBody>>, actix_web::Error> {
    let encoded = req
        .headers()
        .get(actix_web::http::header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| !v.trim().eq_ignore_ascii_case("identity"));
    if encoded {
        let err = ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorKind::Validation,
            "unsupported_content_encoding",
            "Request bodies must not be compressed (send them without Content-Encoding)",
        );
        let (req, _) = req.into_parts();
        let res = actix_web::ResponseError::error_response(&err);
        return Ok(ServiceResponse::new(req, res).map_into_right_body());
    }
    Ok(next.call(req).await?.map_into_left_body())
}

/// 405 (with `Allow`) when the path exists under another method, else 404.
async fn unmatched(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let path = req.path();
    let methods = state.routes.methods_on(path);
    if methods.is_empty() {
        return actix_web::ResponseError::error_response(&ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorKind::Validation,
            "route_not_found",
            format!("No route for {} {path}", req.method()),
        ));
    }
    let mut res = actix_web::ResponseError::error_response(&ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        ErrorKind::Validation,
        "method_not_allowed",
        format!("Method {} is not allowed on {path}", req.method()),
    ));
    if let Ok(allow) = actix_web::http::header::HeaderValue::from_str(&methods.join(", ")) {
        res.headers_mut()
            .insert(actix_web::http::header::ALLOW, allow);
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_catalogue_lists_exactly_the_documented_routes() {
        let doc = openapi();
        let mut documented = Vec::new();
        for (path, item) in doc.paths.paths.iter() {
            for (method, present) in [
                ("GET", item.get.is_some()),
                ("POST", item.post.is_some()),
                ("PUT", item.put.is_some()),
                ("DELETE", item.delete.is_some()),
                ("PATCH", item.patch.is_some()),
            ] {
                if present {
                    documented.push((method.to_string(), path.clone()));
                }
            }
        }
        documented.sort();
        assert_eq!(routes::catalogue().pairs(), documented);
    }

    #[test]
    fn a_template_matches_whole_segments_only() {
        let t = "/api/projects/{slug}/runs/{run_id}";
        assert!(template_matches(t, "/api/projects/a/runs/1"));
        assert!(!template_matches(t, "/api/projects//runs/1"));
        assert!(!template_matches(t, "/api/projects/a/runs/1/"));
        assert!(!template_matches(t, "/api/projects/a/runs"));
        assert!(!template_matches(t, "/api/projects/a/b/runs/1"));
        assert!(!template_matches(t, "/api/projects/a/jobs/1"));
        assert!(template_matches("/health", "/health"));
        assert!(!template_matches("/health", "/healthz"));
    }

    #[test]
    fn methods_on_a_path_come_from_every_route_that_matches_it() {
        let routes = routes::catalogue();
        let methods = routes.methods_on("/api/projects/demo");
        assert!(methods.contains(&"GET".to_string()), "{methods:?}");
        assert!(routes.methods_on("/api/nothing-here").is_empty());
    }
}
