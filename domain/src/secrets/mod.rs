//! Project secrets (provider API keys and the like): encrypted at rest
//! (`cipher`), keyed by provider code and name, never returned, logged,
//! audited or exported by value — responses carry `has_value` only.

pub mod cipher;

use std::collections::BTreeMap;

use entities::project_secrets;
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, QueryFilter,
    QueryOrder,
};
use serde_json::json;
use uuid::Uuid;

use self::cipher::{CipherError, KeySource, PREFIX};
use crate::audit::{self, AuditEntry};
use crate::error::required_text;
use crate::{Principal, ServiceError, projects, time};

const CODE_MAX: usize = 64;
const NAME_MAX: usize = 128;
const VALUE_MAX: usize = 16 * 1024;

impl From<CipherError> for ServiceError {
    // The message names no key material; it may name the key file's path
    // and the environment variable, which an operator needs.
    fn from(e: CipherError) -> Self {
        match e {
            // An operator's setting is missing or a stored value is beyond
            // every configured key: typed refusals, not server failures.
            CipherError::NoKey { .. } => ServiceError::Policy {
                code: "master_key_missing",
                message: format!("secrets: {e}"),
            },
            CipherError::Undecryptable => ServiceError::Conflict {
                code: "secret_undecryptable",
                message: format!("secrets: {e}"),
            },
            other => ServiceError::Internal(format!("secrets: {other}")),
        }
    }
}

/// The provider code as the contract normalises it (slug rules).
fn provider_code(raw: Option<&str>) -> Result<String, ServiceError> {
    let raw = required_text("provider_code", raw, CODE_MAX)?;
    projects::normalize_slug(&raw).ok_or_else(|| {
        ServiceError::validation(
            "invalid_provider_code",
            "Field 'provider_code' must contain letters or digits",
        )
    })
}

pub async fn list<C: ConnectionTrait>(
    db: &C,
    project_id: Uuid,
) -> Result<Vec<project_secrets::Model>, ServiceError> {
    Ok(project_secrets::Entity::find()
        .filter(project_secrets::Column::ProjectId.eq(project_id))
        .order_by_asc(project_secrets::Column::ProviderCode)
        .order_by_asc(project_secrets::Column::SecretName)
        .all(db)
        .await?)
}

pub fn has_value(s: &project_secrets::Model) -> bool {
    !s.secret_value.trim().is_empty()
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct RotationStatus {
    pub total: u64,
    pub encrypted: u64,
    pub plaintext: u64,
    pub empty: u64,
    /// Rows per `key_ref` label.
    pub key_refs: BTreeMap<String, u64>,
}

/// Counts by encryption state; nothing is decrypted.
pub async fn rotation_status<C: ConnectionTrait>(
    db: &C,
    project_id: Uuid,
) -> Result<RotationStatus, ServiceError> {
    let mut status = RotationStatus::default();
    for s in list(db, project_id).await? {
        status.total += 1;
        if !has_value(&s) {
            status.empty += 1;
        } else if s.secret_value.starts_with(PREFIX) {
            status.encrypted += 1;
        } else {
            status.plaintext += 1;
        }
        *status.key_refs.entry(s.key_ref).or_default() += 1;
    }
    Ok(status)
}

pub struct NewSecret<'a> {
    pub provider_code: Option<&'a str>,
    pub secret_name: Option<&'a str>,
    pub secret_value: Option<&'a str>,
}

/// Checked before the project is looked up (400 before 404).
pub struct ValidSecret {
    provider_code: String,
    secret_name: String,
    value: String,
}

pub fn validate(input: NewSecret<'_>) -> Result<ValidSecret, ServiceError> {
    Ok(ValidSecret {
        provider_code: provider_code(input.provider_code)?,
        secret_name: required_text("secret_name", input.secret_name, NAME_MAX)?,
        value: required_text("secret_value", input.secret_value, VALUE_MAX)?,
    })
}

/// Encrypts and stores (insert or replace) a secret; returns its row and the audit id.
pub async fn upsert(
    db: &DatabaseConnection,
    keys: &KeySource,
    principal: &Principal,
    project_id: Uuid,
    valid: ValidSecret,
) -> Result<(project_secrets::Model, Uuid), ServiceError> {
    // Writing may create the key file on first use.
    let master = keys.load(true)?;
    let sealed = master.encrypt(&valid.value)?;
    let now = time::now();
    let txn = crate::db::begin_write(db).await?;
    let existing = project_secrets::Entity::find()
        .filter(project_secrets::Column::ProjectId.eq(project_id))
        .filter(project_secrets::Column::ProviderCode.eq(valid.provider_code.as_str()))
        .filter(project_secrets::Column::SecretName.eq(valid.secret_name.as_str()))
        .one(&txn)
        .await?;
    let row = project_secrets::Model {
        id: existing.as_ref().map_or_else(Uuid::now_v7, |e| e.id),
        project_id,
        provider_code: valid.provider_code,
        secret_name: valid.secret_name,
        secret_value: sealed,
        key_ref: master.key_ref.clone(),
        created_at: existing.as_ref().map_or(now, |e| e.created_at),
        updated_at: now,
    };
    if existing.is_some() {
        project_secrets::ActiveModel::from(row.clone())
            .reset_all()
            .update(&txn)
            .await?;
    } else {
        project_secrets::ActiveModel::from(row.clone())
            .insert(&txn)
            .await?;
    }
    let audit_id = audit::record(
        &txn,
        AuditEntry {
            principal,
            project_id: Some(project_id),
            event_code: "secret.upserted",
            payload: json!({ "provider_code": row.provider_code, "secret_name": row.secret_name }),
        },
    )
    .await?;
    crate::db::commit(txn).await?;
    Ok((row, audit_id))
}

