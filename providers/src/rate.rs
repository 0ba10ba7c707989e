//! What a provider's response headers say about its rate limits: how long to
//! wait (`Retry-After` in seconds or as an HTTP date, `retry-after-ms`), and
//! how much of the current window is left (OpenAI's `x-ratelimit-*`,
//! remove.bg's `X-RateLimit-*`). The engine's [`crate::governor::Governor`]
//! turns these signals into concurrency.

use std::time::{Duration, SystemTime};

use reqwest::header::HeaderMap;

/// Longest wait a provider may ask for that we honour; longer hints are
/// clamped (a run does not sleep for an hour because a header said so).
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(120);

#[derive(Clone, Debug, Default, PartialEq)]
pub struct RateSignal {
    /// Wait at least this long before the next call.
    pub retry_after: Option<Duration>,
    /// Requests (or images) the window allows, and what is left of it.
    pub limit: Option<u64>,
    pub remaining: Option<u64>,
    /// When the window resets (from now).
    pub reset_after: Option<Duration>,
}

impl RateSignal {
    /// Reads every rate-limit header we know, case-insensitively.
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let retry_after = get("retry-after-ms")
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|ms| ms.is_finite() && *ms >= 0.0)
            .map(|ms| Duration::from_secs_f64(ms / 1000.0))
            .or_else(|| get("retry-after").and_then(parse_retry_after));
        // OpenAI: per-minute request windows (`-requests`), remove.bg: one window.
        let limit = get("x-ratelimit-limit-requests")
            .or_else(|| get("x-ratelimit-limit"))
            .and_then(|v| v.trim().parse().ok());
        let remaining = get("x-ratelimit-remaining-requests")
            .or_else(|| get("x-ratelimit-remaining"))
            .and_then(|v| v.trim().parse().ok());
        let reset_after = get("x-ratelimit-reset-requests")
            .and_then(parse_go_duration)
            .or_else(|| get("x-ratelimit-reset").and_then(parse_reset));
        Self {
            retry_after: retry_after.map(|d| d.min(MAX_RETRY_AFTER)),
            limit,
            remaining,
            reset_after: reset_after.map(|d| d.min(MAX_RETRY_AFTER)),
        }
    }

    pub fn is_empty(&self) -> bool {
        self == &Self::default()
    }
}

/// `Retry-After`: delta seconds (RFC 9110 allows only integers; some servers
/// send fractions) or an HTTP date; a date in the past means "now".
pub fn parse_retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs));
    }
    let when = httpdate::parse_http_date(v).ok()?;
    Some(
        when.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// remove.bg's `X-RateLimit-Reset`: a Unix timestamp (seconds). Small
/// numbers are taken as seconds from now, as some gateways send those.
fn parse_reset(v: &str) -> Option<Duration> {
    let n: f64 = v.trim().parse().ok()?;
    if !n.is_finite() || n < 0.0 {
        return None;
    }
    if n < 1_000_000_000.0 {
        return Some(Duration::from_secs_f64(n));
    }
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .ok()?
        .as_secs_f64();
    Some(Duration::from_secs_f64((n - now).max(0.0)))
}

/// OpenAI's reset headers: Go-style durations such as `1s`, `6m0s`,
/// `20ms`, `1h2m3.5s`.
pub fn parse_go_duration(v: &str) -> Option<Duration> {
    let mut rest = v.trim();
    if rest.is_empty() {
        return None;
    }
    let mut total = 0.0f64;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let factor = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 0.001,
            "us" | "µs" => 0.000_001,
            "ns" => 0.000_000_001,
            _ => return None,
        };
        total += number * factor;
        rest = &rest[unit_len..];
    }
    total.is_finite().then(|| Duration::from_secs_f64(total))
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::{HeaderName, HeaderValue};

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn retry_after_in_seconds_as_a_date_and_in_milliseconds() {
        assert_eq!(parse_retry_after("3"), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after("1.5"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_retry_after("-1"), None);
        assert_eq!(parse_retry_after("soon"), None);
        let in_ten = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(10));
        let d = parse_retry_after(&in_ten).unwrap();
        assert!(
            d > Duration::from_secs(8) && d <= Duration::from_secs(10),
            "{d:?}"
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO),
            "a date in the past: now"
        );
        // retry-after-ms wins over retry-after (OpenAI sends both).
        let s =
            RateSignal::from_headers(&headers(&[("retry-after-ms", "250"), ("retry-after", "1")]));
        assert_eq!(s.retry_after, Some(Duration::from_millis(250)));
        let s = RateSignal::from_headers(&headers(&[("retry-after", "86400")]));
        assert_eq!(s.retry_after, Some(MAX_RETRY_AFTER), "clamped");
    }

    #[test]
    fn window_headers_of_openai_and_remove_bg() {
        let s = RateSignal::from_headers(&headers(&[
            ("x-ratelimit-limit-requests", "50"),
            ("x-ratelimit-remaining-requests", "3"),
            ("x-ratelimit-reset-requests", "6m0s"),
        ]));
        assert_eq!((s.limit, s.remaining), (Some(50), Some(3)));
        assert_eq!(
            s.reset_after,
            Some(MAX_RETRY_AFTER.min(Duration::from_secs(360)))
        );
        let reset = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 30;
        let s = RateSignal::from_headers(&headers(&[
            ("X-RateLimit-Limit", "500"),
            ("X-RateLimit-Remaining", "0"),
            ("X-RateLimit-Reset", &reset.to_string()),
        ]));
        assert_eq!((s.limit, s.remaining), (Some(500), Some(0)));
        let r = s.reset_after.unwrap();
        assert!(
            r > Duration::from_secs(28) && r <= Duration::from_secs(30),
            "{r:?}"
        );
        assert!(RateSignal::from_headers(&HeaderMap::new()).is_empty());
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("1s"), Some(Duration::from_secs(1)));
        assert_eq!(parse_go_duration("20ms"), Some(Duration::from_millis(20)));
        assert_eq!(
            parse_go_duration("1m30.5s"),
            Some(Duration::from_millis(90_500))
        );
        assert_eq!(parse_go_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_go_duration("5x"), None);
        assert_eq!(parse_go_duration(""), None);
    }
}
