//! Targeted control of runs: cancel one job, retry a run's failed jobs, and
//! pause or resume a project's queue (persisted, so a restart keeps it).

use chrono::Utc;
use entities::{projects, run_jobs, runs};
use sea_orm::sea_query::Expr;
use sea_orm::{ActiveModelTrait, ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter};
use serde_json::json;
use uuid::Uuid;

use super::events;
use crate::audit::{self, AuditEntry};
use crate::ports::RunEngine;
use crate::status::{JobStatus, RunStatus};
use crate::{Principal, ServiceError};

pub const QUEUE_PAUSED_KEY: &str = "queue_paused";

/// Cancels one job (and the rest of its chain). A job that already finished
/// is returned unchanged; a running job stops before its next provider call.
#[tracing::instrument(skip_all, fields(run_id = %run.id, job_id = raw_job_id))]
pub async fn cancel_job(
    engine: RunEngine<'_>,
    principal: &Principal,
    run: &runs::Model,
    raw_job_id: &str,
) -> Result<run_jobs::Model, ServiceError> {
    let db = &engine.deps.db;
    let not_found = || ServiceError::not_found("Job not found");
    let job_id = Uuid::parse_str(raw_job_id.trim()).map_err(|_| not_found())?;
    let txn = crate::db::begin_write(db).await?;
    let job = run_jobs::Entity::find_by_id(job_id)
        .filter(run_jobs::Column::RunId.eq(run.id))
        .one(&txn)
        .await?
        .ok_or_else(not_found)?;
    let changed = run_jobs::Entity::update_many()
        .col_expr(run_jobs::Column::Status, Expr::value(JobStatus::Canceled))
        .col_expr(run_jobs::Column::UpdatedAt, Expr::value(Utc::now()))
        .filter(run_jobs::Column::Id.eq(job_id))
        .filter(run_jobs::Column::Status.is_in([
            JobStatus::Pending,
            JobStatus::Blocked,
            JobStatus::Running,
        ]))
        .exec(&txn)
        .await?
        .rows_affected;
    let mut event = None;
    if changed > 0 {
        // Later stages of this scene can no longer get their input.
        let mut frontier = vec![job_id];
        while let Some(parent) = frontier.pop() {
            let children = run_jobs::Entity::find()
                .filter(run_jobs::Column::ParentJobId.eq(parent))
                .all(&txn)
                .await?;
            for c in &children {
                run_jobs::Entity::update_many()
                    .col_expr(run_jobs::Column::Status, Expr::value(JobStatus::Skipped))
                    .filter(run_jobs::Column::Id.eq(c.id))
                    .filter(run_jobs::Column::Status.eq(JobStatus::Blocked))
                    .exec(&txn)
                    .await?;
            }
            frontier.extend(children.iter().map(|c| c.id));
        }
        event = Some(
            events::append(
                &txn,
                run.id,
                run.project_id,
                "job.canceled",
                Some(job_id),
                json!({ "job_key": job.job_key }),
            )
            .await?,
        );
        audit::record(
            &txn,
            AuditEntry {
                principal,
                project_id: Some(run.project_id),
                event_code: "job.canceled",
                payload: json!({ "run_id": run.id, "job_id": job_id }),
            },
        )
        .await?;
    }
    let job = run_jobs::Entity::find_by_id(job_id)
        .one(&txn)
        .await?
        .ok_or_else(not_found)?;
    crate::db::commit(txn).await?;
    if let Some(e) = event {
        engine.deps.hub.publish(e);
    }
    Ok(job)
}

