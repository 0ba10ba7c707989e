//! Leases a node holds on jobs, taken back when the node stops: at a
//! graceful shutdown (what it still holds goes back to the queue) and at the
//! next start of the same node (what its previous process held is ready
//! again at once, instead of after the lease expires).
//!
//! Fencing: every claim and every reclaim raises the job's `lease_epoch`.
//! A worker carries the epoch it claimed ([`Fence`]) and each of its writes
//! first checks it in the same transaction ([`hold`]) — a guarded update of
//! the job row, so on PostgreSQL the row stays locked until the write
//! commits and a reclaim waits for it (or in the same statement, with the
//! row share-locked: the row writer's call records, `writer::fenced_calls`). A node that wakes after its lease was
//! taken (a long pause, a stalled network) has its late writes refused.

use chrono::{DateTime, Utc};
use entities::run_jobs;
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{ColumnTrait, Condition, DatabaseConnection, EntityTrait, QueryFilter};
use uuid::Uuid;

use super::calls::settle_abandoned;
use crate::ServiceError;
use crate::status::JobStatus;

/// The lease a worker holds: its job and the epoch it claimed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Fence {
    pub job_id: Uuid,
    pub epoch: i64,
}

impl Fence {
    /// The lease of a job row as it was claimed.
    pub fn of(job: &run_jobs::Model) -> Self {
        Self {
            job_id: job.id,
            epoch: job.lease_epoch,
        }
    }
}

/// The error a write gets when its lease was taken by another claim.
pub fn lost(fence: &Fence) -> ServiceError {
    ServiceError::Conflict {
        code: "lease_lost",
        message: format!(
            "job {} was claimed again after epoch {}: this worker's late write is refused",
            fence.job_id, fence.epoch
        ),
    }
}

/// Whether `error` is a write refused by [`hold`].
pub fn is_lost(error: &ServiceError) -> bool {
    matches!(
        error,
        ServiceError::Conflict {
            code: "lease_lost",
            ..
        }
    )
}

/// Checks, inside the caller's transaction, that `fence` still holds the
/// job, and keeps the job row locked until that transaction ends (a no-op
/// for a write outside any job: `None`). A refused write is logged here.
pub async fn hold<C: sea_orm::ConnectionTrait>(
    db: &C,
    fence: Option<&Fence>,
) -> Result<(), ServiceError> {
    match fence {
        Some(fence) if !holding(db, &[*fence]).await?.contains(fence) => Err(lost(fence)),
        _ => Ok(()),
    }
}

/// Of `fences`, those that still hold their job, checked and locked in one
/// statement inside the caller's transaction (the row writer's batch).
pub async fn holding<C: sea_orm::ConnectionTrait>(
    db: &C,
    fences: &[Fence],
) -> Result<std::collections::HashSet<Fence>, ServiceError> {
    if fences.is_empty() {
        return Ok(Default::default());
    }
    let mut any = Condition::any();
    let distinct: std::collections::HashSet<&Fence> = fences.iter().collect();
    for f in distinct {
        any = any.add(
            Condition::all()
                .add(run_jobs::Column::Id.eq(f.job_id))
                .add(run_jobs::Column::LeaseEpoch.eq(f.epoch)),
        );
    }
    let held: std::collections::HashSet<Fence> = run_jobs::Entity::update_many()
        .col_expr(
            run_jobs::Column::LeaseEpoch,
            Expr::col(run_jobs::Column::LeaseEpoch),
        )
        .filter(any)
        .exec_with_returning(db)
        .await?
        .iter()
        .map(Fence::of)
        .collect();
    for f in fences.iter().filter(|f| !held.contains(f)) {
        tracing::warn!(job_id = %f.job_id, epoch = f.epoch, "lease lost: a late write was refused");
    }
    Ok(held)
}

/// Jobs still running under `node_id` go back to `pending` (their attempt
/// not used up) and their calls are settled. `before`: only leases last
/// renewed before this instant (a starting node's previous process), or all.
pub async fn release_node_leases(
    db: &DatabaseConnection,
    node_id: &str,
    before: Option<DateTime<Utc>>,
) -> Result<Vec<Uuid>, ServiceError> {
    let mut filter = Condition::all()
        .add(run_jobs::Column::Status.eq(JobStatus::Running))
        .add(run_jobs::Column::LeaseOwner.eq(node_id));
    if let Some(before) = before {
        filter = filter.add(
            Condition::any()
                .add(run_jobs::Column::HeartbeatAt.is_null())
                .add(run_jobs::Column::HeartbeatAt.lt(before)),
        );
    }
    let txn = crate::db::begin_write(db).await?;
    let released = run_jobs::Entity::update_many()
        .col_expr(run_jobs::Column::Status, Expr::value(JobStatus::Pending))
        .col_expr(
            run_jobs::Column::LeaseOwner,
            Expr::value(Option::<String>::None),
        )
        .col_expr(
            run_jobs::Column::LeaseExpiresAt,
            Expr::value(Option::<DateTime<Utc>>::None),
        )
        .col_expr(
            run_jobs::Column::Attempt,
            Expr::col(run_jobs::Column::Attempt).sub(1),
        )
        .col_expr(
            run_jobs::Column::LeaseEpoch,
            Expr::col(run_jobs::Column::LeaseEpoch).add(1),
        )
        .col_expr(run_jobs::Column::UpdatedAt, Expr::value(Utc::now()))
        .filter(filter)
        .exec_with_returning(&txn)
        .await?;
    let ids: Vec<Uuid> = released.into_iter().map(|j| j.id).collect();
    settle_abandoned(&txn, &ids).await?;
    crate::db::commit(txn).await?;
    Ok(ids)
}

/// Extends a job's lease while its worker is alive; only the worker that
/// holds the lease (its node, its epoch) can extend it. `false`: the lease
/// is gone (reclaimed, or the job ended).
pub async fn renew(
    db: &DatabaseConnection,
    fence: &Fence,
    node_id: &str,
    until: DateTime<Utc>,
) -> Result<bool, ServiceError> {
    let txn = crate::db::begin_write(db).await?;
    let renewed = run_jobs::Entity::update_many()
        .col_expr(run_jobs::Column::LeaseExpiresAt, Expr::value(until))
        .col_expr(run_jobs::Column::HeartbeatAt, Expr::value(Utc::now()))
        .filter(run_jobs::Column::Id.eq(fence.job_id))
        .filter(run_jobs::Column::LeaseEpoch.eq(fence.epoch))
        .filter(run_jobs::Column::LeaseOwner.eq(node_id))
        .filter(run_jobs::Column::Status.eq(JobStatus::Running))
        .exec(&txn)
        .await?
        .rows_affected;
    crate::db::commit(txn).await?;
    Ok(renewed > 0)
}
