//! CostActor: the one place that says yes or no to spending. Before every
//! paid provider attempt it checks the run's and the project's budget against
//! what is already spent plus what is reserved by calls in flight, and only
//! then marks the call as in flight (its reservation). Its handler is atomic,
//! so two workers cannot both take the last of a budget in this process.
//! The actual cost is recorded with the result; a failed call's reservation
//! is released by marking it failed.

use std::sync::Arc;

use actix::prelude::*;
use chrono::Utc;
use entities::provider_calls;
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{ColumnTrait, Condition, EntityTrait, QueryFilter, QuerySelect};
use uuid::Uuid;

use super::SupervisionRegistry;
use crate::ServiceError;

const NAME: &str = "cost";

pub struct CostActor {
    db: sea_orm::DatabaseConnection,
    registry: Arc<SupervisionRegistry>,
}

impl CostActor {
    pub fn new(db: sea_orm::DatabaseConnection, registry: Arc<SupervisionRegistry>) -> Self {
        Self { db, registry }
    }
}

impl Actor for CostActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(4096);
        self.registry.started(NAME);
    }
}

impl Supervised for CostActor {
    fn restarting(&mut self, _: &mut Context<Self>) {
        self.registry.restarting(NAME, None);
    }
}

/// Reserve `amount` for the next attempt of `call_id` (and mark it in flight).
#[derive(Message, Clone)]
#[rtype(result = "Result<(), ServiceError>")]
pub struct ReserveSpend {
    pub call_id: Uuid,
    pub project_id: Uuid,
    pub run_id: Uuid,
    pub attempt: i32,
    pub amount: f64,
    pub run_budget: Option<f64>,
    pub project_budget: Option<f64>,
}

impl Handler<ReserveSpend> for CostActor {
    type Result = AtomicResponse<Self, Result<(), ServiceError>>;

    fn handle(&mut self, msg: ReserveSpend, _: &mut Context<Self>) -> Self::Result {
        let db = self.db.clone();
        AtomicResponse::new(Box::pin(
            async move { reserve(&db, &msg).await }.into_actor(self),
        ))
    }
}

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
        .filter(provider_calls::Column::Status.eq("succeeded"))
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
        .filter(provider_calls::Column::Status.eq("pending"))
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

async fn reserve(db: &sea_orm::DatabaseConnection, msg: &ReserveSpend) -> Result<(), ServiceError> {
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
        .col_expr(provider_calls::Column::Status, Expr::value("pending"))
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

impl Handler<super::project::Restart> for CostActor {
    type Result = ();

    // Stops the actor so its Supervisor restarts it (admin restart).
    fn handle(&mut self, _: super::project::Restart, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}
