//! Export packages: a project (or some of its runs) as one reproducible
//! file — `zip` or `tar.gz` with `manifest.json` and every file, or a `cbz`
//! of the winners in scene order — stored as an asset of the project and
//! recorded in `project_exports` (its sha256 and size there), and checked
//! again by [`verify`].
//!
//! The package is written to a work file in the project's local root, one
//! stored file in memory at a time, then moved (local) or streamed in parts
//! (S3) into storage: a large project exports in bounded memory.

mod gzip;
mod package;
pub mod restore;
mod snapshot;
pub mod verify;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use entities::{assets, project_exports, projects, runs};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, DatabaseConnection, EntityTrait, IntoActiveModel,
    PaginatorTrait, QueryFilter, Set,
};
use serde_json::json;
use storage::{ObjectKey, ProjectFiles};
use uuid::Uuid;

pub use package::{PackageFormat, PackageProgress};
pub use snapshot::FORMAT_VERSION;

use crate::{Principal, ServiceError, time};

pub struct ExportRequest {
    pub format: PackageFormat,
    /// Only these runs (and the inputs they started from); all when empty.
    pub run_ids: Vec<Uuid>,
}

fn media_type(format: PackageFormat) -> &'static str {
    match format {
        PackageFormat::Zip => "application/zip",
        PackageFormat::TarGz => "application/gzip",
        PackageFormat::Cbz => "application/vnd.comicbook+zip",
    }
}

/// Reports progress to `inner` and stops the export once `flag` is raised.
pub struct Cancellable<'a> {
    pub flag: Arc<AtomicBool>,
    pub inner: &'a dyn PackageProgress,
}

impl PackageProgress for Cancellable<'_> {
    fn file_written(&self, done: u64, total: u64) {
        self.inner.file_written(done, total);
    }
    fn canceled(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }
}

/// Tells the project's live feed how an export goes: `export.progress`
/// (files written of all, at most every 200 ms, and at the end) and
/// `export.finished` (status, checksum, asset). Not persisted: the feed
/// carries them live only. Exports are not runs; the event's `run_id` is
/// the export's id, with its own sequence numbers from 1.
pub struct FeedProgress {
    hub: crate::runs::events::EventHub,
    project_id: Uuid,
    export_id: Uuid,
    seq: std::sync::atomic::AtomicI64,
    last: Mutex<Option<std::time::Instant>>,
}

impl FeedProgress {
    pub fn new(hub: crate::runs::events::EventHub, project_id: Uuid, export_id: Uuid) -> Self {
        Self {
            hub,
            project_id,
            export_id,
            seq: std::sync::atomic::AtomicI64::new(0),
            last: Mutex::new(None),
        }
    }

    fn publish(&self, event_type: &str, payload: serde_json::Value) {
        let seq = self.seq.fetch_add(1, Ordering::SeqCst) + 1;
        self.hub.publish(crate::runs::events::RunEvent {
            run_id: self.export_id,
            project_id: self.project_id,
            seq,
            event_type: event_type.into(),
            job_id: None,
            payload,
            created_at: time::now(),
        });
    }

    /// The last event: how the export ended.
    pub fn finished(&self, export: &project_exports::Model) {
        self.publish(
            "export.finished",
            json!({
                "export_id": export.id,
                "status": export.status,
                "checksum_sha256": export.checksum_sha256,
                "export_asset_id": export.export_asset_id,
            }),
        );
    }
}

impl PackageProgress for FeedProgress {
    fn file_written(&self, done: u64, total: u64) {
        let now = std::time::Instant::now();
        let due = match self.last.lock() {
            Ok(mut last) => {
                let due = done == total
                    || last.is_none_or(|t| {
                        now.duration_since(t) >= std::time::Duration::from_millis(200)
                    });
                if due {
                    *last = Some(now);
                }
                due
            }
            Err(_) => false,
        };
        if due {
            self.publish(
                "export.progress",
                json!({ "export_id": self.export_id, "files_written": done, "files": total }),
            );
        }
    }
}

/// Times an interrupted export is built again at its node's next start;
/// one that keeps stopping its node ends `failed` instead.
pub const RESUMES: i64 = 2;

/// An export to build again: its project, its row, what was asked.
pub struct Interrupted {
    pub project: projects::Model,
    pub export: project_exports::Model,
    pub request: ExportRequest,
}

