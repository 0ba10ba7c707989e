//! Image providers: one trait, one file per provider, and the one error type
//! they all return. The built-in [`local::LocalProvider`] is the embedded
//! default: offline, deterministic, real image work.

pub mod bg_remote;
pub mod catalog;
pub mod credentials;
pub mod governor;
mod http;
pub mod rate;

pub use http::{client as http_client, scrub as scrub_remote_message};
pub mod local;
pub mod openai;
pub mod voice;

use std::time::Duration;

use image::RgbaImage;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use catalog::CallShape;
pub use rate::RateSignal;

/// Where a failed call stands with the provider, which decides whether it
/// may be retried without paying twice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallOutcome {
    /// Nothing reached the provider: retry freely.
    NotSent,
    /// The provider answered with a refusal: nothing was billed.
    Refused,
    /// The request was sent and the answer was lost or broken: the provider
    /// may have done (and billed) the work.
    Unknown,
}

/// Every way a provider call can fail, classified so the engine can decide
/// whether a retry could succeed, and whether it could be a second payment.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// 401 (remove.bg: 403): the key is missing, wrong or revoked.
    #[error("provider rejected the credentials ({status})")]
    Auth { status: u16 },
    /// 403: the key is valid but may not do this (organization not
    /// verified for image models, unsupported region, plan).
    #[error("provider refused access ({status}): {message}")]
    Forbidden { status: u16, message: String },
    /// The provider does not know the model (retired, renamed, no access).
    #[error("provider does not know the model: {message}")]
    ModelNotFound { message: String },
    #[error("provider rate limit reached")]
    RateLimited {
        retry_after: Option<Duration>,
        signal: RateSignal,
    },
    /// 5xx. 504 and Cloudflare's 524 mean a gateway gave up waiting for an
    /// answer that may still have been produced: outcome unknown.
    #[error("provider server error ({status})")]
    Server { status: u16 },
    #[error("provider call timed out")]
    Timeout,
    /// The connection broke after the request was sent.
    #[error("connection to the provider was lost: {0}")]
    ConnectionLost(String),
    #[error("provider refused the content: {reason}")]
    ContentPolicy { reason: String },
    #[error("provider rejected the request ({status}): {message}")]
    InvalidRequest { status: u16, message: String },
    /// A 2xx answer that cannot be used (truncated, not JSON, no image, bad
    /// base64, oversized). `cost`: what the provider reported it billed.
    #[error("provider response is malformed: {message}")]
    Malformed { message: String, cost: Option<Cost> },
    /// The connection could not be made: nothing was sent.
    #[error("cannot reach the provider: {0}")]
    Transport(String),
    /// A parameter the model cannot take, found before any call.
    #[error("the model cannot serve this request: {0}")]
    Unsupported(catalog::Unsupported),
    /// The request could not be built (e.g. the input would not encode).
    #[error("cannot prepare the request: {0}")]
    Input(String),
    /// Missing credentials or settings: nothing was sent.
    #[error("provider is not configured: {0}")]
    NotConfigured(String),
}

/// A provider's settings cannot work (found at startup, before any call).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ProviderConfigError(pub String);

impl ProviderError {
    pub fn malformed(message: impl Into<String>) -> Self {
        ProviderError::Malformed {
            message: message.into(),
            cost: None,
        }
    }

    /// Whether the same call may succeed if tried again later. For an
    /// unknown outcome the engine also asks its policy (see [`Self::outcome`]).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ProviderError::RateLimited { .. }
                | ProviderError::Server { .. }
                | ProviderError::Timeout
                | ProviderError::ConnectionLost(_)
                | ProviderError::Malformed { .. }
                | ProviderError::Transport(_)
        )
    }

    /// Whether the provider may have done (and billed) the work.
    pub fn outcome(&self) -> CallOutcome {
        match self {
            ProviderError::Transport(_)
            | ProviderError::Unsupported(_)
            | ProviderError::Input(_)
            | ProviderError::NotConfigured(_) => CallOutcome::NotSent,
            ProviderError::Timeout
            | ProviderError::ConnectionLost(_)
            | ProviderError::Malformed { .. } => CallOutcome::Unknown,
            ProviderError::Server { status: 504 | 524 } => CallOutcome::Unknown,
            _ => CallOutcome::Refused,
        }
    }

    /// Stable `error_code` for envelopes and records.
    pub fn code(&self) -> &'static str {
        match self {
            ProviderError::Auth { .. } => "provider_auth",
            ProviderError::Forbidden { .. } => "provider_forbidden",
            ProviderError::ModelNotFound { .. } => "provider_model_not_found",
            ProviderError::RateLimited { .. } => "provider_rate_limited",
            ProviderError::Server { .. } => "provider_server_error",
            ProviderError::Timeout => "provider_timeout",
            ProviderError::ConnectionLost(_) => "provider_connection_lost",
            ProviderError::ContentPolicy { .. } => "provider_content_policy",
            ProviderError::InvalidRequest { .. } => "provider_invalid_request",
            ProviderError::Malformed { .. } => "provider_malformed_response",
            ProviderError::Transport(_) => "provider_unreachable",
            ProviderError::Unsupported(_) => "provider_unsupported_parameter",
            ProviderError::Input(_) => "provider_input_invalid",
            ProviderError::NotConfigured(_) => "provider_not_configured",
        }
    }

    /// How long the provider asked us to wait before trying again.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ProviderError::RateLimited { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// What the provider said it billed for a failed call, when it said so.
    pub fn reported_cost(&self) -> Option<&Cost> {
        match self {
            ProviderError::Malformed { cost, .. } => cost.as_ref(),
            _ => None,
        }
    }
}

