//! A job's outcome applied to its chain: the child unblocked with the
//! winner (done at the verdict's commit), the rest of the chain skipped after
//! a failure or cancel, a retry scheduled after an unexpected failure while
//! attempts remain, a job interrupted by shutdown put back without using an
//! attempt.

use chrono::Utc;
use entities::run_jobs;
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use serde_json::json;
use uuid::Uuid;

use super::deps::EngineDeps;
use super::events;
use super::lease::Fence;
use super::pipeline::JobOutcome;
use crate::ServiceError;
use crate::status::JobStatus;

/// Applies a job's outcome to the chain: unblocks its child with the winner
/// as input, skips the rest of the chain after a failure, or schedules a
/// retry after an unexpected failure while attempts remain.
#[tracing::instrument(level = "debug", skip(deps, outcome))]
pub async fn settle_job(
    deps: &EngineDeps,
    run_id: Uuid,
    project_id: Uuid,
    fence: Fence,
    outcome: Result<JobOutcome, String>,
) -> Result<(), ServiceError> {
    let job_id = fence.job_id;
    // A winner was recorded with the job's verdict and already unblocked the
    // next stage (runs::writer): nothing left to write.
    if matches!(outcome, Ok(JobOutcome::Done { .. })) {
        return Ok(());
    }
    let now = Utc::now();
    let txn = crate::db::begin_write(&deps.db).await?;
    // Claimed again since (this node lost its lease while the job ran): the
    // job is another worker's now; this outcome is not applied.
    match super::lease::hold(&txn, Some(&fence)).await {
        Ok(()) => {}
        Err(e) if super::lease::is_lost(&e) => {
            crate::db::rollback(txn).await?;
            return Ok(());
        }
        Err(e) => return Err(e),
    }
    let job = run_jobs::Entity::find_by_id(job_id).one(&txn).await?;
    let Some(job) = job else { return Ok(()) };
    let mut published = Vec::new();
    // A job canceled while it ran keeps its cancel; its chain stops there.
    let outcome = if job.status == JobStatus::Canceled {
        Ok(JobOutcome::Canceled)
    } else {
        outcome
    };
    match outcome {
        Ok(JobOutcome::Done { .. }) => {}
        Ok(JobOutcome::Interrupted) => {
            // Back to the queue without using up an attempt: it stopped
            // because the service is shutting down, not because it failed.
            run_jobs::Entity::update_many()
                .col_expr(run_jobs::Column::Status, Expr::value(JobStatus::Pending))
                .col_expr(
                    run_jobs::Column::LeaseOwner,
                    Expr::value(Option::<String>::None),
                )
                .col_expr(
                    run_jobs::Column::Attempt,
                    Expr::col(run_jobs::Column::Attempt).sub(1),
                )
                .col_expr(run_jobs::Column::UpdatedAt, Expr::value(now))
                .filter(run_jobs::Column::Id.eq(job_id))
                .filter(run_jobs::Column::Status.eq(JobStatus::Running))
                .exec(&txn)
                .await?;
        }
        Ok(JobOutcome::Failed { .. }) => skip_descendants(&txn, job_id, now).await?,
        Ok(JobOutcome::Canceled) => {
            skip_descendants(&txn, job_id, now).await?;
            run_jobs::Entity::update_many()
                .col_expr(run_jobs::Column::Status, Expr::value(JobStatus::Canceled))
                .filter(run_jobs::Column::Id.eq(job_id))
                .filter(run_jobs::Column::Status.eq(JobStatus::Running))
                .exec(&txn)
                .await?;
        }
        Err(error) => {
            // Its worker is gone: a call it sent and has no outcome for was
            // possibly billed and is not sent again by the retry (unless the
            // provider dedupes); one it had not sent is released.
            crate::runs::calls::settle_abandoned(&txn, &[job_id]).await?;
            let retry = job.attempt < job.max_attempts;
            run_jobs::Entity::update_many()
                .col_expr(
                    run_jobs::Column::Status,
                    Expr::value(if retry {
                        JobStatus::Pending
                    } else {
                        JobStatus::Failed
                    }),
                )
                .col_expr(run_jobs::Column::LastError, Expr::value(error.clone()))
                .col_expr(
                    run_jobs::Column::LeaseOwner,
                    Expr::value(Option::<String>::None),
                )
                .col_expr(run_jobs::Column::UpdatedAt, Expr::value(now))
                .filter(run_jobs::Column::Id.eq(job_id))
                .filter(run_jobs::Column::Status.eq(JobStatus::Running))
                .exec(&txn)
                .await?;
            if !retry {
                skip_descendants(&txn, job_id, now).await?;
            }
            published.push(
                events::append(
                    &txn,
                    run_id,
                    project_id,
                    if retry {
                        "job.retry_scheduled"
                    } else {
                        "job.failed"
                    },
                    Some(job_id),
                    json!({ "job_key": job.job_key, "attempt": job.attempt, "error": error }),
                )
                .await?,
            );
        }
    }
    crate::db::commit(txn).await?;
    for e in published {
        deps.hub.publish(e);
    }
    Ok(())
}

async fn skip_descendants<C: sea_orm::ConnectionTrait>(
    db: &C,
    job_id: Uuid,
    now: chrono::DateTime<Utc>,
) -> Result<(), ServiceError> {
    let mut frontier = vec![job_id];
    while let Some(parent) = frontier.pop() {
        let children: Vec<Uuid> = run_jobs::Entity::find()
            .filter(run_jobs::Column::ParentJobId.eq(parent))
            .all(db)
            .await?
            .into_iter()
            .map(|j| j.id)
            .collect();
        if children.is_empty() {
            continue;
        }
        run_jobs::Entity::update_many()
            .col_expr(run_jobs::Column::Status, Expr::value(JobStatus::Skipped))
            .col_expr(run_jobs::Column::UpdatedAt, Expr::value(now))
            .filter(run_jobs::Column::Id.is_in(children.clone()))
            .filter(run_jobs::Column::Status.eq(JobStatus::Blocked))
            .exec(db)
            .await?;
        frontier.extend(children);
    }
    Ok(())
}
