//! Provider accounts per project (keyed by provider code). Keys are secrets,
//! never account fields.

use actix_web::{delete, get, post, put, web};
use domain::provider_accounts as accounts;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::AppState;
use crate::error::{ApiResult, ErrorBody};
use crate::extract::{JsonBody, ProjectAccess, ProjectSlug};

#[derive(Serialize, ToSchema)]
pub struct ProviderAccount {
    project_id: Uuid,
    provider_code: String,
    display_name: String,
    /// `""` when unset.
    account_ref: String,
    /// `""` when unset.
    base_url: String,
    enabled: bool,
    #[schema(value_type = Object)]
    config_json: serde_json::Value,
    created_at: String,
    updated_at: String,
}

impl From<&entities::provider_accounts::Model> for ProviderAccount {
    fn from(a: &entities::provider_accounts::Model) -> Self {
        Self {
            project_id: a.project_id,
            provider_code: a.provider_code.clone(),
            display_name: a.display_name.clone(),
            account_ref: a.account_ref.clone().unwrap_or_default(),
            base_url: a.base_url.clone().unwrap_or_default(),
            enabled: a.enabled,
            config_json: a.config_json.clone(),
            created_at: domain::time::format(&a.created_at),
            updated_at: domain::time::format(&a.updated_at),
        }
    }
}

#[derive(Deserialize, ToSchema, Default)]
#[serde(default)]
pub struct AccountBody {
    /// Required on POST (slug-normalised: `OpenAI` -> `openai`); ignored on PUT.
    provider_code: Option<String>,
    /// Non-blank; default the code.
    display_name: Option<String>,
    /// Blank clears.
    account_ref: Option<String>,
    /// An http(s) URL; blank clears.
    base_url: Option<String>,
    enabled: Option<bool>,
    /// Any JSON (default `{}`).
    #[schema(value_type = Option<Object>)]
    config_json: Option<serde_json::Value>,
}

impl AccountBody {
    fn fields(&self) -> accounts::AccountFields<'_> {
        accounts::AccountFields {
            display_name: self.display_name.as_deref(),
            account_ref: self.account_ref.as_deref(),
            base_url: self.base_url.as_deref(),
            enabled: self.enabled,
            config_json: self.config_json.clone(),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct AccountList {
    ok: bool,
    count: usize,
    provider_accounts: Vec<ProviderAccount>,
}

/// The project's provider accounts, by code.
#[utoipa::path(tag = "provider-accounts", params(("slug" = String, Path)),
    responses((status = 200, body = AccountList), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
#[get("/api/projects/{slug}/provider-accounts")]
pub async fn list_accounts(
    state: web::Data<AppState>,
    ProjectAccess { project, .. }: ProjectAccess,
) -> ApiResult<web::Json<AccountList>> {
    let list: Vec<ProviderAccount> = accounts::list(&state.db, project.id)
        .await?
        .iter()
        .map(ProviderAccount::from)
        .collect();
    Ok(web::Json(AccountList {
        ok: true,
        count: list.len(),
        provider_accounts: list,
    }))
}

#[derive(Serialize, ToSchema)]
pub struct AccountSaved {
    ok: bool,
    provider_account: ProviderAccount,
    audit_id: Uuid,
}

/// Create the account for a provider code, or update it (supplied fields
/// only). The body is checked before the project is looked up.
#[utoipa::path(tag = "provider-accounts", params(("slug" = String, Path)),
    request_body(content = AccountBody, content_type = "application/json"),
    responses((status = 200, body = AccountSaved),
        (status = 400, body = ErrorBody, description = "field_required, field_too_long, invalid_provider_code, invalid_url"),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "concurrent_update")))]
#[post("/api/projects/{slug}/provider-accounts")]
pub async fn upsert_account(
    state: web::Data<AppState>,
    access: ProjectSlug,
    JsonBody(body): JsonBody<AccountBody>,
) -> ApiResult<web::Json<AccountSaved>> {
    let code = accounts::normalize_code(body.provider_code.as_deref())?;
    let fields = accounts::validate(body.fields())?;
    let ProjectAccess { project, principal } = access.authorize(&state).await?;
    let (row, audit_id) = accounts::upsert(&state.db, &principal, project.id, code, fields).await?;
    Ok(web::Json(AccountSaved {
        ok: true,
        provider_account: ProviderAccount::from(&row),
        audit_id,
    }))
}

