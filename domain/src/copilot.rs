//! Copilot records: chat sessions with their messages, and agent
//! instructions with a guarded state machine and an event for every
//! transition.
//!
//! Instruction states: `pending` (created) -> `confirmed` (queued for an
//! agent) -> `running` -> `done` | `failed`; `pending` -> `canceled`. Every
//! transition is a conditional update on the expected state, so a late
//! completion never overwrites a cancel and a confirm never requeues a
//! finished instruction.

use entities::{agent_instruction_events, agent_instructions, chat_messages, chat_sessions};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, QueryFilter,
    QueryOrder,
};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::audit::{self, AuditEntry};
use crate::error::{optional_text, required_text};
use crate::status::InstructionStatus;
use crate::{Principal, ServiceError, time};

const TITLE_MAX: usize = 200;
const CONTENT_MAX: usize = 256 * 1024;
pub const ROLES: &[&str] = &["user", "assistant", "system", "tool"];

fn ts(t: &chrono::DateTime<chrono::Utc>) -> String {
    time::format(t)
}

fn opt_ts(t: &Option<chrono::DateTime<chrono::Utc>>) -> String {
    t.as_ref().map(ts).unwrap_or_default()
}

// ---- chat ----------------------------------------------------------------

pub async fn sessions<C: ConnectionTrait>(
    db: &C,
    project_id: Uuid,
) -> Result<Vec<chat_sessions::Model>, ServiceError> {
    Ok(chat_sessions::Entity::find()
        .filter(chat_sessions::Column::ProjectId.eq(project_id))
        .order_by_desc(chat_sessions::Column::UpdatedAt)
        .order_by_desc(chat_sessions::Column::Id)
        .all(db)
        .await?)
}

pub async fn session<C: ConnectionTrait>(
    db: &C,
    project_id: Uuid,
    raw_id: &str,
) -> Result<chat_sessions::Model, ServiceError> {
    crate::lookup::owned::<chat_sessions::Entity, _>(
        db,
        (chat_sessions::Column::Id, chat_sessions::Column::ProjectId),
        project_id,
        raw_id,
        "Chat session not found",
    )
    .await
}

pub async fn create_session(
    db: &DatabaseConnection,
    project_id: Uuid,
    title: Option<&str>,
) -> Result<chat_sessions::Model, ServiceError> {
    let title = optional_text("title", title, TITLE_MAX)?.unwrap_or_else(|| "New Session".into());
    let now = time::now();
    let row = chat_sessions::Model {
        id: Uuid::now_v7(),
        project_id,
        title,
        status: "active".into(),
        created_at: now,
        updated_at: now,
    };
    let txn = crate::db::begin_write(db).await?;
    chat_sessions::ActiveModel::from(row.clone())
        .insert(&txn)
        .await?;
    crate::db::commit(txn).await?;
    Ok(row)
}

pub async fn messages<C: ConnectionTrait>(
    db: &C,
    session_id: Uuid,
) -> Result<Vec<chat_messages::Model>, ServiceError> {
    // UUID v7 ids are time-ordered: insertion order.
    Ok(chat_messages::Entity::find()
        .filter(chat_messages::Column::SessionId.eq(session_id))
        .order_by_asc(chat_messages::Column::CreatedAt)
        .order_by_asc(chat_messages::Column::Id)
        .all(db)
        .await?)
}

/// Checked before the session is looked up: role and content.
pub fn validate_message(
    role: Option<&str>,
    content: Option<&str>,
) -> Result<(String, String), ServiceError> {
    let role = required_text("role", role, 32)?.to_ascii_lowercase();
    if !ROLES.contains(&role.as_str()) {
        return Err(ServiceError::validation(
            "invalid_role",
            format!("Field 'role' must be one of: {}", ROLES.join(", ")),
        ));
    }
    // Content is kept as sent (whitespace matters in chat); only emptiness is refused.
    let content = match content {
        Some(c) if !c.trim().is_empty() => c.to_string(),
        _ => return Err(ServiceError::required("content")),
    };
    if content.chars().count() > CONTENT_MAX {
        return Err(ServiceError::too_long("content", CONTENT_MAX));
    }
    Ok((role, content))
}

pub async fn append_message(
    db: &DatabaseConnection,
    project_id: Uuid,
    raw_session_id: &str,
    (role, content): (String, String),
) -> Result<chat_messages::Model, ServiceError> {
    let txn = crate::db::begin_write(db).await?;
    let s = session(&txn, project_id, raw_session_id).await?;
    let now = time::now();
    let row = chat_messages::Model {
        id: Uuid::now_v7(),
        project_id,
        session_id: s.id,
        role,
        content,
        created_at: now,
    };
    chat_messages::ActiveModel::from(row.clone())
        .insert(&txn)
        .await?;
    chat_sessions::Entity::update_many()
        .col_expr(chat_sessions::Column::UpdatedAt, Expr::value(now))
        .filter(chat_sessions::Column::Id.eq(s.id))
        .exec(&txn)
        .await?;
    crate::db::commit(txn).await?;
    Ok(row)
}

