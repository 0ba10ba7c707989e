//! OpenAI's audio API on loopback: `POST /v1/audio/speech` (JSON, answered
//! by the audio bytes) and `POST /v1/audio/transcriptions` (multipart,
//! answered by `{text, usage}`). Every request is checked against
//! `facts/openai-audio.json` (written down from OpenAI's API document) and
//! refused the way OpenAI refuses it; accepted ones are answered with real
//! audio of the asked format, or with what the test scripted.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::{Value, json};

pub const KEY: &str = "sk-stub-audio-key-0123456789";

pub fn facts() -> Value {
    serde_json::from_str(include_str!("../facts/openai-audio.json")).expect("valid facts file")
}

/// What the stub answers to the next accepted call (default: a good answer).
#[derive(Clone, Debug)]
pub enum Reply {
    Good,
    /// An error status with OpenAI's error body (and `Retry-After`).
    Error {
        status: u16,
        name: &'static str,
        retry_after: Option<u32>,
    },
    /// The work is done (and billed), half the answer goes out, then the
    /// connection drops.
    Truncated,
    /// A gateway's HTML page with status 200.
    NotAudio,
    Slow(Duration),
}

#[derive(Default)]
pub struct State {
    key: String,
    facts: Value,
    script: Mutex<VecDeque<Reply>>,
    /// Accepted requests per endpoint (`speech`, `transcription`): what
    /// OpenAI would bill.
    served: Mutex<HashMap<String, u32>>,
    violations: Mutex<Vec<String>>,
    requests: Mutex<Vec<Value>>,
    transcript: Mutex<String>,
}

pub struct AudioStub {
    pub base_url: String,
    pub state: Arc<State>,
}

impl AudioStub {
    pub async fn start() -> Self {
        Self::start_with_key(KEY).await
    }

    /// Accepting `key` (a test can name an environment variable that is
    /// always set, instead of changing the process environment).
    pub async fn start_with_key(key: &str) -> Self {
        let state = Arc::new(State {
            key: key.to_string(),
            facts: facts(),
            transcript: Mutex::new("The hero enters the tower at dusk.".into()),
            ..State::default()
        });
        let shared = web::Data::from(state.clone());
        let port = crate::serve_loopback(2, move |cfg| {
            cfg.app_data(shared.clone())
                .route("/v1/audio/speech", web::post().to(speech))
                .route("/v1/audio/transcriptions", web::post().to(transcriptions));
        });
        Self {
            base_url: format!("http://127.0.0.1:{port}/v1"),
            state,
        }
    }

    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.state.script.lock().unwrap().extend(replies);
    }

    pub fn set_transcript(&self, text: &str) {
        *self.state.transcript.lock().unwrap() = text.into();
    }

    /// Calls the provider would bill, by endpoint.
    pub fn served(&self, endpoint: &str) -> u32 {
        self.state
            .served
            .lock()
            .unwrap()
            .get(endpoint)
            .copied()
            .unwrap_or(0)
    }

    pub fn violations(&self) -> Vec<String> {
        self.state.violations.lock().unwrap().clone()
    }

    /// Every accepted request's parameters (the audio file by size).
    pub fn requests(&self) -> Vec<Value> {
        self.state.requests.lock().unwrap().clone()
    }
}

fn error(state: &State, name: &str, param: Option<&str>, fill: &[(&str, &str)]) -> HttpResponse {
    let e = &state.facts["errors"][name];
    let mut message = e["message"].as_str().unwrap_or(name).to_string();
    for (k, v) in fill {
        message = message.replace(&format!("{{{k}}}"), v);
    }
    HttpResponse::build(StatusCode::from_u16(e["status"].as_u64().unwrap_or(400) as u16).unwrap())
        .insert_header(("x-request-id", "req_stub_audio_error"))
        .json(json!({ "error": { "message": message, "type": e["type"], "param": param, "code": e["code"] } }))
}

fn refuse(state: &State, why: String, response: HttpResponse) -> HttpResponse {
    state.violations.lock().unwrap().push(why);
    response
}

fn authorized(req: &HttpRequest, state: &State) -> bool {
    req.headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        == Some(&format!("Bearer {}", state.key))
}

fn listed(list: &Value, value: &str) -> bool {
    list.as_array()
        .is_some_and(|a| a.iter().any(|x| x == value))
}

fn next_reply(state: &State) -> Reply {
    state
        .script
        .lock()
        .unwrap()
        .pop_front()
        .unwrap_or(Reply::Good)
}