/// Gives every failed job of a finished run a new attempt: a new job row
/// linked to the failed one (`retry_of_job_id`), with the skipped rest of its
/// chain re-attached; then the run is queued again. Stored provider results
/// are never paid for again.
#[tracing::instrument(skip_all, fields(run_id = %run.id))]
pub async fn retry_failed(
    engine: RunEngine<'_>,
    principal: &Principal,
    run: &runs::Model,
) -> Result<(runs::Model, Vec<run_jobs::Model>, Uuid), ServiceError> {
    let db = &engine.deps.db;
    if !matches!(
        RunStatus::parse(&run.status),
        Some(RunStatus::Failed | RunStatus::Partial | RunStatus::Canceled)
    ) {
        return Err(ServiceError::Conflict {
            code: "run_not_retryable",
            message: format!(
                "Only failed, partial or canceled runs can be retried (this run is {})",
                run.status
            ),
        });
    }
    let now = Utc::now();
    let txn = crate::db::begin_write(db).await?;
    let jobs = super::store::jobs_of(&txn, run.id).await?;
    let retried_ids: Vec<Uuid> = jobs.iter().filter_map(|j| j.retry_of_job_id).collect();
    let failed: Vec<&run_jobs::Model> = jobs
        .iter()
        .filter(|j| {
            matches!(
                JobStatus::parse(&j.status),
                Some(JobStatus::Failed | JobStatus::Canceled)
            ) && !retried_ids.contains(&j.id)
        })
        .filter(|j| {
            j.parent_job_id.is_none_or(|p| {
                jobs.iter()
                    .any(|x| x.id == p && x.status == JobStatus::Done)
            })
        })
        .collect();
    if failed.is_empty() {
        return Err(ServiceError::Conflict {
            code: "nothing_to_retry",
            message: "This run has no failed job to retry".into(),
        });
    }
    let mut created = Vec::new();
    for old in failed {
        let attempt_no = jobs
            .iter()
            .filter(|j| j.job_key.starts_with(&old.job_key))
            .count();
        let new = run_jobs::Model {
            id: Uuid::now_v7(),
            job_key: format!("{}_r{attempt_no}", old.job_key),
            // Ready when it has its input, or needs none (a prompt scene's first stage).
            status: if old.input_asset_id.is_some()
                || old.meta_json.get("prompt_only") == Some(&serde_json::Value::Bool(true))
            {
                JobStatus::Pending
            } else {
                JobStatus::Blocked
            }
            .into(),
            retry_of_job_id: Some(old.id),
            selected_candidate_index: None,
            final_asset_id: None,
            attempt: 0,
            lease_owner: None,
            lease_expires_at: None,
            heartbeat_at: None,
            lease_epoch: 0,
            next_attempt_at: None,
            last_error: None,
            started_at: None,
            finished_at: None,
            created_at: now,
            updated_at: now,
            ..old.clone()
        };
        run_jobs::Entity::insert(run_jobs::ActiveModel::from(new.clone()))
            .exec_without_returning(&txn)
            .await?;
        // Its chain continues from the new attempt.
        run_jobs::Entity::update_many()
            .col_expr(run_jobs::Column::ParentJobId, Expr::value(new.id))
            .col_expr(run_jobs::Column::Status, Expr::value(JobStatus::Blocked))
            .filter(run_jobs::Column::ParentJobId.eq(old.id))
            .filter(run_jobs::Column::Status.is_in([JobStatus::Skipped, JobStatus::Canceled]))
            .exec(&txn)
            .await?;
        let mut frontier: Vec<Uuid> = jobs
            .iter()
            .filter(|j| j.parent_job_id == Some(old.id))
            .map(|j| j.id)
            .collect();
        while let Some(id) = frontier.pop() {
            run_jobs::Entity::update_many()
                .col_expr(run_jobs::Column::Status, Expr::value(JobStatus::Blocked))
                .filter(run_jobs::Column::ParentJobId.eq(id))
                .filter(run_jobs::Column::Status.is_in([JobStatus::Skipped, JobStatus::Canceled]))
                .exec(&txn)
                .await?;
            frontier.extend(
                jobs.iter()
                    .filter(|j| j.parent_job_id == Some(id))
                    .map(|j| j.id),
            );
        }
        created.push(new);
    }
    runs::Entity::update_many()
        .col_expr(runs::Column::Status, Expr::value(RunStatus::Queued))
        .col_expr(
            runs::Column::FinishedAt,
            Expr::value(Option::<chrono::DateTime<Utc>>::None),
        )
        .col_expr(runs::Column::UpdatedAt, Expr::value(now))
        .filter(runs::Column::Id.eq(run.id))
        .exec(&txn)
        .await?;
    let event = events::append(&txn, run.id, run.project_id, "run.retry_requested", None, json!({
        "jobs": created.iter().map(|j| json!({ "job_id": j.id, "retry_of_job_id": j.retry_of_job_id })).collect::<Vec<_>>(),
    }))
    .await?;
    let audit_id = audit::record(
        &txn,
        AuditEntry {
            principal,
            project_id: Some(run.project_id),
            event_code: "run.retried",
            payload: json!({ "run_id": run.id, "jobs": created.len() }),
        },
    )
    .await?;
    crate::db::commit(txn).await?;
    engine.deps.hub.publish(event);
    engine.submit(run.id, run.project_id).await?;
    let run = runs::Entity::find_by_id(run.id)
        .one(db)
        .await?
        .ok_or_else(|| ServiceError::not_found("Run not found"))?;
    Ok((run, created, audit_id))
}

pub fn is_paused(project: &projects::Model) -> bool {
    paused_in(&project.settings_json)
}

/// Whether a project's settings say its queue is paused.
pub fn paused_in(settings: &serde_json::Value) -> bool {
    settings
        .get(QUEUE_PAUSED_KEY)
        .and_then(|v| v.as_bool())
        .unwrap_or(false)
}

/// Pauses or resumes a project's queue: running runs continue; queued runs
/// wait until resumed. Persisted in the project's settings.
#[tracing::instrument(skip_all, fields(project = %project.slug, paused))]
pub async fn set_queue_paused(
    engine: RunEngine<'_>,
    principal: &Principal,
    project: &projects::Model,
    paused: bool,
) -> Result<Uuid, ServiceError> {
    let txn = crate::db::begin_write(&engine.deps.db).await?;
    let mut settings = project.settings_json.clone();
    if !settings.is_object() {
        settings = json!({});
    }
    settings[QUEUE_PAUSED_KEY] = json!(paused);
    let mut active: projects::ActiveModel = project.clone().into();
    active.settings_json = Set(settings);
    active.updated_at = Set(crate::time::now());
    active.update(&txn).await?;
    let audit_id = audit::record(
        &txn,
        AuditEntry {
            principal,
            project_id: Some(project.id),
            event_code: if paused {
                "project.queue_paused"
            } else {
                "project.queue_resumed"
            },
            payload: json!({}),
        },
    )
    .await?;
    crate::db::commit(txn).await?;
    engine.set_paused(project.id, paused).await?;
    Ok(audit_id)
}
