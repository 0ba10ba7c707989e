//! Lineage links between a project's assets, as people edit them through
//! the API (the pipeline records its own `derived_from` / `variant_of`
//! links as it works). Both ends must be assets of the same project.

use entities::{asset_links, assets};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, Condition, ConnectionTrait, DatabaseConnection, EntityTrait,
    PaginatorTrait, QueryFilter, QueryOrder,
};
use uuid::Uuid;

use crate::{ServiceError, time};

pub const LINK_TYPES: &[&str] = &["derived_from", "variant_of", "mask_for", "reference_of"];

/// A link type, case-insensitive; `None` for absent or blank.
pub fn link_type(raw: Option<&str>) -> Result<Option<String>, ServiceError> {
    match raw.map(str::trim).filter(|t| !t.is_empty()) {
        None => Ok(None),
        Some(t) => {
            let t = t.to_ascii_lowercase();
            if LINK_TYPES.contains(&t.as_str()) {
                Ok(Some(t))
            } else {
                Err(ServiceError::validation(
                    "invalid_link_type",
                    format!(
                        "Field 'link_type' must be one of: {}",
                        LINK_TYPES.join(", ")
                    ),
                ))
            }
        }
    }
}

/// An asset reference as given: trimmed, `None` when absent or blank. Its
/// form is not judged here — as in v1, an id that names no asset of the
/// project (malformed or not) is "not found", after the body's own checks.
fn asset_ref(raw: Option<&str>) -> Option<String> {
    raw.map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_string)
}

pub struct LinkFields<'a> {
    pub parent_asset_id: Option<&'a str>,
    pub child_asset_id: Option<&'a str>,
    pub link_type: Option<&'a str>,
}

/// Checked fields (before any lookup).
pub struct ValidLink {
    parent: Option<String>,
    child: Option<String>,
    link_type: Option<String>,
}

/// For a create, in v1's order: parent required, child required, the two
/// different, a known type (default `derived_from`).
pub fn validate_create(f: LinkFields<'_>) -> Result<ValidLink, ServiceError> {
    let parent =
        asset_ref(f.parent_asset_id).ok_or_else(|| ServiceError::required("parent_asset_id"))?;
    let child =
        asset_ref(f.child_asset_id).ok_or_else(|| ServiceError::required("child_asset_id"))?;
    if parent.eq_ignore_ascii_case(&child) {
        return Err(differ());
    }
    Ok(ValidLink {
        parent: Some(parent),
        child: Some(child),
        link_type: Some(link_type(f.link_type)?.unwrap_or_else(|| "derived_from".into())),
    })
}

/// For a partial update: at least one field.
pub fn validate_update(f: LinkFields<'_>) -> Result<ValidLink, ServiceError> {
    let v = ValidLink {
        parent: asset_ref(f.parent_asset_id),
        child: asset_ref(f.child_asset_id),
        link_type: link_type(f.link_type)?,
    };
    if v.parent.is_none() && v.child.is_none() && v.link_type.is_none() {
        return Err(ServiceError::validation(
            "field_required",
            "Provide at least one of: parent_asset_id, child_asset_id, link_type",
        ));
    }
    Ok(v)
}

fn differ() -> ServiceError {
    ServiceError::validation(
        "invalid_link",
        "parent_asset_id and child_asset_id must differ",
    )
}

/// The id of an asset of this project named by `raw`; anything else
/// (malformed, unknown, another project's) is "not found in this project".
async fn project_asset<C: ConnectionTrait>(
    db: &C,
    project_id: Uuid,
    raw: &str,
) -> Result<Uuid, ServiceError> {
    let not_found = || {
        ServiceError::validation(
            "asset_not_found",
            format!("Asset '{raw}' was not found in this project"),
        )
    };
    let id = Uuid::parse_str(raw).map_err(|_| not_found())?;
    let found = assets::Entity::find_by_id(id)
        .filter(assets::Column::ProjectId.eq(project_id))
        .count(db)
        .await?;
    if found == 0 {
        return Err(not_found());
    }
    Ok(id)
}

