//! Local files written now and made durable later, together.
//!
//! A file written with [`ObjectStore::put_unsynced`](crate::ObjectStore::put_unsynced)
//! is complete under its final name (written to a temporary name, then renamed)
//! but neither its data nor its directory entry has been synced. The caller
//! hands it to [`sync_files`] with the other files of the same batch before it
//! commits any row that points at one of them: the batch's files and each
//! directory once are synced together, several at a time, instead of one
//! fsync-and-rename after another on the hot path. A crash before the sync
//! loses at most files no committed row refers to.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::StorageError;

/// A local file written but not yet synced (see the module docs).
#[derive(Debug, Clone)]
pub struct Unsynced {
    file: PathBuf,
    /// Directories that gained an entry for it, innermost first, up to and
    /// including the store's root.
    dirs: Vec<PathBuf>,
}

impl Unsynced {
    pub(crate) fn new(root: &Path, file: PathBuf) -> Self {
        let mut dirs = Vec::new();
        let mut dir = file.parent();
        while let Some(d) = dir {
            dirs.push(d.to_path_buf());
            if d == root || !d.starts_with(root) {
                break;
            }
            dir = d.parent();
        }
        Self { file, dirs }
    }

    pub fn path(&self) -> &Path {
        &self.file
    }
}

/// Makes the files durable: each file's data and every directory that
/// gained one of them (once each, so a new run directory's entry in its
/// parent is durable too).
pub async fn sync_files(files: Vec<Unsynced>) -> Result<(), StorageError> {
    let dirs: BTreeSet<PathBuf> = files.iter().flat_map(|f| f.dirs.iter().cloned()).collect();
    // Every file's data and every directory that gained an entry (once
    // each); all must be durable before the caller commits, in any order.
    let syncs: Vec<(PathBuf, bool)> = files
        .into_iter()
        .map(|f| (f.file, false))
        .chain(dirs.into_iter().map(|d| (d, true)))
        .collect();
    // Syncs issued together are folded by the file system into a few
    // journal commits, where one after another each waits for its own; a
    // few per task, so a fast disk does not pay a hop per file.
    let per_task = syncs.len().div_ceil(SYNC_TASKS).max(SYNCS_PER_TASK);
    let mut tasks = tokio::task::JoinSet::new();
    for chunk in syncs.chunks(per_task) {
        let chunk = chunk.to_vec();
        tasks.spawn_blocking(move || {
            chunk
                .iter()
                .try_for_each(|(path, is_dir)| sync_one(path, *is_dir))
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.map_err(|e| StorageError::Io(std::io::Error::other(e)))??;
    }
    Ok(())
}

/// At most this many blocking tasks sync one batch.
const SYNC_TASKS: usize = 8;
/// At least this many syncs per task.
const SYNCS_PER_TASK: usize = 4;

fn sync_one(path: &Path, is_dir: bool) -> Result<(), StorageError> {
    if is_dir {
        sync_dir(path)
    } else {
        Ok(std::fs::File::open(path)?.sync_data()?)
    }
}

#[cfg(unix)]
fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    Ok(std::fs::File::open(dir)?.sync_all()?)
}

// Directories cannot be opened for syncing on Windows; their entries are
// durable with the file system's own journal.
#[cfg(not(unix))]
fn sync_dir(_: &Path) -> Result<(), StorageError> {
    Ok(())
}

/// Writes `bytes` under `path` without syncing: to a temporary name in the
/// same directory, renamed into place, so a reader never sees a partial file.
pub(crate) fn write_in_place(path: &Path, bytes: &[u8]) -> Result<(), StorageError> {
    use std::io::Write as _;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| StorageError::InvalidKey(path.display().to_string()))?;
    // Unique per write, so two writes of one key never share a temporary.
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_file_name(format!(".{name}.{}.{n}.tmp", std::process::id()));
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    Ok(written?)
}

/// Moves `from` to `to` durably: `from`'s data synced, renamed into place
/// (copied when on another filesystem), then `to`'s directory synced.
pub(crate) fn move_in_synced(from: &Path, to: &Path) -> Result<(), StorageError> {
    if let Some(dir) = to.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::File::open(from)?.sync_data()?;
    if std::fs::rename(from, to).is_err() {
        let tmp = to.with_extension("part");
        std::fs::copy(from, &tmp)?;
        std::fs::File::open(&tmp)?.sync_data()?;
        std::fs::rename(&tmp, to)?;
        let _ = std::fs::remove_file(from);
    }
    match to.parent() {
        Some(dir) => sync_dir(dir),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn unsynced_files_are_whole_under_their_name_and_sync_with_their_dirs() {
        let root = tempfile::tempdir().unwrap();
        let store = crate::ObjectStore::local(root.path()).unwrap();
        let key = crate::ObjectKey::parse("runs/r1/job/c1.png").unwrap();
        let pending = store
            .put_unsynced(&key, b"first".to_vec())
            .await
            .unwrap()
            .expect("a local store defers the sync");
        assert_eq!(store.get(&key).await.unwrap(), b"first");
        assert!(pending.dirs.iter().any(|d| d == root.path()));
        assert!(pending.dirs.iter().all(|d| d.starts_with(root.path())));
        // Rewriting the same key replaces the file whole; no temporary is left.
        let again = store
            .put_unsynced(&key, b"second".to_vec())
            .await
            .unwrap()
            .unwrap();
        sync_files(vec![pending, again]).await.unwrap();
        assert_eq!(store.get(&key).await.unwrap(), b"second");
        let names: Vec<_> = std::fs::read_dir(root.path().join("runs/r1/job"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, vec!["c1.png".to_string()]);
        // A memory store is durable (as far as it goes) on return.
        let memory = crate::ObjectStore::memory().unwrap();
        assert!(memory.put_unsynced(&key, vec![1]).await.unwrap().is_none());
    }
}
