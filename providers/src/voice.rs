//! Voice adapters: speech to text and text to speech.
//!
//! - [`OpenAiVoice`] speaks the wire format of OpenAI's published API
//!   reference (`openai/openai-openapi`): `POST {base_url}/audio/transcriptions`
//!   as multipart (`file`, `model`, optional `language` and `prompt`,
//!   `response_format=json`), answered by `{text, usage}` where `usage` is
//!   `{type: "duration", seconds}` or `{type: "tokens", ...}`; and
//!   `POST {base_url}/audio/speech` with a JSON `CreateSpeechRequest`
//!   (`model`, `input` of at most 4,096 characters, `voice`,
//!   `response_format`, `speed` 0.25-4), answered by the audio bytes. The
//!   base URL is configurable, so self-hosted OpenAI-compatible speech
//!   servers work too. Prices are not in the API document: they are
//!   settings (per minute of audio, per 1,000 characters).
//! - [`Espeak`]: offline text to speech through the `espeak-ng` program
//!   (WAV on its standard output); free.
//!
//! Failures use the image adapters' taxonomy ([`ProviderError`]), so a lost
//! answer is an unknown (possibly billed) outcome here too.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::credentials::{Credentials, Secret};
use crate::http::{read_error_body, read_limited, transport};
use crate::{Cost, ProviderConfigError, ProviderError, RateSignal};

/// The speech models of the API document, and the voices it names.
pub const SPEECH_MODELS: &[&str] = &[
    "tts-1",
    "tts-1-hd",
    "gpt-4o-mini-tts",
    "gpt-4o-mini-tts-2025-12-15",
];
pub const TRANSCRIPTION_MODELS: &[&str] = &[
    "whisper-1",
    "gpt-transcribe",
    "gpt-4o-transcribe",
    "gpt-4o-mini-transcribe",
    "gpt-4o-mini-transcribe-2025-12-15",
];
pub const VOICES: &[&str] = &[
    "alloy", "ash", "ballad", "coral", "echo", "fable", "onyx", "nova", "sage", "shimmer", "verse",
    "marin", "cedar",
];
/// Speech output formats this service stores (each sniffed and measured
/// before it is kept); the API also offers `aac` and raw `pcm`.
pub const SPEECH_FORMATS: &[&str] = &["mp3", "wav", "opus", "flac"];

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OpenAiVoiceSettings {
    /// Registers the `openai` voice provider.
    pub enabled: bool,
    pub base_url: String,
    /// Name of the secret holding the API key.
    pub api_key_env: String,
    pub transcription_model: String,
    pub speech_model: String,
    pub voice: String,
    pub timeout_secs: u64,
    pub connect_timeout_secs: u64,
    /// Larger speech answers are refused before they are read in full.
    pub max_response_bytes: usize,
    /// USD per minute of input audio, by transcription model.
    pub transcription_usd_per_minute: BTreeMap<String, f64>,
    /// USD per 1,000 input characters, by speech model.
    pub speech_usd_per_1k_chars: BTreeMap<String, f64>,
}

impl Default for OpenAiVoiceSettings {
    fn default() -> Self {
        // OpenAI's published prices (platform.openai.com/docs/pricing,
        // 2026-11): per minute for transcription, per character for the
        // tts models, the per-minute estimate for gpt-4o-mini-tts.
        let per_minute = [
            ("whisper-1", 0.006),
            ("gpt-transcribe", 0.006),
            ("gpt-4o-transcribe", 0.006),
            ("gpt-4o-mini-transcribe", 0.003),
            ("gpt-4o-mini-transcribe-2025-12-15", 0.003),
        ];
        let per_1k_chars = [
            ("tts-1", 0.015),
            ("tts-1-hd", 0.030),
            ("gpt-4o-mini-tts", 0.015),
            ("gpt-4o-mini-tts-2025-12-15", 0.015),
        ];
        Self {
            enabled: false,
            base_url: "https://api.openai.com/v1".into(),
            api_key_env: "OPENAI_API_KEY".into(),
            transcription_model: "whisper-1".into(),
            speech_model: "tts-1".into(),
            voice: "alloy".into(),
            timeout_secs: 300,
            connect_timeout_secs: 5,
            max_response_bytes: 32 * 1024 * 1024,
            transcription_usd_per_minute: per_minute
                .iter()
                .map(|(m, p)| (m.to_string(), *p))
                .collect(),
            speech_usd_per_1k_chars: per_1k_chars
                .iter()
                .map(|(m, p)| (m.to_string(), *p))
                .collect(),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EspeakSettings {
    /// Registers the `espeak` voice provider (offline, free).
    pub enabled: bool,
    /// The program; a bare name is looked up on `PATH`.
    pub program: String,
    /// The voice when a request names none (`espeak-ng --voices` lists them).
    pub voice: String,
    pub timeout_secs: u64,
}

impl Default for EspeakSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            program: "espeak-ng".into(),
            voice: "en".into(),
            timeout_secs: 60,
        }
    }
}

