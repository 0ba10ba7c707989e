//! Budgets: whether a paid attempt may be reserved, and its reservation.

use chrono::Utc;
use entities::provider_calls;
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, ConnectionTrait, DbBackend, EntityTrait, QueryFilter, Statement};
use uuid::Uuid;

use crate::ServiceError;
use crate::ports::SpendRequest;
use crate::status::CallStatus;

/// Spent (actual cost of succeeded calls, and what calls whose answer was
/// lost may have cost) plus reserved (calls in flight), other than
/// `exclude`, of the run or the project (`column` = `run_id` or
/// `project_id`).
///
/// One statement, so one snapshot: a call that completes meanwhile is
/// counted once, either as reserved or as spent. (Three separate sums let a
/// completion fall between the "spent" and the "reserved" read and be
/// counted in neither, which let a race spend one call past the budget.)
async fn committed<C: ConnectionTrait>(
    db: &C,
    column: &'static str,
    scope: Uuid,
    exclude: Uuid,
) -> Result<f64, ServiceError> {
    let backend = db.get_database_backend();
    let (exclude_at, scope_at) = match backend {
        DbBackend::Postgres => ("$1", "$2"),
        _ => ("?", "?"),
    };
    let sql = format!(
        "SELECT \
           COALESCE(SUM(CASE WHEN status = '{succeeded}' THEN COALESCE(actual_cost_usd, 0.0) ELSE 0.0 END), 0.0) \
         + COALESCE(SUM(possibly_billed_usd), 0.0) \
         + COALESCE(SUM(CASE WHEN status = '{pending}' AND attempt > 0 AND id <> {exclude_at} \
                        THEN reserved_cost_usd ELSE 0.0 END), 0.0) \
         FROM provider_calls WHERE {column} = {scope_at}",
        succeeded = CallStatus::Succeeded.as_str(),
        pending = CallStatus::Pending.as_str(),
    );
    let row = db
        .query_one_raw(Statement::from_sql_and_values(
            backend,
            sql,
            [exclude.into(), scope.into()],
        ))
        .await?
        .ok_or_else(|| ServiceError::Internal("a sum returned no row".into()))?;
    Ok(row.try_get_by_index::<f64>(0)?)
}

/// Reserves `msg.amount` for the next attempt of the call and marks it in
/// flight, unless the run's or the project's budget would be exceeded by
/// what is spent, possibly billed and reserved. The sums and the reservation
/// are one step for every process on the database: the transaction holds the
/// project's budget lock (PostgreSQL: an advisory lock; SQLite: its single
/// writer), so two attempts — on one node or on several — cannot both take
/// the last of a budget.
#[tracing::instrument(level = "debug", skip_all, fields(call_id = %msg.call_id, attempt = msg.attempt, amount = msg.amount))]
pub async fn reserve(
    db: &sea_orm::DatabaseConnection,
    msg: &SpendRequest,
) -> Result<(), ServiceError> {
    let checks = [
        (
            "budget_exceeded",
            "run",
            msg.run_budget,
            "run_id",
            msg.run_id,
        ),
        (
            "project_budget_exceeded",
            "project",
            msg.project_budget,
            "project_id",
            Some(msg.project_id),
        ),
    ];
    let txn = crate::db::begin_write(db).await?;
    super::lease::hold(&txn, msg.fence.as_ref()).await?;
    if msg.amount > 0.0 && checks.iter().any(|c| c.2.is_some() && c.4.is_some()) {
        crate::db::serialize(&txn, &format!("budget:{}", msg.project_id)).await?;
        for (code, what, budget, column, scope) in checks {
            if let (Some(budget), Some(scope)) = (budget, scope) {
                let used = committed(&txn, column, scope, msg.call_id).await?;
                if used + msg.amount > budget + 1e-9 {
                    crate::db::rollback(txn).await?;
                    return Err(ServiceError::Policy {
                        code,
                        message: format!(
                            "The {what} budget of {budget:.4} USD would be exceeded ({used:.4} USD spent or reserved, {:.4} USD needed)",
                            msg.amount
                        ),
                    });
                }
            }
        }
    }
    provider_calls::Entity::update_many()
        .col_expr(
            provider_calls::Column::Status,
            Expr::value(CallStatus::Pending),
        )
        .col_expr(provider_calls::Column::Attempt, Expr::value(msg.attempt))
        .col_expr(
            provider_calls::Column::ReservedCostUsd,
            Expr::value(msg.amount),
        )
        .col_expr(provider_calls::Column::StartedAt, Expr::value(Utc::now()))
        .col_expr(
            provider_calls::Column::SentAt,
            Expr::value(Option::<chrono::DateTime<Utc>>::None),
        )
        .col_expr(provider_calls::Column::UpdatedAt, Expr::value(Utc::now()))
        .filter(provider_calls::Column::Id.eq(msg.call_id))
        .exec(&txn)
        .await?;
    crate::db::commit(txn).await?;
    Ok(())
}
