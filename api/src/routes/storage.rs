use actix_web::{get, put, web};
use domain::projects::{self, LocalStorageUpdate, S3StorageUpdate};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::AppState;
use crate::dto::{ProjectRef, Storage};
use crate::error::{ApiResult, ErrorBody};
use crate::extract::{JsonBody, ProjectAccess, ProjectSlug};

#[derive(Serialize, ToSchema)]
pub struct StorageResponse {
    ok: bool,
    project: ProjectRef,
    storage: Storage,
}

/// A project's storage policy.
#[utoipa::path(
    tag = "storage",
    params(("slug" = String, Path)),
    responses((status = 200, body = StorageResponse), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody))
)]
#[get("/api/projects/{slug}/storage")]
pub async fn get_storage(
    state: web::Data<AppState>,
    ProjectAccess { project, .. }: ProjectAccess,
) -> ApiResult<web::Json<StorageResponse>> {
    let row = projects::storage_row(&state.db, project.id).await?;
    let storage = projects::storage_view(&state.roots, &project, &row)?;
    Ok(web::Json(StorageResponse {
        ok: true,
        project: ProjectRef::from(&project),
        storage: storage.into(),
    }))
}

#[derive(Deserialize, ToSchema, Default)]
#[serde(default)]
pub struct LocalStorageBody {
    /// Directory holding project folders: relative to the data directory, or
    /// absolute inside an allowed storage root. Must not be blank.
    base_dir: Option<String>,
    /// Explicit project root inside an allowed storage root; blank clears it.
    project_root: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct StorageUpdated {
    ok: bool,
    project: ProjectRef,
    storage: Storage,
    /// `local` or `s3`.
    updated: &'static str,
    audit_id: Uuid,
}

/// Update local storage. Paths outside the allowed roots, `..` segments and
/// symlink escapes are refused.
#[utoipa::path(
    tag = "storage",
    params(("slug" = String, Path)),
    request_body(content = LocalStorageBody, content_type = "application/json"),
    responses(
        (status = 200, body = StorageUpdated),
        (status = 400, body = ErrorBody, description = "field_required, path_traversal, path_outside_allowed_roots, path_symlink_escape, path_invalid"),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "storage_root_overlap: the root is, contains or lies inside another project's"),
    )
)]
#[put("/api/projects/{slug}/storage/local")]
pub async fn update_local(
    state: web::Data<AppState>,
    access: ProjectSlug,
    JsonBody(body): JsonBody<LocalStorageBody>,
) -> ApiResult<web::Json<StorageUpdated>> {
    let update = LocalStorageUpdate {
        base_dir: body.base_dir,
        project_root: body.project_root,
    };
    update.validate_shape()?;
    let ProjectAccess { project, principal } = access.authorize(&state).await?;
    let (row, audit_id) =
        projects::update_local_storage(&state.db, &state.roots, &principal, &project, update)
            .await?;
    let storage = projects::storage_view(&state.roots, &project, &row)?;
    Ok(web::Json(StorageUpdated {
        ok: true,
        project: ProjectRef::from(&project),
        storage: storage.into(),
        updated: "local",
        audit_id,
    }))
}

#[derive(Deserialize, ToSchema, Default)]
#[serde(default)]
pub struct S3StorageBody {
    enabled: Option<bool>,
    bucket: Option<String>,
    prefix: Option<String>,
    region: Option<String>,
    profile: Option<String>,
    /// http(s) URL of an S3-compatible endpoint; blank clears it.
    endpoint_url: Option<String>,
}

/// Update the S3 mirror settings. Fields left out are unchanged; a blank string clears a field.
#[utoipa::path(
    tag = "storage",
    params(("slug" = String, Path)),
    request_body(content = S3StorageBody, content_type = "application/json"),
    responses(
        (status = 200, body = StorageUpdated),
        (status = 400, body = ErrorBody, description = "invalid_s3_bucket, invalid_s3_prefix, invalid_endpoint_url, field_too_long"),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
    )
)]
#[put("/api/projects/{slug}/storage/s3")]
pub async fn update_s3(
    state: web::Data<AppState>,
    ProjectAccess { project, principal }: ProjectAccess,
    JsonBody(body): JsonBody<S3StorageBody>,
) -> ApiResult<web::Json<StorageUpdated>> {
    let update = S3StorageUpdate {
        enabled: body.enabled,
        bucket: body.bucket,
        prefix: body.prefix,
        region: body.region,
        profile: body.profile,
        endpoint_url: body.endpoint_url,
    };
    let (row, audit_id) = projects::update_s3_storage(
        &state.db,
        &state.config.outbound,
        &principal,
        &project,
        update,
    )
    .await?;
    let storage = projects::storage_view(&state.roots, &project, &row)?;
    Ok(web::Json(StorageUpdated {
        ok: true,
        project: ProjectRef::from(&project),
        storage: storage.into(),
        updated: "s3",
        audit_id,
    }))
}
