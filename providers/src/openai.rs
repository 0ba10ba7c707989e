//! OpenAI Images adapter (gpt-image-1 family), speaking the real wire format:
//! `POST {base_url}/images/edits` as multipart with the stage's input image
//! and the style references as `image[]`, or `POST {base_url}/images/generations`
//! with a JSON body when there is no image; both answered by JSON with
//! `data[0].b64_json`. The base URL is
//! configurable, so OpenAI-compatible gateways work too.
//!
//! Everything that can be checked is checked before any call: model, size for
//! that model, quality, output format, background, price. Errors map to the
//! shared taxonomy (auth, rate limit with `Retry-After`, server, timeout,
//! content policy, invalid request, malformed or truncated body). The API key
//! comes from [`Credentials`] and never appears in errors or logs.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use imaging::DecodeLimits;
use serde::{Deserialize, Serialize};

use crate::credentials::{Credentials, Secret};
use crate::http::{read_limited, transport};
use crate::{GenerateRequest, GeneratedImage, ImageProvider, ProviderConfigError, ProviderError};

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OpenAiSettings {
    /// Registers the `openai` provider.
    pub enabled: bool,
    pub base_url: String,
    /// Name of the secret holding the API key.
    pub api_key_env: String,
    pub model: String,
    pub size: String,
    pub quality: String,
    pub output_format: String,
    pub input_fidelity: Option<String>,
    pub background: Option<String>,
    pub timeout_secs: u64,
    pub connect_timeout_secs: u64,
    /// Larger responses are refused before they are read in full.
    pub max_response_bytes: usize,
    pub prices: PriceTable,
}

impl Default for OpenAiSettings {
    fn default() -> Self {
        Self {
            enabled: false,
            base_url: "https://api.openai.com/v1".into(),
            api_key_env: "OPENAI_API_KEY".into(),
            model: "gpt-image-1".into(),
            size: "1024x1536".into(),
            quality: "high".into(),
            output_format: "png".into(),
            input_fidelity: Some("high".into()),
            background: None,
            timeout_secs: 120,
            connect_timeout_secs: 30,
            max_response_bytes: 64 * 1024 * 1024,
            prices: PriceTable::default(),
        }
    }
}

/// Price per image by model, quality and size; versioned so cost records
/// can say which table priced them.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PriceTable {
    pub version: String,
    pub images: Vec<ImagePrice>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImagePrice {
    pub model: String,
    pub quality: String,
    pub size: String,
    pub usd: f64,
}

impl Default for PriceTable {
    fn default() -> Self {
        // OpenAI's published per-image prices (output images, USD).
        let rows: [(&str, &str, [f64; 3]); 6] = [
            ("gpt-image-1", "low", [0.011, 0.016, 0.016]),
            ("gpt-image-1", "medium", [0.042, 0.063, 0.063]),
            ("gpt-image-1", "high", [0.167, 0.25, 0.25]),
            ("gpt-image-1-mini", "low", [0.005, 0.006, 0.006]),
            ("gpt-image-1-mini", "medium", [0.011, 0.015, 0.015]),
            ("gpt-image-1-mini", "high", [0.036, 0.052, 0.052]),
        ];
        let sizes = ["1024x1024", "1024x1536", "1536x1024"];
        Self {
            version: "openai-images-2025-10".into(),
            images: rows
                .iter()
                .flat_map(|(model, quality, usd)| {
                    sizes.iter().zip(usd).map(|(size, usd)| ImagePrice {
                        model: (*model).into(),
                        quality: (*quality).into(),
                        size: (*size).into(),
                        usd: *usd,
                    })
                })
                .collect(),
        }
    }
}

/// Sizes each known model accepts.
fn sizes_for(model: &str) -> Option<&'static [&'static str]> {
    match model {
        "gpt-image-1" | "gpt-image-1-mini" => {
            Some(&["1024x1024", "1536x1024", "1024x1536", "auto"])
        }
        _ => None,
    }
}

/// The price of one image; `auto` size or quality reserves the dearest match.
fn unit_price(s: &OpenAiSettings) -> Option<f64> {
    s.prices
        .images
        .iter()
        .filter(|p| p.model == s.model)
        .filter(|p| s.quality == "auto" || p.quality == s.quality)
        .filter(|p| s.size == "auto" || p.size == s.size)
        .map(|p| p.usd)
        .reduce(f64::max)
}

pub struct OpenAiProvider {
    settings: OpenAiSettings,
    credentials: Arc<dyn Credentials>,
    http: reqwest::Client,
    price_usd: f64,
    limits: DecodeLimits,
}

