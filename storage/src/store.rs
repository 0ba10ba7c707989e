//! opendal-backed object storage with project-scoped keys.

use std::path::Path;

use opendal::{HttpTransporter, OperationContext, Operator, services};

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("invalid object key '{0}'")]
    InvalidKey(String),
    #[error("object '{0}' not found")]
    NotFound(String),
    /// The file lives on a backend this project cannot reach now (S3 with no
    /// credentials, or no bucket any more).
    #[error("{0}")]
    Unavailable(String),
    #[error("storage backend error: {0}")]
    Backend(#[from] opendal::Error),
    #[error("file system error: {0}")]
    Io(#[from] std::io::Error),
}

impl StorageError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, StorageError::NotFound(_))
    }

    /// Worth trying again later (a network hiccup, a throttled bucket).
    pub fn is_temporary(&self) -> bool {
        matches!(self, StorageError::Backend(e) if e.is_temporary())
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

#[derive(Clone)]
pub struct S3Config {
    pub endpoint: Option<String>,
    pub bucket: String,
    pub region: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    pub root: String,
}

/// Redacted: the secret key never reaches a log line through `{:?}`.
impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Config")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .field("region", &self.region)
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

/// One storage location (a project root, or a prefix in a bucket).
#[derive(Clone, Debug)]
pub struct ObjectStore {
    op: Operator,
    backend: &'static str,
    /// A local store's root: no key may reach through a symbolic link.
    root: Option<std::path::PathBuf>,
}

/// Whether any existing part of `root/key` (below `root`) is a symbolic
/// link. A link planted inside a project tree could otherwise lead reads
/// and writes anywhere on the server. Blocking: one walk per call, on a
/// blocking thread (not one hop per path segment).
fn through_a_link(root: &std::path::Path, key: &str) -> bool {
    let mut path = root.to_path_buf();
    for segment in key.split('/') {
        path.push(segment);
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.file_type().is_symlink() => return true,
            Ok(_) => {}
            // The rest does not exist yet: nothing to follow.
            Err(_) => return false,
        }
    }
    false
}

/// Writes into a local store's root from a blocking thread: the same link
/// check and temporary-name-then-rename as [`ObjectStore::put_unsynced`].
#[derive(Clone, Debug)]
pub struct LocalWriter {
    root: std::path::PathBuf,
}

impl LocalWriter {
    /// Writes `bytes` under `key`, complete under its final name but not
    /// synced (see [`crate::sync_files`]). Blocking.
    pub fn write_unsynced(&self, key: &str, bytes: &[u8]) -> Result<crate::Unsynced, StorageError> {
        let key = ObjectKey::parse(key)?;
        if through_a_link(&self.root, key.as_str()) {
            return Err(StorageError::NotFound(key.as_str().to_string()));
        }
        let path = self.root.join(key.as_str());
        crate::deferred::write_in_place(&path, bytes)?;
        Ok(crate::Unsynced::new(&self.root, path))
    }
}

/// An object as a listing or a `stat` shows it.
#[derive(Clone, Debug)]
pub struct RemoteObject {
    /// Relative to the store's root.
    pub key: String,
    pub size: u64,
    pub etag: Option<String>,
    /// Its content's SHA-256, when it was written with
    /// [`ObjectStore::put_with_sha256`] (listings do not carry it).
    pub sha256: Option<String>,
}

/// The user-metadata key holding an object's SHA-256 (`x-amz-meta-sha256`).
const SHA256_METADATA: &str = "sha256";

impl ObjectStore {
    pub fn local(root: &std::path::Path) -> Result<Self, StorageError> {
        let builder = services::Fs::default().root(&root.display().to_string());
        Ok(Self {
            op: Operator::new(builder)?,
            backend: "local",
            root: Some(root.to_path_buf()),
        })
    }

    pub fn memory() -> Result<Self, StorageError> {
        Ok(Self {
            op: Operator::new(services::Memory::default())?,
            backend: "memory",
            root: None,
        })
    }

