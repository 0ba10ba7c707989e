//! A project's storage policy: where its files live locally, and its optional
//! S3-compatible mirror. Every local path is checked against the allowed roots
//! ([`storage::paths::StorageRoots`]) before it is stored.

use entities::{project_storage, projects};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseConnection,
    EntityTrait, QueryFilter,
};
use serde_json::json;
use storage::paths::{DEFAULT_BASE_DIR, PathError, StorageRoots};
use uuid::Uuid;

use crate::audit::{self, AuditEntry};
use crate::error::optional_text;
use crate::{Principal, ServiceError, time};

pub const DEFAULT_S3_PREFIX: &str = "atelier-projects";
const FIELD_MAX: usize = 1024;

impl From<PathError> for ServiceError {
    fn from(e: PathError) -> Self {
        ServiceError::validation(e.code(), e.to_string())
    }
}

/// What the API shows of a project's storage.
#[derive(Debug, Clone, PartialEq)]
pub struct StorageView {
    pub base_dir: String,
    /// Absolute path on this server.
    pub project_root: String,
    pub s3_enabled: bool,
    pub s3_bucket: Option<String>,
    pub s3_prefix: String,
    pub s3_region: Option<String>,
    pub s3_profile: Option<String>,
    pub s3_endpoint_url: Option<String>,
}

pub fn storage_view(
    roots: &StorageRoots,
    project: &projects::Model,
    row: &project_storage::Model,
) -> Result<StorageView, ServiceError> {
    let root = roots.project_root(
        &row.local_base_dir,
        row.local_project_root.as_deref(),
        &project.slug,
    )?;
    Ok(StorageView {
        base_dir: row.local_base_dir.clone(),
        project_root: root.display().to_string(),
        s3_enabled: row.s3_enabled,
        s3_bucket: row.s3_bucket.clone(),
        s3_prefix: row
            .s3_prefix
            .clone()
            .unwrap_or_else(|| DEFAULT_S3_PREFIX.to_string()),
        s3_region: row.s3_region.clone(),
        s3_profile: row.s3_profile.clone(),
        s3_endpoint_url: row.s3_endpoint_url.clone(),
    })
}

pub(crate) async fn ensure_storage_row<C: ConnectionTrait>(
    db: &C,
    project_id: Uuid,
) -> Result<project_storage::Model, ServiceError> {
    if let Some(row) = load_storage_row(db, project_id).await? {
        return Ok(row);
    }
    let now = time::now();
    let row = project_storage::Model {
        id: Uuid::now_v7(),
        project_id,
        local_base_dir: DEFAULT_BASE_DIR.to_string(),
        local_project_root: None,
        s3_enabled: false,
        s3_bucket: None,
        s3_prefix: None,
        s3_region: None,
        s3_profile: None,
        s3_endpoint_url: None,
        total_bytes: 0,
        used_bytes: 0,
        created_at: now,
        updated_at: now,
    };
    project_storage::Entity::insert(project_storage::ActiveModel::from(row.clone()))
        .exec_without_returning(db)
        .await?;
    Ok(row)
}

pub async fn load_storage_row<C: ConnectionTrait>(
    db: &C,
    project_id: Uuid,
) -> Result<Option<project_storage::Model>, ServiceError> {
    Ok(project_storage::Entity::find()
        .filter(project_storage::Column::ProjectId.eq(project_id))
        .one(db)
        .await?)
}

/// Storage row of an existing project (created with defaults if missing).
pub async fn storage_row<C: ConnectionTrait>(
    db: &C,
    project_id: Uuid,
) -> Result<project_storage::Model, ServiceError> {
    ensure_storage_row(db, project_id).await
}

#[derive(Debug, Default)]
pub struct LocalStorageUpdate {
    pub base_dir: Option<String>,
    /// `Some("")` clears an explicit root.
    pub project_root: Option<String>,
}

impl LocalStorageUpdate {
    /// Body checks that need no lookup (contract: they come before the 404).
    pub fn validate_shape(&self) -> Result<(), ServiceError> {
        if self.base_dir.is_none() && self.project_root.is_none() {
            return Err(ServiceError::validation(
                "field_required",
                "Provide at least one of: base_dir, project_root",
            ));
        }
        if self
            .base_dir
            .as_deref()
            .is_some_and(|b| b.trim().is_empty())
        {
            return Err(ServiceError::validation(
                "field_required",
                "Field 'base_dir' must not be empty",
            ));
        }
        Ok(())
    }
}

