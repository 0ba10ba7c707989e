//! Projects: slugs, create/upsert, listing, detail and the storage policy.
//!
//! Slugs are unique across the whole service (not per user), so a slug always
//! names exactly one project. Unscoped principals act on every project; a
//! project-scoped token sees and changes only its own.

mod files;
mod storage_policy;

use std::collections::HashMap;

use entities::{app_users, projects};
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseConnection,
    EntityTrait, QueryFilter, QueryOrder, QuerySelect,
};
use serde_json::json;
use storage::paths::StorageRoots;
use uuid::Uuid;

pub use files::{FileAccess, project_files};
pub use storage_policy::{
    LocalStorageUpdate, S3StorageUpdate, StorageView, load_storage_row, storage_row, storage_view,
    update_local_storage, update_s3_storage,
};

use crate::audit::{self, AuditEntry};
use crate::auth::users;
use crate::error::{optional_text, required_text};
use crate::{Principal, ServiceError, time};

pub const NAME_MAX: usize = 200;
pub const SLUG_MAX: usize = 64;
pub const DESCRIPTION_MAX: usize = 10_000;

/// Lowercase ASCII letters, digits, `-` and `_`; every other run of characters
/// becomes one `_`; leading/trailing `_` are dropped. `None` when nothing is left.
pub fn normalize_slug(raw: &str) -> Option<String> {
    let mut out = String::with_capacity(raw.len());
    let mut pending_sep = false;
    for c in raw.trim().chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
            if pending_sep && !out.is_empty() {
                out.push('_');
            }
            pending_sep = false;
            out.push(c);
        } else {
            pending_sep = true;
        }
    }
    let out = out.trim_matches('_').to_string();
    (!out.is_empty()).then_some(out)
}

/// The slug of a project created by name alone: the name normalised, or,
/// for a name with no ASCII letter or digit (e.g. "Книга"), `project-` and a
/// short hash of the name, so distinct names get distinct slugs.
fn derived_slug(name: &str) -> String {
    match normalize_slug(name) {
        Some(s) => s.chars().take(SLUG_MAX).collect(),
        None => {
            use sha2::Digest;
            let hash = hex::encode(sha2::Sha256::digest(name.trim().as_bytes()));
            format!("project-{}", &hash[..10])
        }
    }
}

/// A slug from a request: normalised, non-empty, bounded.
pub fn parse_slug(raw: &str) -> Result<String, ServiceError> {
    let slug = normalize_slug(raw).ok_or_else(|| {
        ServiceError::validation("invalid_project_slug", "Project slug is invalid")
    })?;
    if slug.len() > SLUG_MAX {
        return Err(ServiceError::validation(
            "invalid_project_slug",
            format!("Project slug must be at most {SLUG_MAX} characters"),
        ));
    }
    Ok(slug)
}

/// Loads the project named by `raw_slug` if `principal` may act on it.
/// A scoped token gets 403 for any other slug, whether or not it exists.
pub async fn authorize<C: ConnectionTrait>(
    db: &C,
    principal: &Principal,
    raw_slug: &str,
) -> Result<projects::Model, ServiceError> {
    let slug = parse_slug(raw_slug)?;
    admit(principal, find_by_slug(db, &slug).await?)
}

/// The project with this (normalised) slug, if any.
pub async fn find_by_slug<C: ConnectionTrait>(
    db: &C,
    slug: &str,
) -> Result<Option<projects::Model>, ServiceError> {
    Ok(projects::Entity::find()
        .filter(projects::Column::Slug.eq(slug))
        .one(db)
        .await?)
}

/// Whether the principal may act on the project found under a slug (`None`:
/// no such project): 403 for a token scoped to another project, else 404.
pub fn admit(
    principal: &Principal,
    project: Option<projects::Model>,
) -> Result<projects::Model, ServiceError> {
    match project {
        Some(p) if principal.may_access(p.id) => Ok(p),
        _ if principal.is_scoped() => Err(ServiceError::Forbidden(
            "Token is not authorized for this project".into(),
        )),
        Some(_) => Err(ServiceError::Internal("unreachable access state".into())),
        None => Err(ServiceError::not_found("Project not found")),
    }
}

#[derive(Debug, Default)]
pub struct UpsertProject {
    pub name: Option<String>,
    pub slug: Option<String>,
    pub description: Option<String>,
    pub username: Option<String>,
    pub user_display_name: Option<String>,
}

pub struct UpsertedProject {
    pub project: projects::Model,
    pub storage: StorageView,
    pub created: bool,
    pub audit_id: Uuid,
}

