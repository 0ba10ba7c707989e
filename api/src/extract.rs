//! Request extractors: the authenticated principal, a JSON body that always
//! fails into the envelope, and query/path error handlers.

use std::net::IpAddr;

use actix_web::dev::Payload;
use actix_web::http::StatusCode;
use actix_web::http::header::{AUTHORIZATION, CONTENT_TYPE};
use actix_web::{FromRequest, HttpRequest, web};
use domain::{Principal, TokenPrincipal};
use futures_util::future::LocalBoxFuture;
use serde::de::DeserializeOwned;

use crate::AppState;
use crate::error::{ApiError, ErrorKind};

/// The caller, authenticated by `Authorization: Bearer <token>` (or the dev bypass).
pub struct Auth(pub Principal);

/// Like [`Auth`], but lets `POST /auth/token` through as the bootstrap principal
/// while no active token exists, the server listens on loopback and the client
/// connects from loopback.
pub struct AuthOrBootstrap(pub Principal);

fn bearer(req: &HttpRequest) -> Result<Option<String>, ApiError> {
    let Some(value) = req.headers().get(AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value
        .to_str()
        .map_err(|_| ApiError::unauthorized("Invalid or expired token"))?
        .trim();
    let (scheme, token) = value.split_once(char::is_whitespace).unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(ApiError::unauthorized(
            "Missing Authorization: Bearer token",
        ));
    }
    Ok(Some(token.trim().to_string()))
}

async fn authenticate(state: &AppState, token: &str) -> Result<Principal, ApiError> {
    match state.tokens.verify(&state.db, token).await? {
        Some(p) => Ok(Principal::Token(p)),
        None => Err(ApiError::unauthorized("Invalid or expired token")),
    }
}

fn state_of(req: &HttpRequest) -> Result<web::Data<AppState>, ApiError> {
    req.app_data::<web::Data<AppState>>()
        .cloned()
        .ok_or_else(ApiError::internal)
}

/// Resolves the caller; with `allow_bootstrap`, a request without a token
/// becomes [`Principal::Bootstrap`] when the first-token rule allows it.
async fn resolve(req: &HttpRequest, allow_bootstrap: bool) -> Result<Principal, ApiError> {
    let state = state_of(req)?;
    if state.config.dev_bypass {
        return Ok(Principal::DevBypass);
    }
    if let Some(token) = bearer(req)? {
        return authenticate(&state, &token).await;
    }
    let peer_loopback = req.peer_addr().is_some_and(|a| is_loopback(a.ip()));
    if allow_bootstrap
        && state.config.bootstrap_allowed
        && peer_loopback
        && domain::auth::bootstrap_open(&state.db).await?
    {
        return Ok(Principal::Bootstrap);
    }
    Err(ApiError::unauthorized(
        "Missing Authorization: Bearer token",
    ))
}

/// For the WebSocket feed: `Authorization: Bearer` or, for clients that
/// cannot set headers (browsers), the token as a query parameter. The
/// request log never records query strings (see `RedactedSpan`).
pub async fn principal_from_header_or(
    req: &HttpRequest,
    query_token: Option<&str>,
) -> Result<Principal, ApiError> {
    let state = state_of(req)?;
    if state.config.dev_bypass {
        return Ok(Principal::DevBypass);
    }
    if let Some(token) = bearer(req)? {
        return authenticate(&state, &token).await;
    }
    match query_token.map(str::trim).filter(|t| !t.is_empty()) {
        Some(token) => authenticate(&state, token).await,
        None => Err(ApiError::unauthorized(
            "Missing Authorization: Bearer token",
        )),
    }
}

impl FromRequest for Auth {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let req = req.clone();
        Box::pin(async move { resolve(&req, false).await.map(Auth) })
    }
}

/// An operator: an unscoped (admin) token, or the development bypass. Every
/// `/admin/*` route takes this, so the rule lives in one place.
pub struct Admin(pub Principal);

impl FromRequest for Admin {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let req = req.clone();
        Box::pin(async move {
            match resolve(&req, false).await? {
                p @ (Principal::DevBypass
                | Principal::Token(TokenPrincipal {
                    project_id: None, ..
                })) => Ok(Admin(p)),
                _ => Err(ApiError::from(domain::ServiceError::Forbidden(
                    "An unscoped (admin) token is required".into(),
                ))),
            }
        })
    }
}

/// The project the route's `{slug}` names, authorised for the caller (a
/// project-scoped token on another project: 403; an unknown slug: 404).
pub struct ProjectAccess {
    pub project: entities::projects::Model,
    pub principal: Principal,
}

impl FromRequest for ProjectAccess {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let req = req.clone();
        Box::pin(async move {
            let principal = resolve(&req, false).await?;
            ProjectSlug::of(&req, principal)?.authorize_in(&req).await
        })
    }
}

/// The caller and the route's `{slug}`, not looked up yet: for routes that
/// check their body before the project (v1's order, 400 before 404), which
/// call [`ProjectSlug::authorize`] once the body has passed.
pub struct ProjectSlug {
    principal: Principal,
    slug: String,
}

