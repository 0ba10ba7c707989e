//! Export packages: a project (or some of its runs) as one reproducible
//! file — `zip` or `tar.gz` with `manifest.json` and every file, or a `cbz`
//! of the winners in scene order — stored as an asset of the project and
//! recorded in `project_exports` (its sha256 and size there), and checked
//! again by [`verify`].
//!
//! The package is written to a work file in the project's local root, one
//! stored file in memory at a time, then moved (local) or streamed in parts
//! (S3) into storage: a large project exports in bounded memory.

mod package;
mod snapshot;
pub mod verify;

use entities::{assets, project_exports, projects};
use sea_orm::{ActiveModelTrait, DatabaseConnection, EntityTrait, IntoActiveModel, Set};
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

/// Records a new export as `running` (so lists show it at once).
pub async fn start(
    db: &DatabaseConnection,
    principal: &Principal,
    project: &projects::Model,
    request: &ExportRequest,
) -> Result<project_exports::Model, ServiceError> {
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
        manifest_json: json!({ "run_ids": request.run_ids }),
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
            tracing::warn!(error = %e, "export failed");
            row.status = Set("failed".into());
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
