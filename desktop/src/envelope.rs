//! Errors across the IPC boundary: always the frozen error envelope the HTTP
//! API sends (`ok: false`, `error`, `error_code`, `error_kind`,
//! `error_detail.code`), plus `http_status` (additive: the status the same
//! call answered over HTTP), never a bare string.

use serde_json::{Value, json};

/// An error the shell itself raises (a malformed IPC call, the service
/// unreachable), in the envelope.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ShellError {
    pub http_status: u16,
    pub kind: &'static str,
    pub code: &'static str,
    pub message: String,
}

impl ShellError {
    /// A call the shell refuses before sending it (400, `validation_error`
    /// with the specific code in `error_detail.code`, as the API does).
    pub fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            http_status: 400,
            kind: "validation",
            code,
            message: message.into(),
        }
    }

    /// The embedded service did not answer (503).
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self {
            http_status: 503,
            kind: "infra",
            code: "service_unavailable",
            message: message.into(),
        }
    }

    pub fn envelope(&self) -> Value {
        let error_code = if self.kind == "validation" {
            "validation_error"
        } else {
            self.code
        };
        json!({
            "ok": false,
            "error": self.message,
            "error_code": error_code,
            "error_kind": self.kind,
            "error_detail": { "code": self.code },
            "http_status": self.http_status,
        })
    }
}

impl From<ShellError> for Value {
    fn from(e: ShellError) -> Self {
        e.envelope()
    }
}

/// The service's own error body, with the status it came with.
pub fn with_status(mut body: Value, status: u16) -> Value {
    if let Some(map) = body.as_object_mut() {
        map.insert("http_status".into(), status.into());
    }
    body
}
