//! Leases a node holds on jobs, taken back when the node stops: at a
//! graceful shutdown (what it still holds goes back to the queue) and at the
//! next start of the same node (what its previous process held is ready
//! again at once, instead of after the lease expires).

use chrono::{DateTime, Utc};
use entities::run_jobs;
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{ColumnTrait, Condition, DatabaseConnection, EntityTrait, QueryFilter};
use uuid::Uuid;

use super::calls::settle_abandoned;
use crate::ServiceError;
use crate::status::JobStatus;

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
        .col_expr(run_jobs::Column::UpdatedAt, Expr::value(Utc::now()))
        .filter(filter)
        .exec_with_returning(&txn)
        .await?;
    let ids: Vec<Uuid> = released.into_iter().map(|j| j.id).collect();
    settle_abandoned(&txn, &ids).await?;
    crate::db::commit(txn).await?;
    Ok(ids)
}

/// Extends a job's lease while its worker is alive; only the node that
/// holds the lease can extend it.
pub async fn renew(
    db: &DatabaseConnection,
    job_id: Uuid,
    node_id: &str,
    until: DateTime<Utc>,
) -> Result<(), ServiceError> {
    let txn = crate::db::begin_write(db).await?;
    run_jobs::Entity::update_many()
        .col_expr(run_jobs::Column::LeaseExpiresAt, Expr::value(until))
        .col_expr(run_jobs::Column::HeartbeatAt, Expr::value(Utc::now()))
        .filter(run_jobs::Column::Id.eq(job_id))
        .filter(run_jobs::Column::LeaseOwner.eq(node_id))
        .exec(&txn)
        .await?;
    crate::db::commit(txn).await?;
    Ok(())
}
