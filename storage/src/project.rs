//! A project's files across the places they can live: its local root
//! (always there) and, when its storage policy names one, an S3 prefix.
//! New files go to the project's primary backend; every file is read back
//! from the backend its asset row recorded, so switching a project to S3
//! (or back) strands nothing.

use crate::store::{ObjectKey, ObjectStore, StorageError};

/// Where a project writes, and where its earlier files can be read.
#[derive(Clone, Debug)]
pub struct ProjectFiles {
    local: ObjectStore,
    s3: S3Location,
}

/// The project's S3 location, as far as it can be reached now.
#[derive(Clone, Debug)]
pub enum S3Location {
    /// The policy names no bucket.
    None,
    /// A bucket and credentials: reachable. `primary`: new files go there.
    Ready { store: ObjectStore, primary: bool },
    /// A bucket, but something needed is missing (why, for the error).
    Unreachable { reason: String, primary: bool },
}

impl ProjectFiles {
    pub fn new(local: ObjectStore, s3: S3Location) -> Self {
        Self { local, s3 }
    }

    /// Local files only.
    pub fn local(local: ObjectStore) -> Self {
        Self::new(local, S3Location::None)
    }

    fn s3_is_primary(&self) -> bool {
        matches!(
            self.s3,
            S3Location::Ready { primary: true, .. } | S3Location::Unreachable { primary: true, .. }
        )
    }