/// Where a project's files live is the operator's decision: a token scoped
/// to a project may read its storage policy but not move it (a scoped token
/// could otherwise point its project at files it must not see, or an S3
/// endpoint at the service's own network).
fn may_change_storage(principal: &Principal) -> Result<(), ServiceError> {
    if principal.is_scoped() {
        return Err(ServiceError::Forbidden(
            "A project-scoped token cannot change where the project's files live; use an unscoped token".into(),
        ));
    }
    Ok(())
}

/// Whether two roots overlap: the same, or one inside the other.
fn overlaps(a: &std::path::Path, b: &std::path::Path) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

/// A project's root must not overlap any other project's root (equal,
/// inside or containing): otherwise one project could read and write the
/// other's files. Compared as real paths, so a link cannot alias them.
pub(crate) async fn ensure_disjoint<C: ConnectionTrait>(
    db: &C,
    roots: &StorageRoots,
    project_id: Option<Uuid>,
    candidate: &std::path::Path,
) -> Result<(), ServiceError> {
    let candidate = storage::paths::real_path(candidate);
    let storage: std::collections::HashMap<Uuid, project_storage::Model> =
        project_storage::Entity::find()
            .all(db)
            .await?
            .into_iter()
            .map(|s| (s.project_id, s))
            .collect();
    for other in projects::Entity::find().all(db).await? {
        if Some(other.id) == project_id {
            continue;
        }
        let root = match storage.get(&other.id) {
            Some(s) => roots.project_root(
                &s.local_base_dir,
                s.local_project_root.as_deref(),
                &other.slug,
            ),
            None => roots.project_root(DEFAULT_BASE_DIR, None, &other.slug),
        };
        // A root that no longer resolves holds nothing this one could reach.
        if let Ok(root) = root
            && overlaps(&candidate, &storage::paths::real_path(&root))
        {
            return Err(ServiceError::Conflict {
                code: "storage_root_overlap",
                message: "This storage root overlaps another project's files (the same folder, inside it, or containing it)".into(),
            });
        }
    }
    Ok(())
}

pub async fn update_local_storage(
    db: &DatabaseConnection,
    roots: &StorageRoots,
    principal: &Principal,
    project: &projects::Model,
    update: LocalStorageUpdate,
) -> Result<(project_storage::Model, Uuid), ServiceError> {
    update.validate_shape()?;
    may_change_storage(principal)?;
    let base_dir = match update.base_dir.as_deref() {
        Some(raw) => {
            roots.resolve_dir(raw)?;
            Some(raw.trim().to_string())
        }
        None => None,
    };
    let project_root = match update.project_root.as_deref().map(str::trim) {
        Some("") => Some(None),
        Some(raw) => Some(Some(roots.resolve_dir(raw)?.display().to_string())),
        None => None,
    };
    let txn = crate::db::begin_write(db).await?;
    let current = ensure_storage_row(&txn, project.id).await?;
    // The effective root must still resolve once both fields are applied.
    let effective_base = base_dir
        .clone()
        .unwrap_or_else(|| current.local_base_dir.clone());
    let effective_root = project_root
        .clone()
        .unwrap_or_else(|| current.local_project_root.clone());
    let root = roots.project_root(&effective_base, effective_root.as_deref(), &project.slug)?;
    ensure_disjoint(&txn, roots, Some(project.id), &root).await?;

    let mut active: project_storage::ActiveModel = current.into();
    let mut changed = Vec::new();
    if let Some(b) = base_dir {
        active.local_base_dir = Set(b);
        changed.push("base_dir");
    }
    if let Some(r) = project_root {
        active.local_project_root = Set(r);
        changed.push("project_root");
    }
    save_audited(
        txn,
        active,
        principal,
        project,
        "project.storage_local_updated",
        changed,
    )
    .await
}

#[derive(Debug, Default)]
pub struct S3StorageUpdate {
    pub enabled: Option<bool>,
    pub bucket: Option<String>,
    pub prefix: Option<String>,
    pub region: Option<String>,
    pub profile: Option<String>,
    pub endpoint_url: Option<String>,
}

fn valid_bucket(b: &str) -> bool {
    (3..=63).contains(&b.len())
        && b.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'.')
        && b.as_bytes().first().is_some_and(u8::is_ascii_alphanumeric)
        && b.as_bytes().last().is_some_and(u8::is_ascii_alphanumeric)
}

fn valid_prefix(p: &str) -> bool {
    p.split('/').all(|seg| {
        seg != ".."
            && seg
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
    })
}