pub async fn list<C: ConnectionTrait>(
    db: &C,
    project_id: Uuid,
    asset: Option<Uuid>,
    link_type: Option<&str>,
) -> Result<Vec<asset_links::Model>, ServiceError> {
    let mut q = asset_links::Entity::find().filter(asset_links::Column::ProjectId.eq(project_id));
    if let Some(a) = asset {
        q = q.filter(
            Condition::any()
                .add(asset_links::Column::ParentAssetId.eq(a))
                .add(asset_links::Column::ChildAssetId.eq(a)),
        );
    }
    if let Some(t) = link_type {
        q = q.filter(asset_links::Column::LinkType.eq(t));
    }
    Ok(q.order_by_desc(asset_links::Column::UpdatedAt)
        .order_by_desc(asset_links::Column::Id)
        .all(db)
        .await?)
}

pub async fn get<C: ConnectionTrait>(
    db: &C,
    project_id: Uuid,
    raw_id: &str,
) -> Result<asset_links::Model, ServiceError> {
    crate::lookup::owned::<asset_links::Entity, _>(
        db,
        (asset_links::Column::Id, asset_links::Column::ProjectId),
        project_id,
        raw_id,
        "Asset link not found",
    )
    .await
}

/// The edge is new (both ends were checked by [`project_asset`]).
async fn check<C: ConnectionTrait>(
    db: &C,
    row: &asset_links::Model,
    except: Option<Uuid>,
) -> Result<(), ServiceError> {
    if row.parent_asset_id == row.child_asset_id {
        return Err(differ());
    }
    let mut same = asset_links::Entity::find()
        .filter(asset_links::Column::ProjectId.eq(row.project_id))
        .filter(asset_links::Column::ParentAssetId.eq(row.parent_asset_id))
        .filter(asset_links::Column::ChildAssetId.eq(row.child_asset_id))
        .filter(asset_links::Column::LinkType.eq(row.link_type.as_str()));
    if let Some(id) = except {
        same = same.filter(asset_links::Column::Id.ne(id));
    }
    if same.count(db).await? > 0 {
        return Err(ServiceError::validation(
            "duplicate_link",
            "Asset link already exists",
        ));
    }
    Ok(())
}

pub async fn create(
    db: &DatabaseConnection,
    project_id: Uuid,
    v: ValidLink,
) -> Result<asset_links::Model, ServiceError> {
    let now = time::now();
    let (Some(parent), Some(child)) = (v.parent.as_deref(), v.child.as_deref()) else {
        return Err(ServiceError::required("parent_asset_id"));
    };
    let parent = project_asset(db, project_id, parent).await?;
    let child = project_asset(db, project_id, child).await?;
    let row = asset_links::Model {
        id: Uuid::now_v7(),
        project_id,
        parent_asset_id: parent,
        child_asset_id: child,
        link_type: v.link_type.unwrap_or_else(|| "derived_from".into()),
        created_at: now,
        updated_at: now,
    };
    let txn = crate::db::begin_write(db).await?;
    check(&txn, &row, None).await?;
    asset_links::ActiveModel::from(row.clone())
        .insert(&txn)
        .await?;
    crate::db::commit(txn).await?;
    Ok(row)
}

pub async fn update(
    db: &DatabaseConnection,
    project_id: Uuid,
    raw_id: &str,
    v: ValidLink,
) -> Result<asset_links::Model, ServiceError> {
    let txn = crate::db::begin_write(db).await?;
    let mut row = get(&txn, project_id, raw_id).await?;
    if let Some(p) = v.parent.as_deref() {
        row.parent_asset_id = project_asset(&txn, project_id, p).await?;
    }
    if let Some(c) = v.child.as_deref() {
        row.child_asset_id = project_asset(&txn, project_id, c).await?;
    }
    if let Some(t) = v.link_type {
        row.link_type = t;
    }
    row.updated_at = time::now();
    check(&txn, &row, Some(row.id)).await?;
    asset_links::ActiveModel::from(row.clone())
        .reset_all()
        .update(&txn)
        .await?;
    crate::db::commit(txn).await?;
    Ok(row)
}

pub async fn delete(
    db: &DatabaseConnection,
    project_id: Uuid,
    raw_id: &str,
) -> Result<Uuid, ServiceError> {
    let txn = crate::db::begin_write(db).await?;
    let row = get(&txn, project_id, raw_id).await?;
    asset_links::Entity::delete_by_id(row.id).exec(&txn).await?;
    crate::db::commit(txn).await?;
    Ok(row.id)
}
