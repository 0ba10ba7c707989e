use std::collections::HashMap;
use std::time::Duration;

use actix_web::{HttpResponse, get, post, web};
use domain::runs::plan::{self, TriggerInput};
use domain::runs::{events, store, trigger};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::AppState;
use crate::dto::{AssetPaths, Candidate, Event, Job, Run};
use crate::error::{ApiResult, ErrorBody};
use crate::extract::{JsonBody, ProjectAccess, ProjectSlug};

/// Trigger body. Exactly one of `scene_refs` / `input`.
#[derive(Deserialize, ToSchema, Default)]
#[serde(default)]
pub struct TriggerBody {
    /// `dry` (plan and estimate, call nothing; default) or `run`.
    mode: Option<String>,
    /// Required for runs whose estimate is above zero (paid providers).
    confirm_spend: Option<bool>,
    /// Scenes: `sample:<n>`, an asset id of this project, a path under the
    /// project root, or `prompt:<description>` (generated from the text).
    scene_refs: Option<Vec<String>>,
    /// A folder under the project root; every image in it is a scene.
    input: Option<String>,
    style_refs: Option<Vec<String>>,
    /// Last stage of the chain: `style` (default), `time` or `weather`.
    stage: Option<String>,
    /// `day` (default), `dusk`, `night`; stage time or weather only.
    time: Option<String>,
    /// `clear` (default), `rain`, `snow`, `fog`; stage weather only.
    weather: Option<String>,
    /// Candidates per job (1..16, at most the manifest's `generation.max_candidates`).
    candidates: Option<i64>,
    /// Image provider (default `local`).
    provider: Option<String>,
    /// Budget cap for this run (USD).
    budget_usd: Option<f64>,
    /// Manifest overlay for this run (over the project's manifest and the defaults).
    #[schema(value_type = Option<Object>)]
    manifest: Option<serde_json::Value>,
    /// Post-process switches and settings for this run, over the manifest's
    /// `postprocess` (e.g. `{"upscale": true, "color": false}`).
    #[schema(value_type = Option<Object>)]
    postprocess: Option<serde_json::Value>,
    /// Answer only when the run has finished (up to `wait_timeout_seconds`).
    wait: Option<bool>,
    wait_timeout_seconds: Option<u64>,
    /// Managed by project storage; any value is refused.
    project_root: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct PipelineTrigger {
    mode: String,
    /// 0 when the run was accepted (dry: planned).
    status_code: i32,
    stdout: String,
    stderr: String,
    adapter: &'static str,
}

#[derive(Serialize, ToSchema)]
pub struct TriggerResponse {
    ok: bool,
    run_id: Uuid,
    run: Run,
    /// The full plan: stages with prompts, jobs, calls, estimate.
    #[schema(value_type = Object)]
    plan: serde_json::Value,
    jobs: Vec<Job>,
    pipeline_trigger: PipelineTrigger,
    audit_id: Uuid,
}

/// Plan a run and start it. Returns at once with the run id (or, with
/// `wait: true`, once the run has finished). Nothing is called in dry mode.
#[utoipa::path(
    tag = "runs",
    params(("slug" = String, Path)),
    request_body(content = TriggerBody, content_type = "application/json"),
    responses(
        (status = 200, body = TriggerResponse),
        (status = 400, body = ErrorBody, description = "invalid_mode, invalid_request, scene_not_found, invalid_scene, candidates_over_limit, batch_over_limit, unknown_provider, config_validation_failed; policy: spend_confirmation_required, budget_exceeded, project_budget_exceeded"),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "storage_unavailable: a paid run on a project whose S3 storage cannot be used"),
        (status = 429, body = ErrorBody, description = "queue_full"),
    )
)]
#[post("/api/projects/{slug}/runs/trigger")]
pub async fn trigger_run(
    state: web::Data<AppState>,
    access: ProjectSlug,
    JsonBody(body): JsonBody<TriggerBody>,
) -> ApiResult<web::Json<TriggerResponse>> {
    let valid = plan::validate(&TriggerInput {
        mode: body.mode,
        confirm_spend: body.confirm_spend,
        scene_refs: body.scene_refs,
        input: body.input,
        style_refs: body.style_refs,
        stage: body.stage,
        time: body.time,
        weather: body.weather,
        candidates: body.candidates,
        provider: body.provider,
        budget_usd: body.budget_usd,
        project_root: body.project_root,
        manifest: body.manifest,
        postprocess: body.postprocess,
    })?;
    let ProjectAccess { project, principal } = access.authorize(&state).await?;
    let triggered =
        trigger::trigger(state.engine.run_engine(), &principal, &project, valid).await?;
    let run_id = triggered.created.run.id;
    if body.wait.unwrap_or(false) && triggered.created.run.run_mode == "run" {
        let timeout = Duration::from_secs(body.wait_timeout_seconds.unwrap_or(300).clamp(1, 3600));
        state.engine.wait_finished(run_id, timeout).await?;
    }
    // Read back as stored, the run and its jobs together.
    let (run, jobs) = tokio::join!(
        store::run_by_id(&state.db, run_id),
        jobs_with_candidates(&state, run_id)
    );
    let (run, jobs) = (run?, jobs?);
    Ok(web::Json(TriggerResponse {
        ok: true,
        run_id: run.id,
        pipeline_trigger: PipelineTrigger {
            mode: run.run_mode.clone(),
            status_code: 0,
            stdout: format!("Run {} {}: {} jobs", run.id, run.status, jobs.len()),
            stderr: String::new(),
            adapter: "atelier_engine",
        },
        run: Run::from(&run),
        plan: serde_json::to_value(&triggered.plan).unwrap_or_default(),
        jobs,
        audit_id: triggered.created.audit_id,
    }))
}

