//! Webhooks: a project's HTTP endpoints told when a run finishes or fails.
//!
//! A delivery row is created in the same transaction that finishes the run,
//! so no notification is lost to a crash; the WebhookActor sends due
//! deliveries, signed with HMAC-SHA256 over `{timestamp}.{body}`, and retries
//! failures with exponential backoff until `max_attempts`. Every attempt's
//! outcome is on the delivery's record. Receivers deduplicate on the
//! `X-Atelier-Delivery` header (the same on every retry).

use std::time::Duration;

use chrono::Utc;
use entities::{projects, webhook_deliveries, webhooks};
use hmac::{Hmac, KeyInit, Mac};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, QueryFilter,
    QueryOrder, QuerySelect,
};
use serde_json::{Value, json};
use sha2::Sha256;
use uuid::Uuid;

use crate::audit::{self, AuditEntry};
use crate::status::DeliveryStatus;
use crate::status::RunStatus;
use crate::{Principal, ServiceError, time};

/// Events a webhook can subscribe to.
pub const EVENTS: &[&str] = &["run.finished", "run.failed"];
const URL_MAX: usize = 2048;
const DESCRIPTION_MAX: usize = 200;
const ERROR_MAX: usize = 300;

#[derive(Clone, Copy, Debug)]
pub struct WebhookConfig {
    /// First retry after this long; doubles per attempt (capped at an hour).
    pub retry_base: Duration,
    pub max_attempts: i32,
    /// Per attempt, connection included.
    pub timeout: Duration,
    /// How often due deliveries are looked for.
    pub poll: Duration,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            retry_base: Duration::from_secs(2),
            max_attempts: 8,
            timeout: Duration::from_secs(10),
            poll: Duration::from_millis(500),
        }
    }
}

pub struct NewWebhook<'a> {
    pub url: Option<&'a str>,
    pub events: Option<Vec<String>>,
    pub description: Option<&'a str>,
}

pub struct CreatedWebhook {
    pub webhook: webhooks::Model,
    /// Shown once; the receiver verifies signatures with it.
    pub signing_secret: String,
    pub audit_id: Uuid,
}

fn parse_url(raw: Option<&str>) -> Result<String, ServiceError> {
    let raw = crate::error::required_text("url", raw, URL_MAX)?;
    let url = reqwest::Url::parse(&raw)
        .map_err(|_| ServiceError::validation("invalid_url", "Field 'url' is not a valid URL"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(ServiceError::validation(
            "invalid_url",
            "Field 'url' must be an http or https URL",
        ));
    }
    Ok(url.to_string())
}

fn parse_events(raw: Option<Vec<String>>) -> Result<Vec<String>, ServiceError> {
    let events = raw.unwrap_or_else(|| EVENTS.iter().map(|e| e.to_string()).collect());
    if events.is_empty() {
        return Err(ServiceError::validation(
            "invalid_events",
            "Field 'events' must name at least one event",
        ));
    }
    let mut out: Vec<String> = Vec::new();
    for e in events {
        let e = e.trim().to_ascii_lowercase();
        if !EVENTS.contains(&e.as_str()) {
            return Err(ServiceError::validation(
                "invalid_events",
                format!("Field 'events' must list only: {}", EVENTS.join(", ")),
            ));
        }
        if !out.contains(&e) {
            out.push(e);
        }
    }
    Ok(out)
}

pub async fn create(
    db: &DatabaseConnection,
    keys: &crate::secrets::cipher::KeySource,
    outbound: &crate::netpolicy::OutboundPolicy,
    principal: &Principal,
    project: &projects::Model,
    input: NewWebhook<'_>,
) -> Result<CreatedWebhook, ServiceError> {
    let url = parse_url(input.url)?;
    let events = parse_events(input.events)?;
    let description =
        crate::error::optional_text("description", input.description, DESCRIPTION_MAX)?;
    // The network check last: every field is well-formed by then.
    outbound.check_url("url", &url).await?;
    let signing_secret = format!(
        "whsec_{}{}",
        Uuid::new_v4().simple(),
        Uuid::new_v4().simple()
    );
    let now = time::now();
    let webhook = webhooks::Model {
        id: Uuid::now_v7(),
        project_id: project.id,
        url,
        description,
        // At rest like project secrets: encrypted with the master key.
        signing_secret: keys.load(true)?.encrypt(&signing_secret)?,
        events_json: json!(events),
        active: true,
        created_at: now,
        updated_at: now,
    };
    let txn = crate::db::begin_write(db).await?;
    webhooks::ActiveModel::from(webhook.clone())
        .insert(&txn)
        .await?;
    // The URL may carry credentials of the receiver's: only its host is audited.
    let host = reqwest::Url::parse(&webhook.url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_string));
    let audit_id = audit::record(
        &txn,
        AuditEntry {
            principal,
            project_id: Some(project.id),
            event_code: "webhook.created",
            payload: json!({ "webhook_id": webhook.id, "host": host, "events": events }),
        },
    )
    .await?;
    crate::db::commit(txn).await?;
    Ok(CreatedWebhook {
        webhook,
        signing_secret,
        audit_id,
    })
}

