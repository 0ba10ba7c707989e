//! The frozen error envelope: `{ok:false, error, error_kind, error_code}`.
//!
//! Every failure leaves the service in this shape, including the ones actix
//! itself detects (bad JSON, wrong content type, oversized body, bad query,
//! unknown route, wrong method): see [`json_error_handler`] and friends.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use actors::ServiceError;
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

/// Body of every error response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// Always `false`.
    pub ok: bool,
    /// Human-readable message (never contains secrets or internal details).
    pub error: String,
    pub error_kind: ErrorKind,
    /// Stable machine-readable code; see docs/api.md.
    pub error_code: String,
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
        HttpResponse::build(self.status).json(ErrorBody {
            ok: false,
            error: self.message.clone(),
            error_kind: self.kind,
            error_code: self.code.to_string(),
        })
    }
}

impl From<ServiceError> for ApiError {
    fn from(err: ServiceError) -> Self {
        match err {
            ServiceError::Validation { code, message } => ApiError::validation(code, message),
            ServiceError::NotFound(m) => {
                ApiError::new(StatusCode::NOT_FOUND, ErrorKind::Validation, "not_found", m)
            }
            ServiceError::Unauthorized(m) => ApiError::unauthorized(m),
            ServiceError::Forbidden(m) => {
                ApiError::new(StatusCode::FORBIDDEN, ErrorKind::Validation, "forbidden", m)
            }
            ServiceError::Conflict { code, message } => {
                ApiError::new(StatusCode::CONFLICT, ErrorKind::Validation, code, message)
            }
            ServiceError::Policy { code, message } => {
                ApiError::new(StatusCode::BAD_REQUEST, ErrorKind::Policy, code, message)
            }
            ServiceError::Busy { code, message } => ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                ErrorKind::Policy,
                code,
                message,
            ),
            ServiceError::Unavailable { code, message } => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorKind::Infra,
                code,
                message,
            ),
            ServiceError::Db(e) => {
                tracing::error!(error = %e, "database error");
                ApiError::internal()
            }
            ServiceError::Internal(e) => {
                tracing::error!(error = %e, "internal error");
                ApiError::internal()
            }
        }
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
