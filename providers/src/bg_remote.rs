//! Remote background removal: remove.bg and PhotoRoom, speaking their real
//! wire formats. Both take the image as multipart `image_file` and answer
//! with the cut-out image's bytes; errors come back as JSON in each
//! service's own shape. Keys come from [`Credentials`], never from errors.

use std::sync::Arc;
use std::time::Duration;

use image::RgbaImage;
use imaging::DecodeLimits;
use serde::{Deserialize, Serialize};

use crate::ProviderError;
use crate::credentials::{Credentials, Secret};
use crate::http::{read_limited, transport};

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
/// (remove.bg: `https://api.remove.bg/v1.0`, `REMOVE_BG_API_KEY`, 0.20 USD;
/// PhotoRoom: `https://sdk.photoroom.com/v1`, `PHOTOROOM_API_KEY`, 0.02 USD).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RemoteRemoverSettings {
    pub enabled: bool,
    pub base_url: Option<String>,
    pub api_key_env: Option<String>,
    /// Price of one removal (USD), for estimates, reservations and cost events.
    pub price_usd: Option<f64>,
    pub timeout_secs: Option<u64>,
    pub max_response_bytes: Option<usize>,
}

/// The settings with every default filled in.
#[derive(Clone, Debug)]
struct Resolved {
    base_url: String,
    api_key_env: String,
    price_usd: f64,
    timeout_secs: u64,
    max_response_bytes: usize,
}

impl Resolved {
    fn of(service: Service, s: &RemoteRemoverSettings) -> Self {
        let (base_url, api_key_env, price_usd) = match service {
            Service::RemoveBg => ("https://api.remove.bg/v1.0", "REMOVE_BG_API_KEY", 0.20),
            Service::PhotoRoom => ("https://sdk.photoroom.com/v1", "PHOTOROOM_API_KEY", 0.02),
        };
        Self {
            base_url: s.base_url.clone().unwrap_or_else(|| base_url.into()),
            api_key_env: s.api_key_env.clone().unwrap_or_else(|| api_key_env.into()),
            price_usd: s.price_usd.unwrap_or(price_usd),
            timeout_secs: s.timeout_secs.unwrap_or(60),
            max_response_bytes: s.max_response_bytes.unwrap_or(64 * 1024 * 1024),
        }
    }
}

#[derive(Debug)]
pub struct Removed {
    pub image: RgbaImage,
    pub cost_usd: f64,
    pub provider_request_id: Option<String>,
}

pub struct RemoteRemover {
    service: Service,
    settings: Resolved,
    credentials: Arc<dyn Credentials>,
    http: reqwest::Client,
    limits: DecodeLimits,
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

    pub fn unit_price_usd(&self) -> f64 {
        self.settings.price_usd
    }

    fn api_key(&self) -> Result<Secret, ProviderError> {
        self.credentials.required(&self.settings.api_key_env)
    }

    pub fn preflight(&self) -> Result<(), ProviderError> {
        self.api_key().map(|_| ())
    }

    /// `GET {base_url}/account` (the account's credits): free, and refused
    /// without valid credentials.
    pub async fn check_credentials(&self, api_key: Option<Secret>) -> Result<(), ProviderError> {
        let key = match api_key {
            Some(key) => key,
            None => self.api_key()?,
        };
        let resp = self
            .http
            .get(format!(
                "{}/account",
                self.settings.base_url.trim_end_matches('/')
            ))
            .header(self.service.key_header(), key.expose())
            .send()
            .await
            .map_err(|e| transport(&e))?;
        let status = resp.status().as_u16();
        let body = read_limited(resp, 1024 * 1024).await?;
        if (200..300).contains(&status) {
            Ok(())
        } else {
            Err(classify(self.service, status, &body, None, &key))
        }
    }

    /// Sends `image` and returns the cut-out; `api_key`: the project's own
    /// key, else the adapter's credentials.
    pub async fn remove(
        &self,
        image: RgbaImage,
        api_key: Option<Secret>,
    ) -> Result<Removed, ProviderError> {
        let key = match api_key {
            Some(key) => key,
            None => self.api_key()?,
        };
        let png = imaging::cpu::run(move || imaging::encode_png(&image))
            .await
            .map_err(|e| ProviderError::Malformed(e.to_string()))?
            .map_err(|e| ProviderError::Malformed(format!("cannot encode the input: {e}")))?;
        let part = reqwest::multipart::Part::bytes(png)
            .file_name("image.png")
            .mime_str("image/png")
            .map_err(|e| ProviderError::Transport(e.to_string()))?;
        let mut form = reqwest::multipart::Form::new()
            .part("image_file", part)
            .text("format", "png");
        if self.service == Service::RemoveBg {
            form = form.text("size", "auto");
        }
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
        let body = read_limited(resp, self.settings.max_response_bytes).await?;
        if !(200..300).contains(&status) {
            let retry_after = header("retry-after")
                .and_then(|v| v.trim().parse::<f64>().ok())
                .map(Duration::from_secs_f64);
            return Err(classify(self.service, status, &body, retry_after, &key));
        }
        let limits = self.limits;
        let image = imaging::cpu::run(move || imaging::decode(&body, limits))
            .await
            .map_err(|e| ProviderError::Malformed(e.to_string()))?
            .map_err(|e| ProviderError::Malformed(format!("image in response: {e}")))?;
        // remove.bg says what it charged, in credits; the configured price
        // per removal is what we record either way.
        Ok(Removed {
            image,
            cost_usd: self.settings.price_usd,
            provider_request_id: header("x-request-id")
                .or_else(|| header("x-photoroom-request-id")),
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
}

#[derive(Deserialize)]
struct PhotoRoomError {
    #[serde(default)]
    detail: String,
}

fn classify(
    service: Service,
    status: u16,
    body: &[u8],
    retry_after: Option<Duration>,
    key: &Secret,
) -> ProviderError {
    let (message, code) = match service {
        Service::RemoveBg => serde_json::from_slice::<RemoveBgErrors>(body)
            .ok()
            .and_then(|e| e.errors.into_iter().next())
            .map(|e| (e.title, e.code.unwrap_or_default()))
            .unwrap_or_default(),
        Service::PhotoRoom => serde_json::from_slice::<PhotoRoomError>(body)
            .map(|e| (e.detail, String::new()))
            .unwrap_or_default(),
    };
    let message: String = message
        .replace(key.expose(), "***")
        .chars()
        .take(300)
        .collect();
    match status {
        401 | 403 => ProviderError::Auth { status },
        402 => ProviderError::InvalidRequest {
            status,
            message: "insufficient credits".into(),
        },
        429 => ProviderError::RateLimited { retry_after },
        500..=599 => ProviderError::Server { status },
        _ if code == "unknown_foreground" => ProviderError::InvalidRequest {
            status,
            message: "no foreground found".into(),
        },
        _ => ProviderError::InvalidRequest { status, message },
    }
}