async fn jobs_with_candidates(
    state: &AppState,
    run_id: Uuid,
) -> Result<Vec<Job>, domain::ServiceError> {
    let (jobs, candidates) = tokio::join!(
        store::jobs_of(&state.db, run_id),
        store::candidates_of_run(&state.db, run_id)
    );
    let (jobs, candidates) = (jobs?, candidates?);
    let paths = asset_paths(
        state,
        jobs.iter().map(|j| j.final_asset_id).chain(
            candidates
                .iter()
                .flat_map(|c| [c.output_asset_id, c.final_asset_id]),
        ),
    )
    .await?;
    let mut by_job: HashMap<Uuid, Vec<Candidate>> = HashMap::new();
    for c in &candidates {
        by_job
            .entry(c.job_id)
            .or_default()
            .push(Candidate::new(c, &paths));
    }
    Ok(jobs
        .iter()
        .map(|j| Job::new(j, by_job.remove(&j.id).unwrap_or_default(), &paths))
        .collect())
}

/// The storage paths of the given assets, in one query.
async fn asset_paths(
    state: &AppState,
    ids: impl Iterator<Item = Option<Uuid>>,
) -> Result<AssetPaths, domain::ServiceError> {
    domain::assets::storage_keys(&state.db, ids.flatten().collect()).await
}

