//! Remote background removal: remove.bg and PhotoRoom, speaking the wire
//! formats of their published API documents (remove.bg's swagger, PhotoRoom's
//! OpenAPI). Both take the image as multipart `image_file` and answer with
//! the cut-out's bytes; errors come back as JSON in each service's own
//! shapes. What remove.bg charged is read from `X-Credits-Charged`, its
//! rate limits from `X-RateLimit-*` and `Retry-After`. Keys come from
//! [`Credentials`], never appear in errors.

use std::sync::Arc;
use std::time::Duration;

use image::RgbaImage;
use imaging::DecodeLimits;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::credentials::{Credentials, Secret};
use crate::http::{read_error_body, read_limited, scrub, transport};
use crate::{Cost, ProviderError, RateSignal};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    /// `POST {base_url}/removebg`, header `X-Api-Key`.
    RemoveBg,
    /// `POST {base_url}/segment`, header `x-api-key`.
    PhotoRoom,
}

impl Service {
    pub fn code(self) -> &'static str {
        match self {
            Service::RemoveBg => "removebg",
            Service::PhotoRoom => "photoroom",
        }
    }

    fn path(self) -> &'static str {
        match self {
            Service::RemoveBg => "removebg",
            Service::PhotoRoom => "segment",
        }
    }

    fn key_header(self) -> &'static str {
        match self {
            Service::RemoveBg => "X-Api-Key",
            Service::PhotoRoom => "x-api-key",
        }
    }
}

/// Settings of one service; unset fields take the service's defaults
/// (remove.bg: `https://api.remove.bg/v1.0`, `REMOVE_BG_API_KEY`, 0.20 USD
/// per credit, size `auto`; PhotoRoom: `https://sdk.photoroom.com/v1`,
/// account on `https://image-api.photoroom.com`, `PHOTOROOM_API_KEY`,
/// 0.02 USD per image, size `full`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RemoteRemoverSettings {
    pub enabled: bool,
    pub base_url: Option<String>,
    /// PhotoRoom's account endpoint lives on its image API host.
    pub account_base_url: Option<String>,
    pub api_key_env: Option<String>,
    /// remove.bg: price of one credit (a `full`/`auto` removal costs up to
    /// one credit, `preview` a quarter); PhotoRoom: price of one removal.
    pub price_usd: Option<f64>,
    /// The `size` form field (remove.bg: `preview`, `full`, `auto`;
    /// PhotoRoom: `preview`, `medium`, `hd`, `full`).
    pub size: Option<String>,
    pub timeout_secs: Option<u64>,
    pub max_response_bytes: Option<usize>,
    /// Whether a removal whose answer was lost may be sent again (neither
    /// service honours an idempotency key): default no.
    pub retry_unknown_outcome: Option<bool>,
}

/// The settings with every default filled in.
#[derive(Clone, Debug)]
struct Resolved {
    base_url: String,
    account_base_url: String,
    api_key_env: String,
    price_usd: f64,
    size: String,
    timeout_secs: u64,
    max_response_bytes: usize,
    retry_unknown_outcome: bool,
}

impl Resolved {
    fn of(service: Service, s: &RemoteRemoverSettings) -> Self {
        let (base_url, account, api_key_env, price_usd, size) = match service {
            Service::RemoveBg => (
                "https://api.remove.bg/v1.0",
                "https://api.remove.bg/v1.0",
                "REMOVE_BG_API_KEY",
                0.20,
                "auto",
            ),
            Service::PhotoRoom => (
                "https://sdk.photoroom.com/v1",
                "https://image-api.photoroom.com/v1",
                "PHOTOROOM_API_KEY",
                0.02,
                "full",
            ),
        };
        Self {
            base_url: s.base_url.clone().unwrap_or_else(|| base_url.into()),
            account_base_url: s.account_base_url.clone().unwrap_or_else(|| account.into()),
            api_key_env: s.api_key_env.clone().unwrap_or_else(|| api_key_env.into()),
            price_usd: s.price_usd.unwrap_or(price_usd),
            size: s.size.clone().unwrap_or_else(|| size.into()),
            timeout_secs: s.timeout_secs.unwrap_or(60),
            max_response_bytes: s.max_response_bytes.unwrap_or(64 * 1024 * 1024),
            retry_unknown_outcome: s.retry_unknown_outcome.unwrap_or(false),
        }
    }
}

