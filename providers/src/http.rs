//! What the HTTP adapters share: reqwest errors mapped to the taxonomy, and
//! response bodies read with a size limit.

use std::time::Duration;

use futures_util::StreamExt;

use crate::ProviderError;

pub(crate) fn transport(e: &reqwest::Error) -> ProviderError {
    if e.is_timeout() {
        ProviderError::Timeout
    } else if e.is_body() || e.is_decode() {
        ProviderError::Malformed(format!("response body truncated: {e}"))
    } else {
        ProviderError::Transport(e.to_string())
    }
}

/// Reads the body, refusing more than `max` bytes (before reading, when the
/// length is announced).
pub(crate) async fn read_limited(
    resp: reqwest::Response,
    max: usize,
) -> Result<Vec<u8>, ProviderError> {
    let too_large = || ProviderError::Malformed(format!("response larger than {max} bytes"));
    if resp.content_length().is_some_and(|n| n as usize > max) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| transport(&e))?;
        if body.len() + chunk.len() > max {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
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
