use std::time::UNIX_EPOCH;

use actix_web::{HttpResponse, get, web};
use serde::Serialize;
use utoipa::ToSchema;

use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::{AppState, CONTRACT_VERSION, SERVICE_NAME};

#[derive(Serialize, ToSchema)]
pub struct HealthResponse {
    ok: bool,
    status: &'static str,
    service: &'static str,
    version: &'static str,
    contract_version: &'static str,
    started_unix_ms: u64,
    route_count: usize,
    /// `sqlite` or `postgres`.
    database_backend: &'static str,
    /// Name of the newest applied migration.
    schema_version: String,
    /// **New**: the interactive API explorer (Swagger UI, served offline)
    /// and the document it reads.
    api_explorer: &'static str,
    openapi: &'static str,
}

/// Liveness and identity. Public; the only route that needs no token.
/// **New**: 503 `database_unreachable` (the usual error shape) while this
/// node's heartbeat cannot reach the database — it serves nothing stale and
/// leases nothing until it is back.
#[utoipa::path(
    tag = "system",
    security(()),
    responses(
        (status = 200, body = HealthResponse),
        (status = 503, body = ErrorBody, description = "database_unreachable"),
    )
)]
#[get("/health")]
pub async fn health(state: web::Data<AppState>) -> ApiResult<web::Json<HealthResponse>> {
    if !state.engine.database_reachable() {
        return Err(ApiError::from(domain::ServiceError::Unavailable {
            code: "database_unreachable",
            message: "This node cannot reach its database; try another node or retry shortly"
                .into(),
        }));
    }
    let started_unix_ms = state
        .started
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    Ok(web::Json(HealthResponse {
        ok: true,
        status: "ok",
        service: SERVICE_NAME,
        version: env!("CARGO_PKG_VERSION"),
        contract_version: CONTRACT_VERSION,
        started_unix_ms,
        route_count: state.routes.len(),
        database_backend: state.config.database_backend,
        schema_version: state.config.schema_version.clone(),
        api_explorer: "/docs/",
        openapi: "/openapi.json",
    }))
}

/// This OpenAPI document. Public.
#[utoipa::path(tag = "system", security(()), responses((status = 200, description = "OpenAPI 3.1 document")))]
#[get("/openapi.json")]
pub async fn openapi_json(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(actix_web::http::header::ContentType::json())
        .body(state.openapi_document())
}