pub fn session_view(s: &chat_sessions::Model) -> Value {
    json!({
        "id": s.id, "project_id": s.project_id, "title": s.title, "status": s.status,
        "created_at": ts(&s.created_at), "updated_at": ts(&s.updated_at),
    })
}

pub fn message_view(m: &chat_messages::Model) -> Value {
    json!({
        "id": m.id, "project_id": m.project_id, "session_id": m.session_id, "role": m.role,
        "content": m.content, "created_at": ts(&m.created_at),
    })
}

// ---- agent instructions --------------------------------------------------

pub async fn instructions<C: ConnectionTrait>(
    db: &C,
    project_id: Uuid,
) -> Result<Vec<agent_instructions::Model>, ServiceError> {
    Ok(agent_instructions::Entity::find()
        .filter(agent_instructions::Column::ProjectId.eq(project_id))
        .order_by_desc(agent_instructions::Column::UpdatedAt)
        .order_by_desc(agent_instructions::Column::Id)
        .all(db)
        .await?)
}

pub async fn instruction<C: ConnectionTrait>(
    db: &C,
    project_id: Uuid,
    raw_id: &str,
) -> Result<agent_instructions::Model, ServiceError> {
    crate::lookup::owned::<agent_instructions::Entity, _>(
        db,
        (
            agent_instructions::Column::Id,
            agent_instructions::Column::ProjectId,
        ),
        project_id,
        raw_id,
        "Agent instruction not found",
    )
    .await
}

pub async fn events<C: ConnectionTrait>(
    db: &C,
    instruction_id: Uuid,
) -> Result<Vec<agent_instruction_events::Model>, ServiceError> {
    Ok(agent_instruction_events::Entity::find()
        .filter(agent_instruction_events::Column::InstructionId.eq(instruction_id))
        .order_by_asc(agent_instruction_events::Column::CreatedAt)
        .order_by_asc(agent_instruction_events::Column::Id)
        .all(db)
        .await?)
}

pub(crate) async fn record_event<C: ConnectionTrait>(
    db: &C,
    i: &agent_instructions::Model,
    event_type: &str,
    message: Option<String>,
) -> Result<(), ServiceError> {
    agent_instruction_events::ActiveModel::from(agent_instruction_events::Model {
        id: Uuid::now_v7(),
        project_id: i.project_id,
        instruction_id: i.id,
        event_type: event_type.into(),
        message,
        created_at: time::now(),
    })
    .insert(db)
    .await?;
    Ok(())
}

pub fn validate_instruction(text: Option<&str>) -> Result<String, ServiceError> {
    required_text("instruction_text", text, CONTENT_MAX)
}

pub async fn create_instruction(
    db: &DatabaseConnection,
    principal: &Principal,
    project_id: Uuid,
    text: String,
) -> Result<(agent_instructions::Model, Uuid), ServiceError> {
    let now = time::now();
    let row = agent_instructions::Model {
        id: Uuid::now_v7(),
        project_id,
        instruction_text: text,
        status: InstructionStatus::Pending.into(),
        attempts: 0,
        max_attempts: 3,
        next_attempt_at: None,
        last_error: None,
        locked_by: None,
        locked_at: None,
        agent_response_json: None,
        created_at: now,
        updated_at: now,
        confirmed_at: None,
        canceled_at: None,
    };
    let txn = crate::db::begin_write(db).await?;
    agent_instructions::ActiveModel::from(row.clone())
        .insert(&txn)
        .await?;
    record_event(&txn, &row, "created", None).await?;
    let audit_id = audit::record(
        &txn,
        AuditEntry {
            principal,
            project_id: Some(project_id),
            event_code: "instruction.created",
            payload: json!({ "instruction_id": row.id }),
        },
    )
    .await?;
    crate::db::commit(txn).await?;
    Ok((row, audit_id))
}

/// A requested transition.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Confirm,
    Cancel,
}

