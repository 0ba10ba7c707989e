//! The domain layer's one error type. The API maps each variant to the frozen
//! envelope (`error_kind`, `error_code`, HTTP status).

use sea_orm::DbErr;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// Bad input; `code` is the stable `error_code`.
    #[error("{message}")]
    Validation { code: &'static str, message: String },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    /// The request is valid but conflicts with current state.
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    /// Refused by a spending or capacity policy (nothing was spent).
    #[error("{message}")]
    Policy { code: &'static str, message: String },
    /// The service is at capacity; try again later.
    #[error("{message}")]
    Busy { code: &'static str, message: String },
    /// Something the service depends on (a project's object storage) did
    /// not answer; nothing was changed.
    #[error("{message}")]
    Unavailable { code: &'static str, message: String },
    #[error("database error: {0}")]
    Db(#[from] DbErr),
    #[error("internal error: {0}")]
    Internal(String),
}

impl ServiceError {
    pub fn validation(code: &'static str, message: impl Into<String>) -> Self {
        Self::Validation {
            code,
            message: message.into(),
        }
    }

    pub fn required(field: &str) -> Self {
        Self::validation("field_required", format!("Field '{field}' is required"))
    }

    pub fn too_long(field: &str, max: usize) -> Self {
        Self::validation(
            "field_too_long",
            format!("Field '{field}' must be at most {max} characters"),
        )
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::NotFound(message.into())
    }
}

/// Refuses NUL and other control characters (tab and line breaks are
/// fine) and the Unicode bidirectional overrides and isolates (they reorder
/// what a name shows in listings, logs and file names; the plain
/// left-to-right/right-to-left marks that RTL text uses are kept).
pub fn reject_invisible(field: &str, value: &str) -> Result<(), ServiceError> {
    let bad = value.chars().any(|c| {
        (c.is_control() && !matches!(c, '\n' | '\t' | '\r'))
            || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    });
    if bad {
        return Err(ServiceError::validation(
            "invalid_characters",
            format!("Field '{field}' contains control or bidirectional-override characters"),
        ));
    }
    Ok(())
}

/// Trims `value`; blank becomes `None`; longer than `max` characters is an error.
pub fn optional_text(
    field: &str,
    value: Option<&str>,
    max: usize,
) -> Result<Option<String>, ServiceError> {
    match value.map(str::trim).filter(|v| !v.is_empty()) {
        Some(v) if v.chars().count() > max => Err(ServiceError::too_long(field, max)),
        Some(v) => {
            reject_invisible(field, v)?;
            Ok(Some(v.to_string()))
        }
        None => Ok(None),
    }
}

/// Like [`optional_text`] but the field must be present and non-blank.
pub fn required_text(field: &str, value: Option<&str>, max: usize) -> Result<String, ServiceError> {
    optional_text(field, value, max)?.ok_or_else(|| ServiceError::required(field))
}