/// Audio to transcribe.
pub struct TranscribeRequest {
    pub audio: Vec<u8>,
    /// A file name with the format's extension (the API identifies the
    /// format by it) and the format's media type.
    pub file_name: String,
    pub mime: &'static str,
    pub model: String,
    pub language: Option<String>,
    pub prompt: Option<String>,
    /// The audio's duration as measured here, priced when the provider
    /// reports tokens instead of seconds.
    pub measured_seconds: Option<f64>,
    pub api_key: Option<Secret>,
}

pub struct Transcript {
    pub text: String,
    pub cost: Cost,
    /// Seconds of audio the provider says it billed, when it says so.
    pub billed_seconds: Option<f64>,
    pub request_id: Option<String>,
}

pub struct SpeakRequest {
    pub text: String,
    pub model: String,
    pub voice: String,
    pub format: String,
    pub speed: f64,
    pub api_key: Option<Secret>,
}

pub struct Speech {
    pub audio: Vec<u8>,
    pub cost: Cost,
    pub request_id: Option<String>,
}

pub struct OpenAiVoice {
    settings: OpenAiVoiceSettings,
    credentials: Arc<dyn Credentials>,
    http: reqwest::Client,
}

impl OpenAiVoice {
    pub fn new(
        settings: OpenAiVoiceSettings,
        credentials: Arc<dyn Credentials>,
    ) -> Result<Self, ProviderConfigError> {
        let bad = |m: String| ProviderConfigError(format!("providers.openai_voice: {m}"));
        if !settings
            .transcription_usd_per_minute
            .contains_key(&settings.transcription_model)
        {
            return Err(bad(format!(
                "no price for the transcription model '{}' (transcription_usd_per_minute)",
                settings.transcription_model
            )));
        }
        if !settings
            .speech_usd_per_1k_chars
            .contains_key(&settings.speech_model)
        {
            return Err(bad(format!(
                "no price for the speech model '{}' (speech_usd_per_1k_chars)",
                settings.speech_model
            )));
        }
        let http = crate::http::client(
            Duration::from_secs(settings.timeout_secs.max(1)),
            Duration::from_secs(settings.connect_timeout_secs.max(1)),
        )
        .map_err(bad)?;
        Ok(Self {
            settings,
            credentials,
            http,
        })
    }

    pub fn settings(&self) -> &OpenAiVoiceSettings {
        &self.settings
    }

    /// The key a call without a project key of its own uses.
    pub fn api_key(&self) -> Result<Secret, ProviderError> {
        self.credentials.required(&self.settings.api_key_env)
    }

    /// USD per minute of audio for `model`; `None`: no price is known, the
    /// model is not offered.
    pub fn transcription_price(&self, model: &str) -> Option<f64> {
        self.settings
            .transcription_usd_per_minute
            .get(model)
            .copied()
    }

    /// USD for speaking `chars` characters with `model`.
    pub fn speech_cost(&self, model: &str, chars: usize) -> Option<f64> {
        self.settings
            .speech_usd_per_1k_chars
            .get(model)
            .map(|p| p * chars as f64 / 1000.0)
    }

    fn url(&self, path: &str) -> String {
        format!("{}/{path}", self.settings.base_url.trim_end_matches('/'))
    }

    /// Sends `request` with the key: the answer when it is a success (and
    /// the provider's request id), else the failure classified the way the
    /// image adapter classifies OpenAI's errors.
    async fn send(
        &self,
        request: reqwest::RequestBuilder,
        key: &Secret,
    ) -> Result<(reqwest::Response, Option<String>), ProviderError> {
        let resp = request
            .bearer_auth(key.expose())
            .send()
            .await
            .map_err(|e| transport(&e))?;
        let status = resp.status().as_u16();
        let request_id = request_id(&resp);
        let signal = RateSignal::from_headers(resp.headers());
        if !(200..300).contains(&status) {
            let body = read_error_body(resp, 64 * 1024).await;
            return Err(crate::openai::classify(status, &body, signal, key));
        }
        Ok((resp, request_id))
    }