pub async fn list<C: ConnectionTrait>(
    db: &C,
    project_id: Uuid,
) -> Result<Vec<webhooks::Model>, ServiceError> {
    Ok(webhooks::Entity::find()
        .filter(webhooks::Column::ProjectId.eq(project_id))
        .order_by_desc(webhooks::Column::CreatedAt)
        .all(db)
        .await?)
}

pub async fn get<C: ConnectionTrait>(
    db: &C,
    project_id: Uuid,
    raw_id: &str,
) -> Result<webhooks::Model, ServiceError> {
    crate::lookup::owned::<webhooks::Entity, _>(
        db,
        (webhooks::Column::Id, webhooks::Column::ProjectId),
        project_id,
        raw_id,
        "Webhook not found",
    )
    .await
}

/// Deletes the webhook and its delivery records; returns the audit id.
pub async fn delete(
    db: &DatabaseConnection,
    principal: &Principal,
    project_id: Uuid,
    raw_id: &str,
) -> Result<(Uuid, Uuid), ServiceError> {
    let hook = get(db, project_id, raw_id).await?;
    let txn = crate::db::begin_write(db).await?;
    webhook_deliveries::Entity::delete_many()
        .filter(webhook_deliveries::Column::WebhookId.eq(hook.id))
        .exec(&txn)
        .await?;
    webhooks::Entity::delete_by_id(hook.id).exec(&txn).await?;
    let audit_id = audit::record(
        &txn,
        AuditEntry {
            principal,
            project_id: Some(project_id),
            event_code: "webhook.deleted",
            payload: json!({ "webhook_id": hook.id }),
        },
    )
    .await?;
    crate::db::commit(txn).await?;
    Ok((hook.id, audit_id))
}

/// A webhook's deliveries, newest first.
pub async fn deliveries<C: ConnectionTrait>(
    db: &C,
    webhook_id: Uuid,
    limit: u64,
) -> Result<Vec<webhook_deliveries::Model>, ServiceError> {
    Ok(webhook_deliveries::Entity::find()
        .filter(webhook_deliveries::Column::WebhookId.eq(webhook_id))
        .order_by_desc(webhook_deliveries::Column::CreatedAt)
        .order_by_desc(webhook_deliveries::Column::Id)
        .limit(limit)
        .all(db)
        .await?)
}

