//! OpenAI Images adapter (GPT image models), speaking the wire format of
//! OpenAI's published API reference: `POST {base_url}/images/edits` as
//! multipart with the stage's input image and the style references (`image`,
//! or `image[]` for several), or `POST {base_url}/images/generations` with a
//! JSON body when there is no image; both answered by JSON with
//! `data[0].b64_json` and the call's token `usage`. The base URL is
//! configurable, so OpenAI-compatible gateways work too.
//!
//! What a model accepts and costs comes from the model catalogue
//! ([`crate::catalog`]): every parameter is checked before any call, the
//! reservation is an upper bound from the catalogue, and the recorded cost is
//! priced from the usage the response reports. The API key comes from
//! [`Credentials`] (or the project) and never appears in errors or logs.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use imaging::DecodeLimits;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::catalog::{self, CallShape, Catalog, ImageParams, ModelSpec, Usage};
use crate::credentials::{Credentials, Secret};
use crate::http::{read_error_body, read_limited, scrub, transport};
use crate::{
    Cost, GenerateRequest, GeneratedImage, ImageOptions, ImageProvider, ProviderConfigError,
    ProviderError, RateSignal,
};

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
    /// `None`: the highest fidelity the model takes (omitted where it takes none).
    pub input_fidelity: Option<String>,
    pub background: Option<String>,
    /// Defaults are the official SDK's: 10 minutes per call, 5 s to connect.
    pub timeout_secs: u64,
    pub connect_timeout_secs: u64,
    /// Larger responses are refused before they are read in full.
    pub max_response_bytes: usize,
    /// Whether a call whose answer was lost may be sent again. `None`: only
    /// if the catalogue says the provider honours idempotency keys (OpenAI
    /// does not, so by default it is not retried).
    pub retry_unknown_outcome: Option<bool>,
    /// Catalogue entries that replace or extend the shipped ones.
    pub models: Vec<catalog::ModelSpec>,
}

impl Default for OpenAiSettings {
    fn default() -> Self {
        Self {
            enabled: false,
            base_url: "https://api.openai.com/v1".into(),
            api_key_env: "OPENAI_API_KEY".into(),
            model: "gpt-image-1.5".into(),
            size: "1024x1536".into(),
            quality: "high".into(),
            output_format: "png".into(),
            input_fidelity: None,
            background: None,
            timeout_secs: 600,
            connect_timeout_secs: 5,
            max_response_bytes: 64 * 1024 * 1024,
            retry_unknown_outcome: None,
            models: Vec::new(),
        }
    }
}

fn today() -> chrono::NaiveDate {
    chrono::Utc::now().date_naive()
}

pub struct OpenAiProvider {
    settings: OpenAiSettings,
    catalog: Catalog,
    credentials: Arc<dyn Credentials>,
    http: reqwest::Client,
    limits: DecodeLimits,
}

impl OpenAiProvider {
    /// Checks the settings against the catalogue (nothing is called yet).
    pub fn new(
        settings: OpenAiSettings,
        credentials: Arc<dyn Credentials>,
        limits: DecodeLimits,
    ) -> Result<Self, ProviderConfigError> {
        let bad = |m: String| ProviderConfigError(format!("providers.openai: {m}"));
        let catalog = catalog::openai().with_overrides(&settings.models);
        if catalog.models.is_empty() {
            return Err(bad(format!(
                "the model catalogue is empty ({})",
                catalog.version
            )));
        }
        let http = crate::http::client(
            Duration::from_secs(settings.timeout_secs.max(1)),
            Duration::from_secs(settings.connect_timeout_secs.max(1)),
        )
        .map_err(bad)?;
        let provider = Self {
            settings,
            catalog,
            credentials,
            http,
            limits,
        };
        // The configured defaults must serve an edit and, where the model
        // generates, a prompt alone.
        let edit = CallShape {
            input_images: 1,
            prompt_chars: 1,
        };
        provider
            .params(&ImageOptions::default(), edit)
            .map_err(|e| bad(e.to_string()))?;
        if let Some(day) = provider
            .catalog
            .model(&provider.settings.model)
            .and_then(|m| m.retires_on)
            && (day - today()).num_days() <= 30
        {
            tracing::warn!(
                model = %provider.settings.model,
                retires_on = %day,
                "the configured OpenAI model is about to be retired"
            );
        }
        Ok(provider)
    }

    fn api_key(&self) -> Result<Secret, ProviderError> {
        self.credentials.required(&self.settings.api_key_env)
    }

