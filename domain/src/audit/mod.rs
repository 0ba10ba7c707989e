//! The append-only audit log. Every mutation calls [`record`] inside its own
//! transaction. Payloads carry identifiers and changed field names, never secrets.

use entities::audit_events;
use sea_orm::{ActiveValue::Set, ConnectionTrait, EntityTrait};
use serde_json::Value;
use uuid::Uuid;

use crate::{Principal, ServiceError, time};

pub struct AuditEntry<'a> {
    pub principal: &'a Principal,
    pub project_id: Option<Uuid>,
    pub event_code: &'static str,
    pub payload: Value,
}

pub async fn record<C: ConnectionTrait>(
    db: &C,
    entry: AuditEntry<'_>,
) -> Result<Uuid, ServiceError> {
    let id = Uuid::now_v7();
    let row = audit_events::ActiveModel {
        id: Set(id),
        project_id: Set(entry.project_id),
        actor_user_id: Set(entry.principal.user_id()),
        actor_token_id: Set(entry.principal.token_id()),
        event_code: Set(entry.event_code.to_string()),
        payload_json: Set(entry.payload),
        request_id: Set(None),
        created_at: Set(time::now()),
    };
    audit_events::Entity::insert(row)
        .exec_without_returning(db)
        .await?;
    Ok(id)
}

/// The audit event of a provider call that cost money (written once the
/// call's own rows have committed).
#[tracing::instrument(level = "debug", skip_all)]
pub async fn record_paid_call(
    db: &sea_orm::DatabaseConnection,
    call: &crate::ports::PaidCallRecord,
) -> Result<(), ServiceError> {
    let txn = crate::db::begin_write(db).await?;
    record(
        &txn,
        AuditEntry {
            principal: &Principal::DevBypass,
            project_id: Some(call.project_id),
            event_code: "provider.paid_call",
            payload: serde_json::json!({
                "run_id": call.run_id, "job_id": call.job_id, "provider_call_id": call.provider_call_id,
                "provider_code": call.provider_code, "idempotency_key": call.idempotency_key,
                "cost_usd": call.cost_usd,
            }),
        },
    )
    .await?;
    crate::db::commit(txn).await?;
    Ok(())
}