/// A cut-out as the service delivered it.
#[derive(Debug)]
pub struct Removed {
    /// The file's bytes (PNG).
    pub bytes: Vec<u8>,
    pub mime: &'static str,
    pub cost: Cost,
    pub provider_request_id: Option<String>,
    pub rate: RateSignal,
}

pub struct RemoteRemover {
    service: Service,
    settings: Resolved,
    credentials: Arc<dyn Credentials>,
    http: reqwest::Client,
    limits: DecodeLimits,
}

/// Sizes each service takes, and the credits a removal at that size costs
/// at most (PhotoRoom: one image whatever the size).
fn size_credits(service: Service, size: &str) -> Option<f64> {
    match (service, size) {
        (Service::RemoveBg, "preview" | "small" | "regular") => Some(0.25),
        (Service::RemoveBg, "full" | "4k" | "auto" | "medium" | "hd") => Some(1.0),
        (Service::PhotoRoom, "preview" | "medium" | "hd" | "full") => Some(1.0),
        _ => None,
    }
}

impl RemoteRemover {
    pub fn new(
        service: Service,
        settings: RemoteRemoverSettings,
        credentials: Arc<dyn Credentials>,
        limits: DecodeLimits,
    ) -> Result<Self, crate::ProviderConfigError> {
        let bad =
            |m: String| crate::ProviderConfigError(format!("providers.{}: {m}", service.code()));
        let settings = Resolved::of(service, &settings);
        if !settings.price_usd.is_finite() || settings.price_usd < 0.0 {
            return Err(bad("price_usd must be a number >= 0".into()));
        }
        if size_credits(service, &settings.size).is_none() {
            return Err(bad(format!("unknown size '{}'", settings.size)));
        }
        let http = crate::http::client(
            Duration::from_secs(settings.timeout_secs.max(1)),
            Duration::from_secs(15),
        )
        .map_err(bad)?;
        Ok(Self {
            service,
            settings,
            credentials,
            http,
            limits,
        })
    }