impl OpenAiProvider {
    /// Checks the settings (nothing is called yet).
    pub fn new(
        settings: OpenAiSettings,
        credentials: Arc<dyn Credentials>,
        limits: DecodeLimits,
    ) -> Result<Self, ProviderConfigError> {
        let bad = |m: String| ProviderConfigError(format!("providers.openai: {m}"));
        let sizes = sizes_for(&settings.model)
            .ok_or_else(|| bad(format!("unknown model '{}'", settings.model)))?;
        if !sizes.contains(&settings.size.as_str()) {
            return Err(bad(format!(
                "size '{}' is not available for {} (one of {})",
                settings.size,
                settings.model,
                sizes.join(", ")
            )));
        }
        if !["low", "medium", "high", "auto"].contains(&settings.quality.as_str()) {
            return Err(bad(format!("unknown quality '{}'", settings.quality)));
        }
        if !["png", "jpeg", "webp"].contains(&settings.output_format.as_str()) {
            return Err(bad(format!(
                "unknown output_format '{}'",
                settings.output_format
            )));
        }
        if let Some(b) = &settings.background {
            if !["transparent", "opaque", "auto"].contains(&b.as_str()) {
                return Err(bad(format!("unknown background '{b}'")));
            }
            if b == "transparent" && settings.output_format == "jpeg" {
                return Err(bad("a transparent background needs png or webp".into()));
            }
        }
        if let Some(f) = &settings.input_fidelity
            && !["low", "high"].contains(&f.as_str())
        {
            return Err(bad(format!("unknown input_fidelity '{f}'")));
        }
        let price_usd = unit_price(&settings).ok_or_else(|| {
            bad(format!(
                "no price for {} at quality {} and size {} in price table {}",
                settings.model, settings.quality, settings.size, settings.prices.version
            ))
        })?;
        let http = crate::http::client(
            Duration::from_secs(settings.timeout_secs.max(1)),
            Duration::from_secs(settings.connect_timeout_secs.max(1)),
        )
        .map_err(bad)?;
        Ok(Self {
            settings,
            credentials,
            http,
            price_usd,
            limits,
        })
    }

    fn api_key(&self) -> Result<Secret, ProviderError> {
        self.credentials.required(&self.settings.api_key_env)
    }
}

#[derive(Deserialize)]
struct ImagesResponse {
    #[serde(default)]
    data: Vec<ImageData>,
}

#[derive(Deserialize)]
struct ImageData {
    b64_json: Option<String>,
}

#[derive(Deserialize)]
struct ErrorResponse {
    error: ErrorBody,
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    message: String,
    #[serde(default)]
    code: Option<String>,
    #[serde(default, rename = "type")]
    kind: Option<String>,
}

fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let v = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    v.trim().parse::<f64>().ok().map(Duration::from_secs_f64)
}

/// Maps a non-2xx answer to the taxonomy. `key` is scrubbed from any message
/// the provider echoes back.
fn classify(status: u16, body: &[u8], retry: Option<Duration>, key: &Secret) -> ProviderError {
    let err = serde_json::from_slice::<ErrorResponse>(body)
        .ok()
        .map(|r| r.error);
    let code = err
        .as_ref()
        .and_then(|e| e.code.clone())
        .unwrap_or_default();
    let kind = err
        .as_ref()
        .and_then(|e| e.kind.clone())
        .unwrap_or_default();
    let message: String = err
        .map(|e| e.message)
        .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned())
        .replace(key.expose(), "***")
        .chars()
        .take(300)
        .collect();
    match status {
        401 | 403 => ProviderError::Auth { status },
        429 if code == "insufficient_quota" || kind == "insufficient_quota" => {
            ProviderError::InvalidRequest {
                status,
                message: "quota exhausted".into(),
            }
        }
        429 => ProviderError::RateLimited { retry_after: retry },
        500..=599 => ProviderError::Server { status },
        _ if ["moderation_blocked", "content_policy_violation"].contains(&code.as_str()) => {
            ProviderError::ContentPolicy { reason: message }
        }
        _ => ProviderError::InvalidRequest { status, message },
    }
}