/// Creates a project, or updates the one with that slug. Omitted fields keep
/// their stored values (the reference implementation wiped `description`).
pub async fn upsert(
    db: &DatabaseConnection,
    roots: &StorageRoots,
    principal: &Principal,
    input: UpsertProject,
) -> Result<UpsertedProject, ServiceError> {
    // Body validation comes before any lookup (contract: 400 before 404).
    let name = required_text("name", input.name.as_deref(), NAME_MAX)?;
    let explicit_slug = input
        .slug
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty());
    let slug = match explicit_slug {
        Some(raw) => parse_slug(raw)?,
        None => derived_slug(&name),
    };
    let description = optional_text("description", input.description.as_deref(), DESCRIPTION_MAX)?;
    let username = match input
        .username
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        Some(raw) => normalize_slug(raw)
            .filter(|u| u.len() <= SLUG_MAX)
            .ok_or_else(|| {
                ServiceError::validation("invalid_username", "Field 'username' is invalid")
            })?,
        None => users::LOCAL_USERNAME.to_string(),
    };
    let display_name = optional_text(
        "user_display_name",
        input.user_display_name.as_deref(),
        NAME_MAX,
    )?
    .unwrap_or_else(|| {
        if username == users::LOCAL_USERNAME {
            users::LOCAL_DISPLAY_NAME.to_string()
        } else {
            username.clone()
        }
    });

    let txn = crate::db::begin_write(db).await?;
    let existing = projects::Entity::find()
        .filter(projects::Column::Slug.eq(slug.as_str()))
        .one(&txn)
        .await?;
    if let Some(scope) = principal.scope()
        && existing.as_ref().is_none_or(|p| p.id != scope)
    {
        return Err(ServiceError::Forbidden(
            "A project-scoped token cannot create or change other projects".into(),
        ));
    }
    let owner_id = users::ensure_user(&txn, &username, &display_name).await?;
    let now = time::now();
    let (project, created) = match existing {
        // A slug derived from the name names this project only if the name
        // matches: distinct names must never rename one another's project.
        Some(current) if explicit_slug.is_none() && current.name != name => {
            return Err(ServiceError::Conflict {
                code: "slug_conflict",
                message: format!(
                    "Another project already uses the slug '{slug}' derived from this name; send 'slug' explicitly (the same slug to update that project)"
                ),
            });
        }
        Some(current) => {
            if current.owner_user_id != owner_id {
                return Err(ServiceError::validation(
                    "slug_taken",
                    "Project slug is already used by another user. Choose a different slug.",
                ));
            }
            let mut active: projects::ActiveModel = current.into();
            active.name = Set(name);
            if let Some(d) = description {
                active.description = Set(d);
            }
            active.updated_at = Set(now);
            (active.update(&txn).await?, false)
        }
        None => {
            let row = projects::Model {
                id: Uuid::now_v7(),
                owner_user_id: owner_id,
                slug: slug.clone(),
                name,
                description: description.unwrap_or_default(),
                status: "active".into(),
                settings_json: json!({}),
                created_at: now,
                updated_at: now,
            };
            projects::Entity::insert(projects::ActiveModel::from(row.clone()))
                .exec_without_returning(&txn)
                .await?;
            (row, true)
        }
    };
    let storage = storage_policy::ensure_storage_row(&txn, project.id).await?;
    // Refuse (and roll back) when the project's root would escape the allowed
    // roots, e.g. through a symlink planted under the base directory.
    let storage_view = storage_view(roots, &project, &storage)?;
    if created {
        // Its default root must not lie inside (or around) another project's.
        storage_policy::ensure_disjoint(
            &txn,
            roots,
            Some(project.id),
            std::path::Path::new(&storage_view.project_root),
        )
        .await?;
    }
    let audit_id = audit::record(
        &txn,
        AuditEntry {
            principal,
            project_id: Some(project.id),
            event_code: if created {
                "project.created"
            } else {
                "project.updated"
            },
            payload: json!({ "slug": project.slug, "name": project.name, "owner": username }),
        },
    )
    .await?;
    crate::db::commit(txn).await?;
    Ok(UpsertedProject {
        project,
        storage: storage_view,
        created,
        audit_id,
    })
}

pub struct ProjectWithOwner {
    pub project: projects::Model,
    pub username: String,
}