    /// The call's parameters: the request's options over the configured
    /// values, checked against the model.
    fn params(
        &self,
        options: &ImageOptions,
        shape: CallShape,
    ) -> Result<(&ModelSpec, ImageParams), catalog::Unsupported> {
        let s = &self.settings;
        let model = options.model.clone().unwrap_or_else(|| s.model.clone());
        let spec = self.catalog.usable(&model, today())?;
        let input_fidelity = if shape.input_images == 0 {
            None
        } else if let Some(f) = &options.input_fidelity {
            Some(f.clone())
        } else {
            // The configured value where this model takes it, else its best.
            s.input_fidelity
                .clone()
                .filter(|f| spec.input_fidelity.contains(f))
                .or_else(|| spec.best_input_fidelity())
        };
        let params = ImageParams {
            model,
            size: options.size.clone().unwrap_or_else(|| s.size.clone()),
            quality: options.quality.clone().unwrap_or_else(|| s.quality.clone()),
            output_format: options
                .output_format
                .clone()
                .unwrap_or_else(|| s.output_format.clone()),
            background: options.background.clone().or_else(|| s.background.clone()),
            input_fidelity,
        };
        spec.check(&params, shape)?;
        Ok((spec, params))
    }

    fn url(&self, path: &str) -> String {
        format!("{}/{path}", self.settings.base_url.trim_end_matches('/'))
    }

    /// A free GET whose failure is classified like any other answer.
    async fn get_free(&self, path: &str, key: &Secret) -> Result<(), ProviderError> {
        let resp = self
            .http
            .get(self.url(path))
            .bearer_auth(key.expose())
            .send()
            .await
            .map_err(|e| transport(&e))?;
        let status = resp.status().as_u16();
        let signal = RateSignal::from_headers(resp.headers());
        let body = read_error_body(resp, 64 * 1024).await;
        if (200..300).contains(&status) {
            Ok(())
        } else {
            Err(classify(status, &body, signal, key))
        }
    }
}

#[derive(Deserialize)]
struct ImagesResponse {
    #[serde(default)]
    data: Vec<ImageData>,
    #[serde(default)]
    usage: Option<Usage>,
    #[serde(default)]
    size: Option<String>,
    #[serde(default)]
    quality: Option<String>,
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
    #[serde(default)]
    param: Option<String>,
}

