//! The asset registry: every file the studio writes is stored through the
//! project's object store and recorded as an `assets` row with its hash,
//! type, size and dimensions.

use entities::assets;
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};
use serde_json::Value;
use sha2::{Digest, Sha256};
use storage::{ObjectKey, ProjectFiles};
use uuid::Uuid;

use crate::{ServiceError, time};

mod lookups;
pub use lookups::ContentLookups;

pub struct NewAsset<'a> {
    pub project_id: Uuid,
    pub kind: &'static str,
    pub key: &'a str,
    pub bytes: Vec<u8>,
    pub mime: &'static str,
    pub width: u32,
    pub height: u32,
    pub run_id: Option<Uuid>,
    pub job_id: Option<Uuid>,
    pub candidate_id: Option<Uuid>,
    pub metadata: Value,
}

/// A stored file's row and whether it is new (to be inserted) or an existing
/// asset of the project with the same content in the same role.
pub struct Stored {
    pub row: assets::Model,
    pub fresh: bool,
    /// A fresh local file written by [`put_unsynced`]: to be made durable
    /// (`storage::sync_files`, e.g. through the row writer's `Rows::files`)
    /// before the row commits.
    pub unsynced: Option<storage::Unsynced>,
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Writes the file and inserts its row, unless the project already holds
/// the same content in the same role (then that asset is returned).
pub async fn store<C: ConnectionTrait>(
    db: &C,
    files: &ProjectFiles,
    asset: NewAsset<'_>,
) -> Result<assets::Model, ServiceError> {
    let stored = put(db, files, asset, None).await?;
    if stored.fresh {
        assets::Entity::insert(assets::ActiveModel::from(stored.row.clone()))
            .exec_without_returning(db)
            .await?;
    }
    Ok(stored.row)
}

/// Deduplication by content within a project: the same bytes in the same
/// role (`kind`) on the same storage backend are one asset, its file written
/// once. Best effort under concurrency: two identical files written at the
/// same instant may both be stored (nothing is lost, a little space is).
pub async fn existing<C: ConnectionTrait>(
    db: &C,
    project_id: Uuid,
    kind: &str,
    sha256: &str,
    backend: &str,
) -> Result<Option<assets::Model>, ServiceError> {
    Ok(assets::Entity::find()
        .filter(assets::Column::ProjectId.eq(project_id))
        .filter(assets::Column::Sha256.eq(sha256))
        .filter(assets::Column::Kind.eq(kind))
        .filter(assets::Column::StorageBackend.eq(backend))
        .one(db)
        .await?)
}

/// Writes the file unless the project already holds it (see `existing`) and
/// returns the row; a fresh row is for the caller to insert, possibly
/// batched with others. `sha256`: the content hash if the caller already
/// computed it off the async threads.
pub async fn put<C: ConnectionTrait>(
    db: &C,
    files: &ProjectFiles,
    asset: NewAsset<'_>,
    sha256: Option<String>,
) -> Result<Stored, ServiceError> {
    put_with(db, files, asset, sha256, false).await
}

/// Like [`put`], but a fresh local file is not synced yet: its row must not
/// commit before `Stored::unsynced` has been made durable (the row writer
/// does so for the files in `Rows::files`, one sync per batch).
pub async fn put_unsynced<C: ConnectionTrait>(
    db: &C,
    files: &ProjectFiles,
    asset: NewAsset<'_>,
    sha256: Option<String>,
) -> Result<Stored, ServiceError> {
    put_with(db, files, asset, sha256, true).await
}

async fn put_with<C: ConnectionTrait>(
    db: &C,
    files: &ProjectFiles,
    mut asset: NewAsset<'_>,
    sha256: Option<String>,
    defer_sync: bool,
) -> Result<Stored, ServiceError> {
    let sha = sha256.unwrap_or_else(|| sha256_hex(&asset.bytes));
    if let Some(row) = existing(db, asset.project_id, asset.kind, &sha, files.backend()).await? {
        return Ok(Stored {
            row,
            fresh: false,
            unsynced: None,
        });
    }
    let key = ObjectKey::parse(asset.key)?;
    let size = asset.bytes.len();
    let bytes = std::mem::take(&mut asset.bytes);
    let (backend, unsynced) = if defer_sync {
        files.put_unsynced(&key, bytes).await?
    } else {
        (files.put(&key, bytes).await?, None)
    };
    Ok(Stored {
        row: new_row(asset, backend, &key, sha, size),
        fresh: true,
        unsynced,
    })
}

/// Like [`put_unsynced`], for a file the caller already wrote under
/// `asset.key` in the project's local root (`ProjectFiles::local_writer`,
/// in the blocking call that made it, sparing a hop): its row, or the
/// project's existing asset with the same content — then the file just
/// written goes again (unless it is that asset's own file, which must then
/// be synced before the rows commit: it was just replaced). `found`: that
/// asset as the caller looked it up ([`existing`], or [`ContentLookups`]).
pub async fn adopt_written(
    found: Option<assets::Model>,
    files: &ProjectFiles,
    asset: NewAsset<'_>,
    sha256: String,
    written: storage::Unsynced,
) -> Result<Stored, ServiceError> {
    let backend = files.backend();
    let key = ObjectKey::parse(asset.key)?;
    let size = asset.bytes.len();
    if let Some(row) = found {
        if row.storage_key == key.as_str() {
            return Ok(Stored {
                row,
                fresh: false,
                unsynced: Some(written),
            });
        }
        if let Err(e) = files.delete_in(backend, &key).await {
            tracing::warn!(key = key.as_str(), error = %e, "a duplicate file could not be removed");
        }
        return Ok(Stored {
            row,
            fresh: false,
            unsynced: None,
        });
    }
    Ok(Stored {
        row: new_row(asset, backend, &key, sha256, size),
        fresh: true,
        unsynced: Some(written),
    })
}

/// A fresh asset's row; `size`: its file's length in bytes.
fn new_row(
    asset: NewAsset<'_>,
    backend: &str,
    key: &ObjectKey,
    sha256: String,
    size: usize,
) -> assets::Model {
    assets::Model {
        id: Uuid::now_v7(),
        project_id: asset.project_id,
        kind: asset.kind.to_string(),
        storage_backend: backend.to_string(),
        storage_key: key.as_str().to_string(),
        storage_uri: key.as_str().to_string(),
        mime_type: Some(asset.mime.to_string()),
        width: Some(asset.width as i32),
        height: Some(asset.height as i32),
        byte_size: Some(size as i64),
        sha256: Some(sha256),
        run_id: asset.run_id,
        job_id: asset.job_id,
        candidate_id: asset.candidate_id,
        metadata_json: asset.metadata,
        created_at: time::now(),
    }
}

pub async fn load_bytes<C: ConnectionTrait>(
    db: &C,
    files: &ProjectFiles,
    asset_id: Uuid,
) -> Result<(assets::Model, Vec<u8>), ServiceError> {
    let asset = assets::Entity::find_by_id(asset_id)
        .one(db)
        .await?
        .ok_or_else(|| ServiceError::missing("asset", asset_id))?;
    let key = ObjectKey::parse(&asset.storage_key)?;
    let bytes = files
        .get_in(&asset.storage_backend, &key)
        .await
        .map_err(|e| match e {
            storage::StorageError::NotFound(_) => {
                ServiceError::Internal(format!("asset {asset_id}'s file is missing"))
            }
            e => e.into(),
        })?;
    Ok((asset, bytes))
}

/// A project's assets, newest first; optionally one kind or one run's.
pub async fn list<C: ConnectionTrait>(
    db: &C,
    project_id: Uuid,
    limit: u64,
    kind: Option<&str>,
    run_id: Option<Uuid>,
    after: Option<crate::cursor::Cursor>,
) -> Result<Vec<assets::Model>, ServiceError> {
    let mut query = assets::Entity::find().filter(assets::Column::ProjectId.eq(project_id));
    if let Some(c) = after {
        query = query.filter(c.condition(assets::Column::CreatedAt, assets::Column::Id));
    }
    if let Some(kind) = kind {
        query = query.filter(assets::Column::Kind.eq(kind));
    }
    if let Some(run_id) = run_id {
        query = query.filter(assets::Column::RunId.eq(run_id));
    }
    Ok(query
        .order_by_desc(assets::Column::CreatedAt)
        .order_by_desc(assets::Column::Id)
        .limit(limit)
        .all(db)
        .await?)
}

/// One asset of the project; any other id (malformed, unknown, another
/// project's) is "Asset not found".
pub async fn get<C: ConnectionTrait>(
    db: &C,
    project_id: Uuid,
    raw_id: &str,
) -> Result<assets::Model, ServiceError> {
    crate::lookup::owned::<assets::Entity, _>(
        db,
        (assets::Column::Id, assets::Column::ProjectId),
        project_id,
        raw_id,
        "Asset not found",
    )
    .await
}

/// The storage keys of the given assets, in one query (ids that match no
/// row are left out).
pub async fn storage_keys<C: ConnectionTrait>(
    db: &C,
    ids: Vec<Uuid>,
) -> Result<std::collections::HashMap<Uuid, String>, ServiceError> {
    if ids.is_empty() {
        return Ok(Default::default());
    }
    Ok(assets::Entity::find()
        .filter(assets::Column::Id.is_in(ids))
        .all(db)
        .await?
        .into_iter()
        .map(|a| (a.id, a.storage_key))
        .collect())
}

/// The bytes of an asset's file.
pub async fn read(files: &ProjectFiles, asset: &assets::Model) -> Result<Vec<u8>, ServiceError> {
    let key = ObjectKey::parse(&asset.storage_key)?;
    files
        .get_in(&asset.storage_backend, &key)
        .await
        .map_err(|e| match e {
            storage::StorageError::NotFound(_) => {
                ServiceError::not_found("The asset's file is missing from storage")
            }
            e => e.into(),
        })
}

/// Roles an uploaded file can take.
pub const UPLOAD_KINDS: &[&str] = &["input", "reference"];

/// An uploaded image, stored with its original bytes (never re-encoded).
pub struct Uploaded {
    pub asset: assets::Model,
    /// `false`: the project already held these bytes in this role.
    pub created: bool,
}

/// Checks an upload (format sniffed from the bytes, size, header dimensions
/// before decoding, a full decode) and stores it, deduplicated by content.
pub async fn upload(
    db: &sea_orm::DatabaseConnection,
    files: &ProjectFiles,
    project_id: Uuid,
    kind: &str,
    file_name: Option<&str>,
    bytes: Vec<u8>,
    limits: imaging::DecodeLimits,
) -> Result<Uploaded, ServiceError> {
    let kind: &'static str = UPLOAD_KINDS
        .iter()
        .find(|k| **k == kind)
        .copied()
        .ok_or_else(|| {
            ServiceError::validation(
                "invalid_kind",
                format!("Query 'kind' must be one of: {}", UPLOAD_KINDS.join(", ")),
            )
        })?;
    let file_name = crate::error::optional_text("name", file_name, 255)?;
    let (bytes, checked) = imaging::cpu::run(move || {
        let checked = image::guess_format(&bytes)
            .map_err(|e| imaging::ImagingError::Unsupported(e.to_string()))
            .and_then(|format| {
                imaging::decode(&bytes, limits).map(|img| (format, img.dimensions()))
            })
            .map(|(format, dims)| (format, dims, sha256_hex(&bytes)));
        (bytes, checked)
    })
    .await?;
    let (format, (width, height), sha) = checked.map_err(|e| match e {
        imaging::ImagingError::Unsupported(_) => ServiceError::validation(
            "unsupported_image_format",
            "The file is not a PNG, JPEG or WebP image",
        ),
        imaging::ImagingError::TooLarge { .. } | imaging::ImagingError::TooManyBytes { .. } => {
            ServiceError::validation("image_too_large", e.to_string())
        }
        e => ServiceError::validation("invalid_image", e.to_string()),
    })?;
    let (mime, ext) = match format {
        image::ImageFormat::Png => ("image/png", "png"),
        image::ImageFormat::Jpeg => ("image/jpeg", "jpg"),
        _ => ("image/webp", "webp"),
    };
    let txn = crate::db::begin_write(db).await?;
    let stored = put(
        &txn,
        files,
        NewAsset {
            project_id,
            kind,
            key: &format!("uploads/{sha}.{ext}"),
            bytes,
            mime,
            width,
            height,
            run_id: None,
            job_id: None,
            candidate_id: None,
            metadata: serde_json::json!({ "uploaded_name": file_name }),
        },
        Some(sha),
    )
    .await?;
    if stored.fresh {
        assets::Entity::insert(assets::ActiveModel::from(stored.row.clone()))
            .exec_without_returning(&txn)
            .await?;
    }
    crate::db::commit(txn).await?;
    Ok(Uploaded {
        asset: stored.row,
        created: stored.fresh,
    })
}
