//! Reads of a project's records: quality reports, the cost ledger and its
//! totals, exports.

use std::collections::BTreeMap;

use actix_web::{get, web};
use domain::cursor::{self, Cursor};
use domain::ledger;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::AppState;
use crate::error::{ApiResult, ErrorBody};
use crate::extract::{ProjectAccess, ProjectSlug};

fn ts(t: &chrono::DateTime<chrono::Utc>) -> String {
    domain::time::format(t)
}

#[derive(Deserialize, IntoParams)]
pub struct LedgerQuery {
    /// Default 500, clamped to 1..2000.
    limit: Option<i64>,
    /// **New**: only this run's records.
    run_id: Option<Uuid>,
    /// **New**: continue after a previous page (its `next_cursor`).
    cursor: Option<String>,
}

impl LedgerQuery {
    fn limit(&self) -> u64 {
        self.limit.unwrap_or(500).clamp(1, 2000) as u64
    }

    fn after(&self) -> Result<Option<Cursor>, domain::ServiceError> {
        self.cursor.as_deref().map(Cursor::decode).transpose()
    }
}

#[derive(Serialize, ToSchema)]
pub struct QualityReport {
    id: Uuid,
    project_id: Uuid,
    run_id: Option<Uuid>,
    job_id: Option<Uuid>,
    candidate_id: Option<Uuid>,
    asset_id: Option<Uuid>,
    report_type: String,
    /// `pass`, `warn` or `fail`.
    grade: String,
    hard_failures: i32,
    soft_warnings: i32,
    avg_chroma_exceed: f64,
    #[schema(value_type = Object)]
    summary_json: serde_json::Value,
    created_at: String,
}

#[derive(Serialize, ToSchema)]
pub struct QualityReportList {
    ok: bool,
    count: usize,
    quality_reports: Vec<QualityReport>,
    /// **New**: set when the page is full; pass it as `cursor` for the next one.
    next_cursor: Option<String>,
}