/// At startup: the exports this node was building when it stopped (their
/// work file went with the process). Each is to be built again from the
/// start — the package is the same if the project is — unless it was
/// already resumed [`RESUMES`] times (it ends `failed`). Other nodes'
/// exports are left to them.
pub async fn take_back_interrupted(
    db: &DatabaseConnection,
    node: &str,
) -> Result<Vec<Interrupted>, ServiceError> {
    let mine: Vec<project_exports::Model> = project_exports::Entity::find()
        .filter(project_exports::Column::Status.eq("running"))
        .all(db)
        .await?
        .into_iter()
        .filter(|e| e.manifest_json["node"] == node)
        .collect();
    let mut again = Vec::new();
    for mut export in mine {
        let resumes = export.manifest_json["resumes"].as_i64().unwrap_or(0);
        let request = request_of(&export);
        let project = projects::Entity::find_by_id(export.project_id)
            .one(db)
            .await?;
        let (Some(project), Ok(request), true) = (project, request, resumes < RESUMES) else {
            fail(
                db,
                export.id,
                "interrupted: the service stopped while it was being built; export again",
            )
            .await?;
            continue;
        };
        export.manifest_json["resumes"] = json!(resumes + 1);
        let txn = crate::db::begin_write(db).await?;
        project_exports::Entity::update_many()
            .col_expr(
                project_exports::Column::ManifestJson,
                Expr::value(export.manifest_json.clone()),
            )
            .filter(project_exports::Column::Id.eq(export.id))
            .exec(&txn)
            .await?;
        crate::db::commit(txn).await?;
        again.push(Interrupted {
            project,
            export,
            request,
        });
    }
    Ok(again)
}

/// What was asked of an export, from its row.
fn request_of(export: &project_exports::Model) -> Result<ExportRequest, ServiceError> {
    let format = PackageFormat::parse(&export.export_format)?;
    let run_ids = export.manifest_json["run_ids"]
        .as_array()
        .map(|ids| {
            ids.iter()
                .filter_map(|id| id.as_str().and_then(|s| Uuid::parse_str(s).ok()))
                .collect()
        })
        .unwrap_or_default();
    Ok(ExportRequest { format, run_ids })
}

/// Ends a `running` export `failed` with `reason` (its build could not
/// start, or stopped unexpectedly); an export already ended is left as it is.
pub async fn fail(
    db: &DatabaseConnection,
    id: Uuid,
    reason: &str,
) -> Result<project_exports::Model, ServiceError> {
    let txn = crate::db::begin_write(db).await?;
    project_exports::Entity::update_many()
        .col_expr(project_exports::Column::Status, Expr::value("failed"))
        .col_expr(
            project_exports::Column::CompletedAt,
            Expr::value(time::now()),
        )
        .col_expr(
            project_exports::Column::ManifestJson,
            Expr::value(json!({ "error": reason })),
        )
        .filter(project_exports::Column::Id.eq(id))
        .filter(project_exports::Column::Status.eq("running"))
        .exec(&txn)
        .await?;
    crate::db::commit(txn).await?;
    project_exports::Entity::find_by_id(id)
        .one(db)
        .await?
        .ok_or_else(|| ServiceError::not_found("Export not found"))
}

/// Records a new export as `running` (so lists show it at once).
pub async fn start(
    db: &DatabaseConnection,
    principal: &Principal,
    project: &projects::Model,
    request: &ExportRequest,
    node: &str,
) -> Result<project_exports::Model, ServiceError> {
    if !request.run_ids.is_empty() {
        let found = runs::Entity::find()
            .filter(runs::Column::ProjectId.eq(project.id))
            .filter(runs::Column::Id.is_in(request.run_ids.clone()))
            .count(db)
            .await?;
        if found < request.run_ids.len() as u64 {
            return Err(ServiceError::not_found("Run not found"));
        }
    }
    let now = time::now();
    let row = project_exports::Model {
        id: Uuid::now_v7(),
        project_id: project.id,
        run_id: match request.run_ids.as_slice() {
            [one] => Some(*one),
            _ => None,
        },
        status: "running".into(),
        export_format: request.format.as_str().into(),
        storage_uri: None,
        rel_path: None,
        file_size_bytes: None,
        checksum_sha256: None,
        export_asset_id: None,
        manifest_json: json!({ "run_ids": request.run_ids, "node": node }),
        created_at: now,
        completed_at: None,
    };
    let txn = crate::db::begin_write(db).await?;
    project_exports::Entity::insert(project_exports::ActiveModel::from(row.clone()))
        .exec_without_returning(&txn)
        .await?;
    crate::audit::record(
        &txn,
        crate::audit::AuditEntry {
            principal,
            project_id: Some(project.id),
            event_code: "export.created",
            payload: json!({ "export_id": row.id, "format": row.export_format }),
        },
    )
    .await?;
    crate::db::commit(txn).await?;
    Ok(row)
}

