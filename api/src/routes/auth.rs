use actix_web::{delete, get, post, web};
use domain::auth::{self, CreateToken};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::AppState;
use crate::dto::{NewToken, TokenSummary};
use crate::error::{ApiResult, ErrorBody};
use crate::extract::{Auth, AuthOrBootstrap, JsonBody};

#[derive(Deserialize, ToSchema, Default)]
#[serde(default)]
pub struct CreateTokenBody {
    /// Free text, at most 200 characters.
    label: Option<String>,
    /// Confine the token to this project. A project-scoped caller may only
    /// name its own project (and gets a token confined to it when omitted).
    project_slug: Option<String>,
    /// RFC 3339, or `YYYY-MM-DD` (end of that day, UTC). Must be in the future.
    expires_at: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct TokenCreated {
    ok: bool,
    auth_token: NewToken,
    audit_id: Uuid,
}

/// Mint an API token. Without a bearer token this works only for the very
/// first token (no active token exists, loopback server and client).
#[utoipa::path(
    tag = "auth",
    request_body(content = CreateTokenBody, content_type = "application/json"),
    responses(
        (status = 200, body = TokenCreated),
        (status = 400, body = ErrorBody, description = "invalid_expires_at, invalid_project_slug, field_too_long, bootstrap_already_initialized"),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody, description = "scoped token asking for another project"),
        (status = 404, body = ErrorBody),
    )
)]
#[post("/auth/token")]
pub async fn create_token(
    state: web::Data<AppState>,
    AuthOrBootstrap(principal): AuthOrBootstrap,
    JsonBody(body): JsonBody<CreateTokenBody>,
) -> ApiResult<web::Json<TokenCreated>> {
    let created = auth::create_token(
        &state.db,
        &state.tokens,
        &principal,
        CreateToken {
            label: body.label,
            project_slug: body.project_slug,
            expires_at: body.expires_at,
        },
    )
    .await?;
    let row = &created.row;
    Ok(web::Json(TokenCreated {
        ok: true,
        auth_token: NewToken {
            id: row.id,
            token: created.token.clone(),
            token_prefix: row.token_prefix.clone(),
            label: row.label.clone(),
            project_id: row.project_id,
            created_at: domain::time::format(&row.created_at),
            expires_at: row.expires_at.map(|e| e.to_rfc3339()),
        },
        audit_id: created.audit_id,
    }))
}

#[derive(Serialize, ToSchema)]
pub struct TokenList {
    ok: bool,
    count: usize,
    auth_tokens: Vec<TokenSummary>,
}

/// List tokens (newest first). A project-scoped token sees only its project's tokens.
#[utoipa::path(tag = "auth", responses((status = 200, body = TokenList), (status = 401, body = ErrorBody)))]
#[get("/auth/tokens")]
pub async fn list_tokens(
    state: web::Data<AppState>,
    Auth(principal): Auth,
) -> ApiResult<web::Json<TokenList>> {
    let rows = auth::list_tokens(&state.db, &principal).await?;
    let auth_tokens: Vec<TokenSummary> = rows.iter().map(TokenSummary::from).collect();
    Ok(web::Json(TokenList {
        ok: true,
        count: auth_tokens.len(),
        auth_tokens,
    }))
}

#[derive(Serialize, ToSchema)]
pub struct TokenRevoked {
    ok: bool,
    deleted: bool,
    token_id: Uuid,
    audit_id: Uuid,
}

/// Revoke a token (idempotent). Takes effect at once on this node.
#[utoipa::path(
    tag = "auth",
    params(("tokenId" = String, Path, description = "Token id")),
    responses((status = 200, body = TokenRevoked), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody))
)]
#[delete("/auth/tokens/{tokenId}")]
pub async fn revoke_token(
    state: web::Data<AppState>,
    Auth(principal): Auth,
    path: web::Path<String>,
) -> ApiResult<web::Json<TokenRevoked>> {
    let (token_id, audit_id) =
        auth::revoke_token(&state.db, &state.tokens, &principal, &path).await?;
    Ok(web::Json(TokenRevoked {
        ok: true,
        deleted: true,
        token_id,
        audit_id,
    }))
}
