//! The asset registry: every file the studio writes is stored through the
//! project's object store and recorded as an `assets` row with its hash,
//! type, size and dimensions.

use entities::assets;
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter};
use serde_json::Value;
use sha2::{Digest, Sha256};
use storage::{ObjectKey, ObjectStore};
use uuid::Uuid;

use crate::{ServiceError, time};

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
    /// Reuse an existing asset of the project with the same content.
    pub dedup: bool,
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Writes the file (unless deduplicated) and inserts its row.
pub async fn store<C: ConnectionTrait>(
    db: &C,
    object_store: &ObjectStore,
    asset: NewAsset<'_>,
) -> Result<assets::Model, ServiceError> {
    if asset.dedup {
        let sha = sha256_hex(&asset.bytes);
        if let Some(existing) = assets::Entity::find()
            .filter(assets::Column::ProjectId.eq(asset.project_id))
            .filter(assets::Column::Sha256.eq(sha.as_str()))
            .one(db)
            .await?
        {
            return Ok(existing);
        }
    }
    let row = put(object_store, asset, None).await?;
    assets::Entity::insert(assets::ActiveModel::from(row.clone()))
        .exec_without_returning(db)
        .await?;
    Ok(row)
}

/// Writes the file and returns the row to insert (the caller inserts it,
/// possibly batched with others). `sha256`: the content hash if the caller
/// already computed it off the async threads.
pub async fn put(
    object_store: &ObjectStore,
    asset: NewAsset<'_>,
    sha256: Option<String>,
) -> Result<assets::Model, ServiceError> {
    let sha = sha256.unwrap_or_else(|| sha256_hex(&asset.bytes));
    let key = ObjectKey::parse(asset.key).map_err(|e| ServiceError::Internal(e.to_string()))?;
    let size = asset.bytes.len() as i64;
    object_store
        .put(&key, asset.bytes)
        .await
        .map_err(|e| ServiceError::Internal(format!("storage: {e}")))?;
    Ok(assets::Model {
        id: Uuid::now_v7(),
        project_id: asset.project_id,
        kind: asset.kind.to_string(),
        storage_backend: object_store.backend().to_string(),
        storage_key: key.as_str().to_string(),
        storage_uri: key.as_str().to_string(),
        mime_type: Some(asset.mime.to_string()),
        width: Some(asset.width as i32),
        height: Some(asset.height as i32),
        byte_size: Some(size),
        sha256: Some(sha),
        run_id: asset.run_id,
        job_id: asset.job_id,
        candidate_id: asset.candidate_id,
        metadata_json: asset.metadata,
        created_at: time::now(),
    })
}

pub async fn load_bytes<C: ConnectionTrait>(
    db: &C,
    object_store: &ObjectStore,
    asset_id: Uuid,
) -> Result<(assets::Model, Vec<u8>), ServiceError> {
    let asset = assets::Entity::find_by_id(asset_id)
        .one(db)
        .await?
        .ok_or_else(|| ServiceError::Internal(format!("asset {asset_id} missing")))?;
    let key =
        ObjectKey::parse(&asset.storage_key).map_err(|e| ServiceError::Internal(e.to_string()))?;
    let bytes = object_store
        .get(&key)
        .await
        .map_err(|e| ServiceError::Internal(format!("storage: {e}")))?;
    Ok((asset, bytes))
}
