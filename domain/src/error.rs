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
    /// Something the service depends on (the engine's actors, a project's
    /// object storage) did not answer; nothing was changed.
    #[error("{message}")]
    Unavailable { code: &'static str, message: String },
    #[error("database error: {0}")]
    Db(#[from] DbErr),
    /// A project's files (a missing file, an unusable bucket, a key that
    /// cannot be stored): see [`ServiceError::code`] for how each answers.
    #[error("storage: {0}")]
    Storage(#[from] storage::StorageError),
    /// Image work on data the service stored itself failed.
    #[error(transparent)]
    Imaging(#[from] imaging::ImagingError),
    /// Image work could not run (its task panicked or was cancelled).
    #[error(transparent)]
    Cpu(#[from] imaging::cpu::CpuError),
    #[error("cannot encode JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("file system: {0}")]
    Io(#[from] std::io::Error),
    /// A row that must exist does not (the database changed underneath).
    #[error("{what} {id} is missing")]
    Missing { what: &'static str, id: String },
    #[error("internal error: {0}")]
    Internal(String),
}

/// What kind of failure an error is, for whoever answers it (the API maps
/// each to its status and `error_kind`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorClass {
    /// Bad input (400).
    Invalid,
    NotFound,
    Unauthorized,
    Forbidden,
    /// Valid, but in conflict with the current state (409).
    Conflict,
    /// Refused by a spending or capacity policy (400, kind policy).
    Policy,
    /// At capacity; try again later (429).
    Busy,
    /// A dependency did not answer (503).
    Unavailable,
    /// The service's own fault (500; details only in the log).
    Internal,
}

/// PostgreSQL refused text it cannot hold (a NUL in text or jsonb: SQLSTATE
/// 22P05 or 22021). The client sent it, and the transaction stored nothing,
/// so it is the client's error, not the service's.
fn is_unstorable_text(e: &DbErr) -> bool {
    let (DbErr::Exec(sea_orm::RuntimeErr::SqlxError(e))
    | DbErr::Query(sea_orm::RuntimeErr::SqlxError(e))) = e
    else {
        return false;
    };
    match e.as_ref() {
        sea_orm::sqlx::Error::Database(db) => {
            matches!(db.code().as_deref(), Some("22P05" | "22021"))
        }
        _ => false,
    }
}

impl ServiceError {
    pub fn class(&self) -> ErrorClass {
        match self {
            Self::Validation { .. } => ErrorClass::Invalid,
            Self::NotFound(_) | Self::Storage(storage::StorageError::NotFound(_)) => {
                ErrorClass::NotFound
            }
            Self::Unauthorized(_) => ErrorClass::Unauthorized,
            Self::Forbidden(_) => ErrorClass::Forbidden,
            Self::Conflict { .. } | Self::Storage(storage::StorageError::Unavailable(_)) => {
                ErrorClass::Conflict
            }
            Self::Policy { .. } => ErrorClass::Policy,
            Self::Busy { .. } => ErrorClass::Busy,
            Self::Unavailable { .. } => ErrorClass::Unavailable,
            Self::Storage(e) if e.is_temporary() => ErrorClass::Unavailable,
            Self::Db(e) if is_unstorable_text(e) => ErrorClass::Invalid,
            _ => ErrorClass::Internal,
        }
    }

    /// What may be said to a client: the message, except for internal
    /// failures (and files, whose keys are the service's business).
    pub fn public_message(&self) -> String {
        match self {
            Self::Storage(storage::StorageError::NotFound(_)) => {
                "The file is missing from storage".into()
            }
            Self::Storage(storage::StorageError::Unavailable(reason)) => reason.clone(),
            _ if self.class() == ErrorClass::Unavailable && matches!(self, Self::Storage(_)) => {
                "The project's storage did not answer; try again".into()
            }
            Self::Db(e) if is_unstorable_text(e) => {
                "Text contains a character the database cannot store (NUL, \\u0000)".into()
            }
            _ if self.class() == ErrorClass::Internal => "Internal server error".into(),
            other => other.to_string(),
        }
    }

    /// The stable code of this error (`error_detail.code` in the API).
    pub fn code(&self) -> &'static str {
        match self {
            Self::Validation { code, .. }
            | Self::Conflict { code, .. }
            | Self::Policy { code, .. }
            | Self::Busy { code, .. }
            | Self::Unavailable { code, .. } => code,
            Self::NotFound(_) => "not_found",
            Self::Unauthorized(_) => "unauthorized",
            Self::Forbidden(_) => "forbidden",
            Self::Storage(storage::StorageError::NotFound(_)) => "not_found",
            Self::Storage(storage::StorageError::Unavailable(_)) => "storage_unavailable",
            Self::Storage(e) if e.is_temporary() => "storage_unreachable",
            Self::Db(e) if is_unstorable_text(e) => "invalid_text",
            Self::Db(_)
            | Self::Storage(_)
            | Self::Imaging(_)
            | Self::Cpu(_)
            | Self::Json(_)
            | Self::Io(_)
            | Self::Missing { .. }
            | Self::Internal(_) => "internal_error",
        }
    }

    pub fn missing(what: &'static str, id: impl std::fmt::Display) -> Self {
        Self::Missing {
            what,
            id: id.to_string(),
        }
    }

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
