//! Chat sessions and messages; agent instructions with their event log.

use actix_web::{get, post, web};
use domain::copilot::{self, Transition};
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa::ToSchema;

use crate::AppState;
use crate::error::{ApiResult, ErrorBody};
use crate::extract::{JsonBody, ProjectAccess, ProjectSlug};

/// Sessions, most recently active first.
#[utoipa::path(tag = "chat", params(("slug" = String, Path)),
    responses((status = 200, description = "`ok, count, sessions[ChatSession]`"), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
#[get("/api/projects/{slug}/chat/sessions")]
pub async fn list_sessions(
    state: web::Data<AppState>,
    ProjectAccess { project, .. }: ProjectAccess,
) -> ApiResult<web::Json<Value>> {
    let rows: Vec<Value> = copilot::sessions(&state.db, project.id)
        .await?
        .iter()
        .map(copilot::session_view)
        .collect();
    Ok(web::Json(
        json!({ "ok": true, "count": rows.len(), "sessions": rows }),
    ))
}

#[derive(Deserialize, ToSchema, Default)]
#[serde(default)]
pub struct SessionBody {
    /// Default "New Session".
    title: Option<String>,
}

/// Start a session.
#[utoipa::path(tag = "chat", params(("slug" = String, Path)),
    request_body(content = SessionBody, content_type = "application/json"),
    responses((status = 200, description = "`ok, session`"), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
#[post("/api/projects/{slug}/chat/sessions")]
pub async fn create_session(
    state: web::Data<AppState>,
    ProjectAccess { project, .. }: ProjectAccess,
    JsonBody(body): JsonBody<SessionBody>,
) -> ApiResult<web::Json<Value>> {
    let row = copilot::create_session(&state.db, project.id, body.title.as_deref()).await?;
    Ok(web::Json(
        json!({ "ok": true, "session": copilot::session_view(&row) }),
    ))
}

/// One session.
#[utoipa::path(tag = "chat", params(("slug" = String, Path), ("sessionId" = String, Path)),
    responses((status = 200, description = "`ok, session`"), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
#[get("/api/projects/{slug}/chat/sessions/{sessionId}")]
pub async fn get_session(
    state: web::Data<AppState>,
    ProjectAccess { project, .. }: ProjectAccess,
    path: web::Path<(String, String)>,
) -> ApiResult<web::Json<Value>> {
    let (_, id) = path.into_inner();

    let row = copilot::session(&state.db, project.id, &id).await?;
    Ok(web::Json(
        json!({ "ok": true, "session": copilot::session_view(&row) }),
    ))
}

/// A session's messages in the order they were added.
#[utoipa::path(tag = "chat", params(("slug" = String, Path), ("sessionId" = String, Path)),
    responses((status = 200, description = "`ok, session_id, count, messages[ChatMessage]`"), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
#[get("/api/projects/{slug}/chat/sessions/{sessionId}/messages")]
pub async fn list_messages(
    state: web::Data<AppState>,
    ProjectAccess { project, .. }: ProjectAccess,
    path: web::Path<(String, String)>,
) -> ApiResult<web::Json<Value>> {
    let (_, id) = path.into_inner();

    let session = copilot::session(&state.db, project.id, &id).await?;
    let rows: Vec<Value> = copilot::messages(&state.db, session.id)
        .await?
        .iter()
        .map(copilot::message_view)
        .collect();
    Ok(web::Json(json!({
        "ok": true, "session_id": session.id, "count": rows.len(), "messages": rows,
    })))
}

#[derive(Deserialize, ToSchema, Default)]
#[serde(default)]
pub struct MessageBody {
    /// `user`, `assistant`, `system` or `tool` (case-insensitive).
    role: Option<String>,
    content: Option<String>,
    /// Accepted as `content` (the v1 OpenAPI named it so; its code read `content`).
    content_text: Option<String>,
}

/// Append a message. Role and content are checked before the session is looked up.
#[utoipa::path(tag = "chat", params(("slug" = String, Path), ("sessionId" = String, Path)),
    request_body(content = MessageBody, content_type = "application/json"),
    responses((status = 200, description = "`ok, message`"),
        (status = 400, body = ErrorBody, description = "field_required, invalid_role, field_too_long"),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
#[post("/api/projects/{slug}/chat/sessions/{sessionId}/messages")]
pub async fn append_message(
    state: web::Data<AppState>,
    access: ProjectSlug,
    path: web::Path<(String, String)>,
    JsonBody(body): JsonBody<MessageBody>,
) -> ApiResult<web::Json<Value>> {
    let (_, id) = path.into_inner();
    let content = body.content.as_deref().or(body.content_text.as_deref());
    let valid = copilot::validate_message(body.role.as_deref(), content)?;
    let ProjectAccess { project, .. } = access.authorize(&state).await?;
    let row = copilot::append_message(&state.db, project.id, &id, valid).await?;
    Ok(web::Json(
        json!({ "ok": true, "message": copilot::message_view(&row) }),
    ))
}

/// Instructions, most recently updated first.
#[utoipa::path(tag = "agent", params(("slug" = String, Path)),
    responses((status = 200, description = "`ok, count, instructions[Instruction]`"), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
#[get("/api/projects/{slug}/agent/instructions")]
pub async fn list_instructions(
    state: web::Data<AppState>,
    ProjectAccess { project, .. }: ProjectAccess,
) -> ApiResult<web::Json<Value>> {
    let rows: Vec<Value> = copilot::instructions(&state.db, project.id)
        .await?
        .iter()
        .map(copilot::instruction_view)
        .collect();
    Ok(web::Json(
        json!({ "ok": true, "count": rows.len(), "instructions": rows }),
    ))
}

#[derive(Deserialize, ToSchema, Default)]
#[serde(default)]
pub struct InstructionBody {
    instruction_text: Option<String>,
    /// The shape v1's published OpenAPI documents (v1's code read only
    /// `instruction_text`): accepted when `instruction_text` is absent. The
    /// text is `payload_json.instruction_text`, `payload_json.text`,
    /// `payload_json` itself when it is a string, else the payload as
    /// compact JSON (prefixed by `instruction_type` when given).
    instruction_type: Option<String>,
    #[schema(value_type = Option<Object>)]
    payload_json: Option<Value>,
}

impl InstructionBody {
    fn text(&self) -> Option<String> {
        if let Some(t) = &self.instruction_text {
            return Some(t.clone());
        }
        let p = self.payload_json.as_ref()?;
        if let Some(t) = p
            .as_str()
            .or_else(|| p.get("instruction_text").and_then(Value::as_str))
            .or_else(|| p.get("text").and_then(Value::as_str))
        {
            return Some(t.to_string());
        }
        let empty = p.is_null() || p.as_object().is_some_and(|o| o.is_empty());
        if empty {
            return self.instruction_type.clone();
        }
        Some(match self.instruction_type.as_deref().map(str::trim) {
            Some(kind) if !kind.is_empty() => format!("{kind}: {p}"),
            _ => p.to_string(),
        })
    }
}

/// Create an instruction (`pending`, with a `created` event). Checked before the project.
#[utoipa::path(tag = "agent", params(("slug" = String, Path)),
    request_body(content = InstructionBody, content_type = "application/json"),
    responses((status = 200, description = "`ok, instruction, audit_id`"), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
#[post("/api/projects/{slug}/agent/instructions")]
pub async fn create_instruction(
    state: web::Data<AppState>,
    access: ProjectSlug,
    JsonBody(body): JsonBody<InstructionBody>,
) -> ApiResult<web::Json<Value>> {
    let text = copilot::validate_instruction(body.text().as_deref())?;
    let ProjectAccess { project, principal } = access.authorize(&state).await?;
    let (row, audit_id) =
        copilot::create_instruction(&state.db, &principal, project.id, text).await?;
    Ok(web::Json(json!({
        "ok": true, "instruction": copilot::instruction_view(&row), "audit_id": audit_id,
    })))
}

/// One instruction.
#[utoipa::path(tag = "agent", params(("slug" = String, Path), ("instructionId" = String, Path)),
    responses((status = 200, description = "`ok, instruction`"), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
#[get("/api/projects/{slug}/agent/instructions/{instructionId}")]
pub async fn get_instruction(
    state: web::Data<AppState>,
    ProjectAccess { project, .. }: ProjectAccess,
    path: web::Path<(String, String)>,
) -> ApiResult<web::Json<Value>> {
    let (_, id) = path.into_inner();

    let row = copilot::instruction(&state.db, project.id, &id).await?;
    Ok(web::Json(
        json!({ "ok": true, "instruction": copilot::instruction_view(&row) }),
    ))
}

/// Its event log, in order.
#[utoipa::path(tag = "agent", params(("slug" = String, Path), ("instructionId" = String, Path)),
    responses((status = 200, description = "`ok, instruction_id, count, events[InstructionEvent]`"), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
#[get("/api/projects/{slug}/agent/instructions/{instructionId}/events")]
pub async fn list_instruction_events(
    state: web::Data<AppState>,
    ProjectAccess { project, .. }: ProjectAccess,
    path: web::Path<(String, String)>,
) -> ApiResult<web::Json<Value>> {
    let (_, id) = path.into_inner();

    let row = copilot::instruction(&state.db, project.id, &id).await?;
    let rows: Vec<Value> = copilot::events(&state.db, row.id)
        .await?
        .iter()
        .map(copilot::event_view)
        .collect();
    Ok(web::Json(json!({
        "ok": true, "instruction_id": row.id, "count": rows.len(), "events": rows,
    })))
}

#[derive(Deserialize, ToSchema, Default)]
#[serde(default)]
pub struct TransitionBody {
    /// The event's text.
    message: Option<String>,
}

async fn transition(
    state: &AppState,
    ProjectAccess { project, principal }: ProjectAccess,
    id: &str,
    t: Transition,
    message: Option<&str>,
) -> ApiResult<web::Json<Value>> {
    let (row, audit_id) =
        copilot::transition(&state.db, &principal, project.id, id, t, message).await?;
    Ok(web::Json(json!({
        "ok": true, "instruction": copilot::instruction_view(&row), "audit_id": audit_id,
    })))
}

/// Confirm (queue it for an agent); a no-op if already confirmed; 400 if canceled or finished.
#[utoipa::path(tag = "agent", params(("slug" = String, Path), ("instructionId" = String, Path)),
    request_body(content = TransitionBody, content_type = "application/json"),
    responses((status = 200, description = "`ok, instruction, audit_id`"), (status = 400, body = ErrorBody, description = "invalid_transition"),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
#[post("/api/projects/{slug}/agent/instructions/{instructionId}/confirm")]
pub async fn confirm_instruction(
    state: web::Data<AppState>,
    access: ProjectAccess,
    path: web::Path<(String, String)>,
    JsonBody(body): JsonBody<TransitionBody>,
) -> ApiResult<web::Json<Value>> {
    transition(
        &state,
        access,
        &path.1,
        Transition::Confirm,
        body.message.as_deref(),
    )
    .await
}

/// Cancel; a no-op if already canceled; 400 if confirmed or finished.
#[utoipa::path(tag = "agent", params(("slug" = String, Path), ("instructionId" = String, Path)),
    request_body(content = TransitionBody, content_type = "application/json"),
    responses((status = 200, description = "`ok, instruction, audit_id`"), (status = 400, body = ErrorBody, description = "invalid_transition"),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
#[post("/api/projects/{slug}/agent/instructions/{instructionId}/cancel")]
pub async fn cancel_instruction(
    state: web::Data<AppState>,
    access: ProjectAccess,
    path: web::Path<(String, String)>,
    JsonBody(body): JsonBody<TransitionBody>,
) -> ApiResult<web::Json<Value>> {
    transition(
        &state,
        access,
        &path.1,
        Transition::Cancel,
        body.message.as_deref(),
    )
    .await
}