#[derive(Serialize, ToSchema)]
pub struct AccountDetail {
    ok: bool,
    provider_account: ProviderAccount,
}

/// One account (the path code is normalised).
#[utoipa::path(tag = "provider-accounts", params(("slug" = String, Path), ("providerCode" = String, Path)),
    responses((status = 200, body = AccountDetail), (status = 400, body = ErrorBody, description = "invalid_provider_code"),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
#[get("/api/projects/{slug}/provider-accounts/{providerCode}")]
pub async fn get_account(
    state: web::Data<AppState>,
    access: ProjectSlug,
    path: web::Path<(String, String)>,
) -> ApiResult<web::Json<AccountDetail>> {
    let (_, code) = path.into_inner();
    let code = accounts::normalize_code(Some(&code))?;
    let ProjectAccess { project, .. } = access.authorize(&state).await?;
    let row = accounts::get(&state.db, project.id, &code).await?;
    Ok(web::Json(AccountDetail {
        ok: true,
        provider_account: ProviderAccount::from(&row),
    }))
}

/// Partial update: at least one field, checked before any lookup.
#[utoipa::path(tag = "provider-accounts", params(("slug" = String, Path), ("providerCode" = String, Path)),
    request_body(content = AccountBody, content_type = "application/json"),
    responses((status = 200, body = AccountSaved),
        (status = 400, body = ErrorBody, description = "field_required (none supplied), field_too_long, invalid_url, invalid_provider_code"),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
#[put("/api/projects/{slug}/provider-accounts/{providerCode}")]
pub async fn update_account(
    state: web::Data<AppState>,
    access: ProjectSlug,
    path: web::Path<(String, String)>,
    JsonBody(body): JsonBody<AccountBody>,
) -> ApiResult<web::Json<AccountSaved>> {
    let (_, code) = path.into_inner();
    let fields = accounts::validate_update(body.fields())?;
    let code = accounts::normalize_code(Some(&code))?;
    let ProjectAccess { project, principal } = access.authorize(&state).await?;
    let (row, audit_id) =
        accounts::update(&state.db, &principal, project.id, &code, fields).await?;
    Ok(web::Json(AccountSaved {
        ok: true,
        provider_account: ProviderAccount::from(&row),
        audit_id,
    }))
}

#[derive(Serialize, ToSchema)]
pub struct AccountDeleted {
    ok: bool,
    deleted: bool,
    provider_code: String,
    audit_id: Uuid,
}

/// Delete an account (its secrets stay; delete them separately).
#[utoipa::path(tag = "provider-accounts", params(("slug" = String, Path), ("providerCode" = String, Path)),
    responses((status = 200, body = AccountDeleted), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
#[delete("/api/projects/{slug}/provider-accounts/{providerCode}")]
pub async fn delete_account(
    state: web::Data<AppState>,
    access: ProjectSlug,
    path: web::Path<(String, String)>,
) -> ApiResult<web::Json<AccountDeleted>> {
    let (_, code) = path.into_inner();
    let code = accounts::normalize_code(Some(&code))?;
    let ProjectAccess { project, principal } = access.authorize(&state).await?;
    let audit_id = accounts::delete(&state.db, &principal, project.id, &code).await?;
    Ok(web::Json(AccountDeleted {
        ok: true,
        deleted: true,
        provider_code: code,
        audit_id,
    }))
}

/// **New**: ask the provider whether the credentials work (the project's
/// key `{code}/api_key` if it has one, else the service's), with a call that
/// costs nothing. A failed check is still a 200: `check.status` says it.
#[utoipa::path(tag = "provider-accounts", params(("slug" = String, Path), ("providerCode" = String, Path)),
    responses((status = 200, description = "`ok, check{provider_code, status (ok|failed), error_code, message, key_source (project|service), latency_ms, caveat}`"),
        (status = 400, body = ErrorBody, description = "invalid_provider_code, unknown_provider"),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
#[post("/api/projects/{slug}/provider-accounts/{providerCode}/check")]
pub async fn check_account(
    state: web::Data<AppState>,
    access: ProjectSlug,
    path: web::Path<(String, String)>,
) -> ApiResult<web::Json<serde_json::Value>> {
    let (_, code) = path.into_inner();
    let code = accounts::normalize_code(Some(&code))?;
    let ProjectAccess { project, .. } = access.authorize(&state).await?;
    let check = accounts::check_credentials(state.engine.run_engine(), project.id, &code).await?;
    Ok(web::Json(serde_json::json!({ "ok": true, "check": check })))
}