/// Builds the package of a started export and stores it; the export ends
/// `completed` (with its file, size and sha256) or `failed` (with why).
pub async fn run(
    db: &DatabaseConnection,
    files: &ProjectFiles,
    project: &projects::Model,
    export: project_exports::Model,
    request: &ExportRequest,
    contract_version: &str,
    progress: &dyn PackageProgress,
) -> Result<project_exports::Model, ServiceError> {
    let work_dir = files
        .local_root()
        .map(|r| r.join(".exports"))
        .unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&work_dir)?;
    let work = work_dir.join(format!("{}.part", export.id));
    let outcome = build(
        db,
        files,
        project,
        &export,
        request,
        contract_version,
        progress,
        &work,
    )
    .await;
    let _ = std::fs::remove_file(&work);
    let mut row = export.into_active_model();
    match outcome {
        Ok((asset, written_files)) => {
            row.status = Set("completed".into());
            row.storage_uri = Set(Some(asset.storage_key.clone()));
            row.rel_path = Set(Some(asset.storage_key.clone()));
            row.file_size_bytes = Set(asset.byte_size);
            row.checksum_sha256 = Set(asset.sha256.clone());
            row.export_asset_id = Set(Some(asset.id));
            row.manifest_json = Set(json!({
                "run_ids": request.run_ids,
                "files": written_files,
                "format_version": FORMAT_VERSION,
            }));
            row.completed_at = Set(Some(time::now()));
            let txn = crate::db::begin_write(db).await?;
            assets::Entity::insert(assets::ActiveModel::from(asset))
                .exec_without_returning(&txn)
                .await?;
            let saved = row.update(&txn).await?;
            crate::db::commit(txn).await?;
            Ok(saved)
        }
        Err(e) => {
            let canceled = e.code() == "export_canceled";
            if !canceled {
                tracing::warn!(error = %e, "export failed");
            }
            row.status = Set(if canceled { "canceled" } else { "failed" }.into());
            row.manifest_json =
                Set(json!({ "run_ids": request.run_ids, "error": e.public_message() }));
            row.completed_at = Set(Some(time::now()));
            let txn = crate::db::begin_write(db).await?;
            row.update(&txn).await?;
            crate::db::commit(txn).await?;
            Err(e)
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn build(
    db: &DatabaseConnection,
    files: &ProjectFiles,
    project: &projects::Model,
    export: &project_exports::Model,
    request: &ExportRequest,
    contract_version: &str,
    progress: &dyn PackageProgress,
    work: &std::path::Path,
) -> Result<(assets::Model, u64), ServiceError> {
    files.check_writable()?;
    let snap = snapshot::take(db, files, project, &request.run_ids).await?;
    let manifest = snap.manifest(request.format, contract_version);
    let written = package::write(
        work,
        request.format,
        &snap,
        &manifest,
        |f| {
            let (backend, key) = (f.backend.clone(), f.key.clone());
            async move {
                let key = ObjectKey::parse(&key)?;
                Ok(files.get_in(&backend, &key).await?)
            }
        },
        progress,
    )
    .await?;
    let key = ObjectKey::parse(&format!(
        "exports/{}.{}",
        export.id,
        request.format.as_str()
    ))?;
    let backend = files.put_file(&key, work).await?;
    Ok((
        assets::Model {
            id: Uuid::now_v7(),
            project_id: project.id,
            kind: "export".into(),
            storage_backend: backend.into(),
            storage_key: key.as_str().into(),
            storage_uri: key.as_str().into(),
            mime_type: Some(media_type(request.format).into()),
            width: None,
            height: None,
            byte_size: Some(written.size as i64),
            sha256: Some(written.sha256),
            run_id: export.run_id,
            job_id: None,
            candidate_id: None,
            metadata_json: json!({ "export_id": export.id, "format": request.format.as_str() }),
            created_at: time::now(),
        },
        written.files,
    ))
}