fn served(state: &State, endpoint: &str) {
    *state
        .served
        .lock()
        .unwrap()
        .entry(endpoint.into())
        .or_default() += 1;
}

/// A scripted reply other than `Good`, as the answer; `None`: answer well.
async fn scripted(
    state: &State,
    endpoint: &str,
    good: Vec<u8>,
    content_type: &str,
) -> Option<HttpResponse> {
    match next_reply(state) {
        Reply::Good => None,
        Reply::Slow(d) => {
            tokio::time::sleep(d).await;
            None
        }
        Reply::Error {
            status,
            name,
            retry_after,
        } => {
            let mut r = error(state, name, None, &[]);
            *r.status_mut() = StatusCode::from_u16(status).unwrap();
            if let Some(s) = retry_after {
                r.headers_mut().insert(
                    actix_web::http::header::RETRY_AFTER,
                    actix_web::http::header::HeaderValue::from(s),
                );
            }
            Some(r)
        }
        Reply::Truncated => {
            served(state, endpoint);
            let half = web::Bytes::copy_from_slice(&good[..good.len() / 2]);
            let chunks = futures_util::StreamExt::chain(
                futures_util::stream::iter([Ok::<_, std::io::Error>(half)]),
                futures_util::stream::once(async {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Err(std::io::Error::other("connection dropped"))
                }),
            );
            Some(
                HttpResponse::Ok()
                    .content_type(content_type.to_string())
                    .streaming(chunks),
            )
        }
        Reply::NotAudio => Some(
            HttpResponse::Ok()
                .content_type("text/html")
                .body("<html>gateway</html>"),
        ),
    }
}