    /// S3-compatible storage. Credentials come only from `cfg`: ambient config
    /// files and instance metadata are never consulted. `http`: the client
    /// its requests go through (e.g. one that refuses internal addresses);
    /// `None`: the process-wide default transport.
    pub fn s3(cfg: &S3Config, http: Option<reqwest::Client>) -> Result<Self, StorageError> {
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
        let mut op = Operator::new(builder)?;
        if let Some(client) = http {
            op = op.with_context(OperationContext::new().with_http_transport(
                HttpTransporter::new(opendal_http_transport_reqwest::ReqwestTransport::new(
                    client,
                )),
            ));
        }
        Ok(Self {
            op,
            backend: "s3",
            root: None,
        })
    }

    /// Refuses a key whose path runs through a symbolic link, as if it did
    /// not exist (so nothing is revealed about what the link points at).
    async fn guard(&self, key: &str) -> Result<(), StorageError> {
        match &self.root {
            Some(root) => {
                let (root, owned) = (root.clone(), key.to_string());
                // A walk that could not finish counts as a link: refused.
                let linked = tokio::task::spawn_blocking(move || through_a_link(&root, &owned))
                    .await
                    .unwrap_or(true);
                if linked {
                    Err(StorageError::NotFound(key.to_string()))
                } else {
                    Ok(())
                }
            }
            None => Ok(()),
        }
    }

