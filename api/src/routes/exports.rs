//! **New**: creating export packages (the frozen API only lists and reads
//! them: routes 27 and 28, in `ledger.rs`) and canceling one being built.

use actix_web::{HttpResponse, post, web};
use domain::exports::{ExportRequest, PackageFormat};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::ledger::Export;
use crate::AppState;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{JsonBody, ProjectAccess, ProjectSlug};

#[derive(Deserialize, ToSchema, Default)]
#[serde(default)]
pub struct CreateExportBody {
    /// `zip` (default), `tar.gz`, or `cbz` (the winners in scene order as a
    /// comic book archive).
    format: Option<String>,
    /// Only these runs (and the inputs they started from); default: the
    /// whole project.
    run_ids: Option<Vec<String>>,
}

#[derive(Serialize, ToSchema)]
pub struct ExportStarted {
    ok: bool,
    /// `running`; poll `GET …/exports/{id}` until `completed`, `failed` or
    /// `canceled`.
    export: Export,
}

/// **New.** Start an export package of the project (or of some runs), built
/// in the background: `zip`/`tar.gz` with `manifest.json` and every file,
/// or a `cbz`. The same content always gives the same bytes; the package
/// is stored as an asset (`export_asset_id`) with its `checksum_sha256`.
#[utoipa::path(tag = "ledger", params(("slug" = String, Path)),
    request_body(content = CreateExportBody, content_type = "application/json"),
    responses((status = 202, body = ExportStarted),
        (status = 400, body = ErrorBody, description = "invalid_export_format, invalid_run_id"),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody, description = "the project, or one of the runs")))]
#[post("/api/projects/{slug}/exports")]
pub async fn create_export(
    state: web::Data<AppState>,
    access: ProjectSlug,
    JsonBody(body): JsonBody<CreateExportBody>,
) -> ApiResult<HttpResponse> {
    // The body is checked before the project is looked up (v1's order).
    let format = PackageFormat::parse(body.format.as_deref().unwrap_or("zip"))?;
    let run_ids = body
        .run_ids
        .unwrap_or_default()
        .iter()
        .map(|r| {
            Uuid::parse_str(r.trim()).map_err(|_| {
                ApiError::validation("invalid_run_id", format!("'{r}' is not a run id"))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let ProjectAccess { project, principal } = access.authorize(&state).await?;
    let request = ExportRequest { format, run_ids };
    let export = domain::exports::start(
        &state.db,
        &principal,
        &project,
        &request,
        &state.engine.deps.node_id,
    )
    .await?;
    if let Err(e) = state
        .engine
        .start_export(project, export.clone(), request)
        .await
    {
        // Recorded but never started: it ends failed, not running forever.
        domain::exports::fail(&state.db, export.id, &e.public_message()).await?;
        return Err(e.into());
    }
    Ok(HttpResponse::Accepted().json(ExportStarted {
        ok: true,
        export: Export::from(export),
    }))
}

#[derive(Serialize, ToSchema)]
pub struct ExportCanceled {
    ok: bool,
    /// As it stands: `running` until the builder stops (before its next
    /// file), then `canceled`.
    export: Export,
}

/// **New.** Cancel an export being built; it ends `canceled` and stores
/// nothing.
#[utoipa::path(tag = "ledger", params(("slug" = String, Path), ("exportId" = String, Path)),
    responses((status = 200, body = ExportCanceled),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "export_not_running")))]
#[post("/api/projects/{slug}/exports/{exportId}/cancel")]
pub async fn cancel_export(
    state: web::Data<AppState>,
    ProjectAccess { project, .. }: ProjectAccess,
    path: web::Path<(String, String)>,
) -> ApiResult<web::Json<ExportCanceled>> {
    let (_, export_id) = path.into_inner();
    let export = domain::ledger::export(&state.db, project.id, &export_id).await?;
    if export.status != "running" || !state.engine.cancel_export(export.id).await? {
        return Err(ApiError::new(
            actix_web::http::StatusCode::CONFLICT,
            crate::error::ErrorKind::Validation,
            "export_not_running",
            format!(
                "Export {} is {}, not running here",
                export.id, export.status
            ),
        ));
    }
    Ok(web::Json(ExportCanceled {
        ok: true,
        export: Export::from(export),
    }))
}
