//! Provider accounts: per project, which providers it uses and how (display
//! name, account reference, base URL, enabled, free-form config). Keyed by
//! the slug-normalised provider code. Keys live in `secrets`, never here.

use entities::provider_accounts;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, QueryFilter,
    QueryOrder,
};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::audit::{self, AuditEntry};
use crate::error::{optional_text, required_text};
use crate::{Principal, ServiceError, projects, time};

const CODE_MAX: usize = 64;
const NAME_MAX: usize = 200;
const REF_MAX: usize = 200;
const URL_MAX: usize = 2048;

/// The provider code as the contract normalises it (slug rules).
pub fn normalize_code(raw: Option<&str>) -> Result<String, ServiceError> {
    let raw = required_text("provider_code", raw, CODE_MAX)?;
    projects::normalize_slug(&raw).ok_or_else(|| {
        ServiceError::validation(
            "invalid_provider_code",
            "Field 'provider_code' must contain letters or digits",
        )
    })
}

/// A base URL is an http(s) URL: it is where provider calls would go.
fn base_url(raw: Option<&str>) -> Result<Option<String>, ServiceError> {
    let Some(url) = optional_text("base_url", raw, URL_MAX)? else {
        return Ok(None);
    };
    match reqwest::Url::parse(&url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => Ok(Some(url)),
        _ => Err(ServiceError::validation(
            "invalid_url",
            "Field 'base_url' must be an http or https URL",
        )),
    }
}

/// The fields a create or update may carry. `None`: not supplied.
#[derive(Default)]
pub struct AccountFields<'a> {
    pub display_name: Option<&'a str>,
    pub account_ref: Option<&'a str>,
    pub base_url: Option<&'a str>,
    pub enabled: Option<bool>,
    pub config_json: Option<Value>,
}

/// Checked fields; `Some(None)` clears an optional text.
pub struct ValidFields {
    display_name: Option<String>,
    account_ref: Option<Option<String>>,
    base_url: Option<Option<String>>,
    enabled: Option<bool>,
    config_json: Option<Value>,
}

impl ValidFields {
    fn any(&self) -> bool {
        self.display_name.is_some()
            || self.account_ref.is_some()
            || self.base_url.is_some()
            || self.enabled.is_some()
            || self.config_json.is_some()
    }
}

pub fn validate(f: AccountFields<'_>) -> Result<ValidFields, ServiceError> {
    let display_name = match f.display_name {
        Some(raw) => Some(required_text("display_name", Some(raw), NAME_MAX)?),
        None => None,
    };
    Ok(ValidFields {
        display_name,
        account_ref: f
            .account_ref
            .map(|r| optional_text("account_ref", Some(r), REF_MAX))
            .transpose()?,
        base_url: f.base_url.map(|u| base_url(Some(u))).transpose()?,
        enabled: f.enabled,
        config_json: f.config_json,
    })
}

/// For a partial update: at least one field (checked before any lookup).
pub fn validate_update(f: AccountFields<'_>) -> Result<ValidFields, ServiceError> {
    let valid = validate(f)?;
    if !valid.any() {
        return Err(ServiceError::validation(
            "field_required",
            "Provide at least one of: display_name, account_ref, base_url, enabled, config_json",
        ));
    }
    Ok(valid)
}

pub async fn list<C: ConnectionTrait>(
    db: &C,
    project_id: Uuid,
) -> Result<Vec<provider_accounts::Model>, ServiceError> {
    Ok(provider_accounts::Entity::find()
        .filter(provider_accounts::Column::ProjectId.eq(project_id))
        .order_by_asc(provider_accounts::Column::ProviderCode)
        .all(db)
        .await?)
}

pub async fn get<C: ConnectionTrait>(
    db: &C,
    project_id: Uuid,
    code: &str,
) -> Result<provider_accounts::Model, ServiceError> {
    provider_accounts::Entity::find()
        .filter(provider_accounts::Column::ProjectId.eq(project_id))
        .filter(provider_accounts::Column::ProviderCode.eq(code))
        .one(db)
        .await?
        .ok_or_else(|| ServiceError::not_found("Provider account not found"))
}

/// Applies checked fields to a row (supplied ones only).
pub fn apply(row: &mut provider_accounts::Model, f: ValidFields) {
    if let Some(v) = f.display_name {
        row.display_name = v;
    }
    if let Some(v) = f.account_ref {
        row.account_ref = v;
    }
    if let Some(v) = f.base_url {
        row.base_url = v;
    }
    if let Some(v) = f.enabled {
        row.enabled = v;
    }
    if let Some(v) = f.config_json {
        row.config_json = v;
    }
}

async fn save(
    db: &DatabaseConnection,
    principal: &Principal,
    row: provider_accounts::Model,
    exists: bool,
    event_code: &'static str,
) -> Result<(provider_accounts::Model, Uuid), ServiceError> {
    let txn = crate::db::begin_write(db).await?;
    let active = provider_accounts::ActiveModel::from(row.clone());
    if exists {
        active.reset_all().update(&txn).await?;
    } else if let Err(e) = active.insert(&txn).await {
        // Two creates of one code at once: the second is told, not failed.
        return Err(match e.sql_err() {
            Some(sea_orm::SqlErr::UniqueConstraintViolation(_)) => ServiceError::Conflict {
                code: "concurrent_update",
                message: "The provider account was created concurrently; retry".into(),
            },
            _ => e.into(),
        });
    }
    let audit_id = audit::record(
        &txn,
        AuditEntry {
            principal,
            project_id: Some(row.project_id),
            event_code,
            payload: json!({ "provider_code": row.provider_code, "enabled": row.enabled }),
        },
    )
    .await?;
    crate::db::commit(txn).await?;
    Ok((row, audit_id))
}

