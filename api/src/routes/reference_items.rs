//! Items of a reference set (not audited, as in v1).

use actix_web::{delete, get, post, put, web};
use domain::reference_items as items;
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa::ToSchema;

use crate::AppState;
use crate::error::{ApiResult, ErrorBody};
use crate::extract::{JsonBody, ProjectAccess, ProjectSlug};

#[derive(Deserialize, ToSchema, Default)]
#[serde(default)]
pub struct ItemBody {
    label: Option<String>,
    /// Content: a URI, a text and/or an asset of this project (at least one on create).
    content_uri: Option<String>,
    content_text: Option<String>,
    /// **New**: an asset of this project (blank clears).
    asset_id: Option<String>,
    /// Default 0; items list by it.
    sort_order: Option<i32>,
    /// **New**: 0..1000.
    weight: Option<f64>,
    /// **New**.
    notes: Option<String>,
    /// Any JSON (default `{}`).
    #[schema(value_type = Option<Object>)]
    metadata_json: Option<Value>,
}

impl ItemBody {
    fn input(&self) -> items::ItemInput<'_> {
        items::ItemInput {
            label: self.label.as_deref(),
            content_uri: self.content_uri.as_deref(),
            content_text: self.content_text.as_deref(),
            asset_id: self.asset_id.as_deref(),
            sort_order: self.sort_order,
            weight: self.weight,
            notes: self.notes.as_deref(),
            metadata_json: self.metadata_json.clone(),
        }
    }
}

/// A set's items by `sort_order`, then most recently updated.
#[utoipa::path(tag = "reference-sets", params(("slug" = String, Path), ("referenceSetId" = String, Path)),
    responses((status = 200, description = "`ok, reference_set_id, count, items[ReferenceItem]`"),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
#[get("/api/projects/{slug}/reference-sets/{referenceSetId}/items")]
pub async fn list_items(
    state: web::Data<AppState>,
    ProjectAccess { project, .. }: ProjectAccess,
    path: web::Path<(String, String)>,
) -> ApiResult<web::Json<Value>> {
    let (_, set) = path.into_inner();

    let (set_id, rows) = items::list(&state.db, project.id, &set).await?;
    let rows: Vec<Value> = rows.iter().map(items::view).collect();
    Ok(web::Json(json!({
        "ok": true, "reference_set_id": set_id, "count": rows.len(), "items": rows,
    })))
}

/// Add an item (always a new one). The body is checked first.
#[utoipa::path(tag = "reference-sets", params(("slug" = String, Path), ("referenceSetId" = String, Path)),
    request_body(content = ItemBody, content_type = "application/json"),
    responses((status = 200, description = "`ok, item`"),
        (status = 400, body = ErrorBody, description = "field_required, field_too_long, invalid_field, asset_not_found"),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
#[post("/api/projects/{slug}/reference-sets/{referenceSetId}/items")]
pub async fn create_item(
    state: web::Data<AppState>,
    access: ProjectSlug,
    path: web::Path<(String, String)>,
    JsonBody(body): JsonBody<ItemBody>,
) -> ApiResult<web::Json<Value>> {
    let (_, set) = path.into_inner();
    let valid = items::validate_create(&body.input())?;
    let ProjectAccess { project, .. } = access.authorize(&state).await?;
    let row = items::create(&state.db, project.id, &set, valid).await?;
    Ok(web::Json(json!({ "ok": true, "item": items::view(&row) })))
}

/// One item.
#[utoipa::path(tag = "reference-sets", params(("slug" = String, Path), ("referenceSetId" = String, Path), ("itemId" = String, Path)),
    responses((status = 200, description = "`ok, item`"), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
#[get("/api/projects/{slug}/reference-sets/{referenceSetId}/items/{itemId}")]
pub async fn get_item(
    state: web::Data<AppState>,
    ProjectAccess { project, .. }: ProjectAccess,
    path: web::Path<(String, String, String)>,
) -> ApiResult<web::Json<Value>> {
    let (_, set, item) = path.into_inner();

    let row = items::get(&state.db, project.id, &set, &item).await?;
    Ok(web::Json(json!({ "ok": true, "item": items::view(&row) })))
}

/// Partial update (at least one field, checked first); the item must keep some content.
#[utoipa::path(tag = "reference-sets", params(("slug" = String, Path), ("referenceSetId" = String, Path), ("itemId" = String, Path)),
    request_body(content = ItemBody, content_type = "application/json"),
    responses((status = 200, description = "`ok, item`"), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
#[put("/api/projects/{slug}/reference-sets/{referenceSetId}/items/{itemId}")]
pub async fn update_item(
    state: web::Data<AppState>,
    access: ProjectSlug,
    path: web::Path<(String, String, String)>,
    JsonBody(body): JsonBody<ItemBody>,
) -> ApiResult<web::Json<Value>> {
    let (_, set, item) = path.into_inner();
    let valid = items::validate_update(&body.input())?;
    let ProjectAccess { project, .. } = access.authorize(&state).await?;
    let row = items::update(&state.db, project.id, &set, &item, valid).await?;
    Ok(web::Json(json!({ "ok": true, "item": items::view(&row) })))
}

/// Delete an item.
#[utoipa::path(tag = "reference-sets", params(("slug" = String, Path), ("referenceSetId" = String, Path), ("itemId" = String, Path)),
    responses((status = 200, description = "`ok, deleted, id`"), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
#[delete("/api/projects/{slug}/reference-sets/{referenceSetId}/items/{itemId}")]
pub async fn delete_item(
    state: web::Data<AppState>,
    ProjectAccess { project, .. }: ProjectAccess,
    path: web::Path<(String, String, String)>,
) -> ApiResult<web::Json<Value>> {
    let (_, set, item) = path.into_inner();

    let id = items::delete(&state.db, project.id, &set, &item).await?;
    Ok(web::Json(json!({ "ok": true, "deleted": true, "id": id })))
}
