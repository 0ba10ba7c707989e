//! Image providers: one trait, one file per provider, and the one error type
//! they all return. The built-in [`local::LocalProvider`] is the embedded
//! default: offline, deterministic, real image work.

pub mod bg_remote;
pub mod credentials;
mod http;

pub use http::client as http_client;
pub mod local;
pub mod openai;

use std::time::Duration;

use image::RgbaImage;

/// Every way a provider call can fail, classified so the engine can decide
/// whether a retry could succeed without paying twice for nothing.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("provider rejected the credentials ({status})")]
    Auth { status: u16 },
    #[error("provider rate limit reached")]
    RateLimited { retry_after: Option<Duration> },
    #[error("provider server error ({status})")]
    Server { status: u16 },
    #[error("provider call timed out")]
    Timeout,
    #[error("provider refused the content: {reason}")]
    ContentPolicy { reason: String },
    #[error("provider rejected the request ({status}): {message}")]
    InvalidRequest { status: u16, message: String },
    #[error("provider response is malformed: {0}")]
    Malformed(String),
    #[error("cannot reach the provider: {0}")]
    Transport(String),
    /// Missing credentials or settings: nothing was sent.
    #[error("provider is not configured: {0}")]
    NotConfigured(String),
}

/// A provider's settings cannot work (found at startup, before any call).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ProviderConfigError(pub String);

impl ProviderError {
    /// Whether the same call may succeed if tried again later.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ProviderError::RateLimited { .. }
                | ProviderError::Server { .. }
                | ProviderError::Timeout
                | ProviderError::Malformed(_)
                | ProviderError::Transport(_)
        )
    }

    /// Stable `error_code` for envelopes and records.
    pub fn code(&self) -> &'static str {
        match self {
            ProviderError::Auth { .. } => "provider_auth",
            ProviderError::RateLimited { .. } => "provider_rate_limited",
            ProviderError::Server { .. } => "provider_server_error",
            ProviderError::Timeout => "provider_timeout",
            ProviderError::ContentPolicy { .. } => "provider_content_policy",
            ProviderError::InvalidRequest { .. } => "provider_invalid_request",
            ProviderError::Malformed(_) => "provider_malformed_response",
            ProviderError::Transport(_) => "provider_unreachable",
            ProviderError::NotConfigured(_) => "provider_not_configured",
        }
    }

    /// How long the provider asked us to wait before trying again.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ProviderError::RateLimited { retry_after } => *retry_after,
            _ => None,
        }
    }
}

/// One generation step of a job: the stage's input image and what to do.
#[derive(Clone, Debug)]
pub struct GenerateRequest {
    /// Stable per (run, job, candidate): providers that support it get it as
    /// their idempotency key.
    pub idempotency_key: String,
    pub stage: Stage,
    pub prompt: String,
    /// The image to work from; `None` generates from the prompt alone.
    pub input: Option<RgbaImage>,
    /// Style references, sent after the input to providers that take
    /// several images (the local provider works from the input alone).
    pub references: std::sync::Arc<Vec<RgbaImage>>,
    pub candidate_index: u32,
    /// 1 for the first call with this idempotency key, then 2, 3, …
    pub attempt: u32,
    /// The project's own key for this provider; `None`: the adapter's
    /// credentials (environment).
    pub api_key: Option<credentials::Secret>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    Style,
    Time(imaging::effects::TimeOfDay),
    Weather(imaging::effects::Weather),
    /// Refine a background-removal cut-out (a post-process step).
    Refine,
}

#[derive(Debug)]
pub struct GeneratedImage {
    pub image: RgbaImage,
    pub cost_usd: f64,
    pub model: String,
    pub provider_request_id: Option<String>,
}

#[async_trait::async_trait]
pub trait ImageProvider: Send + Sync {
    /// Short stable code (`local`, `openai`, …).
    fn code(&self) -> &'static str;
    /// Price of one generation, for estimates and budget reservations.
    fn unit_price_usd(&self) -> f64;
    /// Checks, without calling anything, that a call could be made (e.g. the
    /// credentials exist): runs before a run is accepted.
    fn preflight(&self) -> Result<(), ProviderError> {
        Ok(())
    }
    /// Asks the provider whether these credentials work, with a call that
    /// costs nothing (e.g. listing models). `api_key`: the project's own key,
    /// else the adapter's. Providers without credentials have nothing to check.
    async fn check_credentials(
        &self,
        api_key: Option<credentials::Secret>,
    ) -> Result<(), ProviderError> {
        let _ = api_key;
        Ok(())
    }
    async fn generate(&self, request: GenerateRequest) -> Result<GeneratedImage, ProviderError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_transient_failures_are_retryable() {
        assert!(ProviderError::Server { status: 503 }.is_retryable());
        assert!(ProviderError::RateLimited { retry_after: None }.is_retryable());
        assert!(ProviderError::Timeout.is_retryable());
        assert!(!ProviderError::Auth { status: 401 }.is_retryable());
        assert!(!ProviderError::ContentPolicy { reason: "x".into() }.is_retryable());
        assert!(
            !ProviderError::InvalidRequest {
                status: 400,
                message: "size".into()
            }
            .is_retryable()
        );
        assert_eq!(ProviderError::Timeout.code(), "provider_timeout");
    }
}
