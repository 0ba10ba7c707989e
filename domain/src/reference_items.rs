//! Items of a reference set: a label with content (a URI, a text, or an
//! asset of the same project), an order, an optional weight and notes, and
//! free-form metadata.

use entities::{assets, reference_set_items};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait,
    PaginatorTrait, QueryFilter, QueryOrder,
};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::catalog::{self, ReferenceSet};
use crate::error::{optional_text, required_text};
use crate::{ServiceError, time};

const LABEL_MAX: usize = 200;
const URI_MAX: usize = 2048;
const TEXT_MAX: usize = 64 * 1024;

/// Body fields as received (`None`: absent).
#[derive(Default)]
pub struct ItemInput<'a> {
    pub label: Option<&'a str>,
    pub content_uri: Option<&'a str>,
    pub content_text: Option<&'a str>,
    pub asset_id: Option<&'a str>,
    pub sort_order: Option<i32>,
    pub weight: Option<f64>,
    pub notes: Option<&'a str>,
    pub metadata_json: Option<Value>,
}

/// Checked fields; `Some(None)` clears.
pub struct ValidItem {
    label: Option<String>,
    content_uri: Option<Option<String>>,
    content_text: Option<Option<String>>,
    asset_id: Option<Option<Uuid>>,
    sort_order: Option<i32>,
    weight: Option<f64>,
    notes: Option<Option<String>>,
    metadata_json: Option<Value>,
}

fn check(i: &ItemInput<'_>) -> Result<ValidItem, ServiceError> {
    let asset_id = match i.asset_id.map(str::trim) {
        None => None,
        Some("") => Some(None),
        Some(raw) => Some(Some(Uuid::parse_str(raw).map_err(|_| {
            ServiceError::validation("invalid_field", "Field 'asset_id' must be a UUID")
        })?)),
    };
    if let Some(w) = i.weight
        && !(w.is_finite() && (0.0..=1000.0).contains(&w))
    {
        return Err(ServiceError::validation(
            "invalid_field",
            "Field 'weight' must be a number from 0 to 1000",
        ));
    }
    Ok(ValidItem {
        label: match i.label {
            Some(l) => Some(required_text("label", Some(l), LABEL_MAX)?),
            None => None,
        },
        content_uri: i
            .content_uri
            .map(|u| optional_text("content_uri", Some(u), URI_MAX))
            .transpose()?,
        content_text: i
            .content_text
            .map(|t| optional_text("content_text", Some(t), TEXT_MAX))
            .transpose()?,
        asset_id,
        sort_order: i.sort_order,
        weight: i.weight,
        notes: i
            .notes
            .map(|n| optional_text("notes", Some(n), TEXT_MAX))
            .transpose()?,
        metadata_json: i.metadata_json.clone(),
    })
}

fn no_content() -> ServiceError {
    ServiceError::validation(
        "field_required",
        "Provide at least one of: content_uri, content_text",
    )
}

/// For a create: a label and some content (a URI, a text or an asset).
pub fn validate_create(i: &ItemInput<'_>) -> Result<ValidItem, ServiceError> {
    if i.label.is_none() {
        return Err(ServiceError::required("label"));
    }
    let v = check(i)?;
    let has = |o: &Option<Option<String>>| matches!(o, Some(Some(_)));
    if !(has(&v.content_uri) || has(&v.content_text) || matches!(v.asset_id, Some(Some(_)))) {
        return Err(no_content());
    }
    Ok(v)
}

/// For a partial update: at least one field.
pub fn validate_update(i: &ItemInput<'_>) -> Result<ValidItem, ServiceError> {
    let v = check(i)?;
    if v.label.is_none()
        && v.content_uri.is_none()
        && v.content_text.is_none()
        && v.asset_id.is_none()
        && v.sort_order.is_none()
        && v.weight.is_none()
        && v.notes.is_none()
        && v.metadata_json.is_none()
    {
        return Err(ServiceError::validation(
            "field_required",
            "Provide at least one of: label, content_uri, content_text, sort_order, metadata_json",
        ));
    }
    Ok(v)
}

/// The set, or "Reference set not found".
async fn set_of<C: ConnectionTrait>(
    db: &C,
    project_id: Uuid,
    raw_set_id: &str,
) -> Result<Uuid, ServiceError> {
    Ok(catalog::get::<ReferenceSet, _>(db, project_id, raw_set_id)
        .await?
        .id)
}

pub async fn list<C: ConnectionTrait>(
    db: &C,
    project_id: Uuid,
    raw_set_id: &str,
) -> Result<(Uuid, Vec<reference_set_items::Model>), ServiceError> {
    let set_id = set_of(db, project_id, raw_set_id).await?;
    let items = reference_set_items::Entity::find()
        .filter(reference_set_items::Column::ReferenceSetId.eq(set_id))
        .order_by_asc(reference_set_items::Column::SortOrder)
        .order_by_desc(reference_set_items::Column::UpdatedAt)
        .all(db)
        .await?;
    Ok((set_id, items))
}

