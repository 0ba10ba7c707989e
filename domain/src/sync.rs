//! S3 sync: a project's local files (every asset kept in its local root,
//! export packages included) pushed to the project's bucket, and pulled
//! back, under the same keys as its S3 storage uses.
//!
//! - **Incremental by SHA-256**: each object carries its content's SHA-256
//!   as user metadata (`x-amz-meta-sha256`), and the project keeps what it
//!   last synced (`.sync/state.json` in its local root: key, SHA-256, size,
//!   ETag). A push moves only what changed, so a second push of an
//!   unchanged project moves nothing.
//! - **Checking the bucket**: a push lists the bucket (one request per
//!   thousand objects) when asked (`full`), when it has no recent listing
//!   (older than [`FULL_CHECK_EVERY`]) or when many files are new to it;
//!   otherwise it trusts its record for files that have not changed since
//!   they were pushed, and asks the bucket (`stat`) only about the others —
//!   an unchanged project costs no request at all. What the trust defers
//!   to the next listing: noticing an object someone else deleted (pushed
//!   again then) or changed (reported then). It never overwrites one: a
//!   file about to move is always checked against the bucket first.
//! - **Resumable**: an object is either whole in the bucket or absent (a
//!   PUT or multipart upload completes or is discarded), and state is saved
//!   as objects complete. After a crash, an object found in the bucket but
//!   not in the state is checked by its metadata before it is trusted.
//! - **Verified**: after an upload the object is read back by `stat` (size
//!   and SHA-256); a pulled file's bytes are hashed before they are written.
//! - **Conflicts**: a remote object whose content differs both from the
//!   local file and from what this project last synced was changed by
//!   someone else. It is refused (reported, left alone) unless `overwrite`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Instant;

use entities::{assets, projects};
use futures_util::StreamExt;
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter};
use serde::{Deserialize, Serialize};
use storage::{ObjectKey, ObjectStore, ProjectFiles, RemoteObject};

use crate::ServiceError;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Push,
    Pull,
}

pub struct SyncOptions {
    pub direction: Direction,
    pub dry_run: bool,
    /// Replace remote (push) or local (pull) content that someone else
    /// changed, instead of refusing it.
    pub overwrite: bool,
    /// Transfers in flight at most.
    pub concurrency: usize,
    /// Push: list the bucket even if a recent listing lets the record be
    /// trusted (see the module docs).
    pub full: bool,
}

/// A push lists the bucket at least this often (see the module docs).
pub const FULL_CHECK_EVERY: chrono::TimeDelta = chrono::TimeDelta::hours(1);

/// A push with more files than this that its record does not vouch for
/// lists the bucket (one request per thousand) instead of asking per file.
const STAT_AT_MOST: usize = 100;

/// Told after each object transferred.
pub trait SyncProgress: Send + Sync {
    fn planned(&self, objects: u64);
    fn moved(&self, key: &str, bytes: u64);
}

