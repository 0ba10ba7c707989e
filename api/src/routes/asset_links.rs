//! Asset links: lineage edges between a project's assets, editable through
//! the API (not audited, as in v1).

use actix_web::{delete, get, post, put, web};
use domain::asset_links as links;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::AppState;
use crate::error::{ApiResult, ErrorBody};
use crate::extract::{JsonBody, ProjectAccess, ProjectSlug};

#[derive(Serialize, ToSchema)]
pub struct AssetLink {
    id: Uuid,
    project_id: Uuid,
    parent_asset_id: Uuid,
    child_asset_id: Uuid,
    /// `derived_from`, `variant_of`, `mask_for` or `reference_of`.
    link_type: String,
    created_at: String,
    updated_at: String,
}

impl From<&entities::asset_links::Model> for AssetLink {
    fn from(l: &entities::asset_links::Model) -> Self {
        Self {
            id: l.id,
            project_id: l.project_id,
            parent_asset_id: l.parent_asset_id,
            child_asset_id: l.child_asset_id,
            link_type: l.link_type.clone(),
            created_at: domain::time::format(&l.created_at),
            updated_at: domain::time::format(&l.updated_at),
        }
    }
}

#[derive(Deserialize, IntoParams)]
pub struct LinkQuery {
    /// Links where this asset is the parent or the child.
    asset_id: Option<Uuid>,
    /// One of the link types (400 otherwise).
    link_type: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct LinkList {
    ok: bool,
    count: usize,
    asset_links: Vec<AssetLink>,
}

/// Links, most recently updated first.
#[utoipa::path(tag = "assets", params(("slug" = String, Path), LinkQuery),
    responses((status = 200, body = LinkList), (status = 400, body = ErrorBody, description = "invalid_link_type"),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
#[get("/api/projects/{slug}/asset-links")]
pub async fn list_links(
    state: web::Data<AppState>,
    access: ProjectSlug,
    query: web::Query<LinkQuery>,
) -> ApiResult<web::Json<LinkList>> {
    let link_type = links::link_type(query.link_type.as_deref())?;
    let ProjectAccess { project, .. } = access.authorize(&state).await?;
    let list: Vec<AssetLink> =
        links::list(&state.db, project.id, query.asset_id, link_type.as_deref())
            .await?
            .iter()
            .map(AssetLink::from)
            .collect();
    Ok(web::Json(LinkList {
        ok: true,
        count: list.len(),
        asset_links: list,
    }))
}

#[derive(Deserialize, ToSchema, Default)]
#[serde(default)]
pub struct LinkBody {
    parent_asset_id: Option<String>,
    child_asset_id: Option<String>,
    /// Case-insensitive; default `derived_from` on create.
    link_type: Option<String>,
}

impl LinkBody {
    fn fields(&self) -> links::LinkFields<'_> {
        links::LinkFields {
            parent_asset_id: self.parent_asset_id.as_deref(),
            child_asset_id: self.child_asset_id.as_deref(),
            link_type: self.link_type.as_deref(),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct LinkSaved {
    ok: bool,
    asset_link: AssetLink,
}

/// Link two assets of this project. The body is checked before the project
/// is looked up.
#[utoipa::path(tag = "assets", params(("slug" = String, Path)),
    request_body(content = LinkBody, content_type = "application/json"),
    responses((status = 200, body = LinkSaved),
        (status = 400, body = ErrorBody, description = "field_required, invalid_field, invalid_link (ends must differ), invalid_link_type, asset_not_found (not this project's), duplicate_link"),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
#[post("/api/projects/{slug}/asset-links")]
pub async fn create_link(
    state: web::Data<AppState>,
    access: ProjectSlug,
    JsonBody(body): JsonBody<LinkBody>,
) -> ApiResult<web::Json<LinkSaved>> {
    let valid = links::validate_create(body.fields())?;
    let ProjectAccess { project, .. } = access.authorize(&state).await?;
    let row = links::create(&state.db, project.id, valid).await?;
    Ok(web::Json(LinkSaved {
        ok: true,
        asset_link: AssetLink::from(&row),
    }))
}

/// One link.
#[utoipa::path(tag = "assets", params(("slug" = String, Path), ("linkId" = String, Path)),
    responses((status = 200, body = LinkSaved), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
#[get("/api/projects/{slug}/asset-links/{linkId}")]
pub async fn get_link(
    state: web::Data<AppState>,
    ProjectAccess { project, .. }: ProjectAccess,
    path: web::Path<(String, String)>,
) -> ApiResult<web::Json<LinkSaved>> {
    let (_, id) = path.into_inner();

    let row = links::get(&state.db, project.id, &id).await?;
    Ok(web::Json(LinkSaved {
        ok: true,
        asset_link: AssetLink::from(&row),
    }))
}

/// Partial update (at least one field, checked before any lookup; then the
/// create rules).
#[utoipa::path(tag = "assets", params(("slug" = String, Path), ("linkId" = String, Path)),
    request_body(content = LinkBody, content_type = "application/json"),
    responses((status = 200, body = LinkSaved), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
#[put("/api/projects/{slug}/asset-links/{linkId}")]
pub async fn update_link(
    state: web::Data<AppState>,
    access: ProjectSlug,
    path: web::Path<(String, String)>,
    JsonBody(body): JsonBody<LinkBody>,
) -> ApiResult<web::Json<LinkSaved>> {
    let (_, id) = path.into_inner();
    let valid = links::validate_update(body.fields())?;
    let ProjectAccess { project, .. } = access.authorize(&state).await?;
    let row = links::update(&state.db, project.id, &id, valid).await?;
    Ok(web::Json(LinkSaved {
        ok: true,
        asset_link: AssetLink::from(&row),
    }))
}

#[derive(Serialize, ToSchema)]
pub struct LinkDeleted {
    ok: bool,
    deleted: bool,
    id: Uuid,
}

/// Delete a link (the assets stay).
#[utoipa::path(tag = "assets", params(("slug" = String, Path), ("linkId" = String, Path)),
    responses((status = 200, body = LinkDeleted), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
#[delete("/api/projects/{slug}/asset-links/{linkId}")]
pub async fn delete_link(
    state: web::Data<AppState>,
    ProjectAccess { project, .. }: ProjectAccess,
    path: web::Path<(String, String)>,
) -> ApiResult<web::Json<LinkDeleted>> {
    let (_, id) = path.into_inner();

    let id = links::delete(&state.db, project.id, &id).await?;
    Ok(web::Json(LinkDeleted {
        ok: true,
        deleted: true,
        id,
    }))
}