async fn speech(req: HttpRequest, body: web::Bytes, state: web::Data<State>) -> HttpResponse {
    if !authorized(&req, &state) {
        return error(&state, "invalid_api_key", None, &[("key", "sk-***")]);
    }
    let spec = &state.facts["speech"];
    let Ok(Value::Object(p)) = serde_json::from_slice::<Value>(&body) else {
        return refuse(
            &state,
            "speech: the body is not a JSON object".into(),
            error(
                &state,
                "invalid_value",
                None,
                &[("value", "body"), ("allowed", "JSON")],
            ),
        );
    };
    for k in p.keys() {
        if !listed(&spec["fields"], k) {
            return refuse(
                &state,
                format!("speech: unknown parameter '{k}'"),
                error(&state, "unknown_parameter", Some(k), &[("param", k)]),
            );
        }
    }
    for k in spec["required"].as_array().unwrap() {
        let k = k.as_str().unwrap();
        if !p.contains_key(k) {
            return refuse(
                &state,
                format!("speech: missing '{k}'"),
                error(
                    &state,
                    "missing_required_parameter",
                    Some(k),
                    &[("param", k)],
                ),
            );
        }
    }
    let text = |k: &str| {
        p.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let (model, input, voice) = (text("model"), text("input"), text("voice"));
    if !listed(&spec["models"], &model) {
        return refuse(
            &state,
            format!("speech: unknown model '{model}'"),
            error(
                &state,
                "model_not_found",
                Some("model"),
                &[("model", &model)],
            ),
        );
    }
    if !listed(&spec["voices"], &voice) {
        return refuse(
            &state,
            format!("speech: unknown voice '{voice}'"),
            error(
                &state,
                "invalid_value",
                Some("voice"),
                &[("value", &voice), ("allowed", "the documented voices")],
            ),
        );
    }
    let len = input.chars().count();
    if len > spec["input_max_chars"].as_u64().unwrap() as usize {
        return refuse(
            &state,
            format!("speech: input of {len} characters"),
            error(
                &state,
                "string_above_max_length",
                Some("input"),
                &[
                    ("param", "input"),
                    ("max", "4096"),
                    ("len", &len.to_string()),
                ],
            ),
        );
    }
    if p.contains_key("instructions") && listed(&spec["instructions_not_supported_by"], &model) {
        return refuse(
            &state,
            format!("speech: instructions with {model}"),
            error(
                &state,
                "invalid_value",
                Some("instructions"),
                &[("value", "instructions"), ("allowed", "gpt-4o-mini-tts")],
            ),
        );
    }
    let format = p
        .get("response_format")
        .and_then(Value::as_str)
        .unwrap_or("mp3")
        .to_string();
    if !listed(&spec["response_formats"], &format) {
        return refuse(
            &state,
            format!("speech: response_format '{format}'"),
            error(
                &state,
                "invalid_value",
                Some("response_format"),
                &[
                    ("value", &format),
                    ("allowed", "mp3, opus, aac, flac, wav, pcm"),
                ],
            ),
        );
    }
    if let Some(speed) = p.get("speed") {
        let ok = speed.as_f64().is_some_and(|s| {
            (spec["speed"]["minimum"].as_f64().unwrap()
                ..=spec["speed"]["maximum"].as_f64().unwrap())
                .contains(&s)
        });
        if !ok {
            return refuse(
                &state,
                format!("speech: speed {speed}"),
                error(
                    &state,
                    "invalid_value",
                    Some("speed"),
                    &[("value", &speed.to_string()), ("allowed", "0.25 to 4.0")],
                ),
            );
        }
    }
    state
        .requests
        .lock()
        .unwrap()
        .push(Value::Object(p.clone()));
    // About 15 characters a second of speech.
    let seconds = (len as f64 / 15.0).max(0.5);
    let (audio, content_type) = match format.as_str() {
        "wav" => (wav(seconds), "audio/wav"),
        "flac" => (flac(seconds), "audio/flac"),
        "opus" => (ogg_opus(seconds), "audio/ogg"),
        "pcm" => (vec![0u8; (seconds * 48_000.0) as usize], "audio/pcm"),
        "aac" => (
            vec![0xffu8, 0xf1, 0x50, 0x80, 0x02, 0x1f, 0xfc],
            "audio/aac",
        ),
        _ => (mp3(seconds), "audio/mpeg"),
    };
    if let Some(r) = scripted(&state, "speech", audio.clone(), content_type).await {
        return r;
    }
    served(&state, "speech");
    HttpResponse::Ok()
        .content_type(content_type)
        .insert_header(("x-request-id", "req_stub_speech"))
        .body(audio)
}

async fn transcriptions(
    req: HttpRequest,
    body: web::Bytes,
    state: web::Data<State>,
) -> HttpResponse {
    if !authorized(&req, &state) {
        return error(&state, "invalid_api_key", None, &[("key", "sk-***")]);
    }
    let spec = &state.facts["transcription"];
    let max = spec["max_file_bytes"].as_u64().unwrap() as usize;
    if body.len() > max {
        return error(
            &state,
            "file_too_large",
            None,
            &[("len", &body.len().to_string())],
        );
    }
    let ct = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let form = match crate::parse_multipart(&ct, body).await {
        Ok(f) => f,
        Err(e) => {
            return refuse(
                &state,
                format!("transcription: not multipart ({e})"),
                error(
                    &state,
                    "invalid_value",
                    None,
                    &[("value", "body"), ("allowed", "multipart/form-data")],
                ),
            );
        }
    };
    let names = form
        .text
        .iter()
        .map(|(k, _)| k.as_str())
        .chain(form.files.iter().map(|(k, _)| k.as_str()));
    for k in names {
        if !listed(&spec["fields"], k) {
            return refuse(
                &state,
                format!("transcription: unknown parameter '{k}'"),
                error(&state, "unknown_parameter", Some(k), &[("param", k)]),
            );
        }
    }
    let text = |k: &str| {
        form.text
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
    };
    let Some((_, file)) = form.files.iter().find(|(n, _)| n == "file") else {
        return refuse(
            &state,
            "transcription: missing 'file'".into(),
            error(
                &state,
                "missing_required_parameter",
                Some("file"),
                &[("param", "file")],
            ),
        );
    };
    let Some(model) = text("model") else {
        return refuse(
            &state,
            "transcription: missing 'model'".into(),
            error(
                &state,
                "missing_required_parameter",
                Some("model"),
                &[("param", "model")],
            ),
        );
    };
    if !listed(&spec["models"], &model) {
        return refuse(
            &state,
            format!("transcription: unknown model '{model}'"),
            error(
                &state,
                "model_not_found",
                Some("model"),
                &[("model", &model)],
            ),
        );
    }
    let format = text("response_format").unwrap_or_else(|| "json".into());
    if !listed(&spec["response_formats"], &format)
        || (format != "json" && listed(&spec["json_only"], &model))
    {
        return refuse(
            &state,
            format!("transcription: response_format '{format}' with {model}"),
            error(
                &state,
                "invalid_value",
                Some("response_format"),
                &[("value", &format), ("allowed", "json")],
            ),
        );
    }
    // The file's name must carry a supported extension, and the bytes must
    // be audio (OpenAI refuses both with the same message).
    let file_name = form
        .file_names
        .iter()
        .find(|(n, _)| n == "file")
        .map(|(_, f)| f.clone())
        .unwrap_or_default();
    let extension = file_name
        .rsplit('.')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    if !listed(&spec["file_formats"], &extension) || !looks_like_audio(file) {
        return error(&state, "invalid_file_format", Some("file"), &[]);
    }
    state.requests.lock().unwrap().push(json!({
        "model": model, "language": text("language"), "prompt": text("prompt"),
        "response_format": format, "file_bytes": file.len(), "file_name": file_name,
    }));
    let transcript = state.transcript.lock().unwrap().clone();
    let usage = if listed(&spec["billed_by_duration"], &model) {
        json!({ "type": "duration", "seconds": wav_seconds(file).unwrap_or(1.0) })
    } else {
        json!({ "type": "tokens", "input_tokens": 14, "input_token_details": { "text_tokens": 10, "audio_tokens": 4 },
            "output_tokens": 101, "total_tokens": 115 })
    };
    let answer = serde_json::to_vec(&json!({ "text": transcript, "usage": usage })).unwrap();
    if let Some(r) = scripted(&state, "transcription", answer.clone(), "application/json").await {
        return r;
    }
    served(&state, "transcription");
    HttpResponse::Ok()
        .content_type("application/json")
        .insert_header(("x-request-id", "req_stub_transcription"))
        .body(answer)
}

fn looks_like_audio(b: &[u8]) -> bool {
    (b.len() >= 12 && &b[..4] == b"RIFF" && &b[8..12] == b"WAVE")
        || b.starts_with(b"fLaC")
        || b.starts_with(b"OggS")
        || b.starts_with(b"ID3")
        || b.starts_with(&[0x1a, 0x45, 0xdf, 0xa3])
        || (b.len() >= 8 && &b[4..8] == b"ftyp")
        || (b.len() >= 2 && b[0] == 0xff && b[1] & 0xe0 == 0xe0)
}

fn wav_seconds(b: &[u8]) -> Option<f64> {
    if b.len() < 44 || &b[..4] != b"RIFF" {
        return None;
    }
    let rate = u32::from_le_bytes(b[28..32].try_into().ok()?);
    (rate > 0).then(|| (b.len() - 44) as f64 / f64::from(rate))
}

/// 16 kHz mono 16-bit PCM silence.
fn wav(seconds: f64) -> Vec<u8> {
    let data = (seconds * 16_000.0) as u32 * 2;
    let mut w = b"RIFF".to_vec();
    w.extend_from_slice(&(36 + data).to_le_bytes());
    w.extend_from_slice(b"WAVEfmt \x10\x00\x00\x00\x01\x00\x01\x00");
    w.extend_from_slice(&16_000u32.to_le_bytes());
    w.extend_from_slice(&32_000u32.to_le_bytes());
    w.extend_from_slice(b"\x02\x00\x10\x00data");
    w.extend_from_slice(&data.to_le_bytes());
    w.resize(44 + data as usize, 0);
    w
}

/// MPEG-1 layer III frames at 128 kb/s, 44.1 kHz (417 bytes, 26 ms each).
fn mp3(seconds: f64) -> Vec<u8> {
    let frames = (seconds * 44_100.0 / 1152.0).ceil() as usize;
    let mut out = Vec::with_capacity(frames * 417);
    for _ in 0..frames {
        let mut f = vec![0u8; 417];
        f[..4].copy_from_slice(&[0xff, 0xfb, 0x90, 0x00]);
        out.extend_from_slice(&f);
    }
    out
}

fn flac(seconds: f64) -> Vec<u8> {
    let mut out = b"fLaC\x80\x00\x00\x22".to_vec();
    let mut info = [0u8; 34];
    let samples = (seconds * 24_000.0) as u64;
    let packed: u64 = (24_000u64 << 44) | (15 << 36) | samples;
    info[10..18].copy_from_slice(&packed.to_be_bytes());
    out.extend_from_slice(&info);
    out
}

fn ogg_opus(seconds: f64) -> Vec<u8> {
    let mut out = b"OggS\x00\x02".to_vec();
    out.extend_from_slice(&[0u8; 22]);
    out.extend_from_slice(b"OpusHead\x01\x01\x38\x01\x80\xbb\x00\x00\x00\x00\x00");
    out.extend_from_slice(b"OggS\x00\x04");
    out.extend_from_slice(&((seconds * 48_000.0) as u64 + 312).to_le_bytes());
    out.extend_from_slice(&[0u8; 20]);
    out
}
