//! The frozen error envelope: `{ok:false, error, error_kind, error_code}`,
//! plus the additive `error_detail`.
//!
//! `error_code` is what a v1 client knows: v1 answers every validation
//! failure of its store with the generic `validation_error`, and only a few
//! cases with their own code ([`V1_CODES`]). Atelier distinguishes more; a
//! more specific code than v1 had goes in `error_detail.code` (with the
//! field it concerns, when there is one), and `error_code` stays v1's.
//!
//! Every failure leaves the service in this shape, including the ones actix
//! itself detects (bad JSON, wrong content type, oversized body, bad query,
//! unknown route, wrong method): see [`json_error_handler`] and friends.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use domain::{ErrorClass, ServiceError};
use serde::Serialize;
use utoipa::ToSchema;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ErrorKind {
    Validation,
    Provider,
    Infra,
    Policy,
    Unknown,
}

/// The codes v1 itself sends in `error_code`; a 400 validation failure
/// with any other code is sent as `validation_error` (the specific code in
/// `error_detail.code`).
pub const V1_CODES: &[&str] = &[
    "validation_error",
    "not_found",
    "invalid_mode",
    "invalid_request",
    "invalid_project_slug",
    "planning_preflight_failed",
    "project_root_managed",
    "config_validation_failed",
    "spend_confirmation_required",
    "pipeline_command_failed",
    "unauthorized",
    "forbidden",
    "internal_error",
];

/// **New** (additive): what exactly went wrong.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Atelier's specific code (docs/api.md); equal to `error_code` when
    /// v1 had a code of its own for the case.
    pub code: String,
    /// The request field concerned, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// Body of every error response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// Always `false`.
    pub ok: bool,
    /// Human-readable message (never contains secrets or internal details).
    pub error: String,
    pub error_kind: ErrorKind,
    /// v1's machine-readable code (see [`V1_CODES`] and docs/api.md).
    pub error_code: String,
    pub error_detail: ErrorDetail,
}

/// The field a message names: our messages say `Field 'x' …` or
/// `Query 'x' …` whenever one field is at fault.
fn field_of(message: &str) -> Option<String> {
    let rest = ["Field '", "Query '"]
        .iter()
        .find_map(|p| message.find(p).map(|i| &message[i + p.len()..]))?;
    rest.split_once('\'').map(|(f, _)| f.to_string())
}

impl ErrorBody {
    fn new(status: StatusCode, kind: ErrorKind, code: &str, message: &str) -> Self {
        let v1_code = if status == StatusCode::BAD_REQUEST
            && kind == ErrorKind::Validation
            && !V1_CODES.contains(&code)
        {
            "validation_error"
        } else {
            code
        };
        Self {
            ok: false,
            error: message.to_string(),
            error_kind: kind,
            error_code: v1_code.to_string(),
            error_detail: ErrorDetail {
                code: code.to_string(),
                field: field_of(message),
            },
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub kind: ErrorKind,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(
        status: StatusCode,
        kind: ErrorKind,
        code: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Self {
            status,
            kind,
            code,
            message: message.into(),
        }
    }

    pub fn validation(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            ErrorKind::Validation,
            code,
            message,
        )
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            ErrorKind::Validation,
            "unauthorized",
            message,
        )
    }

    /// A 404 said with another message (v1 names the entity asked for even
    /// when its project is the missing part); other errors unchanged.
    pub fn not_found_as(mut self, message: &str) -> Self {
        if self.status == StatusCode::NOT_FOUND {
            self.message = message.to_string();
        }
        self
    }

    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorKind::Infra,
            "internal_error",
            "Internal server error",
        )
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        HttpResponse::build(self.status).json(ErrorBody::new(
            self.status,
            self.kind,
            self.code,
            &self.message,
        ))
    }
}

impl From<ServiceError> for ApiError {
    fn from(err: ServiceError) -> Self {
        let (status, kind) = match err.class() {
            ErrorClass::Invalid => (StatusCode::BAD_REQUEST, ErrorKind::Validation),
            ErrorClass::NotFound => (StatusCode::NOT_FOUND, ErrorKind::Validation),
            ErrorClass::Unauthorized => (StatusCode::UNAUTHORIZED, ErrorKind::Validation),
            ErrorClass::Forbidden => (StatusCode::FORBIDDEN, ErrorKind::Validation),
            ErrorClass::Conflict => (StatusCode::CONFLICT, ErrorKind::Validation),
            ErrorClass::Policy => (StatusCode::BAD_REQUEST, ErrorKind::Policy),
            ErrorClass::Busy => (StatusCode::TOO_MANY_REQUESTS, ErrorKind::Policy),
            ErrorClass::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, ErrorKind::Infra),
            ErrorClass::Internal => {
                tracing::error!(error = %err, "internal error");
                (StatusCode::INTERNAL_SERVER_ERROR, ErrorKind::Infra)
            }
        };
        ApiError::new(status, kind, err.code(), err.public_message())
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
