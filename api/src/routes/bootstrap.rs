//! Bootstrap prompt export and import (`kroma.bootstrap.v1`).

use actix_web::{get, post, web};
use domain::bootstrap;
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa::ToSchema;

use crate::AppState;
use crate::error::{ApiResult, ErrorBody};
use crate::extract::{JsonBody, ProjectAccess, ProjectSlug};

/// The project's settings (secret metadata only) with a prompt for an AI
/// assistant and the shape its answer should take.
#[utoipa::path(tag = "bootstrap", params(("slug" = String, Path)),
    responses((status = 200, description = "`ok, bootstrap{schema_version, generated_at, project, settings, expected_response, prompt}`"),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
#[get("/api/projects/{slug}/bootstrap-prompt")]
pub async fn export_bootstrap(
    state: web::Data<AppState>,
    ProjectAccess { project, .. }: ProjectAccess,
) -> ApiResult<web::Json<Value>> {
    let bootstrap = bootstrap::export(&state.db, &project).await?;
    Ok(web::Json(json!({ "ok": true, "bootstrap": bootstrap })))
}

#[derive(Deserialize, ToSchema, Default)]
#[serde(default)]
pub struct ImportBody {
    /// `merge` (default) or `replace` (each supplied section replaces that section).
    mode: Option<String>,
    /// Report the changes, write nothing.
    dry_run: Option<bool>,
    /// The settings object (takes precedence over `ai_response_text`).
    #[schema(value_type = Option<Object>)]
    settings: Option<Value>,
    /// An assistant's answer: JSON, a fenced JSON block, or text around one JSON object.
    ai_response_text: Option<String>,
}

/// Import settings, in one transaction. Checked before the project is looked up.
#[utoipa::path(tag = "bootstrap", params(("slug" = String, Path)),
    request_body(content = ImportBody, content_type = "application/json"),
    responses((status = 200, description = "`ok, bootstrap_import{schema_version, mode, dry_run, project_updated, applied, changes, project, settings}`"),
        (status = 400, body = ErrorBody, description = "invalid_bootstrap, invalid_mode, field_required, …"),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
#[post("/api/projects/{slug}/bootstrap-import")]
pub async fn import_bootstrap(
    state: web::Data<AppState>,
    access: ProjectSlug,
    JsonBody(body): JsonBody<ImportBody>,
) -> ApiResult<web::Json<Value>> {
    let request = bootstrap::parse_request(
        body.mode.as_deref(),
        body.dry_run,
        body.settings,
        body.ai_response_text.as_deref(),
    )?;
    let ProjectAccess { project, .. } = access.authorize(&state).await?;
    let result = bootstrap::import(
        &state.db,
        &project,
        request,
        &state.config.secret_keys.key_ref,
    )
    .await?;
    Ok(web::Json(json!({ "ok": true, "bootstrap_import": result })))
}
