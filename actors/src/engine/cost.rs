//! CostActor: the one place that says yes or no to spending. Before every
//! paid provider attempt it checks the run's and the project's budget against
//! what is already spent plus what is reserved by calls in flight, and only
//! then marks the call as in flight (its reservation). The check and the
//! reservation are one step in the database (`budget::reserve` holds the
//! project's budget lock), so workers of this node and of other nodes on
//! the same database cannot both take the last of a budget.
//! The actual cost is recorded with the result; a failed call's reservation
//! is released by marking it failed.

use std::sync::Arc;

use actix::prelude::*;
use domain::ServiceError;
use domain::ports::{SpendGate, SpendRequest};
use domain::runs::budget;
use tracing::Instrument;

use super::{Counted, SupervisionRegistry};

const NAME: &str = "cost";

pub struct CostActor {
    db: domain::DatabaseConnection,
    registry: Arc<SupervisionRegistry>,
}

impl CostActor {
    pub fn new(db: domain::DatabaseConnection, registry: Arc<SupervisionRegistry>) -> Self {
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

/// Reserve spend for the next attempt of a call (and mark it in flight).
#[derive(Message, Clone)]
#[rtype(result = "Result<(), ServiceError>")]
pub struct ReserveSpend(pub SpendRequest, pub tracing::Span);

impl Handler<ReserveSpend> for CostActor {
    type Result = AtomicResponse<Self, Result<(), ServiceError>>;

    fn handle(&mut self, msg: ReserveSpend, _: &mut Context<Self>) -> Self::Result {
        let db = self.db.clone();
        AtomicResponse::new(Box::pin(
            async move { budget::reserve(&db, &msg.0).await }
                .instrument(msg.1)
                .into_actor(self),
        ))
    }
}

/// The domain's spend port, answered by the CostActor through its counted inbox.
#[async_trait::async_trait]
impl SpendGate for Counted<ReserveSpend> {
    async fn reserve(&self, request: SpendRequest) -> Result<(), ServiceError> {
        self.send(ReserveSpend(request, tracing::Span::current()))
            .await
            .map_err(super::unavailable)?
    }
}

impl Handler<super::project::Restart> for CostActor {
    type Result = ();

    // Stops the actor so its Supervisor restarts it (admin restart).
    fn handle(&mut self, _: super::project::Restart, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}
