//! The agent worker: confirmed agent instructions are sent to the agent
//! endpoint and settled through the guarded state machine of
//! [`crate::copilot`].
//!
//! An instruction is leased like a job: `confirmed` and due (or `running`
//! under a lease that expired because its worker died) becomes `running`,
//! locked by one worker with `attempts` + 1, in one guarded update. Its
//! answer is recorded only while that lease still holds (`running`, same
//! worker, same lease time), so a cancel that came first, or a worker that
//! took over an expired lease, is never overwritten. Every attempt leaves an
//! instruction event (`result`, `retry_scheduled` or `error`).
//!
//! Where to send: the project's secrets `agent_api/url` and
//! `agent_api/token`, else the service's `agent` configuration. The URL must
//! pass the outbound policy (no loopback, private, link-local or metadata
//! address unless allowed), the client follows no redirect, and what the
//! remote says is truncated and scrubbed (the token never appears) before it
//! is stored.

use std::time::Duration;

use chrono::Utc;
use entities::{agent_instructions, projects};
use futures_util::StreamExt;
use sea_orm::sea_query::{Condition, Expr};
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder, QuerySelect};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::netpolicy::OutboundPolicy;
use crate::secrets::cipher::KeySource;
use crate::status::InstructionStatus;
use crate::{ServiceError, time};

/// The provider code under which a project keeps its agent endpoint.
pub const SECRETS: &str = "agent_api";

/// The most of an agent's answer that is read; a longer one is refused.
const MAX_ANSWER: usize = 64 * 1024;

#[derive(Clone)]
pub struct AgentConfig {
    /// This worker's name in `locked_by`.
    pub worker_id: String,
    /// The endpoint for projects that name none in their secrets.
    pub url: Option<String>,
    pub token: Option<String>,
    /// How often due instructions are looked for.
    pub poll: Duration,
    /// A lease older than this is taken over (its worker is gone).
    pub lease: Duration,
    /// Attempts when the instruction's own maximum is lower.
    pub default_max_attempts: i32,
    /// Retry after `retry_backoff x attempts`.
    pub retry_backoff: Duration,
    /// Per attempt, connection included.
    pub timeout: Duration,
}

/// Never shows the token (the engine's configuration may be logged).
impl std::fmt::Debug for AgentConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentConfig")
            .field("worker_id", &self.worker_id)
            .field("url", &self.url)
            .field("token", &self.token.as_ref().map(|_| "***"))
            .field("poll", &self.poll)
            .field("lease", &self.lease)
            .field("default_max_attempts", &self.default_max_attempts)
            .field("retry_backoff", &self.retry_backoff)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            worker_id: format!("worker-{}", &Uuid::now_v7().simple().to_string()[24..]),
            url: None,
            token: None,
            poll: Duration::from_secs(2),
            lease: Duration::from_secs(120),
            default_max_attempts: 3,
            retry_backoff: Duration::from_secs(10),
            timeout: Duration::from_secs(20),
        }
    }
}

/// How one instruction ended this attempt (what was recorded).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Handled {
    /// Settled to this status (`done`, `failed`, `running`, `pending`).
    Settled(String),
    /// Failed this attempt; sent again later.
    RetryScheduled,
    /// Its lease no longer held when the answer came (a cancel won, or
    /// another worker took it over): nothing was recorded.
    Superseded,
}

/// Leases and sends at most `limit` due instructions, one after another.
/// Returns what happened to each.
pub async fn dispatch_due(
    db: &DatabaseConnection,
    http: &reqwest::Client,
    outbound: &OutboundPolicy,
    config: &AgentConfig,
    keys: Option<&KeySource>,
    limit: usize,
) -> Result<Vec<(Uuid, Handled)>, ServiceError> {
    let mut handled = Vec::new();
    while handled.len() < limit {
        let Some(leased) = lease_next(db, config).await? else {
            break;
        };
        let outcome = dispatch(db, http, outbound, config, keys, &leased).await;
        let id = leased.id;
        handled.push((id, settle(db, config, &leased, outcome).await?));
    }
    Ok(handled)
}