    /// The backend new files are written to (`local` or `s3`).
    pub fn backend(&self) -> &'static str {
        if self.s3_is_primary() {
            "s3"
        } else {
            self.local.backend()
        }
    }

    /// Whether new files can be written to the primary backend; checked
    /// before work starts, so a misconfigured bucket is an answer to the
    /// request rather than a failure half-way through a run.
    pub fn check_writable(&self) -> Result<(), StorageError> {
        match &self.s3 {
            S3Location::Unreachable {
                reason,
                primary: true,
            } => Err(StorageError::Unavailable(reason.clone())),
            _ => Ok(()),
        }
    }

    /// The store holding files recorded under `backend`.
    fn store(&self, backend: &str) -> Result<&ObjectStore, StorageError> {
        match (backend, &self.s3) {
            ("s3", S3Location::Ready { store, .. }) => Ok(store),
            ("s3", S3Location::Unreachable { reason, .. }) => {
                Err(StorageError::Unavailable(reason.clone()))
            }
            ("s3", S3Location::None) => Err(StorageError::Unavailable(
                "The file is in S3 storage, but the project's storage policy names no bucket"
                    .into(),
            )),
            _ => Ok(&self.local),
        }
    }

    /// Writes to the primary backend and returns the backend that holds the
    /// file. If S3 refuses or cannot be reached, the file is kept in the local
    /// root instead (and recorded so): a paid result is never lost to a
    /// bucket that is down.
    pub async fn put(&self, key: &ObjectKey, bytes: Vec<u8>) -> Result<&'static str, StorageError> {
        if self.put_in_bucket(key, &bytes).await? {
            return Ok("s3");
        }
        self.local.put(key, bytes).await?;
        Ok(self.local.backend())
    }

    /// Where new files can be written from a blocking thread: the local
    /// root, unless S3 is the primary backend (then `None`: use
    /// [`Self::put_unsynced`]).
    pub fn local_writer(&self) -> Option<crate::LocalWriter> {
        match &self.s3 {
            S3Location::Ready { primary: true, .. }
            | S3Location::Unreachable { primary: true, .. } => None,
            _ => self.local.local_writer(),
        }
    }

    /// Like [`Self::put`], with a local file's sync left to the caller
    /// ([`crate::sync_files`], before any row pointing at it commits).
    pub async fn put_unsynced(
        &self,
        key: &ObjectKey,
        bytes: Vec<u8>,
    ) -> Result<(&'static str, Option<crate::Unsynced>), StorageError> {
        if self.put_in_bucket(key, &bytes).await? {
            return Ok(("s3", None));
        }
        let pending = self.local.put_unsynced(key, bytes).await?;
        Ok((self.local.backend(), pending))
    }

    /// Stores the file in the bucket when S3 is the primary backend and
    /// answers; `false`: it belongs in the local root.
    async fn put_in_bucket(&self, key: &ObjectKey, bytes: &[u8]) -> Result<bool, StorageError> {
        if let S3Location::Ready {
            store,
            primary: true,
        } = &self.s3
        {
            match store.put(key, bytes.to_vec()).await {
                Ok(()) => return Ok(true),
                Err(e) => tracing::warn!(
                    key = key.as_str(),
                    error = %e,
                    "S3 write failed; the file is kept in the project's local root"
                ),
            }
        } else {
            self.check_writable()?;
        }
        Ok(false)
    }

    /// Like [`Self::put`], for a file too large to hold in memory (an
    /// export package): `from` is moved or streamed in.
    pub async fn put_file(
        &self,
        key: &ObjectKey,
        from: &std::path::Path,
    ) -> Result<&'static str, StorageError> {
        if let S3Location::Ready {
            store,
            primary: true,
        } = &self.s3
        {
            match store.put_file(key, from).await {
                Ok(()) => return Ok("s3"),
                Err(e) => tracing::warn!(
                    key = key.as_str(),
                    error = %e,
                    "S3 upload failed; the file is kept in the project's local root"
                ),
            }
        } else {
            self.check_writable()?;
        }
        self.local.put_file(key, from).await?;
        Ok(self.local.backend())
    }

    /// The project's bucket (primary or not), for syncing.
    pub fn bucket(&self) -> Result<&ObjectStore, StorageError> {
        match &self.s3 {
            S3Location::Ready { store, .. } => Ok(store),
            S3Location::Unreachable { reason, .. } => {
                Err(StorageError::Unavailable(reason.clone()))
            }
            S3Location::None => Err(StorageError::Unavailable(
                "The project's storage policy names no bucket (PUT storage/s3)".into(),
            )),
        }
    }

    /// The local root's store.
    pub fn local_store(&self) -> &ObjectStore {
        &self.local
    }

    /// The local root, where work files (a package being written) belong.
    pub fn local_root(&self) -> Option<&std::path::Path> {
        self.local.root()
    }

    /// A file recorded under `backend` (an asset's `storage_backend`).
    pub async fn get_in(&self, backend: &str, key: &ObjectKey) -> Result<Vec<u8>, StorageError> {
        self.store(backend)?.get(key).await
    }

    pub async fn exists_in(&self, backend: &str, key: &ObjectKey) -> Result<bool, StorageError> {
        self.store(backend)?.exists(key).await
    }

    pub async fn delete_in(&self, backend: &str, key: &ObjectKey) -> Result<(), StorageError> {
        self.store(backend)?.delete(key).await
    }

    /// A file named by path (a scene given as `folder/file.png`): the
    /// primary backend first, then the local root.
    pub async fn get(&self, key: &ObjectKey) -> Result<Vec<u8>, StorageError> {
        if self.s3_is_primary() {
            match self.store("s3")?.get(key).await {
                Err(e) if e.is_not_found() => {}
                other => return other,
            }
        }
        self.local.get(key).await
    }

    /// Files directly under a folder (`dir/`): the primary backend's, or
    /// the local root's when the primary has none there.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        if self.s3_is_primary() {
            let mut keys = self.store("s3")?.list(prefix).await?;
            if !keys.is_empty() {
                keys.sort();
                return Ok(keys);
            }
        }
        self.local.list(prefix).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(k: &str) -> ObjectKey {
        ObjectKey::parse(k).unwrap()
    }

    #[tokio::test]
    async fn files_are_read_from_the_backend_that_holds_them() {
        let dir = tempfile::tempdir().unwrap();
        let local = ObjectStore::local(dir.path()).unwrap();
        local
            .put(&key("inputs/a.png"), b"old".to_vec())
            .await
            .unwrap();
        // Memory stands in for the remote store: same code path as S3.
        let remote = ObjectStore::memory().unwrap();
        let files = ProjectFiles::new(
            local,
            S3Location::Ready {
                store: remote.clone(),
                primary: true,
            },
        );
        assert_eq!(files.backend(), "s3");
        assert_eq!(
            files
                .put(&key("runs/r/c0.png"), b"new".to_vec())
                .await
                .unwrap(),
            "s3"
        );
        assert_eq!(
            files.get_in("s3", &key("runs/r/c0.png")).await.unwrap(),
            b"new"
        );
        assert_eq!(remote.get(&key("runs/r/c0.png")).await.unwrap(), b"new");
        assert!(
            !dir.path().join("runs/r/c0.png").exists(),
            "written remotely only"
        );
        assert_eq!(
            files.get_in("local", &key("inputs/a.png")).await.unwrap(),
            b"old"
        );
        // By path: remote first, then the local root.
        assert_eq!(files.get(&key("inputs/a.png")).await.unwrap(), b"old");
        assert_eq!(files.list("inputs/").await.unwrap(), vec!["inputs/a.png"]);
    }

    #[tokio::test]
    async fn an_unreachable_primary_refuses_writes_but_serves_local_files() {
        let dir = tempfile::tempdir().unwrap();
        let local = ObjectStore::local(dir.path()).unwrap();
        local
            .put(&key("inputs/a.png"), b"old".to_vec())
            .await
            .unwrap();
        let files = ProjectFiles::new(
            local,
            S3Location::Unreachable {
                reason: "no credentials".into(),
                primary: true,
            },
        );
        assert!(matches!(
            files.check_writable(),
            Err(StorageError::Unavailable(_))
        ));
        assert!(files.put(&key("x.png"), b"x".to_vec()).await.is_err());
        assert!(!dir.path().join("x.png").exists());
        assert_eq!(
            files.get_in("local", &key("inputs/a.png")).await.unwrap(),
            b"old"
        );
        assert!(matches!(
            files.get_in("s3", &key("inputs/a.png")).await,
            Err(StorageError::Unavailable(_))
        ));
    }
}