/// Confirms or cancels, guarded on the state read: repeating the same
/// transition is a no-op; the other terminal choice is refused; a `running`
/// instruction (the agent worker is sending it) can still be canceled, and
/// the worker then records nothing over the cancel; nothing else moves an
/// instruction that has left `pending`/`confirmed`.
pub async fn transition(
    db: &DatabaseConnection,
    principal: &Principal,
    project_id: Uuid,
    raw_id: &str,
    t: Transition,
    message: Option<&str>,
) -> Result<(agent_instructions::Model, Uuid), ServiceError> {
    let message = optional_text("message", message, 2000)?;
    let txn = crate::db::begin_write(db).await?;
    let current = instruction(&txn, project_id, raw_id).await?;
    let (target, event, audit_code) = match t {
        Transition::Confirm => (
            InstructionStatus::Confirmed,
            "confirmed",
            "instruction.confirmed",
        ),
        Transition::Cancel => (
            InstructionStatus::Canceled,
            "canceled",
            "instruction.canceled",
        ),
    };
    let refuse = |msg: &str| {
        Err(ServiceError::validation(
            "invalid_transition",
            msg.to_string(),
        ))
    };
    let changed = match (t, InstructionStatus::parse(&current.status)) {
        (_, Some(s)) if s == target => false,
        (Transition::Confirm, Some(InstructionStatus::Canceled)) => {
            return refuse("Instruction is already canceled");
        }
        (Transition::Cancel, Some(InstructionStatus::Confirmed)) => {
            return refuse("Instruction is already confirmed");
        }
        (_, Some(from @ InstructionStatus::Pending))
        | (Transition::Cancel, Some(from @ InstructionStatus::Running)) => {
            let now = time::now();
            let mut update = agent_instructions::Entity::update_many()
                .col_expr(agent_instructions::Column::Status, Expr::value(target))
                .col_expr(agent_instructions::Column::UpdatedAt, Expr::value(now));
            update = match t {
                Transition::Confirm => {
                    update.col_expr(agent_instructions::Column::ConfirmedAt, Expr::value(now))
                }
                Transition::Cancel => update
                    .col_expr(agent_instructions::Column::CanceledAt, Expr::value(now))
                    .col_expr(
                        agent_instructions::Column::LockedBy,
                        Expr::value(Option::<String>::None),
                    )
                    .col_expr(
                        agent_instructions::Column::LockedAt,
                        Expr::value(Option::<chrono::DateTime<chrono::Utc>>::None),
                    ),
            };
            let rows = update
                .filter(agent_instructions::Column::Id.eq(current.id))
                .filter(agent_instructions::Column::Status.eq(from))
                .exec(&txn)
                .await?
                .rows_affected;
            if rows == 0 {
                return Err(ServiceError::Conflict {
                    code: "concurrent_update",
                    message: "The instruction changed meanwhile; read it again".into(),
                });
            }
            true
        }
        (_, _) => {
            return refuse(&format!("Instruction is already {}", current.status));
        }
    };
    if changed {
        record_event(&txn, &current, event, message.clone()).await?;
    }
    let audit_id = audit::record(
        &txn,
        AuditEntry {
            principal,
            project_id: Some(project_id),
            event_code: audit_code,
            payload: json!({ "instruction_id": current.id, "changed": changed }),
        },
    )
    .await?;
    let row = instruction(&txn, project_id, raw_id).await?;
    crate::db::commit(txn).await?;
    Ok((row, audit_id))
}

/// An agent's report on a confirmed instruction it ran: applied only from
/// the state it expects (`confirmed` -> `running` -> `done`/`failed`), so a
/// cancel or another worker's verdict is never overwritten. `false`: not applied.
pub async fn report(
    db: &DatabaseConnection,
    instruction_id: Uuid,
    from: &str,
    to: &str,
    message: Option<String>,
) -> Result<bool, ServiceError> {
    let txn = crate::db::begin_write(db).await?;
    let rows = agent_instructions::Entity::update_many()
        .col_expr(agent_instructions::Column::Status, Expr::value(to))
        .col_expr(
            agent_instructions::Column::UpdatedAt,
            Expr::value(time::now()),
        )
        .filter(agent_instructions::Column::Id.eq(instruction_id))
        .filter(agent_instructions::Column::Status.eq(from))
        .exec(&txn)
        .await?
        .rows_affected;
    if rows == 1
        && let Some(row) = agent_instructions::Entity::find_by_id(instruction_id)
            .one(&txn)
            .await?
    {
        record_event(&txn, &row, to, message).await?;
    }
    crate::db::commit(txn).await?;
    Ok(rows == 1)
}

pub fn instruction_view(i: &agent_instructions::Model) -> Value {
    json!({
        "id": i.id, "project_id": i.project_id, "instruction_text": i.instruction_text,
        "status": i.status, "created_at": ts(&i.created_at), "updated_at": ts(&i.updated_at),
        "confirmed_at": opt_ts(&i.confirmed_at), "canceled_at": opt_ts(&i.canceled_at),
        // Additions: the agent worker's record of it.
        "attempts": i.attempts, "max_attempts": i.max_attempts,
        "next_attempt_at": i.next_attempt_at.as_ref().map(ts), "last_error": i.last_error,
        "agent_response": i.agent_response_json,
    })
}

pub fn event_view(e: &agent_instruction_events::Model) -> Value {
    json!({
        "id": e.id, "project_id": e.project_id, "instruction_id": e.instruction_id,
        "event_type": e.event_type, "message": e.message.clone().unwrap_or_default(),
        "created_at": ts(&e.created_at),
    })
}