/// Records a delivery for every active webhook of the project subscribed to
/// this run outcome. Called inside the transaction that finishes the run.
pub async fn enqueue_run_outcome<C: ConnectionTrait>(
    txn: &C,
    run: &entities::runs::Model,
    jobs: usize,
    jobs_done: usize,
) -> Result<usize, ServiceError> {
    let event_type = if run.status == RunStatus::Failed {
        "run.failed"
    } else {
        "run.finished"
    };
    let hooks = webhooks::Entity::find()
        .filter(webhooks::Column::ProjectId.eq(run.project_id))
        .filter(webhooks::Column::Active.eq(true))
        .all(txn)
        .await?;
    let now = time::now();
    let rows: Vec<webhook_deliveries::ActiveModel> = hooks
        .iter()
        .filter(|h| {
            h.events_json
                .as_array()
                .is_some_and(|a| a.iter().any(|e| e == event_type))
        })
        .map(|h| {
            let id = Uuid::now_v7();
            webhook_deliveries::ActiveModel::from(webhook_deliveries::Model {
                id,
                project_id: run.project_id,
                webhook_id: h.id,
                run_id: Some(run.id),
                event_type: event_type.into(),
                payload_json: json!({
                    "id": id, "type": event_type, "created_at": time::format(&now),
                    "project_id": run.project_id,
                    "run": {
                        "id": run.id, "status": run.status, "jobs": jobs, "jobs_done": jobs_done,
                        "finished_at": run.finished_at.as_ref().map(time::format),
                    },
                }),
                status: DeliveryStatus::Pending.into(),
                attempts: 0,
                next_attempt_at: now,
                last_status_code: None,
                last_error: None,
                delivered_at: None,
                created_at: now,
                updated_at: now,
            })
        })
        .collect();
    let n = rows.len();
    if n > 0 {
        webhook_deliveries::Entity::insert_many(rows)
            .exec_without_returning(txn)
            .await?;
    }
    Ok(n)
}

/// `v1=<hex HMAC-SHA256(secret, "{timestamp}.{body}")>`.
pub fn sign(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
        // HMAC takes keys of any length; this branch cannot happen.
        return String::new();
    };
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// Delay before attempt `attempts + 1`: `base * 2^(attempts - 1)`, at most an hour.
pub fn backoff(base: Duration, attempts: i32) -> Duration {
    let factor = 2u32.saturating_pow(attempts.clamp(1, 20) as u32 - 1);
    base.saturating_mul(factor).min(Duration::from_secs(3600))
}

/// Sends every due delivery (claimed first, so two nodes never send the same
/// attempt); returns how many were attempted.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn deliver_due(
    db: &DatabaseConnection,
    http: &reqwest::Client,
    outbound: &crate::netpolicy::OutboundPolicy,
    config: &WebhookConfig,
    keys: Option<&crate::secrets::cipher::KeySource>,
) -> Result<usize, ServiceError> {
    let now = Utc::now();
    let due = webhook_deliveries::Entity::find()
        .filter(webhook_deliveries::Column::Status.eq(DeliveryStatus::Pending))
        .filter(webhook_deliveries::Column::NextAttemptAt.lte(now))
        .order_by_asc(webhook_deliveries::Column::NextAttemptAt)
        .limit(32)
        .all(db)
        .await?;
    let mut claimed = Vec::new();
    for d in due {
        // Claim: push the next attempt past this one's timeout; guarded on the
        // value read, so only one claimant wins.
        let until = now + chrono::Duration::from_std(config.timeout * 2).unwrap_or_default();
        let txn = crate::db::begin_write(db).await?;
        let won = webhook_deliveries::Entity::update_many()
            .col_expr(
                webhook_deliveries::Column::NextAttemptAt,
                Expr::value(until),
            )
            .filter(webhook_deliveries::Column::Id.eq(d.id))
            .filter(webhook_deliveries::Column::Status.eq(DeliveryStatus::Pending))
            .filter(webhook_deliveries::Column::NextAttemptAt.eq(d.next_attempt_at))
            .exec(&txn)
            .await?
            .rows_affected
            == 1;
        crate::db::commit(txn).await?;
        if won {
            claimed.push(d);
        }
    }
    let n = claimed.len();
    if n == 0 {
        return Ok(0);
    }
    // Signing secrets are encrypted at rest; one key load per pass.
    let master = match keys.map(|k| k.load(false)).transpose() {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(error = %e, "webhook signing keys unavailable");
            None
        }
    };
    let master = &master;
    let sends = claimed.into_iter().map(|d| async move {
        let hook = webhooks::Entity::find_by_id(d.webhook_id).one(db).await?;
        let secret = |h: &webhooks::Model| match master {
            Some(m) => m.decrypt(&h.signing_secret).ok(),
            // Without keys only a plaintext (legacy) secret can sign.
            None => (!h.signing_secret.starts_with(crate::secrets::cipher::PREFIX))
                .then(|| h.signing_secret.clone()),
        };
        let outcome = match &hook {
            // Checked again at delivery: the name may resolve elsewhere now
            // (the client's resolver checks every connection too).
            Some(h) if outbound.check_url("url", &h.url).await.is_err() => Err((
                None,
                "the receiver's address is not one this service sends to".to_string(),
            )),
            Some(h) => match secret(h) {
                Some(secret) => send(http, h, &secret, &d).await,
                None => Err((None, "the signing secret cannot be decrypted".to_string())),
            },
            None => Err((None, "webhook deleted".to_string())),
        };
        record_attempt(db, config, &d, outcome).await
    });
    for r in futures_util::future::join_all(sends).await {
        if let Err(e) = r {
            tracing::warn!(error = %e, "cannot record a webhook attempt");
        }
    }
    Ok(n)
}