impl ProjectSlug {
    fn of(req: &HttpRequest, principal: Principal) -> Result<Self, ApiError> {
        let slug = req
            .match_info()
            .get("slug")
            .ok_or_else(ApiError::internal)?
            .to_string();
        Ok(Self { principal, slug })
    }

    async fn authorize_in(self, req: &HttpRequest) -> Result<ProjectAccess, ApiError> {
        let state = state_of(req)?;
        if req.method() != actix_web::http::Method::GET {
            return self.authorize(&state).await;
        }
        // Reads poll: the project row is reused while this process has
        // written nothing since it was read (and for at most the read-cache
        // window). Access is checked on every request all the same.
        let slug = domain::projects::parse_slug(&self.slug)?;
        let generation = domain::db::write_generation();
        let project = match state.project_rows.get(&slug, generation) {
            Some(p) => Some(p),
            None => {
                let found = domain::projects::find_by_slug(&state.db, &slug).await?;
                if let Some(p) = &found {
                    state.project_rows.put(slug, p.clone(), generation);
                }
                found
            }
        };
        Ok(ProjectAccess {
            project: domain::projects::admit(&self.principal, project)?,
            principal: self.principal,
        })
    }

    /// Looks the project up and checks the caller may act on it.
    pub async fn authorize(self, state: &AppState) -> Result<ProjectAccess, ApiError> {
        let project = domain::projects::authorize(&state.db, &self.principal, &self.slug).await?;
        Ok(ProjectAccess {
            project,
            principal: self.principal,
        })
    }
}

impl FromRequest for ProjectSlug {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let req = req.clone();
        Box::pin(async move {
            let principal = resolve(&req, false).await?;
            ProjectSlug::of(&req, principal)
        })
    }
}

impl FromRequest for AuthOrBootstrap {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let req = req.clone();
        Box::pin(async move { resolve(&req, true).await.map(AuthOrBootstrap) })
    }
}

pub fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// A JSON request body. An empty body reads as `{}`; anything else must be
/// UTF-8 JSON under the size limit, sent as `application/json` (or without a
/// content type). Unknown fields are ignored; typed fields are enforced.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned + 'static> FromRequest for JsonBody<T> {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let req = req.clone();
        let bytes = web::Bytes::from_request(&req, payload);
        Box::pin(async move {
            if let Some(ct) = req.headers().get(CONTENT_TYPE) {
                let ct = ct.to_str().unwrap_or("").to_ascii_lowercase();
                let essence = ct.split(';').next().unwrap_or("").trim();
                if !(essence == "application/json" || essence.ends_with("+json")) {
                    return Err(ApiError::new(
                        StatusCode::UNSUPPORTED_MEDIA_TYPE,
                        ErrorKind::Validation,
                        "unsupported_media_type",
                        "Expected request with Content-Type: application/json",
                    ));
                }
            }
            let bytes = bytes.await.map_err(|e| payload_error(&e))?;
            parse_json(&bytes).map(JsonBody)
        })
    }
}

fn payload_error(err: &actix_web::Error) -> ApiError {
    if err.as_response_error().status_code() == StatusCode::PAYLOAD_TOO_LARGE {
        too_large()
    } else {
        ApiError::validation("invalid_body", "Could not read the request body")
    }
}

pub fn too_large() -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        ErrorKind::Validation,
        "payload_too_large",
        "Request body is too large",
    )
}

pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let text = std::str::from_utf8(bytes)
        .map_err(|_| ApiError::validation("invalid_utf8", "Request body is not valid UTF-8"))?;
    let text = if text.trim().is_empty() { "{}" } else { text };
    serde_json::from_str(text).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            ErrorKind::Validation,
            "invalid_field_type",
            format!(
                "Request body has a field of the wrong type: {}",
                without_values(&e)
            ),
        ),
        _ => ApiError::validation(
            "malformed_json",
            format!("Request body is not valid JSON: {e}"),
        ),
    })
}

/// What serde says of a wrong value, without the value (it may be a
/// secret): "invalid type: string \"sk-…\", expected u32" becomes
/// "expected u32"; schema words (field names) are kept.
fn without_values(e: &serde_json::Error) -> String {
    let message = e.to_string();
    let message = message
        .rsplit_once(" at line ")
        .map_or(message.as_str(), |(m, _)| m);
    let described = match message.split_once(", expected ") {
        Some((_, expected)) => format!("expected {expected}"),
        None if message.starts_with("invalid") || message.starts_with("unknown") => {
            "a value is not of the expected form".to_string()
        }
        None => message.to_string(),
    };
    format!("{described} (line {}, column {})", e.line(), e.column())
}

pub fn query_error_handler(
    err: actix_web::error::QueryPayloadError,
    _: &HttpRequest,
) -> actix_web::Error {
    ApiError::validation("invalid_query", format!("Invalid query string: {err}")).into()
}

pub fn path_error_handler(err: actix_web::error::PathError, _: &HttpRequest) -> actix_web::Error {
    ApiError::validation("invalid_path", format!("Invalid path parameter: {err}")).into()
}
