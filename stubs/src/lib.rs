//! Stand-ins for the paid providers, on loopback: they speak each provider's
//! published wire format and check every request against facts written
//! down from the provider's own API document (`facts/*.json`, with sources
//! and dates), so an adapter that sends something the provider would refuse
//! is refused here too — and the refusal is recorded as a violation the
//! tests can assert on. They count what they serve per idempotency key (what
//! a provider would bill): an answer cut off in transit counts as served.

#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod audio;
pub mod openai;
pub mod removal;

use std::time::{Duration, Instant};

use actix_web::web;

/// Starts an HTTP server on a free loopback port with `workers` threads and
/// returns the port.
pub fn serve_loopback<F>(workers: usize, configure: F) -> u16
where
    F: Fn(&mut web::ServiceConfig) + Clone + Send + 'static,
{
    let server = actix_web::HttpServer::new(move || {
        actix_web::App::new()
            .app_data(web::PayloadConfig::new(64 * 1024 * 1024))
            .configure(configure.clone())
    })
    .workers(workers)
    .disable_signals()
    .bind(("127.0.0.1", 0))
    .expect("bind a loopback port");
    let port = server.addrs()[0].port();
    actix_web::rt::spawn(server.run());
    port
}

/// A requests-per-window cap, like a provider's rate limit.
#[derive(Default)]
pub(crate) struct Window {
    pub limit: Option<(usize, Duration)>,
    pub accepted: std::collections::VecDeque<Instant>,
}

/// What a capped window says about one more request.
pub(crate) struct WindowState {
    pub limit: usize,
    /// Left after this request; 0 and `retry_after` set: refused.
    pub remaining: usize,
    pub reset_after: Duration,
    pub retry_after: Option<Duration>,
}

impl Window {
    /// Admits one request, or says how long to wait; `None`: no cap.
    pub fn admit(&mut self) -> Option<WindowState> {
        let (limit, span) = self.limit?;
        let now = Instant::now();
        while self
            .accepted
            .front()
            .is_some_and(|t| now.duration_since(*t) >= span)
        {
            self.accepted.pop_front();
        }
        let reset_after = self
            .accepted
            .front()
            .map(|t| span.saturating_sub(now.duration_since(*t)))
            .unwrap_or(span);
        if self.accepted.len() >= limit {
            return Some(WindowState {
                limit,
                remaining: 0,
                reset_after,
                retry_after: Some(reset_after),
            });
        }
        self.accepted.push_back(now);
        Some(WindowState {
            limit,
            remaining: limit - self.accepted.len(),
            reset_after,
            retry_after: None,
        })
    }
}

/// FNV-1a: stable per key, so distinct keys give distinct images.
pub(crate) fn hash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// Multipart fields of a request body: text values and file parts.
pub(crate) struct Form {
    pub text: Vec<(String, String)>,
    pub files: Vec<(String, Vec<u8>)>,
    /// Each file part's field name and file name.
    pub file_names: Vec<(String, String)>,
}

pub(crate) async fn parse_multipart(content_type: &str, body: web::Bytes) -> Result<Form, String> {
    let boundary = multer::parse_boundary(content_type).map_err(|e| e.to_string())?;
    let stream = futures_util::stream::once(async move { Ok::<_, std::io::Error>(body) });
    let mut parts = multer::Multipart::new(stream, boundary);
    let mut form = Form {
        text: Vec::new(),
        files: Vec::new(),
        file_names: Vec::new(),
    };
    while let Some(field) = parts.next_field().await.map_err(|e| e.to_string())? {
        let name = field.name().unwrap_or_default().to_string();
        let file_name = field.file_name().map(str::to_string);
        let bytes = field.bytes().await.map_err(|e| e.to_string())?;
        if let Some(file_name) = file_name {
            form.file_names.push((name.clone(), file_name));
            form.files.push((name, bytes.to_vec()));
        } else {
            form.text
                .push((name, String::from_utf8_lossy(&bytes).into_owned()));
        }
    }
    Ok(form)
}

/// Whether `bytes` start like a PNG, JPEG or WebP file.
pub(crate) fn is_image(bytes: &[u8]) -> bool {
    bytes.starts_with(b"\x89PNG\r\n\x1a\n")
        || bytes.starts_with(&[0xff, 0xd8, 0xff])
        || (bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP")
}

/// A Go-style duration, as OpenAI's reset headers are written.
pub(crate) fn go_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms}ms")
    } else {
        format!("{:.3}s", d.as_secs_f64())
    }
}