    pub fn code(&self) -> &'static str {
        self.service.code()
    }

    /// The most one removal can cost (reserved before the call).
    pub fn max_cost_usd(&self) -> f64 {
        size_credits(self.service, &self.settings.size).unwrap_or(1.0) * self.settings.price_usd
    }

    pub fn retry_unknown_outcome(&self) -> bool {
        self.settings.retry_unknown_outcome
    }

    fn api_key(&self) -> Result<Secret, ProviderError> {
        self.credentials.required(&self.settings.api_key_env)
    }

    pub fn preflight(&self) -> Result<(), ProviderError> {
        self.api_key().map(|_| ())
    }

    /// `GET {account_base_url}/account` (credits left): free, and refused
    /// without valid credentials. remove.bg serves it on its API host,
    /// PhotoRoom on its image API host (not the segmentation host).
    pub async fn check_credentials(&self, api_key: Option<Secret>) -> Result<(), ProviderError> {
        let key = match api_key {
            Some(key) => key,
            None => self.api_key()?,
        };
        let resp = self
            .http
            .get(format!(
                "{}/account",
                self.settings.account_base_url.trim_end_matches('/')
            ))
            .header(self.service.key_header(), key.expose())
            .send()
            .await
            .map_err(|e| transport(&e))?;
        let status = resp.status().as_u16();
        let signal = RateSignal::from_headers(resp.headers());
        let body = read_error_body(resp, 64 * 1024).await;
        if (200..300).contains(&status) {
            Ok(())
        } else {
            Err(classify(self.service, status, &body, signal, &key))
        }
    }

    /// Sends `image` and returns the cut-out as delivered; `api_key`: the
    /// project's own key, else the adapter's credentials.
    pub async fn remove(
        &self,
        image: RgbaImage,
        api_key: Option<Secret>,
    ) -> Result<Removed, ProviderError> {
        let key = match api_key {
            Some(key) => key,
            None => self.api_key()?,
        };
        let (in_w, in_h) = image.dimensions();
        let png = imaging::cpu::run(move || imaging::encode_png(&image))
            .await
            .map_err(|e| ProviderError::Input(e.to_string()))?
            .map_err(|e| ProviderError::Input(format!("cannot encode the input: {e}")))?;
        let part = reqwest::multipart::Part::bytes(png)
            .file_name("image.png")
            .mime_str("image/png")
            .map_err(|e| ProviderError::Input(e.to_string()))?;
        let form = reqwest::multipart::Form::new()
            .part("image_file", part)
            .text("format", "png")
            .text("size", self.settings.size.clone());
        let url = format!(
            "{}/{}",
            self.settings.base_url.trim_end_matches('/'),
            self.service.path()
        );
        let resp = self
            .http
            .post(url)
            .header(self.service.key_header(), key.expose())
            .multipart(form)
            .send()
            .await
            .map_err(|e| transport(&e))?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let signal = RateSignal::from_headers(&headers);
        if !(200..300).contains(&status) {
            let body = read_error_body(resp, 64 * 1024).await;
            return Err(classify(self.service, status, &body, signal, &key));
        }
        // What it charged: remove.bg says so in credits (a quarter to one,
        // depending on the resolution it actually returned); PhotoRoom
        // charges one image per removal.
        let credits = header("x-credits-charged").and_then(|v| v.trim().parse::<f64>().ok());
        let (width, height) = (
            header("x-width").and_then(|v| v.parse::<u32>().ok()),
            header("x-height").and_then(|v| v.parse::<u32>().ok()),
        );
        let cost = match (self.service, credits) {
            (Service::RemoveBg, Some(c)) if c.is_finite() && c >= 0.0 => Cost {
                usd: c * self.settings.price_usd,
                detail: json!({
                    "basis": "credits_charged", "credits": c, "usd_per_credit": self.settings.price_usd,
                    "requested_size": self.settings.size,
                    "input": [in_w, in_h], "returned": [width, height],
                    // `size=auto` returns less when credits run low.
                    "reduced": width.zip(height).is_some_and(|(w, h)| u64::from(w) * u64::from(h) < u64::from(in_w) * u64::from(in_h)),
                }),
            },
            (Service::RemoveBg, _) => Cost {
                usd: self.max_cost_usd(),
                detail: json!({ "basis": "estimate", "reason": "no X-Credits-Charged header",
                    "requested_size": self.settings.size }),
            },
            (Service::PhotoRoom, _) => Cost {
                usd: self.settings.price_usd,
                detail: json!({ "basis": "fixed_price", "usd": self.settings.price_usd,
                    "requested_size": self.settings.size,
                    "uncertainty_score": header("x-uncertainty-score") }),
            },
        };
        let unusable = |message: String| ProviderError::Malformed {
            message,
            cost: Some(cost.clone()),
        };
        let bytes = read_limited(resp, self.settings.max_response_bytes)
            .await
            .map_err(|e| match e {
                // The service answered 2xx: it charged whatever it charged.
                ProviderError::Malformed { message, .. } => unusable(message),
                other => other,
            })?;
        if bytes.len() > self.limits.max_bytes {
            return Err(unusable(format!(
                "cut-out of {} bytes exceeds the {}-byte limit",
                bytes.len(),
                self.limits.max_bytes
            )));
        }
        let mime = crate::sniff_image(&bytes)
            .ok_or_else(|| unusable("the cut-out is not PNG, JPEG or WebP".into()))?;
        Ok(Removed {
            bytes,
            mime,
            cost,
            provider_request_id: header("x-request-id")
                .or_else(|| header("x-photoroom-request-id")),
            rate: signal,
        })
    }
}

#[derive(Deserialize)]
struct RemoveBgErrors {
    errors: Vec<RemoveBgError>,
}

#[derive(Deserialize)]
struct RemoveBgError {
    #[serde(default)]
    title: String,
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    detail: Option<String>,
}

/// PhotoRoom answers `{detail, status_code, type}` (segmentation) or
/// `{error: {message}}` / `{error: {detail}}` (image API, account).
#[derive(Deserialize)]
struct PhotoRoomError {
    #[serde(default)]
    detail: Option<String>,
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    error: Option<PhotoRoomInner>,
    #[serde(default)]
    message: Option<String>,
}