/// What a call cost and how we know: `detail.basis` is `reported_usage`
/// (token usage the provider reported, priced from the catalogue),
/// `credits_charged` (remove.bg's header), `fixed_price` (a configured price
/// per call) or `estimate` (no usage reported: the reserved bound).
#[derive(Clone, Debug, PartialEq)]
pub struct Cost {
    pub usd: f64,
    pub detail: Value,
}

impl Cost {
    pub fn fixed(usd: f64) -> Self {
        Self {
            usd,
            detail: serde_json::json!({ "basis": "fixed_price", "usd": usd }),
        }
    }
}

/// Per-request image parameters (from a run's manifest); each overrides the
/// adapter's configured value and is checked against the model catalogue.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ImageOptions {
    pub model: Option<String>,
    pub size: Option<String>,
    pub quality: Option<String>,
    pub background: Option<String>,
    pub output_format: Option<String>,
    pub input_fidelity: Option<String>,
}

/// One generation step of a job: the stage's input image and what to do.
#[derive(Clone, Debug)]
pub struct GenerateRequest {
    /// Stable per (run, job, candidate): sent as `Idempotency-Key` (providers
    /// that honour it deduplicate; others ignore it).
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
    pub options: ImageOptions,
}

impl GenerateRequest {
    pub fn shape(&self) -> CallShape {
        CallShape {
            input_images: u32::from(self.input.is_some()) + self.references.len() as u32,
            prompt_chars: self.prompt.chars().count(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    Style,
    Time(imaging::effects::TimeOfDay),
    Weather(imaging::effects::Weather),
    /// Refine a background-removal cut-out (a post-process step).
    Refine,
}

/// A provider's answer: the file exactly as delivered, so it can be made
/// durable before anything else is done with it.
#[derive(Debug)]
pub struct GeneratedImage {
    /// PNG, JPEG or WebP bytes as the provider sent them.
    pub bytes: Vec<u8>,
    pub mime: &'static str,
    /// The pixels, when the provider had them anyway (the local provider).
    pub decoded: Option<RgbaImage>,
    pub cost: Cost,
    pub model: String,
    pub provider_request_id: Option<String>,
    /// What the response said about the provider's rate limits.
    pub rate: RateSignal,
}

/// The MIME type of image bytes, from their magic numbers; `None`: not an
/// image we accept.
pub fn sniff_image(bytes: &[u8]) -> Option<&'static str> {
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some("image/png")
    } else if bytes.starts_with(&[0xff, 0xd8, 0xff]) {
        Some("image/jpeg")
    } else if bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        Some("image/webp")
    } else {
        None
    }
}

#[async_trait::async_trait]
pub trait ImageProvider: Send + Sync {
    /// Short stable code (`local`, `openai`, …).
    fn code(&self) -> &'static str;
    /// Whether the provider deduplicates calls by idempotency key, so a call
    /// whose answer was lost can be repeated without paying twice.
    fn honours_idempotency_key(&self) -> bool {
        false
    }
    /// Whether a call whose outcome is unknown may be retried (configured;
    /// defaults to [`Self::honours_idempotency_key`]).
    fn retry_unknown_outcome(&self) -> bool {
        self.honours_idempotency_key()
    }
    /// An upper bound of one call's cost: reserved against budgets before
    /// the call, and what estimates are made of.
    fn max_cost_usd(&self, options: &ImageOptions, shape: CallShape) -> f64;
    /// Refuses, without calling anything, a request the model cannot serve.
    fn check(&self, options: &ImageOptions, shape: CallShape) -> Result<(), ProviderError> {
        let _ = (options, shape);
        Ok(())
    }
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
    /// What a passing credentials check does not prove, if anything.
    fn credential_check_caveat(&self) -> Option<&'static str> {
        None
    }
    async fn generate(&self, request: GenerateRequest) -> Result<GeneratedImage, ProviderError>;
}

/// Whether calls to `provider` cost nothing (no reservation, no confirmation).
pub fn is_free(provider: &dyn ImageProvider) -> bool {
    provider.max_cost_usd(
        &ImageOptions::default(),
        CallShape {
            input_images: 1,
            prompt_chars: 0,
        },
    ) <= 0.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_transient_failures_are_retryable() {
        assert!(ProviderError::Server { status: 503 }.is_retryable());
        assert!(
            ProviderError::RateLimited {
                retry_after: None,
                signal: RateSignal::default()
            }
            .is_retryable()
        );
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

    #[test]
    fn failures_are_classified_by_what_the_provider_may_have_done() {
        use CallOutcome::*;
        assert_eq!(
            ProviderError::Transport("refused".into()).outcome(),
            NotSent
        );
        assert_eq!(
            ProviderError::NotConfigured("key".into()).outcome(),
            NotSent
        );
        assert_eq!(ProviderError::Server { status: 500 }.outcome(), Refused);
        assert_eq!(ProviderError::Server { status: 504 }.outcome(), Unknown);
        assert_eq!(ProviderError::Auth { status: 401 }.outcome(), Refused);
        assert_eq!(ProviderError::Timeout.outcome(), Unknown);
        assert_eq!(
            ProviderError::ConnectionLost("reset".into()).outcome(),
            Unknown
        );
        assert_eq!(ProviderError::malformed("truncated").outcome(), Unknown);
    }

    #[test]
    fn image_bytes_are_sniffed() {
        assert_eq!(sniff_image(b"\x89PNG\r\n\x1a\nrest"), Some("image/png"));
        assert_eq!(sniff_image(&[0xff, 0xd8, 0xff, 0xe0]), Some("image/jpeg"));
        assert_eq!(sniff_image(b"RIFF\0\0\0\0WEBPVP8 "), Some("image/webp"));
        assert_eq!(sniff_image(b"<html>"), None);
    }
}
