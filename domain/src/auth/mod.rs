//! API tokens: minting, listing, revocation and cheap verification.
//!
//! A token is `kroma_` + 64 lowercase hex characters (two random UUIDv4s, as in
//! the v1 contract, so existing databases keep working). Only its SHA-256 is
//! stored; the plaintext is returned once, at creation. Verified tokens are
//! cached in memory for a short time so the request hot path needs no query.

mod cache;
pub mod users;

use chrono::{DateTime, NaiveDate, NaiveTime, Utc};
use entities::{api_tokens, projects};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, DatabaseConnection, EntityTrait, PaginatorTrait,
    QueryFilter, QueryOrder,
};
use serde_json::json;
use sha2::{Digest, Sha256};
use uuid::Uuid;

pub use cache::{TokenVerifier, local_revocations, note_revoked_elsewhere};

use crate::audit::{self, AuditEntry};
use crate::error::optional_text;
use crate::{Principal, ServiceError, projects as project_service, time};

pub const TOKEN_PREFIX: &str = "kroma_";
const LABEL_MAX: usize = 200;

pub fn generate_token() -> String {
    format!(
        "{TOKEN_PREFIX}{}{}",
        Uuid::new_v4().simple(),
        Uuid::new_v4().simple()
    )
}

pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Does `token` have the shape of one we issue? (Cheap reject before any lookup.)
pub fn looks_like_token(token: &str) -> bool {
    token.len() == TOKEN_PREFIX.len() + 64
        && token.starts_with(TOKEN_PREFIX)
        && token[TOKEN_PREFIX.len()..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[derive(Debug, Default)]
pub struct CreateToken {
    pub label: Option<String>,
    pub project_slug: Option<String>,
    pub expires_at: Option<String>,
}

pub struct CreatedToken {
    pub row: api_tokens::Model,
    /// The plaintext token; shown once.
    pub token: String,
    pub audit_id: Uuid,
}

/// `expires_at`: RFC 3339, or `YYYY-MM-DD` meaning the end of that day (UTC).
pub fn parse_expiry(raw: &str) -> Result<DateTime<Utc>, ServiceError> {
    let raw = raw.trim();
    let parsed = DateTime::parse_from_rfc3339(raw)
        .map(|d| d.with_timezone(&Utc))
        .or_else(|_| {
            NaiveDate::parse_from_str(raw, "%Y-%m-%d").map(|d| {
                d.and_time(NaiveTime::from_hms_opt(23, 59, 59).unwrap_or_default())
                    .and_utc()
            })
        })
        .map_err(|_| {
            ServiceError::validation(
                "invalid_expires_at",
                "Field 'expires_at' must be RFC 3339 or YYYY-MM-DD",
            )
        })?;
    if parsed <= Utc::now() {
        return Err(ServiceError::validation(
            "invalid_expires_at",
            "Field 'expires_at' must be in the future",
        ));
    }
    // PostgreSQL keeps microseconds; trimming here makes the answer the same
    // on both stores and equal to what a later read returns.
    Ok(chrono::SubsecRound::trunc_subsecs(parsed, 6))
}

fn active_condition(now: DateTime<Utc>) -> Condition {
    Condition::all()
        .add(api_tokens::Column::RevokedAt.is_null())
        .add(
            Condition::any()
                .add(api_tokens::Column::ExpiresAt.is_null())
                .add(api_tokens::Column::ExpiresAt.gt(now)),
        )
}

pub async fn active_token_count<C: ConnectionTrait>(db: &C) -> Result<u64, ServiceError> {
    Ok(api_tokens::Entity::find()
        .filter(active_condition(Utc::now()))
        .count(db)
        .await?)
}

/// The unauthenticated first-token bootstrap is open only while no token
/// was ever minted. Once there are tokens — even if all are revoked or
/// expired — a new first token is an operator's act: `atelier token create`.
pub async fn bootstrap_open<C: ConnectionTrait>(db: &C) -> Result<bool, ServiceError> {
    Ok(api_tokens::Entity::find().count(db).await? == 0)
}

/// Mints a token. A scoped principal may only mint tokens for its own project;
/// the bootstrap principal succeeds only while no active token exists.
pub async fn create_token(
    db: &DatabaseConnection,
    verifier: &TokenVerifier,
    principal: &Principal,
    input: CreateToken,
) -> Result<CreatedToken, ServiceError> {
    let label = optional_text("label", input.label.as_deref(), LABEL_MAX)?.unwrap_or_default();
    let expires_at = match input.expires_at.as_deref().map(str::trim) {
        Some(raw) if !raw.is_empty() => Some(parse_expiry(raw)?),
        _ => None,
    };
    let requested_slug = match input.project_slug.as_deref().map(str::trim) {
        Some(raw) if !raw.is_empty() => Some(project_service::parse_slug(raw)?),
        _ => None,
    };

    // Serialises bootstrap attempts in this process; the re-check below runs
    // inside the transaction that inserts the token.
    let _bootstrap_guard = match principal {
        Principal::Bootstrap => Some(verifier.bootstrap_lock().await),
        _ => None,
    };
    let txn = crate::db::begin_write(db).await?;
    if matches!(principal, Principal::Bootstrap) {
        // One bootstrap across every process on the database.
        crate::db::serialize(&txn, "bootstrap").await?;
        if !bootstrap_open(&txn).await? {
            return Err(ServiceError::validation(
                "bootstrap_already_initialized",
                "Bootstrap token already initialized",
            ));
        }
    }
    // A child never outlives nor out-scopes the token that mints it.
    let parent = match principal.token_id() {
        Some(id) => api_tokens::Entity::find_by_id(id).one(&txn).await?,
        None => None,
    };
    let expires_at = match (parent.as_ref().and_then(|p| p.expires_at), expires_at) {
        (Some(limit), Some(asked)) if asked > limit => {
            return Err(ServiceError::validation(
                "invalid_expires_at",
                format!(
                    "Field 'expires_at' must not be later than the minting token's own expiry ({})",
                    time::format(&limit)
                ),
            ));
        }
        (Some(limit), None) => Some(limit),
        (_, asked) => asked,
    };
    let project_id = match &requested_slug {
        Some(slug) => {
            let project = projects::Entity::find()
                .filter(projects::Column::Slug.eq(slug.as_str()))
                .one(&txn)
                .await?;
            match project {
                Some(p) if principal.may_access(p.id) => Some(p.id),
                Some(_) => {
                    return Err(ServiceError::Forbidden(
                        "Token is not authorized for this project".into(),
                    ));
                }
                None if principal.is_scoped() => {
                    return Err(ServiceError::Forbidden(
                        "Token is not authorized for this project".into(),
                    ));
                }
                None => return Err(ServiceError::not_found("Project not found")),
            }
        }
        // A scoped token can only ever mint tokens confined to its own project.
        None => principal.scope(),
    };

    let user_id = match principal.user_id() {
        Some(id) => id,
        None => users::ensure_local_user(&txn).await?,
    };
    let token = generate_token();
    let row = api_tokens::Model {
        id: Uuid::now_v7(),
        user_id,
        project_id,
        token_hash: hash_token(&token),
        token_prefix: token[..12].to_string(),
        label,
        expires_at,
        revoked_at: None,
        last_used_at: None,
        created_at: time::now(),
        created_by_token_id: principal.token_id(),
    };
    api_tokens::Entity::insert(api_tokens::ActiveModel::from(row.clone()))
        .exec_without_returning(&txn)
        .await?;
    let audit_id = audit::record(
        &txn,
        AuditEntry {
            principal,
            project_id,
            event_code: "auth.token_created",
            payload: json!({
                "token_id": row.id,
                "token_prefix": row.token_prefix,
                "project_id": project_id,
                "expires_at": row.expires_at.as_ref().map(time::format),
                "bootstrap": matches!(principal, Principal::Bootstrap),
            }),
        },
    )
    .await?;
    crate::db::commit(txn).await?;
    Ok(CreatedToken {
        row,
        token,
        audit_id,
    })
}

/// Unscoped principals see every token; a scoped token sees its project's tokens.
pub async fn list_tokens<C: ConnectionTrait>(
    db: &C,
    principal: &Principal,
) -> Result<Vec<api_tokens::Model>, ServiceError> {
    let mut query = api_tokens::Entity::find()
        .order_by_desc(api_tokens::Column::CreatedAt)
        .order_by_desc(api_tokens::Column::Id);
    if let Some(scope) = principal.scope() {
        query = query.filter(api_tokens::Column::ProjectId.eq(scope));
    }
    Ok(query.all(db).await?)
}

/// Revokes a token (idempotent: the first `revoked_at` is kept). Tokens outside
/// a scoped principal's project are reported as not found; within it, a
/// scoped token may revoke itself and the tokens it minted, not its siblings
/// (403).
pub async fn revoke_token(
    db: &DatabaseConnection,
    verifier: &TokenVerifier,
    principal: &Principal,
    raw_id: &str,
) -> Result<(Uuid, Uuid), ServiceError> {
    let not_found = || ServiceError::not_found("Auth token not found");
    let id = Uuid::parse_str(raw_id.trim()).map_err(|_| not_found())?;
    let txn = crate::db::begin_write(db).await?;
    let row = api_tokens::Entity::find_by_id(id)
        .one(&txn)
        .await?
        .ok_or_else(not_found)?;
    if let Some(scope) = principal.scope() {
        if row.project_id != Some(scope) {
            return Err(not_found());
        }
        let own = principal.token_id();
        if Some(row.id) != own && row.created_by_token_id != own {
            return Err(ServiceError::Forbidden(
                "A project-scoped token may revoke only itself and the tokens it minted".into(),
            ));
        }
    }
    // The tokens it minted go with it (and theirs): a child never outlives
    // its parent.
    let mut revoked = vec![id];
    let mut frontier = vec![id];
    while !frontier.is_empty() {
        let children: Vec<Uuid> = api_tokens::Entity::find()
            .filter(api_tokens::Column::CreatedByTokenId.is_in(frontier.clone()))
            .all(&txn)
            .await?
            .into_iter()
            .map(|t| t.id)
            .filter(|t| !revoked.contains(t))
            .collect();
        revoked.extend(&children);
        frontier = children;
    }
    api_tokens::Entity::update_many()
        .col_expr(api_tokens::Column::RevokedAt, Expr::value(time::now()))
        .filter(api_tokens::Column::Id.is_in(revoked.clone()))
        .filter(api_tokens::Column::RevokedAt.is_null())
        .exec(&txn)
        .await?;
    let audit_id = audit::record(
        &txn,
        AuditEntry {
            principal,
            project_id: row.project_id,
            event_code: "auth.token_revoked",
            payload: json!({ "token_id": id, "token_prefix": row.token_prefix,
                "minted_by_it": revoked.len() - 1 }),
        },
    )
    .await?;
    crate::db::commit(txn).await?;
    for t in revoked {
        verifier.evict(t);
    }
    Ok((id, audit_id))
}

pub fn is_active(row: &api_tokens::Model, now: DateTime<Utc>) -> bool {
    row.revoked_at.is_none() && row.expires_at.is_none_or(|e| e > now)
}