#[derive(Deserialize)]
struct PhotoRoomInner {
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    detail: Option<String>,
}

fn classify(
    service: Service,
    status: u16,
    body: &[u8],
    signal: RateSignal,
    key: &Secret,
) -> ProviderError {
    let (message, code) = match service {
        Service::RemoveBg => serde_json::from_slice::<RemoveBgErrors>(body)
            .ok()
            .and_then(|e| e.errors.into_iter().next())
            .map(|e| {
                let text = match e.detail {
                    Some(d) if !d.is_empty() => format!("{}: {d}", e.title),
                    _ => e.title,
                };
                (text, e.code.unwrap_or_default())
            })
            .unwrap_or_default(),
        Service::PhotoRoom => serde_json::from_slice::<PhotoRoomError>(body)
            .ok()
            .map(|e| {
                let inner = e.error.and_then(|i| i.message.or(i.detail));
                (
                    e.detail.or(inner).or(e.message).unwrap_or_default(),
                    e.kind.unwrap_or_default(),
                )
            })
            .unwrap_or_default(),
    };
    let message = scrub(&message, key.expose());
    match (service, status) {
        (_, 401) | (Service::RemoveBg, 403) => ProviderError::Auth { status },
        (Service::PhotoRoom, 403) => ProviderError::Forbidden { status, message },
        (_, 402) => ProviderError::InvalidRequest {
            status,
            message: if message.is_empty() {
                "insufficient credits".into()
            } else {
                format!("insufficient credits: {message}")
            },
        },
        (_, 429) => ProviderError::RateLimited {
            retry_after: signal.retry_after,
            signal,
        },
        (_, 500..=599) => ProviderError::Server { status },
        _ if code == "unknown_foreground" => ProviderError::InvalidRequest {
            status,
            message: "no foreground found".into(),
        },
        _ => ProviderError::InvalidRequest { status, message },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_shapes_of_both_services() {
        let key = Secret::new("k-123");
        let e = classify(
            Service::RemoveBg,
            403,
            br#"{"errors":[{"title":"Missing API Key"}]}"#,
            RateSignal::default(),
            &key,
        );
        assert_eq!(
            e.code(),
            "provider_auth",
            "remove.bg answers 403 to a bad key"
        );
        let e = classify(
            Service::RemoveBg,
            400,
            br#"{"errors":[{"title":"File too large","code":"file_too_large","detail":"File exceeds limit of 12MB"}]}"#,
            RateSignal::default(),
            &key,
        );
        assert!(e.to_string().contains("File exceeds limit"), "{e}");
        let e = classify(
            Service::PhotoRoom,
            402,
            br#"{"detail":"API credits exhausted. k-123","status_code":402,"type":"payment_required"}"#,
            RateSignal::default(),
            &key,
        );
        assert!(
            e.to_string().contains("credits exhausted") && !e.to_string().contains("k-123"),
            "{e}"
        );
        let e = classify(
            Service::PhotoRoom,
            400,
            br#"{"error":{"message":"apiKey: Required"}}"#,
            RateSignal::default(),
            &key,
        );
        assert!(e.to_string().contains("apiKey: Required"), "{e}");
        let e = classify(
            Service::PhotoRoom,
            403,
            b"Forbidden",
            RateSignal::default(),
            &key,
        );
        assert_eq!(e.code(), "provider_forbidden");
        let limited = RateSignal {
            retry_after: Some(Duration::from_secs(4)),
            ..RateSignal::default()
        };
        assert_eq!(
            classify(Service::RemoveBg, 429, b"{}", limited, &key).retry_after(),
            Some(Duration::from_secs(4))
        );
    }

    #[test]
    fn sizes_and_their_credit_bounds() {
        assert_eq!(size_credits(Service::RemoveBg, "preview"), Some(0.25));
        assert_eq!(size_credits(Service::RemoveBg, "auto"), Some(1.0));
        assert_eq!(size_credits(Service::PhotoRoom, "hd"), Some(1.0));
        assert_eq!(size_credits(Service::PhotoRoom, "auto"), None);
    }
}
