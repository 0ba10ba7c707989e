//! What the HTTP adapters share: reqwest errors classified by whether the
//! request could have reached the provider, and response bodies read with a
//! size limit.

use std::time::Duration;

use futures_util::StreamExt;

use crate::ProviderError;

/// Maps a reqwest failure to the taxonomy. A failed connection means nothing
/// was sent; a timeout or a broken connection after that means the outcome is
/// unknown (the provider may have done the work).
pub(crate) fn transport(e: &reqwest::Error) -> ProviderError {
    if e.is_builder() {
        ProviderError::Input(e.to_string())
    } else if e.is_connect() {
        ProviderError::Transport(e.to_string())
    } else if e.is_timeout() {
        ProviderError::Timeout
    } else if e.is_body() || e.is_decode() {
        ProviderError::malformed(format!("response body truncated: {e}"))
    } else {
        ProviderError::ConnectionLost(e.to_string())
    }
}

/// Reads a successful answer's body, refusing more than `max` bytes. The
/// provider answered 2xx, so a failure here is an unknown outcome.
pub(crate) async fn read_limited(
    resp: reqwest::Response,
    max: usize,
) -> Result<Vec<u8>, ProviderError> {
    let too_large = || ProviderError::malformed(format!("response larger than {max} bytes"));
    if resp.content_length().is_some_and(|n| n as usize > max) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| match transport(&e) {
            // The status line and headers arrived: whatever broke, it broke
            // after the provider started answering.
            ProviderError::Transport(m) => ProviderError::ConnectionLost(m),
            other => other,
        })?;
        if body.len() + chunk.len() > max {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Reads at most `max` bytes of an error answer (the rest is dropped); a
/// broken error body is just an empty one.
pub(crate) async fn read_error_body(resp: reqwest::Response, max: usize) -> Vec<u8> {
    let mut body = Vec::new();
    let mut stream = resp.bytes_stream();
    while let Some(Ok(chunk)) = stream.next().await {
        let room = max.saturating_sub(body.len());
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() >= max {
            break;
        }
    }
    body
}

/// Keeps what a provider says fit for records: the key scrubbed, one line,
/// at most 300 characters.
pub fn scrub(message: &str, key: &str) -> String {
    let cleaned = if key.is_empty() {
        message.to_string()
    } else {
        message.replace(key, "***")
    };
    cleaned
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(300)
        .collect()
}

/// The HTTP client of one adapter: our user agent, a total and a connect timeout.
pub fn client(timeout: Duration, connect: Duration) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .user_agent(concat!("atelier/", env!("CARGO_PKG_VERSION")))
        .timeout(timeout)
        .connect_timeout(connect)
        .build()
        .map_err(|e| format!("HTTP client: {e}"))
}
