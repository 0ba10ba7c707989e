//! Run control: cancel a run or one job, retry what failed.

use actix_web::{post, web};
use domain::runs::control;
use domain::runs::store;
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::AppState;
use crate::dto::{AssetPaths, Job, Run};
use crate::error::{ApiResult, ErrorBody};
use crate::extract::ProjectAccess;

#[derive(Serialize, ToSchema)]
pub struct RunCanceled {
    ok: bool,
    run: Run,
}

/// Cancel a run. Waiting jobs are canceled at once; running jobs stop before
/// their next provider call. A finished run is left as it is.
#[utoipa::path(tag = "runs", params(("slug" = String, Path), ("runId" = String, Path)),
    responses((status = 200, body = RunCanceled), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
#[post("/api/projects/{slug}/runs/{runId}/cancel")]
pub async fn cancel_run(
    state: web::Data<AppState>,
    ProjectAccess { project, principal }: ProjectAccess,
    path: web::Path<(String, String)>,
) -> ApiResult<web::Json<RunCanceled>> {
    let (_, run_id) = path.into_inner();

    let run = store::get_run(&state.db, project.id, &run_id).await?;
    state.engine.cancel_run(run.id, &principal).await?;
    let run = store::get_run(&state.db, project.id, &run_id).await?;
    Ok(web::Json(RunCanceled {
        ok: true,
        run: Run::from(&run),
    }))
}

#[derive(Serialize, ToSchema)]
pub struct RunRetried {
    ok: bool,
    run: Run,
    /// The new job attempts (each linked to the failed job by `retry_of_job_id`).
    jobs: Vec<Job>,
    audit_id: Uuid,
}

/// **New.** Retry the failed jobs of a finished run: each gets a new attempt
/// linked to the old one, and the run is queued again.
#[utoipa::path(tag = "runs", params(("slug" = String, Path), ("runId" = String, Path)),
    responses((status = 200, body = RunRetried), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "run_not_retryable, nothing_to_retry")))]
#[post("/api/projects/{slug}/runs/{runId}/retry")]
pub async fn retry_run(
    state: web::Data<AppState>,
    ProjectAccess { project, principal }: ProjectAccess,
    path: web::Path<(String, String)>,
) -> ApiResult<web::Json<RunRetried>> {
    let (_, run_id) = path.into_inner();

    let run = store::get_run(&state.db, project.id, &run_id).await?;
    let (run, created, audit_id) =
        control::retry_failed(state.engine.run_engine(), &principal, &run).await?;
    Ok(web::Json(RunRetried {
        ok: true,
        run: Run::from(&run),
        jobs: created
            .iter()
            .map(|j| Job::new(j, Vec::new(), &AssetPaths::new()))
            .collect(),
        audit_id,
    }))
}

#[derive(Serialize, ToSchema)]
pub struct JobCanceled {
    ok: bool,
    job: Job,
}

/// **New.** Cancel one job and the later stages of its scene.
#[utoipa::path(tag = "runs", params(("slug" = String, Path), ("runId" = String, Path), ("jobId" = String, Path)),
    responses((status = 200, body = JobCanceled), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
#[post("/api/projects/{slug}/runs/{runId}/jobs/{jobId}/cancel")]
pub async fn cancel_job(
    state: web::Data<AppState>,
    ProjectAccess { project, principal }: ProjectAccess,
    path: web::Path<(String, String, String)>,
) -> ApiResult<web::Json<JobCanceled>> {
    let (_, run_id, job_id) = path.into_inner();

    let run = store::get_run(&state.db, project.id, &run_id).await?;
    let job = control::cancel_job(state.engine.run_engine(), &principal, &run, &job_id).await?;
    Ok(web::Json(JobCanceled {
        ok: true,
        job: Job::new(&job, Vec::new(), &AssetPaths::new()),
    }))
}