/// Leases the oldest due instruction, if any.
async fn lease_next(
    db: &DatabaseConnection,
    config: &AgentConfig,
) -> Result<Option<agent_instructions::Model>, ServiceError> {
    use agent_instructions::Column as C;
    let now = time::now();
    let expired = now - chrono::Duration::from_std(config.lease).unwrap_or_default();
    for _ in 0..8 {
        let due = agent_instructions::Entity::find()
            .filter(
                Condition::any()
                    .add(
                        Condition::all()
                            .add(C::Status.eq(InstructionStatus::Confirmed))
                            .add(
                                Condition::any()
                                    .add(C::NextAttemptAt.is_null())
                                    .add(C::NextAttemptAt.lte(now)),
                            ),
                    )
                    .add(
                        Condition::all()
                            .add(C::Status.eq(InstructionStatus::Running))
                            .add(C::LockedAt.lte(expired)),
                    ),
            )
            .order_by_asc(C::UpdatedAt)
            .order_by_asc(C::Id)
            .limit(1)
            .one(db)
            .await?;
        let Some(due) = due else {
            return Ok(None);
        };
        // Guarded on what was read: of two workers, one wins.
        let won = agent_instructions::Entity::update_many()
            .col_expr(C::Status, Expr::value(InstructionStatus::Running))
            .col_expr(C::LockedBy, Expr::value(config.worker_id.clone()))
            .col_expr(C::LockedAt, Expr::value(now))
            .col_expr(
                C::Attempts,
                sea_orm::sea_query::ExprTrait::add(Expr::col(C::Attempts), 1),
            )
            .col_expr(
                C::NextAttemptAt,
                Expr::value(Option::<chrono::DateTime<Utc>>::None),
            )
            .col_expr(C::UpdatedAt, Expr::value(now))
            .filter(C::Id.eq(due.id))
            .filter(C::Status.eq(due.status.clone()))
            .filter(C::UpdatedAt.eq(due.updated_at))
            .exec(db)
            .await?
            .rows_affected
            == 1;
        if won {
            // The row as the guarded update left it (nothing else changed it).
            return Ok(Some(agent_instructions::Model {
                status: InstructionStatus::Running.as_str().to_string(),
                locked_by: Some(config.worker_id.clone()),
                locked_at: Some(now),
                attempts: due.attempts + 1,
                next_attempt_at: None,
                updated_at: now,
                ..due
            }));
        }
    }
    Ok(None)
}

/// What one attempt came to.
#[derive(Debug)]
enum Outcome {
    /// The agent answered (2xx): its status, its answer and a note for
    /// the event (both scrubbed of the token).
    Answered {
        status: String,
        body: Value,
        note: String,
    },
    /// This attempt failed; another may succeed.
    Failed(String),
    /// No attempt can succeed (the URL is malformed or refused by policy).
    Refused(String),
}