/// Projects visible to `principal`, most recently updated first.
pub async fn list<C: ConnectionTrait>(
    db: &C,
    principal: &Principal,
    username: Option<&str>,
) -> Result<Vec<ProjectWithOwner>, ServiceError> {
    let mut query = projects::Entity::find()
        .order_by_desc(projects::Column::UpdatedAt)
        .order_by_desc(projects::Column::CreatedAt);
    if let Some(scope) = principal.scope() {
        query = query.filter(projects::Column::Id.eq(scope));
    }
    if let Some(raw) = username.map(str::trim).filter(|u| !u.is_empty()) {
        let owner = match normalize_slug(raw) {
            Some(name) => users::find_by_username(db, &name).await?,
            None => None,
        };
        let Some(owner) = owner else {
            return Ok(Vec::new());
        };
        query = query.filter(projects::Column::OwnerUserId.eq(owner.id));
    }
    let rows = query.all(db).await?;
    let mut owner_ids: Vec<Uuid> = rows.iter().map(|p| p.owner_user_id).collect();
    owner_ids.sort_unstable();
    owner_ids.dedup();
    let owners: HashMap<Uuid, String> = app_users::Entity::find()
        .filter(app_users::Column::Id.is_in(owner_ids))
        .all(db)
        .await?
        .into_iter()
        .map(|u| (u.id, u.username))
        .collect();
    Ok(rows
        .into_iter()
        .map(|project| ProjectWithOwner {
            username: owners
                .get(&project.owner_user_id)
                .cloned()
                .unwrap_or_default(),
            project,
        })
        .collect())
}

/// A cheap fingerprint of what [`list`] would return for the same arguments:
/// row count and newest `updated_at` (every project write bumps it). Lets the
/// API reuse a rendered list while nothing changed, with one single-row query.
pub async fn list_fingerprint<C: ConnectionTrait>(
    db: &C,
    principal: &Principal,
    username: Option<&str>,
) -> Result<String, ServiceError> {
    let mut query = projects::Entity::find()
        .select_only()
        .column_as(Expr::col(projects::Column::Id).count(), "n")
        .column_as(Expr::col(projects::Column::UpdatedAt).max(), "newest");
    if let Some(scope) = principal.scope() {
        query = query.filter(projects::Column::Id.eq(scope));
    }
    if let Some(raw) = username.map(str::trim).filter(|u| !u.is_empty()) {
        let name = normalize_slug(raw).unwrap_or_default();
        query = query.filter(
            projects::Column::OwnerUserId.in_subquery(
                sea_orm::sea_query::Query::select()
                    .column(app_users::Column::Id)
                    .from(app_users::Entity)
                    .and_where(app_users::Column::Username.eq(name))
                    .to_owned(),
            ),
        );
    }
    let (n, newest): (i64, Option<chrono::DateTime<chrono::Utc>>) =
        query.into_tuple().one(db).await?.unwrap_or((0, None));
    Ok(format!(
        "{n}:{}",
        newest.map(|t| t.timestamp_micros()).unwrap_or(0)
    ))
}

pub struct ProjectCounts {
    pub runs: u64,
    pub jobs: u64,
    pub assets: u64,
}

pub async fn counts<C: ConnectionTrait>(
    db: &C,
    project_id: Uuid,
) -> Result<ProjectCounts, ServiceError> {
    // One round trip for the three counts (each an index range scan).
    let backend = db.get_database_backend();
    let (p, values): (&str, Vec<sea_orm::Value>) = match backend {
        sea_orm::DbBackend::Postgres => ("$1", vec![project_id.into()]),
        _ => ("?", vec![project_id.into(); 3]),
    };
    let sql = format!(
        "SELECT (SELECT COUNT(*) FROM runs WHERE project_id = {p}), \
                (SELECT COUNT(*) FROM run_jobs WHERE project_id = {p}), \
                (SELECT COUNT(*) FROM assets WHERE project_id = {p})"
    );
    let row = db
        .query_one_raw(sea_orm::Statement::from_sql_and_values(
            backend, sql, values,
        ))
        .await?
        .ok_or_else(|| ServiceError::Internal("a count query returned no row".into()))?;
    let count = |i: usize| -> Result<u64, ServiceError> {
        let n: i64 = row.try_get_by_index(i)?;
        Ok(u64::try_from(n).unwrap_or(0))
    };
    Ok(ProjectCounts {
        runs: count(0)?,
        jobs: count(1)?,
        assets: count(2)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slug_normalisation_matches_contract() {
        assert_eq!(normalize_slug("Demo Book!").as_deref(), Some("demo_book"));
        assert_eq!(normalize_slug("Bob Smith").as_deref(), Some("bob_smith"));
        assert_eq!(normalize_slug("  DEMO_BOOK ").as_deref(), Some("demo_book"));
        assert_eq!(normalize_slug("a--b  c").as_deref(), Some("a--b_c"));
        assert_eq!(normalize_slug("!!!"), None);
        assert_eq!(normalize_slug("Ünïcode"), Some("n_code".into()));
        assert!(parse_slug(&"x".repeat(65)).is_err());
    }
}
