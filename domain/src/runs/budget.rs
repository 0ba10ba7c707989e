//! Budgets: whether a paid attempt may be reserved, and its reservation.

use chrono::Utc;
use entities::provider_calls;
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{ColumnTrait, Condition, EntityTrait, QueryFilter, QuerySelect};
use uuid::Uuid;

use crate::ServiceError;
use crate::ports::SpendRequest;
use crate::status::CallStatus;

/// Spent (actual cost of succeeded calls, and what calls whose answer was
/// lost may have cost) plus reserved (calls in flight), other than
/// `exclude`, matching `scope`.
async fn committed(
    db: &sea_orm::DatabaseConnection,
    scope: Condition,
    exclude: Uuid,
) -> Result<f64, ServiceError> {
    let spent: Option<f64> = provider_calls::Entity::find()
        .select_only()
        .column_as(Expr::col(provider_calls::Column::ActualCostUsd).sum(), "s")
        .filter(scope.clone())
        .filter(provider_calls::Column::Status.eq(CallStatus::Succeeded))
        .into_tuple()
        .one(db)
        .await?
        .flatten();
    let lost: Option<f64> = provider_calls::Entity::find()
        .select_only()
        .column_as(
            Expr::col(provider_calls::Column::PossiblyBilledUsd).sum(),
            "p",
        )
        .filter(scope.clone())
        .into_tuple()
        .one(db)
        .await?
        .flatten();
    let reserved: Option<f64> = provider_calls::Entity::find()
        .select_only()
        .column_as(
            Expr::col(provider_calls::Column::ReservedCostUsd).sum(),
            "r",
        )
        .filter(scope)
        .filter(provider_calls::Column::Status.eq(CallStatus::Pending))
        // A call planned but not yet given its reservation (attempt 0)
        // holds nothing: counting it refused spend that fitted the budget.
        .filter(provider_calls::Column::Attempt.gt(0))
        .filter(provider_calls::Column::Id.ne(exclude))
        .into_tuple()
        .one(db)
        .await?
        .flatten();
    Ok(spent.unwrap_or(0.0) + lost.unwrap_or(0.0) + reserved.unwrap_or(0.0))
}

/// Reserves `msg.amount` for the next attempt of the call and marks it in
/// flight, unless the run's or the project's budget would be exceeded by
/// what is spent, possibly billed and reserved. Callers serialise these
/// (the engine's CostActor), so two attempts cannot both take the last of
/// a budget.
#[tracing::instrument(level = "debug", skip_all, fields(call_id = %msg.call_id, attempt = msg.attempt, amount = msg.amount))]
pub async fn reserve(
    db: &sea_orm::DatabaseConnection,
    msg: &SpendRequest,
) -> Result<(), ServiceError> {
    if msg.amount > 0.0 {
        let checks = [
            (
                "budget_exceeded",
                "run",
                msg.run_budget,
                Condition::all().add(provider_calls::Column::RunId.eq(msg.run_id)),
            ),
            (
                "project_budget_exceeded",
                "project",
                msg.project_budget,
                Condition::all().add(provider_calls::Column::ProjectId.eq(msg.project_id)),
            ),
        ];
        for (code, what, budget, scope) in checks {
            if let Some(budget) = budget {
                let used = committed(db, scope, msg.call_id).await?;
                if used + msg.amount > budget + 1e-9 {
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
    let txn = crate::db::begin_write(db).await?;
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
