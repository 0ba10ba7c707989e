//! opendal-backed object storage with project-scoped keys.

use opendal::{Operator, services};

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("invalid object key '{0}'")]
    InvalidKey(String),
    #[error("object '{0}' not found")]
    NotFound(String),
    #[error("storage backend error: {0}")]
    Backend(#[from] opendal::Error),
}

impl StorageError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, StorageError::NotFound(_))
    }
}

/// A validated relative key: `/`-separated segments of `[A-Za-z0-9._-]`, no
/// empty, `.` or `..` segment, so a key can never leave its project prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectKey(String);

impl ObjectKey {
    pub fn parse(raw: &str) -> Result<Self, StorageError> {
        let ok = !raw.is_empty()
            && raw.len() <= 512
            && raw.split('/').all(|seg| {
                !seg.is_empty()
                    && seg != "."
                    && seg != ".."
                    && seg
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
            });
        if ok {
            Ok(Self(raw.to_string()))
        } else {
            Err(StorageError::InvalidKey(raw.to_string()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[derive(Clone, Debug)]
pub struct S3Config {
    pub endpoint: Option<String>,
    pub bucket: String,
    pub region: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    pub root: String,
}

/// One storage location (a project root, or a prefix in a bucket).
#[derive(Clone, Debug)]
pub struct ObjectStore {
    op: Operator,
    backend: &'static str,
}

impl ObjectStore {
    pub fn local(root: &std::path::Path) -> Result<Self, StorageError> {
        let builder = services::Fs::default().root(&root.display().to_string());
        Ok(Self {
            op: Operator::new(builder)?,
            backend: "local",
        })
    }

    pub fn memory() -> Result<Self, StorageError> {
        Ok(Self {
            op: Operator::new(services::Memory::default())?,
            backend: "memory",
        })
    }

    /// S3-compatible storage. Credentials come only from `cfg`: ambient config
    /// files and instance metadata are never consulted.
    pub fn s3(cfg: &S3Config) -> Result<Self, StorageError> {
        let mut builder = services::S3::default()
            .bucket(&cfg.bucket)
            .region(&cfg.region)
            .root(&cfg.root)
            .access_key_id(&cfg.access_key_id)
            .secret_access_key(&cfg.secret_access_key)
            .disable_config_load()
            .disable_ec2_metadata();
        if let Some(endpoint) = &cfg.endpoint {
            builder = builder.endpoint(endpoint);
        }
        Ok(Self {
            op: Operator::new(builder)?,
            backend: "s3",
        })
    }

    pub fn backend(&self) -> &'static str {
        self.backend
    }

    pub async fn put(&self, key: &ObjectKey, bytes: Vec<u8>) -> Result<(), StorageError> {
        self.op.write(key.as_str(), bytes).await?;
        Ok(())
    }

    pub async fn get(&self, key: &ObjectKey) -> Result<Vec<u8>, StorageError> {
        match self.op.read(key.as_str()).await {
            Ok(buf) => Ok(buf.to_vec()),
            Err(e) if e.kind() == opendal::ErrorKind::NotFound => {
                Err(StorageError::NotFound(key.as_str().to_string()))
            }
            Err(e) => Err(e.into()),
        }
    }

    pub async fn exists(&self, key: &ObjectKey) -> Result<bool, StorageError> {
        Ok(self.op.exists(key.as_str()).await?)
    }

    pub async fn delete(&self, key: &ObjectKey) -> Result<(), StorageError> {
        self.op.delete(key.as_str()).await?;
        Ok(())
    }

    /// Keys of the files directly under `prefix` (a directory key ending in `/`).
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        let entries = self.op.list(prefix).await?;
        Ok(entries
            .into_iter()
            .filter(|e| e.metadata().is_file())
            .map(|e| e.path().to_string())
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_cannot_escape() {
        for bad in [
            "", "../x", "a/../b", "/abs", "a//b", "a/./b", "sp ace", "a\\b",
        ] {
            assert!(ObjectKey::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(ObjectKey::parse("runs/01/job-a/candidate_1.png").is_ok());
    }

    #[tokio::test]
    async fn fs_and_memory_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        for store in [
            ObjectStore::local(dir.path()).unwrap(),
            ObjectStore::memory().unwrap(),
        ] {
            let key = ObjectKey::parse("runs/r1/a.bin").unwrap();
            store.put(&key, b"hello".to_vec()).await.unwrap();
            assert_eq!(store.get(&key).await.unwrap(), b"hello");
            assert!(store.exists(&key).await.unwrap());
            assert_eq!(store.list("runs/r1/").await.unwrap(), vec!["runs/r1/a.bin"]);
            store.delete(&key).await.unwrap();
            assert!(store.get(&key).await.unwrap_err().is_not_found());
        }
        assert!(dir.path().join("runs/r1").exists());
    }
}