async fn dispatch(
    db: &DatabaseConnection,
    http: &reqwest::Client,
    outbound: &OutboundPolicy,
    config: &AgentConfig,
    keys: Option<&KeySource>,
    i: &agent_instructions::Model,
) -> Outcome {
    let (url, token) = match target(db, config, keys, i.project_id).await {
        Ok(Some(t)) => t,
        Ok(None) => return Outcome::Failed("missing_agent_api_url".into()),
        Err(e) => return Outcome::Failed(format!("agent endpoint unavailable: {e}")),
    };
    let token = token.unwrap_or_default();
    // Checked at every attempt: a name may resolve elsewhere now (the client
    // checks every connection again).
    match outbound.check_url("agent_api/url", &url).await {
        Ok(()) => {}
        // A name that does not resolve now may later: an attempt failed.
        Err(e) if e.code() == "url_unresolvable" => return Outcome::Failed(e.to_string()),
        Err(e) => return Outcome::Refused(e.to_string()),
    }
    let slug = projects::Entity::find_by_id(i.project_id)
        .select_only()
        .column(projects::Column::Slug)
        .into_tuple::<String>()
        .one(db)
        .await
        .ok()
        .flatten()
        .unwrap_or_default();
    let body = json!({
        "instruction_id": i.id,
        "project_slug": slug,
        "instruction_type": "agent_instruction",
        "objective": i.instruction_text,
        "payload": { "instruction_text": i.instruction_text },
    });
    let mut request = http.post(&url).timeout(config.timeout).json(&body);
    if !token.is_empty() {
        request = request.bearer_auth(&token);
    }
    let response = match request.send().await {
        Ok(r) => r,
        Err(e) => return Outcome::Failed(transport_error(&e, config.timeout)),
    };
    let code = response.status();
    let answer = match read_capped(response, MAX_ANSWER).await {
        Ok(bytes) => bytes,
        Err(e) => return Outcome::Failed(e),
    };
    if !code.is_success() {
        let text = String::from_utf8_lossy(answer.as_deref().unwrap_or_default());
        return Outcome::Failed(format!("http_{}: {}", code.as_u16(), scrub(&text, &token)));
    }
    let Some(answer) = answer else {
        return Outcome::Failed(format!(
            "agent_answer_invalid: longer than {} KiB",
            MAX_ANSWER / 1024
        ));
    };
    // An empty answer is an accepted instruction; anything else must be a
    // JSON object.
    let body: Value = if answer.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        match serde_json::from_slice::<Value>(&answer) {
            Ok(v @ Value::Object(_)) => v,
            _ => return Outcome::Failed("agent_answer_invalid: not a JSON object".into()),
        }
    };
    let status = scrub(
        body.get("status").and_then(Value::as_str).unwrap_or("done"),
        &token,
    );
    let note = match body.get("message").and_then(Value::as_str) {
        Some(m) => format!("{status}: {}", scrub(m, &token)),
        None => status.clone(),
    };
    // An agent that echoes the token does not get it stored.
    let body = if token.is_empty() {
        body
    } else {
        serde_json::from_str(&body.to_string().replace(&token, "***")).unwrap_or_default()
    };
    Outcome::Answered { status, body, note }
}

/// The project's own endpoint, else the service's; `None`: none at all.
async fn target(
    db: &DatabaseConnection,
    config: &AgentConfig,
    keys: Option<&KeySource>,
    project_id: Uuid,
) -> Result<Option<(String, Option<String>)>, ServiceError> {
    if let Some(keys) = keys
        && let Some(url) = crate::secrets::reveal(db, keys, project_id, SECRETS, "url").await?
    {
        let token = crate::secrets::reveal(db, keys, project_id, SECRETS, "token").await?;
        return Ok(Some((url, token)));
    }
    Ok(config.url.clone().map(|u| (u, config.token.clone())))
}

/// At most `max` bytes of the answer; `None` when it is longer.
async fn read_capped(response: reqwest::Response, max: usize) -> Result<Option<Vec<u8>>, String> {
    let mut body = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| format!("the answer broke off: {}", e.without_url()))?;
        if body.len() + chunk.len() > max {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body))
}

/// A transport failure in words that name no URL (it may carry a token).
fn transport_error(e: &reqwest::Error, timeout: Duration) -> String {
    if e.is_timeout() {
        format!("timeout: no answer within {} s", timeout.as_secs_f64())
    } else if e.is_connect() {
        "cannot connect to the agent endpoint".into()
    } else {
        "transport error before an answer".into()
    }
}

/// A remote message fit for records: the token removed, one line, at most
/// 300 characters.
fn scrub(message: &str, token: &str) -> String {
    providers::scrub_remote_message(message, token)
}

/// The remote status in our state machine: `done`, `failed`, `running`
/// (the agent has it: asked again when the renewed lease expires) or
/// `pending` (it needs the user's input: confirming it again sends it again).
fn mapped(remote: &str) -> InstructionStatus {
    match remote {
        "done" | "accepted" | "queued" => InstructionStatus::Done,
        "running" => InstructionStatus::Running,
        "needs_input" | "needs-input" | "input_required" => InstructionStatus::Pending,
        _ => InstructionStatus::Failed,
    }
}

