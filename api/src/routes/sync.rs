//! **New**: S3 sync of a project's files in the background (the CLI's
//! `atelier sync`), with its progress and end on the project's live feed.

use actix_web::{HttpResponse, get, post, web};
use domain::sync::{Direction, SyncOptions};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::AppState;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{JsonBody, ProjectAccess, ProjectSlug};

#[derive(Deserialize, ToSchema, Default)]
#[serde(default)]
pub struct SyncBody {
    /// `push` (local files to the bucket) or `pull` (back).
    direction: Option<String>,
    /// Say what would move; move nothing.
    dry_run: Option<bool>,
    /// Replace what someone else changed on the other side.
    overwrite: Option<bool>,
    /// Push: list the bucket even when the last sync's record may be
    /// trusted (finds objects someone else deleted or changed).
    full: Option<bool>,
}

#[derive(Serialize, ToSchema)]
pub struct SyncStarted {
    ok: bool,
    /// This sync's id: its events on the feed carry it as `run_id`.
    sync_id: Uuid,
    direction: String,
}

/// **New.** Push the project's files to its bucket, or pull them back, in
/// the background (one sync per project at a time). Progress and the end
/// (`sync.progress`, `sync.finished` with the counts and any conflicts) come
/// on the project's live feed; the end is also in the audit log.
#[utoipa::path(tag = "storage", params(("slug" = String, Path)),
    request_body(content = SyncBody, content_type = "application/json"),
    responses((status = 202, body = SyncStarted),
        (status = 400, body = ErrorBody, description = "invalid_direction"),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "sync_running; storage_unavailable: no bucket, or its credentials are missing")))]
#[post("/api/projects/{slug}/sync")]
pub async fn start_sync(
    state: web::Data<AppState>,
    access: ProjectSlug,
    JsonBody(body): JsonBody<SyncBody>,
) -> ApiResult<HttpResponse> {
    let direction = match body
        .direction
        .as_deref()
        .unwrap_or("push")
        .trim()
        .to_ascii_lowercase()
        .as_str()
    {
        "push" => Direction::Push,
        "pull" => Direction::Pull,
        _ => {
            return Err(ApiError::validation(
                "invalid_direction",
                "Field 'direction' must be one of: push, pull",
            ));
        }
    };
    let ProjectAccess { project, principal } = access.authorize(&state).await?;
    let files = domain::projects::project_files(&state.db, state.file_access(), &project).await?;
    // A bucket must be named and reachable before anything starts.
    files.bucket().map_err(domain::ServiceError::from)?;
    let options = SyncOptions {
        direction,
        dry_run: body.dry_run.unwrap_or(false),
        overwrite: body.overwrite.unwrap_or(false),
        concurrency: 4,
        full: body.full.unwrap_or(false),
    };
    let sync_id = state.engine.start_sync(project, principal, options).await?;
    Ok(HttpResponse::Accepted().json(SyncStarted {
        ok: true,
        sync_id,
        direction: match direction {
            Direction::Push => "push".into(),
            Direction::Pull => "pull".into(),
        },
    }))
}

#[derive(Serialize, ToSchema)]
pub struct SyncState {
    ok: bool,
    /// A sync of this project is running on this node.
    running: bool,
}

/// **New.** Whether a sync of the project is running on this node.
#[utoipa::path(tag = "storage", params(("slug" = String, Path)),
    responses((status = 200, body = SyncState), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
#[get("/api/projects/{slug}/sync")]
pub async fn sync_state(
    state: web::Data<AppState>,
    ProjectAccess { project, .. }: ProjectAccess,
) -> ApiResult<web::Json<SyncState>> {
    Ok(web::Json(SyncState {
        ok: true,
        running: state.engine.is_syncing(project.id).await?,
    }))
}
