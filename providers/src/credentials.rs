//! Where adapters get the service's API keys (the environment). A project's
//! own key, from its encrypted secrets, is passed with each call instead
//! and takes precedence.
//! A [`Secret`] never prints its value (not in logs, errors or `Debug`).

use std::fmt;

#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value, for the one place that sends it (an auth header).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

pub trait Credentials: Send + Sync {
    /// The secret called `name` (e.g. `OPENAI_API_KEY`), if there is one.
    fn secret(&self, name: &str) -> Option<Secret>;

    /// The secret an adapter cannot call without (nothing is sent without it).
    fn required(&self, name: &str) -> Result<Secret, crate::ProviderError> {
        self.secret(name).ok_or_else(|| {
            crate::ProviderError::NotConfigured(format!("no API key: set the secret {name}"))
        })
    }
}

/// Secrets from the process environment; blank values count as missing.
#[derive(Clone, Copy, Debug, Default)]
pub struct EnvCredentials;

impl Credentials for EnvCredentials {
    fn secret(&self, name: &str) -> Option<Secret> {
        std::env::var(name)
            .ok()
            .filter(|v| !v.trim().is_empty())
            .map(Secret::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print_their_value() {
        let s = Secret::new("sk-very-secret");
        assert_eq!(format!("{s:?}"), "Secret(***)");
        assert_eq!(s.expose(), "sk-very-secret");
    }
}