/// Records the attempt's outcome while the lease still holds.
async fn settle(
    db: &DatabaseConnection,
    config: &AgentConfig,
    leased: &agent_instructions::Model,
    outcome: Outcome,
) -> Result<Handled, ServiceError> {
    use agent_instructions::Column as C;
    let now = time::now();
    let max = leased.max_attempts.max(config.default_max_attempts).max(1);
    let (status, event, message, response, next_attempt, error) = match outcome {
        Outcome::Answered { status, body, note } => {
            (mapped(&status), "result", note, Some(body), None, None)
        }
        Outcome::Failed(e) if leased.attempts < max => {
            let wait = config.retry_backoff * leased.attempts.max(1) as u32;
            let at = now + chrono::Duration::from_std(wait).unwrap_or_default();
            (
                InstructionStatus::Confirmed,
                "retry_scheduled",
                format!("attempt {} of {max} failed: {e}", leased.attempts),
                None,
                Some(at),
                Some(e),
            )
        }
        Outcome::Failed(e) | Outcome::Refused(e) => (
            InstructionStatus::Failed,
            "error",
            format!("attempt {} of {max} failed: {e}", leased.attempts),
            None,
            None,
            Some(e),
        ),
    };
    // Still running at the agent: the lease is renewed, so the agent is
    // asked again (same instruction id) when it expires; otherwise released.
    let (locked_by, locked_at) = if status == InstructionStatus::Running {
        (Some(config.worker_id.clone()), Some(now))
    } else {
        (None, None)
    };
    let txn = crate::db::begin_write(db).await?;
    let mut update = agent_instructions::Entity::update_many()
        .col_expr(C::Status, Expr::value(status))
        .col_expr(C::LockedBy, Expr::value(locked_by))
        .col_expr(C::LockedAt, Expr::value(locked_at))
        .col_expr(C::NextAttemptAt, Expr::value(next_attempt))
        .col_expr(C::UpdatedAt, Expr::value(now));
    if let Some(e) = &error {
        update = update.col_expr(C::LastError, Expr::value(e.clone()));
    }
    if let Some(body) = response {
        update = update.col_expr(C::AgentResponseJson, Expr::value(body));
    }
    let held = update
        .filter(C::Id.eq(leased.id))
        .filter(C::Status.eq(InstructionStatus::Running))
        .filter(C::LockedBy.eq(config.worker_id.clone()))
        .filter(C::LockedAt.eq(leased.locked_at))
        .exec(&txn)
        .await?
        .rows_affected
        == 1;
    if !held {
        tracing::info!(instruction_id = %leased.id, "agent answer not recorded: the instruction was canceled or taken over meanwhile");
        return Ok(Handled::Superseded);
    }
    crate::copilot::record_event(&txn, leased, event, Some(message)).await?;
    crate::db::commit(txn).await?;
    Ok(match event {
        "retry_scheduled" => Handled::RetryScheduled,
        _ => Handled::Settled(status.as_str().to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_statuses_map_into_the_state_machine() {
        assert_eq!(mapped("done"), InstructionStatus::Done);
        assert_eq!(mapped("queued"), InstructionStatus::Done);
        assert_eq!(mapped("running"), InstructionStatus::Running);
        assert_eq!(mapped("needs_input"), InstructionStatus::Pending);
        assert_eq!(mapped("rejected"), InstructionStatus::Failed);
        assert_eq!(mapped(""), InstructionStatus::Failed);
    }

    #[test]
    fn the_configuration_never_shows_its_token() {
        let config = AgentConfig {
            token: Some("tok-9f3".into()),
            ..AgentConfig::default()
        };
        let shown = format!("{config:?}");
        assert!(
            !shown.contains("tok-9f3") && shown.contains("***"),
            "{shown}"
        );
    }

    #[test]
    fn remote_messages_lose_the_token_and_stay_short() {
        let long = format!("bad token tok-123\n{}", "x".repeat(1000));
        let s = scrub(&long, "tok-123");
        assert!(!s.contains("tok-123"));
        assert!(!s.contains('\n'));
        assert!(s.chars().count() <= 300);
    }
}