impl SyncProgress for () {
    fn planned(&self, _: u64) {}
    fn moved(&self, _: &str, _: u64) {}
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct SyncReport {
    pub direction: Option<Direction>,
    pub dry_run: bool,
    /// Moved (or, in a dry run, to be moved).
    pub transferred: Vec<String>,
    pub bytes: u64,
    /// Already the same on both sides.
    pub unchanged: u64,
    /// Changed on the other side by someone else: left alone.
    pub conflicts: Vec<String>,
    /// Local rows whose file is gone (push), or objects without a checksum
    /// to verify them by (pull): not moved.
    pub skipped: Vec<String>,
    /// The bucket was listed (a pull, or a push that did not trust its
    /// record: see the module docs).
    pub listed: bool,
}

/// What the project last synced, per key.
#[derive(Default, Serialize, Deserialize)]
struct State {
    objects: BTreeMap<String, Synced>,
    /// When a push last listed the bucket.
    #[serde(default)]
    listed_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl State {
    /// Pushed with this content, per the record.
    fn vouches(&self, key: &str, local: &Local) -> bool {
        self.objects
            .get(key)
            .is_some_and(|s| s.sha256 == local.sha256 && s.size == local.size)
    }

    fn listed_recently(&self) -> bool {
        self.listed_at
            .is_some_and(|t| crate::time::now() - t < FULL_CHECK_EVERY)
    }
}

#[derive(Clone, Serialize, Deserialize)]
struct Synced {
    sha256: String,
    size: u64,
    etag: Option<String>,
}

fn state_path(files: &ProjectFiles) -> Option<PathBuf> {
    files
        .local_root()
        .map(|r| r.join(".sync").join("state.json"))
}

fn load_state(files: &ProjectFiles) -> State {
    state_path(files)
        .and_then(|p| std::fs::read(p).ok())
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// Written whole under a temporary name, then renamed: never half a file.
fn save_state(files: &ProjectFiles, state: &State) -> Result<(), ServiceError> {
    let Some(path) = state_path(files) else {
        return Ok(());
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec(state)?)?;
    std::fs::rename(&tmp, &path)?;
    Ok(())
}

/// The local side: every file of the project kept in its local root, by key.
struct Local {
    sha256: String,
    size: u64,
}

async fn local_files(
    db: &DatabaseConnection,
    project: &projects::Model,
    report: &mut SyncReport,
) -> Result<BTreeMap<String, Local>, ServiceError> {
    let rows = assets::Entity::find()
        .filter(assets::Column::ProjectId.eq(project.id))
        .filter(assets::Column::StorageBackend.eq("local"))
        .all(db)
        .await?;
    let mut out = BTreeMap::new();
    for a in rows {
        // Presence is checked when (and only if) the file has to move: an
        // unchanged project costs a listing, not a stat per file.
        match (a.sha256, a.byte_size) {
            (Some(sha256), Some(size)) => {
                out.insert(
                    a.storage_key,
                    Local {
                        sha256,
                        size: size as u64,
                    },
                );
            }
            _ => report.skipped.push(a.storage_key),
        }
    }
    Ok(out)
}

/// A remote object's SHA-256: from the listing's ETag when this project
/// recorded it with that ETag, else from the object's own metadata.
async fn remote_sha(
    bucket: &ObjectStore,
    remote: &RemoteObject,
    state: &State,
) -> Result<Option<String>, ServiceError> {
    if remote.sha256.is_some() {
        return Ok(remote.sha256.clone());
    }
    if let Some(s) = state.objects.get(&remote.key)
        && remote.etag.is_some()
        && s.etag == remote.etag
        && s.size == remote.size
    {
        return Ok(Some(s.sha256.clone()));
    }
    let key = ObjectKey::parse(&remote.key)?;
    Ok(bucket.stat(&key).await?.and_then(|o| o.sha256))
}

/// One transfer's outcome.
enum Moved {
    /// (key, SHA-256, (size, ETag)).
    Done(String, String, (u64, Option<String>)),
    /// The local file named by a row is gone: not pushed.
    Missing(String),
}

/// Pushes or pulls the project's files (see the module docs).
pub async fn sync(
    db: &DatabaseConnection,
    files: &ProjectFiles,
    project: &projects::Model,
    options: &SyncOptions,
    progress: &dyn SyncProgress,
) -> Result<SyncReport, ServiceError> {
    let bucket = files.bucket().map_err(ServiceError::from)?.clone();
    let mut report = SyncReport {
        direction: Some(options.direction),
        dry_run: options.dry_run,
        ..SyncReport::default()
    };
    let mut state = load_state(files);
    let local = local_files(db, project, &mut report).await?;
    let unvouched = local.iter().filter(|(k, l)| !state.vouches(k, l)).count();
    report.listed = options.direction == Direction::Pull
        || options.full
        || !state.listed_recently()
        || unvouched > STAT_AT_MOST;
    let remote: BTreeMap<String, RemoteObject> = if report.listed {
        let listing = bucket.list_all().await?;
        if options.direction == Direction::Push {
            state.listed_at = Some(crate::time::now());
        }
        listing.into_iter().map(|o| (o.key.clone(), o)).collect()
    } else {
        BTreeMap::new()
    };
    // The plan: what to move, decided before anything moves.
    let mut plan: Vec<(String, u64, Option<String>)> = Vec::new();
    match options.direction {
        Direction::Push => {
            for (key, l) in &local {
                let asked;
                let r = if report.listed {
                    remote.get(key)
                } else if state.vouches(key, l) {
                    report.unchanged += 1;
                    continue;
                } else {
                    asked = bucket.stat(&ObjectKey::parse(key)?).await?;
                    asked.as_ref()
                };
                let Some(r) = r else {
                    plan.push((key.clone(), l.size, Some(l.sha256.clone())));
                    continue;
                };
                let theirs = remote_sha(&bucket, r, &state).await?;
                if theirs.as_deref() == Some(l.sha256.as_str()) {
                    report.unchanged += 1;
                    state.objects.insert(
                        key.clone(),
                        Synced {
                            sha256: l.sha256.clone(),
                            size: l.size,
                            etag: r.etag.clone(),
                        },
                    );
                    continue;
                }
                // Not what this project last put there (or no checksum to
                // tell): someone else's content.
                let ours_before = state.objects.get(key).map(|s| s.sha256.clone());
                if (theirs.is_none() || theirs != ours_before) && !options.overwrite {
                    report.conflicts.push(key.clone());
                    continue;
                }
                plan.push((key.clone(), l.size, Some(l.sha256.clone())));
            }
        }
        Direction::Pull => {
            for (key, r) in &remote {
                if key.starts_with(".sync/") || key.starts_with(".exports/") {
                    continue;
                }
                let theirs = remote_sha(&bucket, r, &state).await?;
                let Some(theirs) = theirs else {
                    report.skipped.push(key.clone());
                    continue;
                };
                // The file as it is now (its row may say otherwise if it
                // was changed by hand).
                let ours = match files.get_in("local", &ObjectKey::parse(key)?).await {
                    Ok(bytes) => Some(crate::assets::sha256_hex(&bytes)),
                    Err(_) => None,
                };
                if ours.as_deref() == Some(theirs.as_str()) {
                    report.unchanged += 1;
                    continue;
                }
                let synced_before = state.objects.get(key).map(|s| s.sha256.clone());
                if ours.is_some() && ours != synced_before && !options.overwrite {
                    report.conflicts.push(key.clone());
                    continue;
                }
                plan.push((key.clone(), r.size, Some(theirs)));
            }
        }
    }
    progress.planned(plan.len() as u64);
    report.bytes = plan.iter().map(|p| p.1).sum();
    if options.dry_run {
        report.transferred = plan.into_iter().map(|p| p.0).collect();
        return Ok(report);
    }
    save_state(files, &state)?;
    let local_store = files.local_store().clone();
    let mut moves = futures_util::stream::iter(plan.into_iter().map(|(key, _, sha)| {
        let (bucket, local_store) = (bucket.clone(), local_store.clone());
        async move {
            let object = ObjectKey::parse(&key)?;
            let sha = sha.unwrap_or_default();
            let size = match options.direction {
                Direction::Push => {
                    let bytes = match local_store.get(&object).await {
                        Ok(bytes) => bytes,
                        Err(e) if e.is_not_found() => return Ok(Moved::Missing(key)),
                        Err(e) => return Err(e.into()),
                    };
                    if crate::assets::sha256_hex(&bytes) != sha {
                        return Err(ServiceError::Conflict {
                            code: "sync_file_changed",
                            message: format!("{key} changed locally while it was being pushed"),
                        });
                    }
                    let size = bytes.len() as u64;
                    bucket.put_with_sha256(&object, bytes, &sha).await?;
                    // Read back: whole, and the content we meant.
                    let stored = bucket.stat(&object).await?;
                    match stored {
                        Some(o) if o.size == size && o.sha256.as_deref() == Some(sha.as_str()) => {
                            (size, o.etag)
                        }
                        _ => {
                            return Err(ServiceError::Conflict {
                                code: "sync_verify_failed",
                                message: format!("{key}: the bucket does not hold what was sent"),
                            });
                        }
                    }
                }
                Direction::Pull => {
                    let bytes = bucket.get(&object).await?;
                    if crate::assets::sha256_hex(&bytes) != sha {
                        return Err(ServiceError::Conflict {
                            code: "sync_verify_failed",
                            message: format!(
                                "{key}: the bytes received do not match the object's SHA-256"
                            ),
                        });
                    }
                    let size = bytes.len() as u64;
                    local_store.put(&object, bytes).await?;
                    let etag = bucket.stat(&object).await?.and_then(|o| o.etag);
                    (size, etag)
                }
            };
            Ok::<_, ServiceError>(Moved::Done(key, sha, size))
        }
    }))
    .buffer_unordered(options.concurrency.max(1));
    let mut failure = None;
    let mut since_save = 0;
    while let Some(done) = moves.next().await {
        match done {
            Ok(Moved::Missing(key)) => report.skipped.push(key),
            Ok(Moved::Done(key, sha256, (size, etag))) => {
                progress.moved(&key, size);
                state
                    .objects
                    .insert(key.clone(), Synced { sha256, size, etag });
                report.transferred.push(key);
                since_save += 1;
                if since_save >= 50 {
                    save_state(files, &state)?;
                    since_save = 0;
                }
            }
            Err(e) => failure = failure.or(Some(e)),
        }
    }
    save_state(files, &state)?;
    match failure {
        Some(e) => Err(e),
        None => Ok(report),
    }
}

/// Tells the project's live feed how a sync goes: `sync.progress` (at most
/// every 200 ms, and at the end) and `sync.finished` (the counts, or why it
/// failed). Live only, like an export's: the event's `run_id` is the
/// sync's id, with its own sequence numbers from 1.
pub struct FeedProgress {
    hub: crate::runs::events::EventHub,
    project_id: uuid::Uuid,
    sync_id: uuid::Uuid,
    seq: AtomicI64,
    moved: AtomicU64,
    planned: AtomicU64,
    last: Mutex<Option<Instant>>,
}

impl FeedProgress {
    pub fn new(
        hub: crate::runs::events::EventHub,
        project_id: uuid::Uuid,
        sync_id: uuid::Uuid,
    ) -> Self {
        Self {
            hub,
            project_id,
            sync_id,
            seq: AtomicI64::new(0),
            moved: AtomicU64::new(0),
            planned: AtomicU64::new(0),
            last: Mutex::new(None),
        }
    }

    fn publish(&self, event_type: &str, payload: serde_json::Value) {
        self.hub.publish(crate::runs::events::RunEvent {
            run_id: self.sync_id,
            project_id: self.project_id,
            seq: self.seq.fetch_add(1, Ordering::SeqCst) + 1,
            event_type: event_type.into(),
            job_id: None,
            payload,
            created_at: crate::time::now(),
        });
    }

    /// The last event: the counts, or why the sync failed.
    pub fn finished(&self, outcome: &Result<SyncReport, ServiceError>) {
        let sync_id = self.sync_id;
        let payload = match outcome {
            Ok(r) => serde_json::json!({
                "sync_id": sync_id, "status": "completed", "dry_run": r.dry_run, "listed": r.listed,
                "transferred": r.transferred.len(), "bytes": r.bytes, "unchanged": r.unchanged,
                "conflicts": r.conflicts, "skipped": r.skipped.len(),
            }),
            Err(e) => serde_json::json!({
                "sync_id": sync_id, "status": "failed", "error": e.public_message(), "code": e.code(),
            }),
        };
        self.publish("sync.finished", payload);
    }
}

impl SyncProgress for FeedProgress {
    fn planned(&self, objects: u64) {
        self.planned.store(objects, Ordering::SeqCst);
    }

    fn moved(&self, _: &str, _: u64) {
        let moved = self.moved.fetch_add(1, Ordering::SeqCst) + 1;
        let planned = self.planned.load(Ordering::SeqCst);
        let now = Instant::now();
        let due = self.last.lock().is_ok_and(|mut last| {
            let due =
                moved == planned || last.is_none_or(|t| now.duration_since(t).as_millis() >= 200);
            if due {
                *last = Some(now);
            }
            due
        });
        if due {
            self.publish(
                "sync.progress",
                serde_json::json!({ "sync_id": self.sync_id, "moved": moved, "planned": planned }),
            );
        }
    }
}

/// The projects whose storage policy names a bucket (scheduled pushes go
/// to each of them).
pub async fn projects_with_a_bucket(
    db: &DatabaseConnection,
) -> Result<Vec<projects::Model>, ServiceError> {
    let ids: Vec<uuid::Uuid> = entities::project_storage::Entity::find()
        .filter(entities::project_storage::Column::S3Bucket.is_not_null())
        .all(db)
        .await?
        .into_iter()
        .filter(|s| s.s3_bucket.as_deref().is_some_and(|b| !b.trim().is_empty()))
        .map(|s| s.project_id)
        .collect();
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    Ok(projects::Entity::find()
        .filter(projects::Column::Id.is_in(ids))
        .all(db)
        .await?)
}

/// Records how a sync ended in the audit log (counts, not keys).
pub async fn record_finished(
    db: &DatabaseConnection,
    principal: &crate::Principal,
    project: &projects::Model,
    outcome: &Result<SyncReport, ServiceError>,
) -> Result<(), ServiceError> {
    let payload = match outcome {
        Ok(r) => serde_json::json!({
            "direction": r.direction, "dry_run": r.dry_run, "transferred": r.transferred.len(),
            "bytes": r.bytes, "unchanged": r.unchanged, "conflicts": r.conflicts.len(),
            "skipped": r.skipped.len(),
        }),
        Err(e) => serde_json::json!({ "error": e.public_message() }),
    };
    let txn = crate::db::begin_write(db).await?;
    crate::audit::record(
        &txn,
        crate::audit::AuditEntry {
            principal,
            project_id: Some(project.id),
            event_code: if outcome.is_ok() {
                "sync.finished"
            } else {
                "sync.failed"
            },
            payload,
        },
    )
    .await?;
    crate::db::commit(txn).await?;
    Ok(())
}
