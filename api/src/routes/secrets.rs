//! Project secrets: metadata only ever leaves the service (`has_value`),
//! values are encrypted at rest (AES-256-GCM, `enc:v1:`).

use actix_web::{delete, get, post, web};
use domain::secrets;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::AppState;
use crate::error::{ApiResult, ErrorBody};
use crate::extract::{JsonBody, ProjectAccess, ProjectSlug};

/// A secret as the API shows it: never its value or ciphertext.
#[derive(Serialize, ToSchema)]
pub struct SecretSummary {
    project_id: Uuid,
    provider_code: String,
    secret_name: String,
    has_value: bool,
    updated_at: String,
}

impl From<&entities::project_secrets::Model> for SecretSummary {
    fn from(s: &entities::project_secrets::Model) -> Self {
        Self {
            project_id: s.project_id,
            provider_code: s.provider_code.clone(),
            secret_name: s.secret_name.clone(),
            has_value: secrets::has_value(s),
            updated_at: domain::time::format(&s.updated_at),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct SecretList {
    ok: bool,
    count: usize,
    secrets: Vec<SecretSummary>,
}

/// Secret metadata, by provider code then name.
#[utoipa::path(tag = "secrets", params(("slug" = String, Path)),
    responses((status = 200, body = SecretList), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
#[get("/api/projects/{slug}/secrets")]
pub async fn list_secrets(
    state: web::Data<AppState>,
    ProjectAccess { project, .. }: ProjectAccess,
) -> ApiResult<web::Json<SecretList>> {
    let list: Vec<SecretSummary> = secrets::list(&state.db, project.id)
        .await?
        .iter()
        .map(SecretSummary::from)
        .collect();
    Ok(web::Json(SecretList {
        ok: true,
        count: list.len(),
        secrets: list,
    }))
}

#[derive(Serialize, ToSchema)]
pub struct KeyRefCount {
    key_ref: String,
    count: u64,
}

#[derive(Serialize, ToSchema)]
pub struct EncryptionStatus {
    total: u64,
    encrypted: u64,
    plaintext: u64,
    empty: u64,
    key_refs: Vec<KeyRefCount>,
}

#[derive(Serialize, ToSchema)]
pub struct RotationStatusResponse {
    ok: bool,
    status: EncryptionStatus,
}

/// How the project's secrets are stored (nothing is decrypted).
#[utoipa::path(tag = "secrets", params(("slug" = String, Path)),
    responses((status = 200, body = RotationStatusResponse), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
#[get("/api/projects/{slug}/secrets/rotation-status")]
pub async fn rotation_status(
    state: web::Data<AppState>,
    ProjectAccess { project, .. }: ProjectAccess,
) -> ApiResult<web::Json<RotationStatusResponse>> {
    let s = secrets::rotation_status(&state.db, project.id).await?;
    Ok(web::Json(RotationStatusResponse {
        ok: true,
        status: EncryptionStatus {
            total: s.total,
            encrypted: s.encrypted,
            plaintext: s.plaintext,
            empty: s.empty,
            key_refs: s
                .key_refs
                .into_iter()
                .map(|(key_ref, count)| KeyRefCount { key_ref, count })
                .collect(),
        },
    }))
}

#[derive(Deserialize, ToSchema, Default)]
#[serde(default)]
pub struct SecretBody {
    /// Normalised like a slug (`OpenAI` -> `openai`).
    provider_code: Option<String>,
    secret_name: Option<String>,
    /// Trimmed; stored encrypted, never returned.
    secret_value: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct SecretSaved {
    ok: bool,
    secret: SecretSummary,
    audit_id: Uuid,
}

/// Store (insert or replace) a secret, encrypted. The body is checked before
/// the project is looked up.
#[utoipa::path(tag = "secrets", params(("slug" = String, Path)),
    request_body(content = SecretBody, content_type = "application/json"),
    responses((status = 200, body = SecretSaved),
        (status = 400, body = ErrorBody, description = "field_required, field_too_long, invalid_provider_code"),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 500, body = ErrorBody, description = "the master key is unusable")))]
#[post("/api/projects/{slug}/secrets")]
pub async fn upsert_secret(
    state: web::Data<AppState>,
    access: ProjectSlug,
    JsonBody(body): JsonBody<SecretBody>,
) -> ApiResult<web::Json<SecretSaved>> {
    let valid = secrets::validate(secrets::NewSecret {
        provider_code: body.provider_code.as_deref(),
        secret_name: body.secret_name.as_deref(),
        secret_value: body.secret_value.as_deref(),
    })?;
    let ProjectAccess { project, principal } = access.authorize(&state).await?;
    let (row, audit_id) = secrets::upsert(
        &state.db,
        &state.config.secret_keys,
        &principal,
        project.id,
        valid,
    )
    .await?;
    Ok(web::Json(SecretSaved {
        ok: true,
        secret: SecretSummary::from(&row),
        audit_id,
    }))
}

#[derive(Deserialize, ToSchema, Default)]
#[serde(default)]
pub struct RotateBody {
    /// Only secrets with this `key_ref` label.
    from_key_ref: Option<String>,
    /// Also re-encrypt values already under the current label.
    force: Option<bool>,
}

#[derive(Serialize, ToSchema)]
pub struct RotationCounts {
    scanned: u64,
    rotated: u64,
    skipped_empty: u64,
    skipped_current_key_ref: u64,
    plaintext_reencrypted: u64,
}

#[derive(Serialize, ToSchema)]
pub struct Rotated {
    ok: bool,
    rotation: RotationCounts,
    audit_id: Uuid,
}

/// Re-encrypt with the current key (one transaction: a value no configured
/// key opens aborts the rotation with 409 and changes nothing; v1 answered
/// 500, see docs/api.md).
#[utoipa::path(tag = "secrets", params(("slug" = String, Path)),
    request_body(content = RotateBody, content_type = "application/json"),
    responses((status = 200, body = Rotated), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 400, body = ErrorBody, description = "policy: master_key_missing"),
        (status = 409, body = ErrorBody, description = "secret_undecryptable: a stored value no configured key opens")))]