#[async_trait::async_trait]
impl ImageProvider for OpenAiProvider {
    fn code(&self) -> &'static str {
        "openai"
    }

    fn unit_price_usd(&self) -> f64 {
        self.price_usd
    }

    fn preflight(&self) -> Result<(), ProviderError> {
        self.api_key().map(|_| ())
    }

    /// `GET {base_url}/models`: free, and refused without valid credentials.
    async fn check_credentials(&self, api_key: Option<Secret>) -> Result<(), ProviderError> {
        let key = match api_key {
            Some(key) => key,
            None => self.api_key()?,
        };
        let resp = self
            .http
            .get(format!(
                "{}/models",
                self.settings.base_url.trim_end_matches('/')
            ))
            .bearer_auth(key.expose())
            .send()
            .await
            .map_err(|e| transport(&e))?;
        let status = resp.status().as_u16();
        let retry = retry_after(resp.headers());
        let body = read_limited(resp, 1024 * 1024).await?;
        if (200..300).contains(&status) {
            Ok(())
        } else {
            Err(classify(status, &body, retry, &key))
        }
    }

    async fn generate(&self, request: GenerateRequest) -> Result<GeneratedImage, ProviderError> {
        let key = match request.api_key {
            Some(key) => key,
            None => self.api_key()?,
        };
        let (input, references) = (request.input, request.references);
        // The input first, then the style references: one `image[]` part each.
        let pngs = imaging::cpu::run(move || {
            input
                .iter()
                .chain(references.iter())
                .map(imaging::encode_png)
                .collect::<Result<Vec<_>, _>>()
        })
        .await
        .map_err(|e| ProviderError::Malformed(e.to_string()))?
        .map_err(|e| ProviderError::Malformed(format!("cannot encode the input: {e}")))?;
        let s = &self.settings;
        let base = s.base_url.trim_end_matches('/');
        // No image at all: a generation from the prompt alone (JSON body);
        // otherwise an edit of the images (multipart).
        let call = if pngs.is_empty() {
            let mut body = serde_json::json!({
                "model": s.model, "prompt": request.prompt, "size": s.size,
                "quality": s.quality, "output_format": s.output_format, "n": 1,
            });
            if let Some(b) = &s.background {
                body["background"] = serde_json::Value::from(b.clone());
            }
            self.http
                .post(format!("{base}/images/generations"))
                .json(&body)
        } else {
            let mut form = reqwest::multipart::Form::new()
                .text("model", s.model.clone())
                .text("prompt", request.prompt)
                .text("size", s.size.clone())
                .text("quality", s.quality.clone())
                .text("output_format", s.output_format.clone())
                .text("n", "1");
            for (i, png) in pngs.into_iter().enumerate() {
                let part = reqwest::multipart::Part::bytes(png)
                    .file_name(format!("image-{i}.png"))
                    .mime_str("image/png")
                    .map_err(|e| ProviderError::Transport(e.to_string()))?;
                form = form.part("image[]", part);
            }
            if let Some(f) = &s.input_fidelity {
                form = form.text("input_fidelity", f.clone());
            }
            if let Some(b) = &s.background {
                form = form.text("background", b.clone());
            }
            self.http
                .post(format!("{base}/images/edits"))
                .multipart(form)
        };
        let resp = call
            .bearer_auth(key.expose())
            .header("Idempotency-Key", &request.idempotency_key)
            .send()
            .await
            .map_err(|e| transport(&e))?;
        let status = resp.status().as_u16();
        let request_id = resp
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let retry = retry_after(resp.headers());
        let body = read_limited(resp, s.max_response_bytes).await?;
        if !(200..300).contains(&status) {
            return Err(classify(status, &body, retry, &key));
        }
        let parsed: ImagesResponse = serde_json::from_slice(&body).map_err(|e| {
            ProviderError::Malformed(format!("response is not the expected JSON: {e}"))
        })?;
        let b64 = parsed
            .data
            .into_iter()
            .next()
            .and_then(|d| d.b64_json)
            .ok_or_else(|| ProviderError::Malformed("response has no image".into()))?;
        let limits = self.limits;
        let image = imaging::cpu::run(move || {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .map_err(|e| format!("image is not valid base64: {e}"))?;
            imaging::decode(&bytes, limits).map_err(|e| format!("image in response: {e}"))
        })
        .await
        .map_err(|e| ProviderError::Malformed(e.to_string()))?
        .map_err(ProviderError::Malformed)?;
        Ok(GeneratedImage {
            image,
            cost_usd: self.price_usd,
            model: s.model.clone(),
            provider_request_id: request_id,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_prices_are_checked_before_any_call() {
        let ok = OpenAiSettings::default();
        assert_eq!(unit_price(&ok), Some(0.25));
        let auto = OpenAiSettings {
            size: "auto".into(),
            quality: "auto".into(),
            ..OpenAiSettings::default()
        };
        assert_eq!(unit_price(&auto), Some(0.25), "auto reserves the dearest");
        let key = Secret::new("sk-test");
        assert!(matches!(
            classify(429, br#"{"error":{"message":"slow down","type":"requests"}}"#, Some(Duration::from_secs(2)), &key),
            ProviderError::RateLimited { retry_after: Some(d) } if d == Duration::from_secs(2)
        ));
        assert!(matches!(
            classify(429, br#"{"error":{"message":"x","type":"insufficient_quota","code":"insufficient_quota"}}"#, None, &key),
            ProviderError::InvalidRequest { .. }
        ));
        let echoed = classify(
            400,
            br#"{"error":{"message":"bad key sk-test here","code":"invalid_value"}}"#,
            None,
            &key,
        );
        assert!(!echoed.to_string().contains("sk-test"), "{echoed}");
        assert!(matches!(
            classify(
                400,
                br#"{"error":{"message":"blocked","code":"moderation_blocked"}}"#,
                None,
                &key
            ),
            ProviderError::ContentPolicy { .. }
        ));
        assert!(matches!(
            classify(502, b"<html>bad gateway</html>", None, &key),
            ProviderError::Server { status: 502 }
        ));
    }
}
