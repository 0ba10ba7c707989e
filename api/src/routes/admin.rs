//! Operator endpoints (unscoped tokens only): the supervision tree,
//! restarts through the real supervisor path, and the cluster's nodes.

use actix_web::{get, post, web};
use serde::Serialize;
use utoipa::ToSchema;

use crate::AppState;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::Admin;

#[derive(Serialize, ToSchema)]
pub struct QueueStats {
    queued_runs: u64,
    running_runs: u64,
    running_jobs: u64,
}

#[derive(Serialize, ToSchema)]
pub struct SupervisionResponse {
    ok: bool,
    node_id: String,
    uptime_seconds: u64,
    /// Per actor: `name`, `status`, `restarts`, `last_error`, `last_restart_at`,
    /// `started_at`, `mailbox_depth` (requests not answered yet).
    #[schema(value_type = Vec<Object>)]
    actors: Vec<actors::engine::ActorInfo>,
    /// Actors `POST /admin/actors/{name}/restart` accepts.
    restartable: Vec<&'static str>,
    /// WorkerActors alive in this process (one per running job).
    live_workers: usize,
    /// Job leases this node holds.
    leases_held: u64,
    /// All processing paused by an operator (`POST /admin/pause`).
    paused_all: bool,
    queue: QueueStats,
}

/// The actor tree with status, restarts and last errors, live workers,
/// leases and queue statistics.
#[utoipa::path(
    tag = "admin",
    responses(
        (status = 200, body = SupervisionResponse),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
    )
)]
#[get("/admin/supervision")]
pub async fn supervision(
    state: web::Data<AppState>,
    _admin: Admin,
) -> ApiResult<web::Json<SupervisionResponse>> {
    let engine = &state.engine;
    let stats = domain::runs::store::queue_stats(&state.db, &engine.deps.node_id).await?;
    Ok(web::Json(SupervisionResponse {
        ok: true,
        node_id: engine.deps.node_id.clone(),
        uptime_seconds: state.started.elapsed().map_or(0, |d| d.as_secs()),
        actors: engine.registry().snapshot(),
        restartable: actors::engine::RESTARTABLE.to_vec(),
        live_workers: engine.registry().live_workers(),
        leases_held: stats.leases_held,
        paused_all: engine.all_paused(),
        queue: QueueStats {
            queued_runs: stats.queued_runs,
            running_runs: stats.running_runs,
            running_jobs: stats.running_jobs,
        },
    }))
}

#[derive(Serialize, ToSchema)]
pub struct RestartResponse {
    ok: bool,
    actor: String,
    restarts: u32,
}

/// Stops the actor so its supervisor restarts it; unfinished work is
/// reloaded from the database.
#[utoipa::path(
    tag = "admin",
    params(("name" = String, Path, description = "project, cost or audit")),
    responses(
        (status = 200, body = RestartResponse),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody, description = "no restartable actor of that name"),
    )
)]
#[post("/admin/actors/{name}/restart")]
pub async fn restart_actor(
    state: web::Data<AppState>,
    _admin: Admin,
    name: web::Path<String>,
) -> ApiResult<web::Json<RestartResponse>> {
    let engine = &state.engine;
    let restarts_of = || {
        engine
            .registry()
            .snapshot()
            .into_iter()
            .find(|a| a.name == *name)
    };
    let before = restarts_of().map_or(0, |a| a.restarts);
    engine.restart_actor(&name).await?;
    // The supervisor restarts the actor right after it stops; wait for it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let restarts = loop {
        match restarts_of() {
            Some(a) if a.status == "running" && a.restarts > before => break a.restarts,
            _ if std::time::Instant::now() > deadline => {
                return Err(ApiError::from(domain::ServiceError::Unavailable {
                    code: "actor_not_restarted",
                    message: format!("Actor {name} did not come back within 5 s"),
                }));
            }
            _ => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
        }
    };
    Ok(web::Json(RestartResponse {
        ok: true,
        actor: name.into_inner(),
        restarts,
    }))
}

#[derive(Serialize, ToSchema)]
pub struct PauseResponse {
    ok: bool,
    paused_all: bool,
}

async fn set_paused(state: &AppState, paused: bool) -> ApiResult<web::Json<PauseResponse>> {
    state.engine.set_all_paused(paused).await?;
    tracing::info!(paused, "processing paused or resumed by an operator");
    Ok(web::Json(PauseResponse {
        ok: true,
        paused_all: paused,
    }))
}

/// Pauses all processing: no queued run starts and no job is leased;
/// running jobs finish. Persisted: every node follows it within a heartbeat,
/// and it holds across restarts until `POST /admin/resume`.
#[utoipa::path(
    tag = "admin",
    responses((status = 200, body = PauseResponse), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody))
)]
#[post("/admin/pause")]
pub async fn pause_all(
    state: web::Data<AppState>,
    _admin: Admin,
) -> ApiResult<web::Json<PauseResponse>> {
    set_paused(&state, true).await
}

/// Resumes all processing (runs continue from where they stopped).
#[utoipa::path(
    tag = "admin",
    responses((status = 200, body = PauseResponse), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody))
)]
#[post("/admin/resume")]
pub async fn resume_all(
    state: web::Data<AppState>,
    _admin: Admin,
) -> ApiResult<web::Json<PauseResponse>> {
    set_paused(&state, false).await
}

/// A node serving from this database.
#[derive(Serialize, ToSchema)]
pub struct Node {
    /// Its name in job leases (`engine.node_id`).
    id: String,
    /// Where it serves HTTP.
    address: String,
    version: String,
    database_backend: String,
    started_at: String,
    heartbeat_at: String,
    /// Its last heartbeat is within `engine.node_timeout_ms` and, on
    /// PostgreSQL, its process still holds its liveness lock.
    alive: bool,
    /// The node answering this request.
    this_node: bool,
}

#[derive(Serialize, ToSchema)]
pub struct NodesResponse {
    ok: bool,
    /// Live nodes first.
    nodes: Vec<Node>,
}

/// **New.** The nodes serving from this database: each records itself at
/// start and beats its heart every `engine.heartbeat_ms`; one silent for
/// longer than `engine.node_timeout_ms` is dead.
#[utoipa::path(
    tag = "admin",
    responses(
        (status = 200, body = NodesResponse),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
    )
)]
#[get("/admin/nodes")]
pub async fn nodes(
    state: web::Data<AppState>,
    _admin: Admin,
) -> ApiResult<web::Json<NodesResponse>> {
    let deps = &state.engine.deps;
    let members =
        domain::cluster::members(&state.db, deps.config.node_timeout, deps.observer()).await?;
    Ok(web::Json(NodesResponse {
        ok: true,
        nodes: members
            .into_iter()
            .map(|m| Node {
                this_node: m.node.id == deps.node_id,
                id: m.node.id,
                address: m.node.address,
                version: m.node.version,
                database_backend: m.node.database_backend,
                started_at: domain::time::format(&m.node.started_at),
                heartbeat_at: domain::time::format(&m.node.heartbeat_at),
                alive: m.alive,
            })
            .collect(),
    }))
}