#[post("/api/projects/{slug}/secrets/rotate")]
pub async fn rotate_secrets(
    state: web::Data<AppState>,
    ProjectAccess { project, principal }: ProjectAccess,
    JsonBody(body): JsonBody<RotateBody>,
) -> ApiResult<web::Json<Rotated>> {
    let (r, audit_id) = secrets::rotate(
        &state.db,
        &state.config.secret_keys,
        &principal,
        project.id,
        body.from_key_ref.as_deref(),
        body.force.unwrap_or(false),
    )
    .await?;
    Ok(web::Json(Rotated {
        ok: true,
        rotation: RotationCounts {
            scanned: r.scanned,
            rotated: r.rotated,
            skipped_empty: r.skipped_empty,
            skipped_current_key_ref: r.skipped_current_key_ref,
            plaintext_reencrypted: r.plaintext_reencrypted,
        },
        audit_id,
    }))
}

#[derive(Serialize, ToSchema)]
pub struct SecretDeleted {
    ok: bool,
    deleted: bool,
    audit_id: Uuid,
}

/// Delete a secret. A missing project is "Secret not found" too (as in v1).
#[utoipa::path(tag = "secrets", params(("slug" = String, Path), ("providerCode" = String, Path), ("secretName" = String, Path)),
    responses((status = 200, body = SecretDeleted), (status = 400, body = ErrorBody, description = "invalid_provider_code"),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
#[delete("/api/projects/{slug}/secrets/{providerCode}/{secretName}")]
pub async fn delete_secret(
    state: web::Data<AppState>,
    access: ProjectSlug,
    path: web::Path<(String, String, String)>,
) -> ApiResult<web::Json<SecretDeleted>> {
    let (_, code, name) = path.into_inner();
    // v1 says "Secret not found" for a missing project too.
    let ProjectAccess { project, principal } = access
        .authorize(&state)
        .await
        .map_err(|e| e.not_found_as("Secret not found"))?;
    let audit_id = secrets::delete(&state.db, &principal, project.id, &code, &name).await?;
    Ok(web::Json(SecretDeleted {
        ok: true,
        deleted: true,
        audit_id,
    }))
}