    pub fn backend(&self) -> &'static str {
        self.backend
    }

    /// The directory of a local store.
    pub fn root(&self) -> Option<&Path> {
        self.root.as_deref()
    }

    pub async fn put(&self, key: &ObjectKey, bytes: Vec<u8>) -> Result<(), StorageError> {
        if self.root.is_some() {
            // A local file goes under a temporary name of its own and is
            // renamed into place, then synced: two writers of one key (the
            // same content-addressed file stored by concurrent triggers, or
            // by two nodes) never interleave, and a reader never sees it
            // half written.
            let unsynced = self.write_local(key, bytes).await?;
            return crate::sync_files(vec![unsynced]).await;
        }
        self.guard(key.as_str()).await?;
        self.op.write(key.as_str(), bytes).await?;
        Ok(())
    }

    /// Like [`Self::put`], but a local file's durability is left to
    /// [`crate::sync_files`] (returned here); other backends are durable on
    /// return (`None`).
    pub async fn put_unsynced(
        &self,
        key: &ObjectKey,
        bytes: Vec<u8>,
    ) -> Result<Option<crate::Unsynced>, StorageError> {
        if self.root.is_none() {
            self.put(key, bytes).await?;
            return Ok(None);
        }
        Ok(Some(self.write_local(key, bytes).await?))
    }

    /// A local store's write: the link check, then the bytes under a
    /// temporary name of their own renamed into place (atomic), not synced.
    async fn write_local(
        &self,
        key: &ObjectKey,
        bytes: Vec<u8>,
    ) -> Result<crate::Unsynced, StorageError> {
        let root = self
            .root
            .clone()
            .ok_or_else(|| StorageError::InvalidKey(key.as_str().to_string()))?;
        let key = key.as_str().to_string();
        // The link check and the write on one blocking thread, one hop.
        tokio::task::spawn_blocking(move || LocalWriter { root }.write_unsynced(&key, &bytes))
            .await
            .map_err(|e| StorageError::Io(std::io::Error::other(e)))?
    }

    /// A local store's writer for a blocking thread (`None` for other
    /// backends), so work already there can write its file without another
    /// hop.
    pub fn local_writer(&self) -> Option<LocalWriter> {
        self.root.clone().map(|root| LocalWriter { root })
    }

    /// Stores the local file `from` under `key` without holding it in
    /// memory: a local root takes it by rename (synced first, then its
    /// directory; a copy when `from` is on another filesystem), other
    /// backends receive it in chunks (a multipart upload on S3). `from` is
    /// consumed either way.
    pub async fn put_file(&self, key: &ObjectKey, from: &Path) -> Result<(), StorageError> {
        self.guard(key.as_str()).await?;
        if let Some(root) = &self.root {
            let to = root.join(key.as_str());
            let from = from.to_path_buf();
            return tokio::task::spawn_blocking(move || {
                crate::deferred::move_in_synced(&from, &to)
            })
            .await
            .map_err(|e| StorageError::Io(std::io::Error::other(e)))?;
        }
        const CHUNK: usize = 8 << 20;
        let mut writer = self.op.writer_with(key.as_str()).chunk(CHUNK).await?;
        let mut file = tokio::fs::File::open(from).await?;
        loop {
            // Whole chunks (a multipart part has a minimum size), the last
            // one shorter.
            let mut buf = vec![0u8; CHUNK];
            let mut filled = 0;
            while filled < CHUNK {
                let n = tokio::io::AsyncReadExt::read(&mut file, &mut buf[filled..]).await?;
                if n == 0 {
                    break;
                }
                filled += n;
            }
            if filled == 0 {
                break;
            }
            buf.truncate(filled);
            writer.write(buf).await?;
        }
        writer.close().await?;
        let _ = tokio::fs::remove_file(from).await;
        Ok(())
    }

    /// Writes an object carrying its content's SHA-256 as user metadata
    /// (object stores only; a local root has no metadata).
    pub async fn put_with_sha256(
        &self,
        key: &ObjectKey,
        bytes: Vec<u8>,
        sha256: &str,
    ) -> Result<(), StorageError> {
        self.guard(key.as_str()).await?;
        self.op
            .write_with(key.as_str(), bytes)
            .user_metadata([(SHA256_METADATA.to_string(), sha256.to_string())])
            .await?;
        Ok(())
    }

    /// An object's size, ETag and recorded SHA-256; `None` if absent.
    pub async fn stat(&self, key: &ObjectKey) -> Result<Option<RemoteObject>, StorageError> {
        self.guard(key.as_str()).await?;
        match self.op.stat(key.as_str()).await {
            Ok(m) => Ok(Some(RemoteObject {
                key: key.as_str().to_string(),
                size: m.content_length(),
                etag: m.etag().map(str::to_string),
                sha256: m
                    .user_metadata()
                    .and_then(|u| u.get(SHA256_METADATA))
                    .map(str::to_string),
            })),
            Err(e) if e.kind() == opendal::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Every object under the store's root (sizes and ETags from the
    /// listing itself: one request per page, not one per object).
    pub async fn list_all(&self) -> Result<Vec<RemoteObject>, StorageError> {
        let entries = self.op.list_with("").recursive(true).await?;
        Ok(entries
            .into_iter()
            .filter(|e| e.metadata().is_file())
            .map(|e| RemoteObject {
                key: e.path().to_string(),
                size: e.metadata().content_length(),
                etag: e.metadata().etag().map(str::to_string),
                sha256: None,
            })
            .collect())
    }

    pub async fn get(&self, key: &ObjectKey) -> Result<Vec<u8>, StorageError> {
        if let Some(root) = &self.root {
            // A local file in one blocking hop: the link check and a plain
            // read of its known length (opendal's reader zeroes a buffer
            // per read first).
            let (root, key) = (root.clone(), key.as_str().to_string());
            return tokio::task::spawn_blocking(move || {
                if through_a_link(&root, &key) {
                    return Err(StorageError::NotFound(key));
                }
                match std::fs::read(root.join(&key)) {
                    Ok(bytes) => Ok(bytes),
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::NotFound | std::io::ErrorKind::IsADirectory
                        ) =>
                    {
                        Err(StorageError::NotFound(key))
                    }
                    Err(e) => Err(e.into()),
                }
            })
            .await
            .map_err(|e| StorageError::Io(std::io::Error::other(e)))?;
        }
        match self.op.read(key.as_str()).await {
            Ok(buf) => Ok(buf.to_vec()),
            Err(e) if e.kind() == opendal::ErrorKind::NotFound => {
                Err(StorageError::NotFound(key.as_str().to_string()))
            }
            Err(e) => Err(e.into()),
        }
    }

    pub async fn exists(&self, key: &ObjectKey) -> Result<bool, StorageError> {
        if self.guard(key.as_str()).await.is_err() {
            return Ok(false);
        }
        Ok(self.op.exists(key.as_str()).await?)
    }

    pub async fn delete(&self, key: &ObjectKey) -> Result<(), StorageError> {
        self.guard(key.as_str()).await?;
        self.op.delete(key.as_str()).await?;
        Ok(())
    }

    /// Keys of the files directly under `prefix` (a directory key ending in `/`).
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        let dir = prefix.trim_end_matches('/');
        if let Some(root) = &self.root {
            // Local: read the directory ourselves, regular files only (a
            // symbolic link is neither listed nor followed).
            if !dir.is_empty() {
                self.guard(dir).await?;
            }
            let mut entries = match tokio::fs::read_dir(root.join(dir)).await {
                Ok(entries) => entries,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
                Err(e) => {
                    return Err(StorageError::Backend(opendal::Error::new(
                        opendal::ErrorKind::Unexpected,
                        e.to_string(),
                    )));
                }
            };
            let mut keys = Vec::new();
            while let Ok(Some(entry)) = entries.next_entry().await {
                let is_file = entry.file_type().await.is_ok_and(|t| t.is_file());
                if let (true, Some(name)) = (is_file, entry.file_name().to_str()) {
                    keys.push(if dir.is_empty() {
                        name.to_string()
                    } else {
                        format!("{dir}/{name}")
                    });
                }
            }
            keys.sort();
            return Ok(keys);
        }
        let entries = self.op.list(prefix).await?;
        let mut keys = Vec::new();
        for e in entries.into_iter().filter(|e| e.metadata().is_file()) {
            if self.guard(e.path()).await.is_ok() {
                keys.push(e.path().to_string());
            }
        }
        Ok(keys)
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

    /// The same content-addressed file stored by many writers at once (as
    /// concurrent triggers of one scene do): every write succeeds and the
    /// file is whole, with no temporary left behind.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_writes_of_one_key_never_interleave() {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(ObjectStore::local(dir.path()).unwrap());
        let key = ObjectKey::parse("inputs/abc.png").unwrap();
        let bytes: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let writers: Vec<_> = (0..32)
            .map(|_| {
                let (store, key, bytes) = (store.clone(), key.clone(), bytes.clone());
                tokio::spawn(async move { store.put(&key, bytes).await })
            })
            .collect();
        for w in writers {
            w.await.unwrap().unwrap();
        }
        assert_eq!(store.get(&key).await.unwrap(), bytes);
        let names: Vec<_> = std::fs::read_dir(dir.path().join("inputs"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("abc.png")]);
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn symbolic_links_inside_a_root_are_not_followed() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret.png"), b"outside").unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("inputs")).unwrap();
        std::os::unix::fs::symlink(
            outside.path().join("secret.png"),
            root.path().join("leak.png"),
        )
        .unwrap();
        let store = ObjectStore::local(root.path()).unwrap();
        for key in ["inputs/secret.png", "leak.png"] {
            let key = ObjectKey::parse(key).unwrap();
            assert!(store.get(&key).await.unwrap_err().is_not_found(), "{key:?}");
            assert!(!store.exists(&key).await.unwrap());
        }
        // The same answer as for a file that is not there.
        let missing = ObjectKey::parse("inputs/nothing.png").unwrap();
        assert!(store.get(&missing).await.unwrap_err().is_not_found());
        let write = ObjectKey::parse("inputs/planted.png").unwrap();
        assert!(store.put(&write, b"x".to_vec()).await.is_err());
        assert!(
            !outside.path().join("planted.png").exists(),
            "nothing written outside"
        );
        assert!(
            store.list("inputs/").await.is_err() || store.list("inputs/").await.unwrap().is_empty()
        );
        std::fs::write(root.path().join("real.png"), b"in").unwrap();
        assert_eq!(store.list("").await.unwrap(), vec!["real.png"]);
    }
}
