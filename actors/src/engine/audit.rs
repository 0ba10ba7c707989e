//! AuditActor: appends an audit event for every paid provider call. Workers
//! wait for its acknowledgement, so a paid call is audited before its
//! candidate is recorded, and a full mailbox slows senders instead of growing
//! memory. Mutations made through the services write their audit rows inside
//! their own transactions instead.

use std::sync::Arc;

use actix::prelude::*;
use domain::audit;
use domain::ports::{PaidCallLog, PaidCallRecord};
use tracing::Instrument;

use super::{Counted, SupervisionRegistry};

const NAME: &str = "audit";

pub struct AuditActor {
    db: domain::DatabaseConnection,
    registry: Arc<SupervisionRegistry>,
}

impl AuditActor {
    pub fn new(db: domain::DatabaseConnection, registry: Arc<SupervisionRegistry>) -> Self {
        Self { db, registry }
    }
}

impl Actor for AuditActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(4096);
        self.registry.started(NAME);
    }
}

impl Supervised for AuditActor {
    fn restarting(&mut self, _: &mut Context<Self>) {
        self.registry.restarting(NAME, None);
    }
}

/// A provider call that cost money, for the audit log.
#[derive(Message, Clone, Debug)]
#[rtype(result = "()")]
pub struct PaidCall(pub PaidCallRecord, pub tracing::Span);

impl Handler<PaidCall> for AuditActor {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, msg: PaidCall, _: &mut Context<Self>) -> Self::Result {
        let db = self.db.clone();
        let registry = self.registry.clone();
        Box::pin(
            async move {
                if let Err(e) = audit::record_paid_call(&db, &msg.0).await {
                    tracing::error!(error = %e, "cannot record the audit event of a paid call");
                    registry.record_error(NAME, e.to_string());
                }
            }
            .instrument(msg.1),
        )
    }
}

/// The domain's paid-call port, answered by the AuditActor.
#[async_trait::async_trait]
impl PaidCallLog for Counted<PaidCall> {
    async fn record(&self, call: PaidCallRecord) {
        if let Err(e) = self.send(PaidCall(call, tracing::Span::current())).await {
            tracing::error!(error = %e, "audit actor unavailable");
        }
    }
}

impl Handler<super::project::Restart> for AuditActor {
    type Result = ();

    // Stops the actor so its Supervisor restarts it (admin restart).
    fn handle(&mut self, _: super::project::Restart, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}
