//! Webhooks per project: endpoints told when a run finishes or fails (signed
//! with HMAC-SHA256, retried with backoff, every delivery recorded).

use actix_web::{delete, get, post, web};
use domain::webhooks;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::AppState;
use crate::error::{ApiResult, ErrorBody};
use crate::extract::{JsonBody, ProjectAccess};

/// Unknown fields are ignored (as everywhere in the contract); typed fields are enforced.
#[derive(Deserialize, ToSchema, Default)]
#[serde(default)]
pub struct WebhookBody {
    /// `http` or `https` URL that receives a POST per event.
    url: Option<String>,
    /// Subset of `run.finished`, `run.failed` (default: both).
    events: Option<Vec<String>>,
    description: Option<String>,
}

/// A webhook as listed (never its signing secret).
#[derive(Serialize, ToSchema)]
pub struct Webhook {
    id: Uuid,
    project_id: Uuid,
    url: String,
    description: Option<String>,
    events: Vec<String>,
    active: bool,
    created_at: String,
}

impl From<&entities::webhooks::Model> for Webhook {
    fn from(w: &entities::webhooks::Model) -> Self {
        Self {
            id: w.id,
            project_id: w.project_id,
            url: w.url.clone(),
            description: w.description.clone(),
            events: serde_json::from_value(w.events_json.clone()).unwrap_or_default(),
            active: w.active,
            created_at: domain::time::format(&w.created_at),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct WebhookCreated {
    ok: bool,
    webhook: Webhook,
    /// Shown only here: verify `X-Atelier-Signature` with it.
    signing_secret: String,
    audit_id: Uuid,
}

/// Register a webhook. Each delivery is a POST of JSON with headers
/// `X-Atelier-Event`, `X-Atelier-Delivery` (same on retries),
/// `X-Atelier-Timestamp` and `X-Atelier-Signature: v1=<hex HMAC-SHA256(secret, "{timestamp}.{body}")>`.
#[utoipa::path(tag = "webhooks", params(("slug" = String, Path)),
    request_body(content = WebhookBody, content_type = "application/json"),
    responses((status = 200, body = WebhookCreated),
        (status = 400, body = ErrorBody, description = "field_required, invalid_url, url_not_allowed, url_unresolvable, invalid_events"),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
#[post("/api/projects/{slug}/webhooks")]
pub async fn create_webhook(
    state: web::Data<AppState>,
    ProjectAccess { project, principal }: ProjectAccess,
    JsonBody(body): JsonBody<WebhookBody>,
) -> ApiResult<web::Json<WebhookCreated>> {
    let created = webhooks::create(
        &state.db,
        &state.config.secret_keys,
        &state.config.outbound,
        &principal,
        &project,
        webhooks::NewWebhook {
            url: body.url.as_deref(),
            events: body.events,
            description: body.description.as_deref(),
        },
    )
    .await?;
    Ok(web::Json(WebhookCreated {
        ok: true,
        webhook: Webhook::from(&created.webhook),
        signing_secret: created.signing_secret,
        audit_id: created.audit_id,
    }))
}

#[derive(Serialize, ToSchema)]
pub struct WebhookList {
    ok: bool,
    count: usize,
    webhooks: Vec<Webhook>,
}

/// The project's webhooks, newest first.
#[utoipa::path(tag = "webhooks", params(("slug" = String, Path)),
    responses((status = 200, body = WebhookList), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
#[get("/api/projects/{slug}/webhooks")]
pub async fn list_webhooks(
    state: web::Data<AppState>,
    ProjectAccess { project, .. }: ProjectAccess,
) -> ApiResult<web::Json<WebhookList>> {
    let hooks: Vec<Webhook> = webhooks::list(&state.db, project.id)
        .await?
        .iter()
        .map(Webhook::from)
        .collect();
    Ok(web::Json(WebhookList {
        ok: true,
        count: hooks.len(),
        webhooks: hooks,
    }))
}

#[derive(Serialize, ToSchema)]
pub struct WebhookDeleted {
    ok: bool,
    deleted: bool,
    id: Uuid,
    audit_id: Uuid,
}

/// Remove a webhook and its delivery records (pending deliveries are dropped).
#[utoipa::path(tag = "webhooks", params(("slug" = String, Path), ("webhookId" = String, Path)),
    responses((status = 200, body = WebhookDeleted), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
#[delete("/api/projects/{slug}/webhooks/{webhookId}")]
pub async fn delete_webhook(
    state: web::Data<AppState>,
    ProjectAccess { project, principal }: ProjectAccess,
    path: web::Path<(String, String)>,
) -> ApiResult<web::Json<WebhookDeleted>> {
    let (_, webhook_id) = path.into_inner();

    let (id, audit_id) = webhooks::delete(&state.db, &principal, project.id, &webhook_id).await?;
    Ok(web::Json(WebhookDeleted {
        ok: true,
        deleted: true,
        id,
        audit_id,
    }))
}

#[derive(Deserialize, IntoParams)]
pub struct DeliveryQuery {
    /// Default 100, clamped to 1..1000.
    limit: Option<i64>,
}

#[derive(Serialize, ToSchema)]
pub struct DeliveryList {
    ok: bool,
    webhook_id: Uuid,
    count: usize,
    /// `{id, webhook_id, run_id, event_type, status (pending|delivered|failed),
    /// attempts, last_status_code, last_error, next_attempt_at, delivered_at,
    /// created_at, payload}`, newest first.
    #[schema(value_type = Vec<Object>)]
    deliveries: Vec<serde_json::Value>,
}

/// A webhook's deliveries and the outcome of their attempts.
#[utoipa::path(tag = "webhooks", params(("slug" = String, Path), ("webhookId" = String, Path), DeliveryQuery),
    responses((status = 200, body = DeliveryList), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
#[get("/api/projects/{slug}/webhooks/{webhookId}/deliveries")]
pub async fn list_deliveries(
    state: web::Data<AppState>,
    ProjectAccess { project, .. }: ProjectAccess,
    path: web::Path<(String, String)>,
    query: web::Query<DeliveryQuery>,
) -> ApiResult<web::Json<DeliveryList>> {
    let (_, webhook_id) = path.into_inner();

    let hook = webhooks::get(&state.db, project.id, &webhook_id).await?;
    let limit = query.limit.unwrap_or(100).clamp(1, 1000) as u64;
    let deliveries: Vec<serde_json::Value> = webhooks::deliveries(&state.db, hook.id, limit)
        .await?
        .iter()
        .map(webhooks::delivery_view)
        .collect();
    Ok(web::Json(DeliveryList {
        ok: true,
        webhook_id: hook.id,
        count: deliveries.len(),
        deliveries,
    }))
}