/// Deletes one secret; returns the audit id.
pub async fn delete(
    db: &DatabaseConnection,
    principal: &Principal,
    project_id: Uuid,
    raw_code: &str,
    secret_name: &str,
) -> Result<Uuid, ServiceError> {
    let code = provider_code(Some(raw_code))?;
    let txn = crate::db::begin_write(db).await?;
    let deleted = project_secrets::Entity::delete_many()
        .filter(project_secrets::Column::ProjectId.eq(project_id))
        .filter(project_secrets::Column::ProviderCode.eq(code.as_str()))
        .filter(project_secrets::Column::SecretName.eq(secret_name.trim()))
        .exec(&txn)
        .await?
        .rows_affected;
    if deleted == 0 {
        return Err(ServiceError::not_found("Secret not found"));
    }
    let audit_id = audit::record(
        &txn,
        AuditEntry {
            principal,
            project_id: Some(project_id),
            event_code: "secret.deleted",
            payload: json!({ "provider_code": code, "secret_name": secret_name.trim() }),
        },
    )
    .await?;
    crate::db::commit(txn).await?;
    Ok(audit_id)
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Rotation {
    pub scanned: u64,
    pub rotated: u64,
    pub skipped_empty: u64,
    pub skipped_current_key_ref: u64,
    pub plaintext_reencrypted: u64,
}

/// Re-encrypts the project's secrets with the current key, in one
/// transaction: one value that no configured key opens aborts it all.
pub async fn rotate(
    db: &DatabaseConnection,
    keys: &KeySource,
    principal: &Principal,
    project_id: Uuid,
    from_key_ref: Option<&str>,
    force: bool,
) -> Result<(Rotation, Uuid), ServiceError> {
    let from_key_ref = from_key_ref.map(str::trim).filter(|r| !r.is_empty());
    // Rotation never creates a key; without one there is nothing it could
    // have encrypted, so with no stored value it succeeds having done nothing.
    let master = match keys.load(false) {
        Ok(m) => m,
        Err(CipherError::NoKey { .. }) if !list(db, project_id).await?.iter().any(has_value) => {
            let txn = crate::db::begin_write(db).await?;
            let audit_id = audit::record(
                &txn,
                AuditEntry {
                    principal,
                    project_id: Some(project_id),
                    event_code: "secret.rotated",
                    payload: json!({ "from_key_ref": from_key_ref, "force": force, "scanned": 0, "rotated": 0 }),
                },
            )
            .await?;
            crate::db::commit(txn).await?;
            return Ok((Rotation::default(), audit_id));
        }
        Err(e) => return Err(e.into()),
    };
    let txn = crate::db::begin_write(db).await?;
    let mut rotation = Rotation::default();
    for s in list(&txn, project_id).await? {
        if from_key_ref.is_some_and(|r| r != s.key_ref) {
            continue;
        }
        rotation.scanned += 1;
        if !has_value(&s) {
            rotation.skipped_empty += 1;
            continue;
        }
        if !force && s.key_ref == master.key_ref {
            rotation.skipped_current_key_ref += 1;
            continue;
        }
        let plaintext = !s.secret_value.starts_with(PREFIX);
        let value = master.decrypt(&s.secret_value)?;
        project_secrets::Entity::update_many()
            .col_expr(
                project_secrets::Column::SecretValue,
                Expr::value(master.encrypt(&value)?),
            )
            .col_expr(
                project_secrets::Column::KeyRef,
                Expr::value(master.key_ref.clone()),
            )
            .col_expr(project_secrets::Column::UpdatedAt, Expr::value(time::now()))
            .filter(project_secrets::Column::Id.eq(s.id))
            .exec(&txn)
            .await?;
        rotation.rotated += 1;
        if plaintext {
            rotation.plaintext_reencrypted += 1;
        }
    }
    let audit_id = audit::record(
        &txn,
        AuditEntry {
            principal,
            project_id: Some(project_id),
            event_code: "secret.rotated",
            payload: json!({
                "from_key_ref": from_key_ref, "force": force,
                "scanned": rotation.scanned, "rotated": rotation.rotated,
            }),
        },
    )
    .await?;
    crate::db::commit(txn).await?;
    Ok((rotation, audit_id))
}

/// The secret name under which a project keeps a provider's API key.
pub const API_KEY: &str = "api_key";

/// The project's own API key for a provider (`{provider_code}/api_key`), if
/// it has one; adapters fall back to their environment credentials.
pub async fn provider_key<C: ConnectionTrait>(
    db: &C,
    keys: Option<&KeySource>,
    project_id: Uuid,
    provider_code: &str,
) -> Result<Option<providers::credentials::Secret>, ServiceError> {
    let Some(keys) = keys else {
        return Ok(None);
    };
    Ok(reveal(db, keys, project_id, provider_code, API_KEY)
        .await?
        .map(providers::credentials::Secret::new))
}

/// A secret's plaintext, for the code that calls providers; `None` when it
/// is missing or empty.
pub async fn reveal<C: ConnectionTrait>(
    db: &C,
    keys: &KeySource,
    project_id: Uuid,
    provider_code: &str,
    secret_name: &str,
) -> Result<Option<String>, ServiceError> {
    let Some(row) = project_secrets::Entity::find()
        .filter(project_secrets::Column::ProjectId.eq(project_id))
        .filter(project_secrets::Column::ProviderCode.eq(provider_code))
        .filter(project_secrets::Column::SecretName.eq(secret_name))
        .one(db)
        .await?
        .filter(has_value)
    else {
        return Ok(None);
    };
    Ok(Some(keys.load(false)?.decrypt(&row.secret_value)?))
}
