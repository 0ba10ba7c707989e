//! AuditActor: appends an audit event for every paid provider call. Workers
//! wait for its acknowledgement, so a paid call is audited before its
//! candidate is recorded, and a full mailbox slows senders instead of growing
//! memory. Mutations made through the services write their audit rows inside
//! their own transactions instead.

use std::sync::Arc;

use actix::prelude::*;
use serde_json::json;
use uuid::Uuid;

use super::SupervisionRegistry;
use crate::Principal;
use crate::audit::{self, AuditEntry};

const NAME: &str = "audit";

pub struct AuditActor {
    db: sea_orm::DatabaseConnection,
    registry: Arc<SupervisionRegistry>,
}

impl AuditActor {
    pub fn new(db: sea_orm::DatabaseConnection, registry: Arc<SupervisionRegistry>) -> Self {
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
pub struct PaidCall {
    pub project_id: Uuid,
    pub run_id: Uuid,
    pub job_id: Uuid,
    pub provider_call_id: Uuid,
    pub provider_code: String,
    pub idempotency_key: String,
    pub cost_usd: f64,
}

impl Handler<PaidCall> for AuditActor {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, msg: PaidCall, _: &mut Context<Self>) -> Self::Result {
        let db = self.db.clone();
        let registry = self.registry.clone();
        Box::pin(async move {
            let result = async {
                let txn = crate::db::begin_write(&db).await?;
                audit::record(
                    &txn,
                    AuditEntry {
                        principal: &Principal::DevBypass,
                        project_id: Some(msg.project_id),
                        event_code: "provider.paid_call",
                        payload: json!({
                            "run_id": msg.run_id, "job_id": msg.job_id, "provider_call_id": msg.provider_call_id,
                            "provider_code": msg.provider_code, "idempotency_key": msg.idempotency_key,
                            "cost_usd": msg.cost_usd,
                        }),
                    },
                )
                .await?;
                crate::db::commit(txn).await?;
                Ok::<_, crate::ServiceError>(())
            }
            .await;
            if let Err(e) = result {
                tracing::error!(error = %e, "cannot record the audit event of a paid call");
                registry.record_error(NAME, e.to_string());
            }
        })
    }
}

impl Handler<super::project::Restart> for AuditActor {
    type Result = ();

    // Stops the actor so its Supervisor restarts it (admin restart).
    fn handle(&mut self, _: super::project::Restart, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}
