//! **New**: S3 sync of a project's files in the background (the CLI's
//! `atelier sync`), with its progress and end on the project's live feed.

use actix_web::{HttpResponse, get, post, web};
use domain::sync::{Direction, SyncOptions, SyncProgress, SyncReport};
use serde::{Deserialize, Serialize};
use serde_json::json;
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
}

#[derive(Serialize, ToSchema)]
pub struct SyncStarted {
    ok: bool,
    /// This sync's id: its events on the feed carry it as `run_id`.
    sync_id: Uuid,
    direction: String,
}

/// Publishes `sync.progress` (at most every 200 ms, and at the end) and
/// `sync.finished` on the project's feed, live only, with the sync's id as
/// `run_id` and its own sequence numbers.
struct FeedProgress {
    hub: domain::runs::events::EventHub,
    project_id: Uuid,
    sync_id: Uuid,
    seq: std::sync::atomic::AtomicI64,
    moved: std::sync::atomic::AtomicU64,
    planned: std::sync::atomic::AtomicU64,
    last: std::sync::Mutex<Option<std::time::Instant>>,
}

impl FeedProgress {
    fn publish(&self, event_type: &str, payload: serde_json::Value) {
        use std::sync::atomic::Ordering;
        self.hub.publish(domain::runs::events::RunEvent {
            run_id: self.sync_id,
            project_id: self.project_id,
            seq: self.seq.fetch_add(1, Ordering::SeqCst) + 1,
            event_type: event_type.into(),
            job_id: None,
            payload,
            created_at: domain::time::now(),
        });
    }
}

impl SyncProgress for FeedProgress {
    fn planned(&self, objects: u64) {
        self.planned
            .store(objects, std::sync::atomic::Ordering::SeqCst);
    }
    fn moved(&self, _: &str, _: u64) {
        use std::sync::atomic::Ordering;
        let moved = self.moved.fetch_add(1, Ordering::SeqCst) + 1;
        let planned = self.planned.load(Ordering::SeqCst);
        let now = std::time::Instant::now();
        let due = self.last.lock().is_ok_and(|mut last| {
            let due =
                moved == planned || last.is_none_or(|t| now.duration_since(t).as_millis() >= 200);
            if due {
                *last = Some(now);
            }
            due
        });
        if due {
            self.publish(
                "sync.progress",
                json!({ "sync_id": self.sync_id, "moved": moved, "planned": planned }),
            );
        }
    }
}

fn finished_payload(
    sync_id: Uuid,
    outcome: &Result<SyncReport, domain::ServiceError>,
) -> serde_json::Value {
    match outcome {
        Ok(r) => json!({
            "sync_id": sync_id, "status": "completed", "dry_run": r.dry_run,
            "transferred": r.transferred.len(), "bytes": r.bytes, "unchanged": r.unchanged,
            "conflicts": r.conflicts, "skipped": r.skipped.len(),
        }),
        Err(e) => {
            json!({ "sync_id": sync_id, "status": "failed", "error": e.public_message(), "code": e.code() })
        }
    }
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
    let Some(_flag) = state.syncs.try_track(project.id) else {
        return Err(ApiError::new(
            actix_web::http::StatusCode::CONFLICT,
            crate::error::ErrorKind::Validation,
            "sync_running",
            "A sync of this project is already running",
        ));
    };
    let sync_id = Uuid::now_v7();
    let options = SyncOptions {
        direction,
        dry_run: body.dry_run.unwrap_or(false),
        overwrite: body.overwrite.unwrap_or(false),
        concurrency: 4,
    };
    let task_state = state.clone();
    actix_web::rt::spawn(async move {
        let state = task_state;
        let feed = FeedProgress {
            hub: state.engine.hub().clone(),
            project_id: project.id,
            sync_id,
            seq: Default::default(),
            moved: Default::default(),
            planned: Default::default(),
            last: Default::default(),
        };
        let outcome = domain::sync::sync(&state.db, &files, &project, &options, &feed).await;
        if let Err(e) =
            domain::sync::record_finished(&state.db, &principal, &project, &outcome).await
        {
            tracing::warn!(error = %e, "cannot record the sync's end");
        }
        feed.publish("sync.finished", finished_payload(sync_id, &outcome));
        state.syncs.done(project.id);
    });
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
        running: state.syncs.is_running(project.id),
    }))
}
