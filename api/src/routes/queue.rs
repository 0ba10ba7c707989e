//! A project's run queue: its state, pause and resume.

use actix_web::{get, post, web};
use domain::runs::control;
use domain::runs::store;
use domain::status::RunStatus;
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::AppState;
use crate::error::{ApiResult, ErrorBody};
use crate::extract::ProjectAccess;

#[derive(Serialize, ToSchema)]
pub struct QueueState {
    ok: bool,
    paused: bool,
    queued: usize,
    running: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    audit_id: Option<Uuid>,
}

async fn queue_state(
    state: &AppState,
    project: &entities::projects::Model,
    audit_id: Option<Uuid>,
) -> Result<QueueState, domain::ServiceError> {
    Ok(QueueState {
        ok: true,
        paused: state.engine.is_paused(project.id).await?,
        queued: store::count_runs(&state.db, project.id, RunStatus::Queued).await? as usize,
        running: store::count_runs(&state.db, project.id, RunStatus::Running).await? as usize,
        audit_id,
    })
}

/// **New.** The project's run queue: paused or not, queued and running runs.
#[utoipa::path(tag = "runs", params(("slug" = String, Path)),
    responses((status = 200, body = QueueState), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
#[get("/api/projects/{slug}/queue")]
pub async fn get_queue(
    state: web::Data<AppState>,
    ProjectAccess { project, .. }: ProjectAccess,
) -> ApiResult<web::Json<QueueState>> {
    Ok(web::Json(queue_state(&state, &project, None).await?))
}

/// **New.** Pause the project's queue: running runs go on, queued runs wait.
#[utoipa::path(tag = "runs", params(("slug" = String, Path)),
    responses((status = 200, body = QueueState), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
#[post("/api/projects/{slug}/queue/pause")]
pub async fn pause_queue(
    state: web::Data<AppState>,
    ProjectAccess { project, principal }: ProjectAccess,
) -> ApiResult<web::Json<QueueState>> {
    let audit_id =
        control::set_queue_paused(state.engine.run_engine(), &principal, &project, true).await?;
    Ok(web::Json(
        queue_state(&state, &project, Some(audit_id)).await?,
    ))
}

/// **New.** Resume the project's queue.
#[utoipa::path(tag = "runs", params(("slug" = String, Path)),
    responses((status = 200, body = QueueState), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
#[post("/api/projects/{slug}/queue/resume")]
pub async fn resume_queue(
    state: web::Data<AppState>,
    ProjectAccess { project, principal }: ProjectAccess,
) -> ApiResult<web::Json<QueueState>> {
    let audit_id =
        control::set_queue_paused(state.engine.run_engine(), &principal, &project, false).await?;
    Ok(web::Json(
        queue_state(&state, &project, Some(audit_id)).await?,
    ))
}