type Outcome = Result<u16, (Option<u16>, String)>;

async fn send(
    http: &reqwest::Client,
    hook: &webhooks::Model,
    secret: &str,
    d: &webhook_deliveries::Model,
) -> Outcome {
    let body = serde_json::to_vec(&d.payload_json).map_err(|e| (None, e.to_string()))?;
    let timestamp = Utc::now().timestamp();
    let signature = sign(secret, timestamp, &body);
    let resp = http
        .post(&hook.url)
        .header("content-type", "application/json")
        .header("x-atelier-event", &d.event_type)
        .header("x-atelier-delivery", d.id.to_string())
        .header("x-atelier-timestamp", timestamp.to_string())
        .header("x-atelier-signature", signature)
        .body(body)
        .send()
        .await
        // Without the URL: it may hold the receiver's credentials.
        .map_err(|e| (None, e.without_url().to_string()))?;
    let status = resp.status().as_u16();
    if resp.status().is_success() {
        Ok(status)
    } else {
        Err((Some(status), format!("receiver answered {status}")))
    }
}

async fn record_attempt(
    db: &DatabaseConnection,
    config: &WebhookConfig,
    d: &webhook_deliveries::Model,
    outcome: Outcome,
) -> Result<(), ServiceError> {
    let now = Utc::now();
    let attempts = d.attempts + 1;
    let mut update = webhook_deliveries::Entity::update_many()
        .col_expr(webhook_deliveries::Column::Attempts, Expr::value(attempts))
        .col_expr(webhook_deliveries::Column::UpdatedAt, Expr::value(now));
    update = match outcome {
        Ok(code) => update
            .col_expr(
                webhook_deliveries::Column::Status,
                Expr::value(DeliveryStatus::Delivered),
            )
            .col_expr(
                webhook_deliveries::Column::LastStatusCode,
                Expr::value(i32::from(code)),
            )
            .col_expr(webhook_deliveries::Column::DeliveredAt, Expr::value(now)),
        Err((code, error)) => {
            let exhausted = attempts >= config.max_attempts;
            let next = now
                + chrono::Duration::from_std(backoff(config.retry_base, attempts))
                    .unwrap_or_default();
            let error: String = error.chars().take(ERROR_MAX).collect();
            update
                .col_expr(
                    webhook_deliveries::Column::Status,
                    Expr::value(if exhausted {
                        DeliveryStatus::Failed
                    } else {
                        DeliveryStatus::Pending
                    }),
                )
                .col_expr(
                    webhook_deliveries::Column::LastStatusCode,
                    Expr::value(code.map(i32::from)),
                )
                .col_expr(webhook_deliveries::Column::LastError, Expr::value(error))
                .col_expr(webhook_deliveries::Column::NextAttemptAt, Expr::value(next))
        }
    };
    let txn = crate::db::begin_write(db).await?;
    update
        .filter(webhook_deliveries::Column::Id.eq(d.id))
        .exec(&txn)
        .await?;
    crate::db::commit(txn).await?;
    Ok(())
}