pub async fn get<C: ConnectionTrait>(
    db: &C,
    project_id: Uuid,
    raw_set_id: &str,
    raw_item_id: &str,
) -> Result<reference_set_items::Model, ServiceError> {
    let not_found = || ServiceError::not_found("Reference set item not found");
    let set_id = set_of(db, project_id, raw_set_id)
        .await
        .map_err(|e| match e {
            ServiceError::NotFound(_) => not_found(),
            e => e,
        })?;
    let id = Uuid::parse_str(raw_item_id.trim()).map_err(|_| not_found())?;
    reference_set_items::Entity::find_by_id(id)
        .filter(reference_set_items::Column::ReferenceSetId.eq(set_id))
        .one(db)
        .await?
        .ok_or_else(not_found)
}

fn apply(row: &mut reference_set_items::Model, v: ValidItem) {
    if let Some(l) = v.label {
        row.label = l;
    }
    if let Some(u) = v.content_uri {
        row.content_uri = u;
    }
    if let Some(t) = v.content_text {
        row.content_text = t;
    }
    if let Some(a) = v.asset_id {
        row.asset_id = a;
    }
    if let Some(o) = v.sort_order {
        row.sort_order = o;
    }
    if let Some(w) = v.weight {
        row.weight = Some(w);
    }
    if let Some(n) = v.notes {
        row.notes = n;
    }
    if let Some(m) = v.metadata_json {
        row.metadata_json = m;
    }
    row.updated_at = time::now();
}

/// The item's asset, if any, belongs to the project; the item has content.
async fn verify<C: ConnectionTrait>(
    db: &C,
    row: &reference_set_items::Model,
) -> Result<(), ServiceError> {
    if row.content_uri.is_none() && row.content_text.is_none() && row.asset_id.is_none() {
        return Err(no_content());
    }
    if let Some(id) = row.asset_id {
        let found = assets::Entity::find_by_id(id)
            .filter(assets::Column::ProjectId.eq(row.project_id))
            .count(db)
            .await?;
        if found == 0 {
            return Err(ServiceError::validation(
                "asset_not_found",
                format!("Asset '{id}' was not found in this project"),
            ));
        }
    }
    Ok(())
}

pub async fn create(
    db: &DatabaseConnection,
    project_id: Uuid,
    raw_set_id: &str,
    v: ValidItem,
) -> Result<reference_set_items::Model, ServiceError> {
    let txn = crate::db::begin_write(db).await?;
    let set_id = set_of(&txn, project_id, raw_set_id).await?;
    let now = time::now();
    let mut row = reference_set_items::Model {
        id: Uuid::now_v7(),
        project_id,
        reference_set_id: set_id,
        label: String::new(),
        content_uri: None,
        content_text: None,
        asset_id: None,
        sort_order: 0,
        weight: None,
        notes: None,
        metadata_json: json!({}),
        created_at: now,
        updated_at: now,
    };
    apply(&mut row, v);
    verify(&txn, &row).await?;
    reference_set_items::ActiveModel::from(row.clone())
        .insert(&txn)
        .await?;
    crate::db::commit(txn).await?;
    Ok(row)
}

pub async fn update(
    db: &DatabaseConnection,
    project_id: Uuid,
    raw_set_id: &str,
    raw_item_id: &str,
    v: ValidItem,
) -> Result<reference_set_items::Model, ServiceError> {
    let txn = crate::db::begin_write(db).await?;
    let mut row = get(&txn, project_id, raw_set_id, raw_item_id).await?;
    apply(&mut row, v);
    verify(&txn, &row).await?;
    reference_set_items::ActiveModel::from(row.clone())
        .reset_all()
        .update(&txn)
        .await?;
    crate::db::commit(txn).await?;
    Ok(row)
}

pub async fn delete(
    db: &DatabaseConnection,
    project_id: Uuid,
    raw_set_id: &str,
    raw_item_id: &str,
) -> Result<Uuid, ServiceError> {
    let txn = crate::db::begin_write(db).await?;
    let row = get(&txn, project_id, raw_set_id, raw_item_id).await?;
    reference_set_items::Entity::delete_by_id(row.id)
        .exec(&txn)
        .await?;
    crate::db::commit(txn).await?;
    Ok(row.id)
}

/// The contract's shape plus `asset_id`, `weight` and `notes`.
pub fn view(i: &reference_set_items::Model) -> Value {
    json!({
        "id": i.id, "project_id": i.project_id, "reference_set_id": i.reference_set_id,
        "label": i.label, "content_uri": i.content_uri.clone().unwrap_or_default(),
        "content_text": i.content_text.clone().unwrap_or_default(), "asset_id": i.asset_id,
        "sort_order": i.sort_order, "weight": i.weight, "notes": i.notes.clone().unwrap_or_default(),
        "metadata_json": i.metadata_json,
        "created_at": time::format(&i.created_at), "updated_at": time::format(&i.updated_at),
    })
}
