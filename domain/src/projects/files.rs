//! Opening a project's files: its local root, and its S3 prefix when the
//! storage policy names a bucket (`s3://<bucket>/<prefix>/<project_id>/`).
//! S3 credentials come from the project's secrets `s3/access_key_id` and
//! `s3/secret_access_key`, else from the server's `AWS_ACCESS_KEY_ID` and
//! `AWS_SECRET_ACCESS_KEY`; nothing else (no config files, no instance
//! metadata) is consulted.

use entities::{project_storage, projects};
use sea_orm::ConnectionTrait;
use storage::paths::StorageRoots;
use storage::{ObjectStore, ProjectFiles, S3Config, S3Location};

use super::storage_policy::{DEFAULT_S3_PREFIX, storage_row, storage_view};
use crate::ServiceError;
use crate::netpolicy::OutboundPolicy;
use crate::secrets::cipher::KeySource;

/// Where S3 is assumed to be when the policy names no region.
const DEFAULT_S3_REGION: &str = "us-east-1";
/// The project secrets holding its S3 credentials (`provider_code` `s3`).
pub const S3_SECRET_PROVIDER: &str = "s3";
const S3_ACCESS_KEY_ID: &str = "access_key_id";
const S3_SECRET_ACCESS_KEY: &str = "secret_access_key";

/// What opening a project's files needs besides the database.
#[derive(Clone, Copy)]
pub struct FileAccess<'a> {
    pub roots: &'a StorageRoots,
    /// The master key for project secrets (S3 credentials); `None`: only
    /// the server's environment credentials.
    pub keys: Option<&'a KeySource>,
    /// S3 requests go through the same address checks as webhooks.
    pub outbound: &'a OutboundPolicy,
}

/// The project's files: written to its primary backend (S3 when enabled),
/// read from wherever each was written.
pub async fn project_files<C: ConnectionTrait>(
    db: &C,
    access: FileAccess<'_>,
    project: &projects::Model,
) -> Result<ProjectFiles, ServiceError> {
    let row = storage_row(db, project.id).await?;
    let view = storage_view(access.roots, project, &row)?;
    std::fs::create_dir_all(&view.project_root)?;
    let local = ObjectStore::local(std::path::Path::new(&view.project_root))?;
    let s3 = s3_location(db, access, project, &row).await?;
    Ok(ProjectFiles::new(local, s3))
}

async fn s3_location<C: ConnectionTrait>(
    db: &C,
    access: FileAccess<'_>,
    project: &projects::Model,
    row: &project_storage::Model,
) -> Result<S3Location, ServiceError> {
    let primary = row.s3_enabled;
    let Some(bucket) = row.s3_bucket.clone() else {
        return Ok(S3Location::None);
    };
    let Some((access_key_id, secret_access_key)) = credentials(db, access, project).await? else {
        return Ok(S3Location::Unreachable {
            reason: format!(
                "S3 storage needs credentials: set the project secrets \
                 {S3_SECRET_PROVIDER}/{S3_ACCESS_KEY_ID} and \
                 {S3_SECRET_PROVIDER}/{S3_SECRET_ACCESS_KEY}"
            ),
            primary,
        });
    };
    let prefix = row
        .s3_prefix
        .clone()
        .unwrap_or_else(|| DEFAULT_S3_PREFIX.to_string());
    let cfg = S3Config {
        endpoint: row.s3_endpoint_url.clone(),
        bucket,
        region: row
            .s3_region
            .clone()
            .unwrap_or_else(|| DEFAULT_S3_REGION.to_string()),
        access_key_id,
        secret_access_key,
        root: format!("/{}/{}/", prefix.trim_matches('/'), project.id),
    };
    match ObjectStore::s3(&cfg, Some(access.outbound.storage_client())) {
        Ok(store) => Ok(S3Location::Ready { store, primary }),
        Err(e) => Ok(S3Location::Unreachable {
            reason: format!("The project's S3 settings cannot be used: {e}"),
            primary,
        }),
    }
}

async fn credentials<C: ConnectionTrait>(
    db: &C,
    access: FileAccess<'_>,
    project: &projects::Model,
) -> Result<Option<(String, String)>, ServiceError> {
    if let Some(keys) = access.keys {
        let id = crate::secrets::reveal(db, keys, project.id, S3_SECRET_PROVIDER, S3_ACCESS_KEY_ID);
        let secret = crate::secrets::reveal(
            db,
            keys,
            project.id,
            S3_SECRET_PROVIDER,
            S3_SECRET_ACCESS_KEY,
        );
        if let (Some(id), Some(secret)) = (id.await?, secret.await?) {
            return Ok(Some((id, secret)));
        }
    }
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    Ok(env("AWS_ACCESS_KEY_ID").zip(env("AWS_SECRET_ACCESS_KEY")))
}