/// Maps a non-2xx answer to the taxonomy. `key` is scrubbed from any message
/// the provider echoes back.
pub(crate) fn classify(
    status: u16,
    body: &[u8],
    signal: RateSignal,
    key: &Secret,
) -> ProviderError {
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
    let param = err
        .as_ref()
        .and_then(|e| e.param.clone())
        .unwrap_or_default();
    let message = scrub(
        &err.map(|e| e.message)
            .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned()),
        key.expose(),
    );
    match status {
        401 => ProviderError::Auth { status },
        // A valid key that may not do this: unverified organization,
        // unsupported region, project permissions.
        403 => ProviderError::Forbidden { status, message },
        404 if code == "model_not_found" || message.contains("model") => {
            ProviderError::ModelNotFound { message }
        }
        _ if code == "model_not_found" || (status == 400 && param == "model") => {
            ProviderError::ModelNotFound { message }
        }
        429 if code == "insufficient_quota"
            || kind == "insufficient_quota"
            || code == "billing_hard_limit_reached" =>
        {
            ProviderError::InvalidRequest {
                status,
                message: "quota exhausted".into(),
            }
        }
        429 => ProviderError::RateLimited {
            retry_after: signal.retry_after,
            signal,
        },
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

    fn honours_idempotency_key(&self) -> bool {
        self.catalog.honours_idempotency_key
    }

    fn retry_unknown_outcome(&self) -> bool {
        self.settings
            .retry_unknown_outcome
            .unwrap_or(self.catalog.honours_idempotency_key)
    }

    fn max_cost_usd(&self, options: &ImageOptions, shape: CallShape) -> f64 {
        match self.params(options, shape) {
            Ok((spec, params)) => spec.max_cost_usd(&params, shape),
            // Refused by `check` before anything is reserved; the dearest
            // model's bound keeps an estimate on the safe side meanwhile.
            Err(_) => self
                .catalog
                .models
                .iter()
                .map(|m| {
                    let p = ImageParams {
                        model: m.model.clone(),
                        size: "auto".into(),
                        quality: "auto".into(),
                        output_format: "png".into(),
                        background: None,
                        input_fidelity: Some("high".into()),
                    };
                    m.max_cost_usd(&p, shape)
                })
                .fold(0.0, f64::max),
        }
    }

    fn check(&self, options: &ImageOptions, shape: CallShape) -> Result<(), ProviderError> {
        self.params(options, shape)
            .map(|_| ())
            .map_err(ProviderError::Unsupported)
    }

    fn preflight(&self) -> Result<(), ProviderError> {
        self.api_key().map(|_| ())
    }

    /// `GET {base_url}/models` (the key works) and `GET /models/{model}` (the
    /// configured model is available to it); both free. OpenAI says whether an
    /// organization may generate images only on a (paid) image call, as a 403.
    async fn check_credentials(&self, api_key: Option<Secret>) -> Result<(), ProviderError> {
        let key = match api_key {
            Some(key) => key,
            None => self.api_key()?,
        };
        self.get_free("models", &key).await?;
        self.get_free(&format!("models/{}", self.settings.model), &key)
            .await
            .map_err(|e| match e {
                ProviderError::InvalidRequest {
                    status: 404,
                    message,
                } => ProviderError::ModelNotFound { message },
                other => other,
            })
    }

    fn credential_check_caveat(&self) -> Option<&'static str> {
        Some(
            "the key works and the model is listed for it; whether the organization is verified \
             for image models OpenAI reports only on a (paid) image call, as 403 provider_forbidden",
        )
    }

    async fn generate(&self, request: GenerateRequest) -> Result<GeneratedImage, ProviderError> {
        let shape = request.shape();
        let (spec, params) = self
            .params(&request.options, shape)
            .map_err(ProviderError::Unsupported)?;
        let key = match request.api_key {
            Some(key) => key,
            None => self.api_key()?,
        };
        let (input, references) = (request.input, request.references);
        // The input first, then the style references: one image part each.
        let pngs = imaging::cpu::run(move || {
            input
                .iter()
                .chain(references.iter())
                .map(imaging::encode_png)
                .collect::<Result<Vec<_>, _>>()
        })
        .await
        .map_err(|e| ProviderError::Input(e.to_string()))?
        .map_err(|e| ProviderError::Input(format!("cannot encode the input: {e}")))?;
        // No image at all: a generation from the prompt alone (JSON body);
        // otherwise an edit of the images (multipart).
        let call = if pngs.is_empty() {
            let mut body = json!({
                "model": params.model, "prompt": request.prompt, "size": params.size,
                "quality": params.quality, "output_format": params.output_format, "n": 1,
            });
            if let Some(b) = &params.background {
                body["background"] = json!(b);
            }
            self.http.post(self.url("images/generations")).json(&body)
        } else {
            // One image goes as `image`; several as `image[]` (what the
            // official SDKs send for a list).
            let field = if pngs.len() == 1 { "image" } else { "image[]" };
            let mut form = reqwest::multipart::Form::new()
                .text("model", params.model.clone())
                .text("prompt", request.prompt)
                .text("size", params.size.clone())
                .text("quality", params.quality.clone())
                .text("output_format", params.output_format.clone())
                .text("n", "1");
            for (i, png) in pngs.into_iter().enumerate() {
                let part = reqwest::multipart::Part::bytes(png)
                    .file_name(format!("image-{i}.png"))
                    .mime_str("image/png")
                    .map_err(|e| ProviderError::Input(e.to_string()))?;
                form = form.part(field, part);
            }
            if let Some(f) = &params.input_fidelity {
                form = form.text("input_fidelity", f.clone());
            }
            if let Some(b) = &params.background {
                form = form.text("background", b.clone());
            }
            self.http.post(self.url("images/edits")).multipart(form)
        };
        let resp = call
            .bearer_auth(key.expose())
            // OpenAI ignores it; gateways that deduplicate use it.
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
        let signal = RateSignal::from_headers(resp.headers());
        if !(200..300).contains(&status) {
            let body = read_error_body(resp, 64 * 1024).await;
            return Err(classify(status, &body, signal, &key));
        }
        let body = read_limited(resp, self.settings.max_response_bytes).await?;
        let parsed: ImagesResponse = serde_json::from_slice(&body).map_err(|e| {
            ProviderError::malformed(format!("response is not the expected JSON: {e}"))
        })?;
        // From here the provider has told us what it billed.
        let cost = match &parsed.usage {
            Some(usage) => {
                let (usd, mut detail) = spec.cost_of(usage, &self.catalog.version);
                detail["size"] = json!(parsed.size.clone().unwrap_or(params.size.clone()));
                detail["quality"] = json!(parsed.quality.clone().unwrap_or(params.quality.clone()));
                Cost { usd, detail }
            }
            None => {
                let usd = spec.max_cost_usd(&params, shape);
                Cost {
                    usd,
                    detail: json!({ "basis": "estimate", "price_table": self.catalog.version,
                        "model": params.model, "reason": "the response reported no usage" }),
                }
            }
        };
        let unusable = |message: String| ProviderError::Malformed {
            message,
            cost: Some(cost.clone()),
        };
        let b64 = parsed
            .data
            .into_iter()
            .next()
            .and_then(|d| d.b64_json)
            .ok_or_else(|| unusable("response has no image".into()))?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .map_err(|e| unusable(format!("image is not valid base64: {e}")))?;
        if bytes.len() > self.limits.max_bytes {
            return Err(unusable(format!(
                "image of {} bytes exceeds the {}-byte limit",
                bytes.len(),
                self.limits.max_bytes
            )));
        }
        let mime = crate::sniff_image(&bytes)
            .ok_or_else(|| unusable("the response's image is not PNG, JPEG or WebP".into()))?;
        Ok(GeneratedImage {
            bytes,
            mime,
            decoded: None,
            cost,
            model: params.model,
            provider_request_id: request_id,
            rate: signal,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct NoKey;
    impl Credentials for NoKey {
        fn secret(&self, _: &str) -> Option<Secret> {
            None
        }
    }

    fn provider(
        tweak: impl FnOnce(&mut OpenAiSettings),
    ) -> Result<OpenAiProvider, ProviderConfigError> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut s = OpenAiSettings::default();
        tweak(&mut s);
        OpenAiProvider::new(s, Arc::new(NoKey), DecodeLimits::default())
    }

    #[test]
    fn the_default_is_a_current_model_and_retired_ones_are_refused_at_startup() {
        let p = provider(|_| {}).unwrap();
        assert!(p.catalog.usable(&p.settings.model, today()).is_ok());
        let e = provider(|s| s.model = "gpt-image-1".into()).err().unwrap();
        assert!(e.to_string().contains("retired"), "{e}");
        let e = provider(|s| s.model = "dall-e-9".into()).err().unwrap();
        assert!(e.to_string().contains("unknown model"), "{e}");
        let e = provider(|s| s.size = "640x480".into()).err().unwrap();
        assert!(e.to_string().contains("size"), "{e}");
        let e = provider(|s| {
            s.model = "gpt-image-2".into();
            s.input_fidelity = Some("high".into());
        });
        // A configured fidelity the model cannot take is dropped, not sent.
        let p = e.unwrap();
        let (_, params) = p
            .params(
                &ImageOptions::default(),
                CallShape {
                    input_images: 1,
                    prompt_chars: 1,
                },
            )
            .unwrap();
        assert_eq!(params.input_fidelity, None);
        // ... but asked for explicitly in a request, it is refused.
        let asked = ImageOptions {
            input_fidelity: Some("high".into()),
            ..ImageOptions::default()
        };
        assert!(matches!(
            p.check(&asked, CallShape { input_images: 1, prompt_chars: 1 }),
            Err(ProviderError::Unsupported(u)) if u.param == "input_fidelity"
        ));
    }

    #[test]
    fn errors_map_to_the_taxonomy() {
        let key = Secret::new("sk-test");
        let s = RateSignal {
            retry_after: Some(Duration::from_secs(2)),
            ..RateSignal::default()
        };
        assert!(matches!(
            classify(429, br#"{"error":{"message":"slow down","type":"requests"}}"#, s, &key),
            ProviderError::RateLimited { retry_after: Some(d), .. } if d == Duration::from_secs(2)
        ));
        assert!(matches!(
            classify(429, br#"{"error":{"message":"x","type":"insufficient_quota","code":"insufficient_quota"}}"#, RateSignal::default(), &key),
            ProviderError::InvalidRequest { .. }
        ));
        let echoed = classify(
            400,
            br#"{"error":{"message":"bad key sk-test here","code":"invalid_value"}}"#,
            RateSignal::default(),
            &key,
        );
        assert!(!echoed.to_string().contains("sk-test"), "{echoed}");
        let forbidden = classify(
            403,
            br#"{"error":{"message":"Your organization must be verified to use the model `gpt-image-1.5`.","type":"invalid_request_error","code":null}}"#,
            RateSignal::default(),
            &key,
        );
        assert_eq!(forbidden.code(), "provider_forbidden");
        assert!(forbidden.to_string().contains("verified"), "{forbidden}");
        assert_eq!(
            classify(401, b"{}", RateSignal::default(), &key).code(),
            "provider_auth"
        );
        assert_eq!(
            classify(
                404,
                br#"{"error":{"message":"The model `gpt-image-1` does not exist or you do not have access to it.","code":"model_not_found"}}"#,
                RateSignal::default(),
                &key
            )
            .code(),
            "provider_model_not_found"
        );
        assert!(matches!(
            classify(
                400,
                br#"{"error":{"message":"blocked","code":"moderation_blocked"}}"#,
                RateSignal::default(),
                &key
            ),
            ProviderError::ContentPolicy { .. }
        ));
        assert!(matches!(
            classify(
                502,
                b"<html>bad gateway</html>",
                RateSignal::default(),
                &key
            ),
            ProviderError::Server { status: 502 }
        ));
    }
}