    pub async fn transcribe(&self, req: TranscribeRequest) -> Result<Transcript, ProviderError> {
        let price = self.transcription_price(&req.model).ok_or_else(|| {
            ProviderError::NotConfigured(format!("no price for model {}", req.model))
        })?;
        let key = match req.api_key {
            Some(key) => key,
            None => self.api_key()?,
        };
        let part = reqwest::multipart::Part::bytes(req.audio)
            .file_name(req.file_name)
            .mime_str(req.mime)
            .map_err(|e| ProviderError::Input(e.to_string()))?;
        let mut form = reqwest::multipart::Form::new()
            .part("file", part)
            .text("model", req.model.clone())
            .text("response_format", "json");
        if let Some(language) = req.language {
            form = form.text("language", language);
        }
        if let Some(prompt) = req.prompt {
            form = form.text("prompt", prompt);
        }
        let (resp, request_id) = self
            .send(
                self.http
                    .post(self.url("audio/transcriptions"))
                    .multipart(form),
                &key,
            )
            .await?;
        let body = read_limited(resp, 4 * 1024 * 1024).await?;
        let parsed: TranscriptionResponse = serde_json::from_slice(&body).map_err(|e| {
            ProviderError::malformed(format!(
                "transcription answer is not the documented JSON: {e}"
            ))
        })?;
        let (cost, billed_seconds) = match parsed.usage {
            Some(Usage::Duration { seconds }) if seconds.is_finite() && seconds >= 0.0 => (
                Cost {
                    usd: price * seconds / 60.0,
                    detail: json!({ "basis": "reported_usage", "seconds": seconds,
                        "usd_per_minute": price }),
                },
                Some(seconds),
            ),
            // Billed by tokens: priced by the measured duration at the
            // configured per-minute rate (the reservation's basis).
            other => {
                let seconds = req.measured_seconds.unwrap_or(0.0);
                let tokens = match other {
                    Some(Usage::Tokens { total_tokens, .. }) => Some(total_tokens),
                    _ => None,
                };
                (
                    Cost {
                        usd: price * seconds / 60.0,
                        detail: json!({ "basis": "estimate", "seconds": seconds,
                            "usd_per_minute": price, "reported_tokens": tokens }),
                    },
                    None,
                )
            }
        };
        Ok(Transcript {
            text: parsed.text,
            cost,
            billed_seconds,
            request_id,
        })
    }

    pub async fn speak(&self, req: SpeakRequest) -> Result<Speech, ProviderError> {
        let chars = req.text.chars().count();
        let usd = self.speech_cost(&req.model, chars).ok_or_else(|| {
            ProviderError::NotConfigured(format!("no price for model {}", req.model))
        })?;
        let key = match req.api_key {
            Some(key) => key,
            None => self.api_key()?,
        };
        let body = json!({
            "model": req.model, "input": req.text, "voice": req.voice,
            "response_format": req.format, "speed": req.speed,
        });
        let (resp, request_id) = self
            .send(self.http.post(self.url("audio/speech")).json(&body), &key)
            .await?;
        let cost = Cost {
            usd,
            detail: json!({ "basis": "characters", "characters": chars, "model": req.model }),
        };
        let audio = read_limited(resp, self.settings.max_response_bytes)
            .await
            .map_err(|e| match e {
                // The speech was made (and billed) even if it did not arrive whole.
                ProviderError::Malformed { message, .. } => ProviderError::Malformed {
                    message,
                    cost: Some(cost.clone()),
                },
                other => other,
            })?;
        Ok(Speech {
            audio,
            cost,
            request_id,
        })
    }
}

fn request_id(resp: &reqwest::Response) -> Option<String> {
    resp.headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(|s| s.chars().take(128).collect())
}

