//! Encryption of project secrets at rest: AES-256-GCM with a random 96-bit
//! nonce per value and no associated data, stored as
//! `enc:v1:` + base64url (padded) of nonce ‖ ciphertext ‖ tag — the format of
//! the earlier system, so its databases decrypt with its key.
//!
//! The master key comes from an environment variable (base64url of 32
//! bytes) or a key file; a key file is generated (mode 0600) only when a
//! secret is written and no key exists. Older keys (for values not rotated
//! yet) are tried after the current one.

use std::path::PathBuf;

use aes_gcm::aead::{Aead, Generate, Key, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE;

pub const PREFIX: &str = "enc:v1:";
const NONCE_LEN: usize = 12;

#[derive(Debug, thiserror::Error)]
pub enum CipherError {
    #[error("no master key: set {env} or provide the key file {file}")]
    NoKey { env: String, file: String },
    #[error("the master key in {0} is not base64url of 32 bytes")]
    BadKey(String),
    #[error("cannot read or write the key file: {0}")]
    KeyFile(String),
    #[error("a stored secret cannot be decrypted with any configured key")]
    Undecryptable,
    #[error("encryption failed")]
    Encrypt,
}

/// Where the master keys come from (names and paths only: no key material).
#[derive(Clone, Debug)]
pub struct KeySource {
    /// Environment variable holding the current key.
    pub key_env: String,
    pub key_file: PathBuf,
    /// Label written to `key_ref` (only a label; nothing binds it to the bytes).
    pub key_ref: String,
    /// Environment variable with older keys, comma-separated.
    pub previous_env: String,
}

/// The loaded keys. Deliberately not `Debug`.
pub struct MasterKeys {
    current: Aes256Gcm,
    previous: Vec<Aes256Gcm>,
    pub key_ref: String,
}

fn parse_key(text: &str, origin: &str) -> Result<Aes256Gcm, CipherError> {
    let bytes = URL_SAFE
        .decode(text.trim())
        .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(text.trim()))
        .map_err(|_| CipherError::BadKey(origin.into()))?;
    if bytes.len() != 32 {
        return Err(CipherError::BadKey(origin.into()));
    }
    Aes256Gcm::new_from_slice(&bytes).map_err(|_| CipherError::BadKey(origin.into()))
}

impl KeySource {
    /// Loads the keys; with `create`, a missing key file is generated (0600).
    pub fn load(&self, create: bool) -> Result<MasterKeys, CipherError> {
        let current = match std::env::var(&self.key_env) {
            Ok(v) if !v.trim().is_empty() => parse_key(&v, &self.key_env)?,
            _ => self.key_in_file(create)?,
        };
        let previous = match std::env::var(&self.previous_env) {
            Ok(v) if !v.trim().is_empty() => v
                .split(',')
                .map(|k| parse_key(k, &self.previous_env))
                .collect::<Result<_, _>>()?,
            _ => Vec::new(),
        };
        Ok(MasterKeys {
            current,
            previous,
            key_ref: self.key_ref.clone(),
        })
    }

    fn key_in_file(&self, create: bool) -> Result<Aes256Gcm, CipherError> {
        let origin = self.key_file.display().to_string();
        match std::fs::read_to_string(&self.key_file) {
            Ok(text) => parse_key(&text, &origin),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
                let key = Key::<Aes256Gcm>::generate();
                write_private(&self.key_file, URL_SAFE.encode(key.as_slice()).as_bytes())
                    .map_err(|e| CipherError::KeyFile(e.to_string()))?;
                tracing::info!(file = %origin, "generated a master key for project secrets");
                Ok(Aes256Gcm::new(&key))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(CipherError::NoKey {
                env: self.key_env.clone(),
                file: origin,
            }),
            Err(e) => Err(CipherError::KeyFile(e.to_string())),
        }
    }
}

/// Creates the file readable and writable by its owner only (never wider,
/// not even for an instant), failing if it already exists.
fn write_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