/// Output-guard reports, newest first.
#[utoipa::path(tag = "ledger", params(("slug" = String, Path), LedgerQuery),
    responses((status = 200, body = QualityReportList), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
#[get("/api/projects/{slug}/quality-reports")]
pub async fn list_quality_reports(
    state: web::Data<AppState>,
    ProjectAccess { project, .. }: ProjectAccess,
    query: web::Query<LedgerQuery>,
) -> ApiResult<web::Json<QualityReportList>> {
    let (limit, after) = (query.limit(), query.after()?);
    let rows = ledger::quality_reports(&state.db, project.id, query.run_id, limit, after).await?;
    let next_cursor = cursor::next(&rows, limit, |q| (q.created_at, q.id));
    let list: Vec<QualityReport> = rows
        .into_iter()
        .map(|q| QualityReport {
            id: q.id,
            project_id: q.project_id,
            run_id: q.run_id,
            job_id: q.job_id,
            candidate_id: q.candidate_id,
            asset_id: q.asset_id,
            report_type: q.report_type,
            grade: q.grade.unwrap_or_default(),
            hard_failures: q.hard_failures,
            soft_warnings: q.soft_warnings,
            avg_chroma_exceed: q.avg_chroma_exceed,
            summary_json: q.summary_json,
            created_at: ts(&q.created_at),
        })
        .collect();
    Ok(web::Json(QualityReportList {
        ok: true,
        count: list.len(),
        quality_reports: list,
        next_cursor,
    }))
}

#[derive(Serialize, ToSchema)]
pub struct CostEvent {
    id: Uuid,
    project_id: Uuid,
    run_id: Option<Uuid>,
    job_id: Option<Uuid>,
    provider_call_id: Option<Uuid>,
    provider_code: String,
    model_name: String,
    event_type: String,
    units: f64,
    unit_cost_usd: f64,
    total_cost_usd: f64,
    currency: String,
    #[schema(value_type = Object)]
    meta_json: serde_json::Value,
    created_at: String,
    /// **New**: `billed`, or `possibly_billed` for a call whose answer was
    /// lost (its reservation is counted as spent; `meta_json.cost` says why).
    billing: String,
}

#[derive(Serialize, ToSchema)]
pub struct CostEventList {
    ok: bool,
    count: usize,
    cost_events: Vec<CostEvent>,
    /// **New**: set when the page is full; pass it as `cursor` for the next one.
    next_cursor: Option<String>,
}

/// The cost ledger (one event per paid call), newest first.
#[utoipa::path(tag = "ledger", params(("slug" = String, Path), LedgerQuery),
    responses((status = 200, body = CostEventList), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
#[get("/api/projects/{slug}/cost-events")]
pub async fn list_cost_events(
    state: web::Data<AppState>,
    ProjectAccess { project, .. }: ProjectAccess,
    query: web::Query<LedgerQuery>,
) -> ApiResult<web::Json<CostEventList>> {
    let (limit, after) = (query.limit(), query.after()?);
    let rows = ledger::cost_events(&state.db, project.id, query.run_id, limit, after).await?;
    let next_cursor = cursor::next(&rows, limit, |c| (c.created_at, c.id));
    let list: Vec<CostEvent> = rows
        .into_iter()
        .map(|c| CostEvent {
            id: c.id,
            project_id: c.project_id,
            run_id: c.run_id,
            job_id: c.job_id,
            provider_call_id: c.provider_call_id,
            provider_code: c.provider_code,
            model_name: c.model_name.unwrap_or_default(),
            event_type: c.event_type,
            units: c.units,
            unit_cost_usd: c.unit_cost_usd,
            total_cost_usd: c.total_cost_usd,
            currency: c.currency,
            meta_json: c.meta_json,
            created_at: ts(&c.created_at),
            billing: c.billing,
        })
        .collect();
    Ok(web::Json(CostEventList {
        ok: true,
        count: list.len(),
        cost_events: list,
        next_cursor,
    }))
}

#[derive(Serialize, ToSchema)]
pub struct CostTotals {
    total_usd: f64,
    events: u64,
    by_provider: BTreeMap<String, f64>,
    by_model: BTreeMap<String, f64>,
    by_run: BTreeMap<String, f64>,
    /// By UTC day, `YYYY-MM-DD`.
    by_day: BTreeMap<String, f64>,
    /// Of `total_usd`, what calls whose answer was lost may have cost.
    possibly_billed_usd: f64,
}

#[derive(Serialize, ToSchema)]
pub struct CostSummaryResponse {
    ok: bool,
    summary: CostTotals,
}

/// **New**: spend totals, overall and by provider, model, run and day.
#[utoipa::path(tag = "ledger", params(("slug" = String, Path)),
    responses((status = 200, body = CostSummaryResponse), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
#[get("/api/projects/{slug}/cost-summary")]
pub async fn cost_summary(
    state: web::Data<AppState>,
    ProjectAccess { project, .. }: ProjectAccess,
) -> ApiResult<web::Json<CostSummaryResponse>> {
    let s = ledger::cost_summary(&state.db, project.id).await?;
    Ok(web::Json(CostSummaryResponse {
        ok: true,
        summary: CostTotals {
            total_usd: s.total_usd,
            events: s.events,
            by_provider: s.by_provider,
            by_model: s.by_model,
            by_run: s.by_run,
            by_day: s.by_day,
            possibly_billed_usd: s.possibly_billed_usd,
        },
    }))
}

#[derive(Serialize, ToSchema)]
pub struct Export {
    id: Uuid,
    project_id: Uuid,
    run_id: Option<Uuid>,
    status: String,
    export_format: String,
    storage_uri: String,
    rel_path: String,
    file_size_bytes: i64,
    checksum_sha256: String,
    export_asset_id: Option<Uuid>,
    #[schema(value_type = Object)]
    manifest_json: serde_json::Value,
    created_at: String,
    /// `""` until completed.
    completed_at: String,
}

impl From<entities::project_exports::Model> for Export {
    fn from(e: entities::project_exports::Model) -> Self {
        Self {
            id: e.id,
            project_id: e.project_id,
            run_id: e.run_id,
            status: e.status,
            export_format: e.export_format,
            storage_uri: e.storage_uri.unwrap_or_default(),
            rel_path: e.rel_path.unwrap_or_default(),
            file_size_bytes: e.file_size_bytes.unwrap_or_default(),
            checksum_sha256: e.checksum_sha256.unwrap_or_default(),
            export_asset_id: e.export_asset_id,
            manifest_json: e.manifest_json,
            created_at: ts(&e.created_at),
            completed_at: e.completed_at.as_ref().map(ts).unwrap_or_default(),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct ExportList {
    ok: bool,
    count: usize,
    exports: Vec<Export>,
    /// **New**: set when the page is full; pass it as `cursor` for the next one.
    next_cursor: Option<String>,
}

#[derive(Deserialize, IntoParams)]
pub struct ExportQuery {
    /// Default 500, clamped to 1..2000.
    limit: Option<i64>,
    /// **New**: continue after a previous page (its `next_cursor`).
    cursor: Option<String>,
}

/// Exports, newest first.
#[utoipa::path(tag = "ledger", params(("slug" = String, Path), ExportQuery),
    responses((status = 200, body = ExportList), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
#[get("/api/projects/{slug}/exports")]
pub async fn list_exports(
    state: web::Data<AppState>,
    ProjectAccess { project, .. }: ProjectAccess,
    query: web::Query<ExportQuery>,
) -> ApiResult<web::Json<ExportList>> {
    let limit = query.limit.unwrap_or(500).clamp(1, 2000) as u64;
    let after = query.cursor.as_deref().map(Cursor::decode).transpose()?;
    let rows = ledger::exports(&state.db, project.id, limit, after).await?;
    let next_cursor = cursor::next(&rows, limit, |e| (e.created_at, e.id));
    let list: Vec<Export> = rows.into_iter().map(Export::from).collect();
    Ok(web::Json(ExportList {
        ok: true,
        count: list.len(),
        exports: list,
        next_cursor,
    }))
}

#[derive(Serialize, ToSchema)]
pub struct ExportDetail {
    ok: bool,
    export: Export,
}

/// One export ("Project export not found" for any missing id or project).
#[utoipa::path(tag = "ledger", params(("slug" = String, Path), ("exportId" = String, Path)),
    responses((status = 200, body = ExportDetail), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
#[get("/api/projects/{slug}/exports/{exportId}")]
pub async fn get_export(
    state: web::Data<AppState>,
    access: ProjectSlug,
    path: web::Path<(String, String)>,
) -> ApiResult<web::Json<ExportDetail>> {
    let (_, export_id) = path.into_inner();
    // v1 names the export, not the project, when the project is missing.
    let ProjectAccess { project, .. } = access
        .authorize(&state)
        .await
        .map_err(|e| e.not_found_as("Project export not found"))?;
    let export = ledger::export(&state.db, project.id, &export_id).await?;
    Ok(web::Json(ExportDetail {
        ok: true,
        export: Export::from(export),
    }))
}

/// **New**: a run's output-guard results summed up.
#[utoipa::path(tag = "ledger", params(("slug" = String, Path), ("runId" = String, Path)),
    responses((status = 200, description = "`ok, run_id, summary{reports, by_grade, hard_failures, soft_warnings, mean_chroma_exceed, pass_rate}`"),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
#[get("/api/projects/{slug}/runs/{runId}/quality-summary")]
pub async fn quality_summary(
    state: web::Data<AppState>,
    ProjectAccess { project, .. }: ProjectAccess,
    path: web::Path<(String, String)>,
) -> ApiResult<web::Json<serde_json::Value>> {
    let (_, run_id) = path.into_inner();

    let run = domain::runs::store::get_run(&state.db, project.id, &run_id).await?;
    let summary = ledger::quality_summary(&state.db, project.id, run.id).await?;
    Ok(web::Json(
        serde_json::json!({ "ok": true, "run_id": run.id, "summary": summary }),
    ))
}