#[derive(Deserialize)]
struct TranscriptionResponse {
    text: String,
    #[serde(default)]
    usage: Option<Usage>,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum Usage {
    Duration {
        seconds: f64,
    },
    Tokens {
        #[serde(default)]
        total_tokens: u64,
    },
}

/// Offline text to speech with `espeak-ng`.
pub struct Espeak {
    settings: EspeakSettings,
}

/// Why espeak-ng could not speak.
#[derive(Debug, thiserror::Error)]
pub enum EspeakError {
    #[error("espeak-ng is not installed (looked for '{0}'); install the Debian package espeak-ng")]
    NotInstalled(String),
    #[error("espeak-ng failed: {0}")]
    Failed(String),
    #[error("espeak-ng took longer than {0} s")]
    TimedOut(u64),
}

impl Espeak {
    pub fn new(settings: EspeakSettings) -> Self {
        Self { settings }
    }

    pub fn settings(&self) -> &EspeakSettings {
        &self.settings
    }

    /// Whether the program can be started (checked before a request is
    /// accepted, so a missing install is a clear error at once).
    pub async fn available(&self) -> Result<(), EspeakError> {
        let out = tokio::process::Command::new(&self.settings.program)
            .arg("--version")
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|_| EspeakError::NotInstalled(self.settings.program.clone()))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(EspeakError::NotInstalled(self.settings.program.clone()))
        }
    }

    /// Speaks `text` with `voice` at `speed` (1.0 = espeak's 175 words a
    /// minute): a WAV file. The text goes on standard input, never on the
    /// command line.
    pub async fn speak(&self, text: &str, voice: &str, speed: f64) -> Result<Vec<u8>, EspeakError> {
        use tokio::io::AsyncWriteExt;
        let wpm = (175.0 * speed).round().clamp(80.0, 450.0) as u32;
        let mut child = tokio::process::Command::new(&self.settings.program)
            .args(["--stdout", "-v", voice, "-s", &wpm.to_string()])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|_| EspeakError::NotInstalled(self.settings.program.clone()))?;
        let mut stdin = child
            .stdin
            .take()
            .ok_or_else(|| EspeakError::Failed("no standard input".into()))?;
        let input = text.to_string();
        let feed = tokio::spawn(async move {
            let _ = stdin.write_all(input.as_bytes()).await;
            let _ = stdin.shutdown().await;
        });
        let limit = self.settings.timeout_secs.max(1);
        let out = tokio::time::timeout(Duration::from_secs(limit), child.wait_with_output())
            .await
            .map_err(|_| EspeakError::TimedOut(limit))?
            .map_err(|e| EspeakError::Failed(e.to_string()))?;
        let _ = feed.await;
        if !out.status.success() || out.stdout.is_empty() {
            let why = String::from_utf8_lossy(&out.stderr)
                .chars()
                .filter(|c| !c.is_control())
                .take(300)
                .collect::<String>();
            return Err(EspeakError::Failed(if why.is_empty() {
                format!("exit status {}", out.status)
            } else {
                why
            }));
        }
        Ok(out.stdout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_default_model_has_a_price() {
        let s = OpenAiVoiceSettings::default();
        for m in TRANSCRIPTION_MODELS {
            assert!(s.transcription_usd_per_minute.contains_key(*m), "{m}");
        }
        for m in SPEECH_MODELS {
            assert!(s.speech_usd_per_1k_chars.contains_key(*m), "{m}");
        }
    }

    #[test]
    fn usage_of_both_documented_kinds_parses() {
        let d: TranscriptionResponse =
            serde_json::from_str(r#"{"text":"hi","usage":{"type":"duration","seconds":3.5}}"#)
                .unwrap();
        assert!(matches!(d.usage, Some(Usage::Duration { seconds }) if seconds == 3.5));
        let t: TranscriptionResponse = serde_json::from_str(
            r#"{"text":"hi","usage":{"type":"tokens","input_tokens":14,"output_tokens":101,"total_tokens":115}}"#,
        )
        .unwrap();
        assert!(matches!(t.usage, Some(Usage::Tokens { total_tokens: 115 })));
    }

    #[tokio::test]
    async fn a_missing_espeak_is_a_clear_error() {
        let e = Espeak::new(EspeakSettings {
            program: "/nonexistent/espeak-ng".into(),
            ..EspeakSettings::default()
        });
        let err = e.available().await.unwrap_err();
        assert!(matches!(err, EspeakError::NotInstalled(_)));
        assert!(
            err.to_string()
                .contains("install the Debian package espeak-ng")
        );
    }
}