fn valid_endpoint(u: &str) -> bool {
    let Some((scheme, rest)) = u.split_once("://") else {
        return false;
    };
    matches!(scheme, "http" | "https")
        && !rest.is_empty()
        && !rest.contains('@')
        && !rest.chars().any(|c| c.is_whitespace() || c.is_control())
}

pub async fn update_s3_storage(
    db: &DatabaseConnection,
    outbound: &crate::netpolicy::OutboundPolicy,
    principal: &Principal,
    project: &projects::Model,
    update: S3StorageUpdate,
) -> Result<(project_storage::Model, Uuid), ServiceError> {
    may_change_storage(principal)?;
    let bucket = optional_text("bucket", update.bucket.as_deref(), 63)?;
    if let Some(b) = &bucket
        && !valid_bucket(b)
    {
        return Err(ServiceError::validation(
            "invalid_s3_bucket",
            "Field 'bucket' is not a valid bucket name",
        ));
    }
    let prefix = optional_text("prefix", update.prefix.as_deref(), FIELD_MAX)?
        .map(|p| p.trim_matches('/').to_string());
    if let Some(p) = &prefix
        && !valid_prefix(p)
    {
        return Err(ServiceError::validation(
            "invalid_s3_prefix",
            "Field 'prefix' may contain only letters, digits, '-', '_', '.' and '/' (no '..')",
        ));
    }
    let region = optional_text("region", update.region.as_deref(), 64)?;
    let profile = optional_text("profile", update.profile.as_deref(), 128)?;
    let endpoint = optional_text("endpoint_url", update.endpoint_url.as_deref(), FIELD_MAX)?;
    if let Some(e) = &endpoint
        && !valid_endpoint(e)
    {
        return Err(ServiceError::validation(
            "invalid_endpoint_url",
            "Field 'endpoint_url' must be an http(s) URL without credentials",
        ));
    }
    if let Some(e) = &endpoint {
        outbound.check_url("endpoint_url", e).await?;
    }

    let txn = crate::db::begin_write(db).await?;
    let current = ensure_storage_row(&txn, project.id).await?;
    let enabling = update.enabled.unwrap_or(current.s3_enabled);
    if enabling && bucket.is_none() && update.bucket.is_none() && current.s3_bucket.is_none() {
        return Err(ServiceError::validation(
            "invalid_s3_bucket",
            "Enabling S3 requires a 'bucket'",
        ));
    }
    let mut active: project_storage::ActiveModel = current.into();
    let mut changed = Vec::new();
    if let Some(e) = update.enabled {
        active.s3_enabled = Set(e);
        changed.push("enabled");
    }
    // A present-but-blank string clears the field (stored as NULL).
    macro_rules! apply {
        ($given:expr, $value:expr, $col:ident, $name:literal) => {
            if $given.is_some() {
                active.$col = Set($value);
                changed.push($name);
            }
        };
    }
    apply!(update.bucket, bucket, s3_bucket, "bucket");
    apply!(update.prefix, prefix, s3_prefix, "prefix");
    apply!(update.region, region, s3_region, "region");
    apply!(update.profile, profile, s3_profile, "profile");
    apply!(
        update.endpoint_url,
        endpoint,
        s3_endpoint_url,
        "endpoint_url"
    );
    save_audited(
        txn,
        active,
        principal,
        project,
        "project.storage_s3_updated",
        changed,
    )
    .await
}

/// Writes the storage row and its audit event, then commits both together.
async fn save_audited(
    txn: crate::db::WriteTxn,
    mut active: project_storage::ActiveModel,
    principal: &Principal,
    project: &projects::Model,
    event_code: &'static str,
    changed: Vec<&'static str>,
) -> Result<(project_storage::Model, Uuid), ServiceError> {
    active.updated_at = Set(time::now());
    let row = active.update(&txn).await?;
    let audit_id = audit::record(
        &txn,
        AuditEntry {
            principal,
            project_id: Some(project.id),
            event_code,
            payload: json!({ "fields": changed }),
        },
    )
    .await?;
    crate::db::commit(txn).await?;
    Ok((row, audit_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_field_rules() {
        assert!(valid_bucket("atelier-assets"));
        assert!(!valid_bucket("Bad_Bucket"));
        assert!(!valid_bucket("ab"));
        assert!(valid_prefix("studio/books"));
        assert!(!valid_prefix("a/../b"));
        assert!(valid_endpoint("http://127.0.0.1:9000"));
        assert!(!valid_endpoint("file:///etc/passwd"));
        assert!(!valid_endpoint("http://user:pw@host"));
    }
}