/// A new account with the defaults (name = code, enabled, `{}` config).
pub fn new_row(project_id: Uuid, code: &str) -> provider_accounts::Model {
    let now = time::now();
    provider_accounts::Model {
        id: Uuid::now_v7(),
        project_id,
        provider_code: code.to_string(),
        display_name: code.to_string(),
        account_ref: None,
        base_url: None,
        enabled: true,
        config_json: json!({}),
        created_at: now,
        updated_at: now,
    }
}

/// The contract's JSON shape (unset text as `""`).
pub fn view(a: &provider_accounts::Model) -> Value {
    json!({
        "project_id": a.project_id, "provider_code": a.provider_code, "display_name": a.display_name,
        "account_ref": a.account_ref.clone().unwrap_or_default(),
        "base_url": a.base_url.clone().unwrap_or_default(), "enabled": a.enabled,
        "config_json": a.config_json,
        "created_at": time::format(&a.created_at), "updated_at": time::format(&a.updated_at),
    })
}

/// Creates the account or updates the one with this code (supplied fields only).
pub async fn upsert(
    db: &DatabaseConnection,
    principal: &Principal,
    project_id: Uuid,
    code: String,
    fields: ValidFields,
) -> Result<(provider_accounts::Model, Uuid), ServiceError> {
    let now = time::now();
    let existing = match get(db, project_id, &code).await {
        Ok(row) => Some(row),
        Err(ServiceError::NotFound(_)) => None,
        Err(e) => return Err(e),
    };
    let exists = existing.is_some();
    let mut row = existing.unwrap_or_else(|| new_row(project_id, &code));
    apply(&mut row, fields);
    row.updated_at = now;
    save(db, principal, row, exists, "provider_account.upserted").await
}

pub async fn update(
    db: &DatabaseConnection,
    principal: &Principal,
    project_id: Uuid,
    code: &str,
    fields: ValidFields,
) -> Result<(provider_accounts::Model, Uuid), ServiceError> {
    let mut row = get(db, project_id, code).await?;
    apply(&mut row, fields);
    row.updated_at = time::now();
    save(db, principal, row, true, "provider_account.updated").await
}

pub async fn delete(
    db: &DatabaseConnection,
    principal: &Principal,
    project_id: Uuid,
    code: &str,
) -> Result<Uuid, ServiceError> {
    let row = get(db, project_id, code).await?;
    let txn = crate::db::begin_write(db).await?;
    provider_accounts::Entity::delete_by_id(row.id)
        .exec(&txn)
        .await?;
    let audit_id = audit::record(
        &txn,
        AuditEntry {
            principal,
            project_id: Some(project_id),
            event_code: "provider_account.deleted",
            payload: json!({ "provider_code": row.provider_code }),
        },
    )
    .await?;
    crate::db::commit(txn).await?;
    Ok(audit_id)
}

/// The outcome of asking a provider whether the credentials work.
#[derive(Debug, serde::Serialize)]
pub struct CredentialCheck {
    pub provider_code: String,
    /// `ok` or `failed`.
    pub status: &'static str,
    /// The taxonomy code of the failure (`provider_auth`, `provider_not_configured`, …).
    pub error_code: Option<&'static str>,
    pub message: Option<String>,
    /// Whose key was tried: `project` (its secret `{code}/api_key`) or `service`.
    pub key_source: &'static str,
    pub latency_ms: u64,
    /// What a passing check does not prove (e.g. OpenAI's organization
    /// verification, known only from a paid call).
    pub caveat: Option<&'static str>,
}

/// Validates the credentials against the provider itself, with a call that
/// costs nothing. Refuses codes the service has no adapter for.
pub async fn check_credentials(
    engine: crate::ports::RunEngine<'_>,
    project_id: Uuid,
    code: &str,
) -> Result<CredentialCheck, ServiceError> {
    let deps = &engine.deps;
    let own =
        crate::secrets::provider_key(&deps.db, deps.secret_keys.as_ref(), project_id, code).await?;
    let key_source = if own.is_some() { "project" } else { "service" };
    let began = std::time::Instant::now();
    let mut caveat = None;
    let outcome = if let Some(p) = deps.provider(code) {
        caveat = p.credential_check_caveat();
        p.check_credentials(own).await
    } else if let Some(r) = deps.removers.get(code) {
        r.check_credentials(own).await
    } else {
        return Err(ServiceError::validation(
            "unknown_provider",
            format!("Provider '{code}' is not configured on this service"),
        ));
    };
    crate::metrics::observe_call(
        code,
        outcome.as_ref().map_or_else(|e| e.code(), |_| "ok"),
        began.elapsed(),
    );
    let outcome_ok = outcome.is_ok();
    Ok(CredentialCheck {
        provider_code: code.to_string(),
        status: if outcome.is_ok() { "ok" } else { "failed" },
        error_code: outcome.as_ref().err().map(|e| e.code()),
        message: outcome.err().map(|e| e.to_string()),
        key_source,
        latency_ms: began.elapsed().as_millis() as u64,
        caveat: caveat.filter(|_| outcome_ok),
    })
}