#[derive(Deserialize, IntoParams)]
pub struct RunListQuery {
    /// Default 200, clamped to 1..1000.
    limit: Option<i64>,
    /// **New**: continue after a previous page (its `next_cursor`).
    cursor: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct RunList {
    ok: bool,
    count: usize,
    runs: Vec<Run>,
    /// **New**: set when the page is full; pass it as `cursor` for the next one.
    next_cursor: Option<String>,
}

/// Runs of a project, newest first.
#[utoipa::path(tag = "runs", params(("slug" = String, Path), RunListQuery),
    responses((status = 200, body = RunList), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
#[get("/api/projects/{slug}/runs")]
pub async fn list_runs(
    state: web::Data<AppState>,
    ProjectAccess { project, .. }: ProjectAccess,
    query: web::Query<RunListQuery>,
) -> ApiResult<HttpResponse> {
    let limit = query.limit.unwrap_or(200).clamp(1, 1000) as u64;
    let after = query
        .cursor
        .as_deref()
        .map(domain::cursor::Cursor::decode)
        .transpose()?;
    let key = format!("runs|{}|{limit}|{:?}", project.id, query.cursor);
    let db = &state.db;
    state
        .renders
        .respond_fresh(key, || async move {
            let rows = store::list_runs(db, project.id, limit, after).await?;
            let next_cursor = domain::cursor::next(&rows, limit, |r| (r.created_at, r.id));
            let runs: Vec<Run> = rows.iter().map(Run::from).collect();
            Ok(RunList {
                ok: true,
                count: runs.len(),
                runs,
                next_cursor,
            })
        })
        .await
}

#[derive(Serialize, ToSchema)]
pub struct RunDetail {
    ok: bool,
    run: Run,
    jobs: Vec<Job>,
}

/// A run with its jobs and their candidates.
#[utoipa::path(tag = "runs", params(("slug" = String, Path), ("runId" = String, Path)),
    responses((status = 200, body = RunDetail), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
#[get("/api/projects/{slug}/runs/{runId}")]
pub async fn get_run(
    state: web::Data<AppState>,
    ProjectAccess { project, .. }: ProjectAccess,
    path: web::Path<(String, String)>,
) -> ApiResult<HttpResponse> {
    let (_, run_id) = path.into_inner();
    let key = format!("run|{}|{run_id}", project.id);
    let state = &state;
    state
        .renders
        .respond_fresh(key, || async move {
            let run = store::get_run(&state.db, project.id, &run_id).await?;
            let jobs = jobs_with_candidates(state, run.id).await?;
            Ok(RunDetail {
                ok: true,
                run: Run::from(&run),
                jobs,
            })
        })
        .await
}

#[derive(Serialize, ToSchema)]
pub struct JobList {
    ok: bool,
    run_id: Uuid,
    count: usize,
    jobs: Vec<Job>,
}

/// Jobs of a run (creation order) with their candidates.
#[utoipa::path(tag = "runs", params(("slug" = String, Path), ("runId" = String, Path)),
    responses((status = 200, body = JobList), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
#[get("/api/projects/{slug}/runs/{runId}/jobs")]
pub async fn list_jobs(
    state: web::Data<AppState>,
    ProjectAccess { project, .. }: ProjectAccess,
    path: web::Path<(String, String)>,
) -> ApiResult<HttpResponse> {
    let (_, run_id) = path.into_inner();
    let key = format!("jobs|{}|{run_id}", project.id);
    let state = &state;
    state
        .renders
        .respond_fresh(key, || async move {
            let run = store::get_run(&state.db, project.id, &run_id).await?;
            let jobs = jobs_with_candidates(state, run.id).await?;
            Ok(JobList {
                ok: true,
                run_id: run.id,
                count: jobs.len(),
                jobs,
            })
        })
        .await
}

#[derive(Deserialize, IntoParams)]
pub struct EventQuery {
    /// Only events with a sequence number above this (default 0: all).
    since: Option<i64>,
    /// Default 1000, clamped to 1..10000.
    limit: Option<i64>,
}

#[derive(Serialize, ToSchema)]
pub struct EventList {
    ok: bool,
    run_id: Uuid,
    count: usize,
    events: Vec<Event>,
}

/// Persisted events of a run in sequence order; `since` resumes after a known sequence number.
#[utoipa::path(tag = "runs", params(("slug" = String, Path), ("runId" = String, Path), EventQuery),
    responses((status = 200, body = EventList), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
#[get("/api/projects/{slug}/runs/{runId}/events")]
pub async fn list_events(
    state: web::Data<AppState>,
    ProjectAccess { project, .. }: ProjectAccess,
    path: web::Path<(String, String)>,
    query: web::Query<EventQuery>,
) -> ApiResult<HttpResponse> {
    let (_, run_id) = path.into_inner();
    let limit = query.limit.unwrap_or(1000).clamp(1, 10_000) as u64;
    let since = query.since.unwrap_or(0).max(0);
    let key = format!("events|{}|{run_id}|{since}|{limit}", project.id);
    let db = &state.db;
    state
        .renders
        .respond_fresh(key, || async move {
            let run = store::get_run(db, project.id, &run_id).await?;
            let events: Vec<Event> = events::list_since(db, run.id, since, limit)
                .await?
                .iter()
                .map(Event::from)
                .collect();
            Ok(EventList {
                ok: true,
                run_id: run.id,
                count: events.len(),
                events,
            })
        })
        .await
}

#[derive(Serialize, ToSchema)]
pub struct CandidateList {
    ok: bool,
    job_id: Uuid,
    count: usize,
    candidates: Vec<Candidate>,
}

/// **New.** Candidates of one job, by index.
#[utoipa::path(tag = "runs", params(("slug" = String, Path), ("runId" = String, Path), ("jobId" = String, Path)),
    responses((status = 200, body = CandidateList), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
#[get("/api/projects/{slug}/runs/{runId}/jobs/{jobId}/candidates")]
pub async fn list_candidates(
    state: web::Data<AppState>,
    ProjectAccess { project, .. }: ProjectAccess,
    path: web::Path<(String, String, String)>,
) -> ApiResult<HttpResponse> {
    let (_, run_id, job_id) = path.into_inner();
    let key = format!("candidates|{}|{run_id}|{job_id}", project.id);
    let state = &state;
    state
        .renders
        .respond_fresh(key, || async move {
            let run = store::get_run(&state.db, project.id, &run_id).await?;
            let job_id = Uuid::parse_str(job_id.trim())
                .map_err(|_| domain::ServiceError::not_found("Job not found"))?;
            let jobs = store::jobs_of(&state.db, run.id).await?;
            if !jobs.iter().any(|j| j.id == job_id) {
                return Err(domain::ServiceError::not_found("Job not found"));
            }
            let rows: Vec<_> = store::candidates_of_run(&state.db, run.id)
                .await?
                .into_iter()
                .filter(|c| c.job_id == job_id)
                .collect();
            let paths = asset_paths(
                state,
                rows.iter()
                    .flat_map(|c| [c.output_asset_id, c.final_asset_id]),
            )
            .await?;
            let candidates: Vec<Candidate> =
                rows.iter().map(|c| Candidate::new(c, &paths)).collect();
            Ok(CandidateList {
                ok: true,
                job_id,
                count: candidates.len(),
                candidates,
            })
        })
        .await
}

#[derive(Deserialize, ToSchema, Default)]
#[serde(default)]
pub struct ValidateConfigBody {
    /// A manifest overlay to check on top of the project's manifest and the defaults.
    #[schema(value_type = Option<Object>)]
    manifest: Option<serde_json::Value>,
    /// v1 file-path fields: refused. Settings live in the database, and the
    /// service never reads files named by a request.
    app_settings_path: Option<String>,
    project_settings_path: Option<String>,
    manifest_path: Option<String>,
    postprocess_config_path: Option<String>,
    /// Managed by project storage; refused.
    project_root: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct ConfigSummary {
    app_settings_loaded: bool,
    project_settings_loaded: bool,
    resolved_manifest_path: String,
    resolved_postprocess_config_path: String,
    /// The effective manifest (defaults < project < request overlay).
    #[schema(value_type = Object)]
    manifest: serde_json::Value,
}

#[derive(Serialize, ToSchema)]
pub struct ConfigValidated {
    ok: bool,
    summary: ConfigSummary,
}

/// Validate the layered pipeline configuration (defaults < project manifest
/// < the given overlay) without running anything.
#[utoipa::path(tag = "runs", params(("slug" = String, Path)),
    request_body(content = ValidateConfigBody, content_type = "application/json"),
    responses((status = 200, body = ConfigValidated), (status = 400, body = ErrorBody, description = "project_root_managed, config_validation_failed"),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
#[post("/api/projects/{slug}/runs/validate-config")]
pub async fn validate_config(
    state: web::Data<AppState>,
    access: ProjectSlug,
    JsonBody(body): JsonBody<ValidateConfigBody>,
) -> ApiResult<web::Json<ConfigValidated>> {
    // v1 order: the project is looked up first.
    let ProjectAccess { project, .. } = access.authorize(&state).await?;
    if body
        .project_root
        .as_deref()
        .is_some_and(|p| !p.trim().is_empty())
    {
        return Err(domain::ServiceError::validation(
            "project_root_managed",
            "Field 'project_root' is managed by project storage and cannot be overridden",
        )
        .into());
    }
    let paths = [
        &body.app_settings_path,
        &body.project_settings_path,
        &body.manifest_path,
        &body.postprocess_config_path,
    ];
    if paths
        .iter()
        .any(|p| p.as_deref().is_some_and(|p| !p.trim().is_empty()))
    {
        return Err(domain::ServiceError::validation(
            "config_validation_failed",
            "Settings files are not read from paths; send the manifest overlay as 'manifest' (project settings are stored with the project)",
        )
        .into());
    }
    let project_layer = project.settings_json.get("manifest");
    let manifest = domain::runs::manifest::resolve(project_layer, body.manifest.as_ref())?;
    Ok(web::Json(ConfigValidated {
        ok: true,
        summary: ConfigSummary {
            app_settings_loaded: false,
            project_settings_loaded: project_layer.is_some(),
            resolved_manifest_path: String::new(),
            resolved_postprocess_config_path: String::new(),
            manifest: serde_json::to_value(&manifest).unwrap_or_default(),
        },
    }))
}