impl MasterKeys {
    pub fn encrypt(&self, plaintext: &str) -> Result<String, CipherError> {
        let nonce = Nonce::generate();
        let sealed = self
            .current
            .encrypt(&nonce, plaintext.as_bytes())
            .map_err(|_| CipherError::Encrypt)?;
        let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
        out.extend_from_slice(nonce.as_slice());
        out.extend_from_slice(&sealed);
        Ok(format!("{PREFIX}{}", URL_SAFE.encode(out)))
    }

    /// The plaintext of a stored value: decrypted with the current key, then
    /// the previous ones; a value without the prefix is legacy plaintext.
    pub fn decrypt(&self, stored: &str) -> Result<String, CipherError> {
        let Some(encoded) = stored.strip_prefix(PREFIX) else {
            return Ok(stored.to_string());
        };
        let raw = URL_SAFE
            .decode(encoded)
            .map_err(|_| CipherError::Undecryptable)?;
        if raw.len() < NONCE_LEN + 16 {
            return Err(CipherError::Undecryptable);
        }
        let (nonce, sealed) = raw.split_at(NONCE_LEN);
        let nonce = Nonce::try_from(nonce).map_err(|_| CipherError::Undecryptable)?;
        std::iter::once(&self.current)
            .chain(&self.previous)
            .find_map(|k| k.decrypt(&nonce, sealed).ok())
            .and_then(|p| String::from_utf8(p).ok())
            .ok_or(CipherError::Undecryptable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(key: &[u8; 32], previous: &[[u8; 32]]) -> MasterKeys {
        MasterKeys {
            current: Aes256Gcm::new_from_slice(key).unwrap(),
            previous: previous
                .iter()
                .map(|k| Aes256Gcm::new_from_slice(k).unwrap())
                .collect(),
            key_ref: "test".into(),
        }
    }

    #[test]
    fn round_trip_format_and_fresh_nonces() {
        let k = keys(&[7; 32], &[]);
        let a = k.encrypt("sk-secret").unwrap();
        let b = k.encrypt("sk-secret").unwrap();
        assert!(a.starts_with("enc:v1:"));
        assert_ne!(a, b, "a new nonce each time");
        assert!(!a.contains("sk-secret"));
        let raw = URL_SAFE.decode(&a[7..]).unwrap();
        assert_eq!(
            raw.len(),
            12 + "sk-secret".len() + 16,
            "nonce ‖ ciphertext ‖ tag"
        );
        assert_eq!(k.decrypt(&a).unwrap(), "sk-secret");
        assert_eq!(k.decrypt("legacy plain").unwrap(), "legacy plain");
    }

    #[test]
    fn wrong_or_tampered_keys_fail_and_previous_keys_are_tried() {
        let old = keys(&[1; 32], &[]);
        let stored = old.encrypt("value").unwrap();
        assert!(matches!(
            keys(&[2; 32], &[]).decrypt(&stored),
            Err(CipherError::Undecryptable)
        ));
        assert_eq!(
            keys(&[2; 32], &[[1; 32]]).decrypt(&stored).unwrap(),
            "value"
        );
        let mut tampered = stored.clone();
        tampered.replace_range(20..21, if &stored[20..21] == "A" { "B" } else { "A" });
        assert!(old.decrypt(&tampered).is_err());
        assert!(old.decrypt("enc:v1:short").is_err());
    }

    #[test]
    fn a_key_file_is_created_private_only_when_asked() {
        let dir = tempfile::tempdir().unwrap();
        let source = KeySource {
            key_env: "ATELIER_TEST_UNSET_MASTER_KEY".into(),
            key_file: dir.path().join("keys/master.key"),
            key_ref: "local-master".into(),
            previous_env: "ATELIER_TEST_UNSET_PREVIOUS".into(),
        };
        assert!(matches!(source.load(false), Err(CipherError::NoKey { .. })));
        let created = source.load(true).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&source.key_file)
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let stored = created.encrypt("x").unwrap();
        assert_eq!(source.load(false).unwrap().decrypt(&stored).unwrap(), "x");
        std::fs::write(&source.key_file, "not a key").unwrap();
        assert!(matches!(source.load(false), Err(CipherError::BadKey(_))));
    }
}