/// For the API: a delivery without anything secret (there is nothing secret
/// in it: the payload is what the receiver got).
pub fn delivery_view(d: &webhook_deliveries::Model) -> Value {
    json!({
        "id": d.id, "webhook_id": d.webhook_id, "run_id": d.run_id, "event_type": d.event_type,
        "status": d.status, "attempts": d.attempts, "last_status_code": d.last_status_code,
        "last_error": d.last_error, "next_attempt_at": time::format(&d.next_attempt_at),
        "delivered_at": d.delivered_at.as_ref().map(time::format),
        "created_at": time::format(&d.created_at), "payload": d.payload_json,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Known answers computed outside this code base, with Python's
    /// `hmac.new(key, f"{ts}.".encode() + body, hashlib.sha256).hexdigest()`
    /// (the 100-byte key is longer than SHA-256's block: hashed first).
    #[test]
    fn signatures_match_independent_known_answers() {
        let long_key = "k".repeat(100);
        let vectors: [(&str, i64, &[u8], &str); 4] = [
            (
                "key",
                1_700_000_000,
                br#"{"a":1}"#,
                "a438e398bfafc57e4396bb7fc2304422f0f768e965d073ca313cb52e22e6ad03",
            ),
            (
                "whsec_3f9a",
                1_764_547_200,
                br#"{"event":"run.finished","run_id":"0190a1b2"}"#,
                "6036f4a457017dcb7af9514775afe4e813dc4aafe6fbbf85f15d726976f64e02",
            ),
            (
                "Jefe",
                0,
                b"what do ya want for nothing?",
                "37f471929915ccd2cbbe79feb84ffcff4f2bb25e15fc41c2506687331ae179cc",
            ),
            (
                &long_key,
                42,
                b"",
                "4db982d05c0ed99947717e4489eb9dcb4eedadae0f4eda7c3b18ded63c766369",
            ),
        ];
        for (key, ts, body, hex) in vectors {
            assert_eq!(sign(key, ts, body), format!("v1={hex}"), "key {key:.10}");
        }
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let base = Duration::from_secs(2);
        assert_eq!(backoff(base, 1), Duration::from_secs(2));
        assert_eq!(backoff(base, 2), Duration::from_secs(4));
        assert_eq!(backoff(base, 4), Duration::from_secs(16));
        assert_eq!(backoff(base, 30), Duration::from_secs(3600));
    }

    #[test]
    fn urls_and_events_are_checked() {
        assert!(parse_url(Some("https://example.com/hook?x=1")).is_ok());
        assert!(parse_url(Some("ftp://example.com")).is_err());
        assert!(parse_url(Some("not a url")).is_err());
        assert!(parse_url(None).is_err());
        assert_eq!(
            parse_events(None).unwrap(),
            vec!["run.finished", "run.failed"]
        );
        assert_eq!(
            parse_events(Some(vec!["RUN.FAILED".into(), "run.failed".into()])).unwrap(),
            vec!["run.failed"]
        );
        assert!(parse_events(Some(vec![])).is_err());
        assert!(parse_events(Some(vec!["job.done".into()])).is_err());
    }
}
