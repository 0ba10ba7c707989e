//! How a call's record ends: failed (reservation released), outcome unknown
//! (kept as possibly billed), abandoned by a crash (settled at the next
//! start), or completed with its actual cost and cost event.

use entities::{cost_events, provider_calls};
use providers::{Cost, ProviderError};
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter};
use serde_json::json;
use uuid::Uuid;

use crate::runs::lease::{Fence, hold};
use crate::runs::pipeline::JobEnv;
use crate::status::CallStatus;
use crate::{ServiceError, time};

/// The attempt failed without a bill (refused, or never sent): the record
/// says why and the reservation is released. `count_attempt`: the attempt
/// was not counted by [`super::mark_sent`] (free calls).
pub(crate) async fn fail(
    db: &sea_orm::DatabaseConnection,
    fence: Option<&Fence>,
    call_id: Uuid,
    code: &str,
    message: &str,
    count_attempt: bool,
) -> Result<(), ServiceError> {
    let txn = crate::db::begin_write(db).await?;
    hold(&txn, fence).await?;
    let mut update = provider_calls::Entity::update_many()
        .col_expr(
            provider_calls::Column::Status,
            Expr::value(CallStatus::Failed),
        )
        .col_expr(provider_calls::Column::ErrorCode, Expr::value(code))
        .col_expr(provider_calls::Column::ErrorMessage, Expr::value(message))
        .col_expr(
            provider_calls::Column::SentAt,
            Expr::value(Option::<chrono::DateTime<chrono::Utc>>::None),
        )
        .col_expr(provider_calls::Column::FinishedAt, Expr::value(time::now()))
        .col_expr(provider_calls::Column::UpdatedAt, Expr::value(time::now()));
    if count_attempt {
        update = update.col_expr(
            provider_calls::Column::SentAttempts,
            Expr::col(provider_calls::Column::SentAttempts).add(1),
        );
    }
    update
        .filter(provider_calls::Column::Id.eq(call_id))
        .exec(&txn)
        .await?;
    crate::db::commit(txn).await?;
    Ok(())
}

/// Gives up a reserved attempt before it was sent (cancel, shutdown).
pub(super) async fn release(
    env: &JobEnv,
    fence: Option<&Fence>,
    call_id: Uuid,
    code: &str,
    message: &str,
) -> Result<(), ServiceError> {
    let txn = crate::db::begin_write(&env.db).await?;
    hold(&txn, fence).await?;
    provider_calls::Entity::update_many()
        .col_expr(
            provider_calls::Column::Status,
            Expr::value(if code == CallStatus::Canceled {
                CallStatus::Canceled
            } else {
                CallStatus::Failed
            }),
        )
        .col_expr(provider_calls::Column::ErrorCode, Expr::value(code))
        .col_expr(provider_calls::Column::ErrorMessage, Expr::value(message))
        .col_expr(provider_calls::Column::UpdatedAt, Expr::value(time::now()))
        .filter(provider_calls::Column::Id.eq(call_id))
        .filter(provider_calls::Column::Status.eq(CallStatus::Pending))
        .filter(provider_calls::Column::SentAt.is_null())
        .exec(&txn)
        .await?;
    crate::db::commit(txn).await?;
    Ok(())
}

/// An attempt was sent and its answer lost or unusable: it may have been
/// billed. What the provider reported it charged, else the reservation, is
/// kept as spent (`possibly_billed_usd`) and recorded in the ledger. Returns
/// the amount.
pub(crate) async fn settle_unknown(
    db: &sea_orm::DatabaseConnection,
    fence: Option<&Fence>,
    call: &provider_calls::Model,
    attempt: u32,
    reserved: f64,
    err: &ProviderError,
) -> Result<f64, ServiceError> {
    let (amount, billing, detail) = match err.reported_cost() {
        Some(cost) => (cost.usd, "billed", cost.detail.clone()),
        None => (
            reserved,
            "possibly_billed",
            json!({ "basis": "reservation", "reason": err.code() }),
        ),
    };
    let txn = crate::db::begin_write(db).await?;
    hold(&txn, fence).await?;
    provider_calls::Entity::update_many()
        .col_expr(
            provider_calls::Column::Status,
            Expr::value(CallStatus::Unknown),
        )
        .col_expr(
            provider_calls::Column::PossiblyBilledUsd,
            Expr::col(provider_calls::Column::PossiblyBilledUsd).add(amount),
        )
        .col_expr(provider_calls::Column::ErrorCode, Expr::value(err.code()))
        .col_expr(
            provider_calls::Column::ErrorMessage,
            Expr::value(err.to_string()),
        )
        .col_expr(
            provider_calls::Column::SentAt,
            Expr::value(Option::<chrono::DateTime<chrono::Utc>>::None),
        )
        .col_expr(provider_calls::Column::FinishedAt, Expr::value(time::now()))
        .col_expr(provider_calls::Column::UpdatedAt, Expr::value(time::now()))
        .filter(provider_calls::Column::Id.eq(call.id))
        .exec(&txn)
        .await?;
    if amount > 0.0 {
        cost_events::Entity::insert(cost_events::ActiveModel::from(cost_event(
            call,
            amount,
            None,
            billing,
            json!({ "attempt": attempt, "outcome": "unknown", "cost": detail }),
        )))
        .exec_without_returning(&txn)
        .await?;
    }
    crate::db::commit(txn).await?;
    Ok(amount)
}

/// Settles the calls of jobs whose worker is gone (an expired lease, a
/// cancel after a crash, a shutdown): a pending call that was sent had an
/// unknown outcome (possibly billed, its reservation kept); one that was not
/// sent is released.
pub async fn settle_abandoned<C: ConnectionTrait>(
    db: &C,
    job_ids: &[Uuid],
) -> Result<(), ServiceError> {
    if job_ids.is_empty() {
        return Ok(());
    }
    let pending = provider_calls::Entity::find()
        .filter(provider_calls::Column::JobId.is_in(job_ids.iter().copied()))
        .filter(provider_calls::Column::Status.eq(CallStatus::Pending))
        .all(db)
        .await?;
    for call in pending {
        settle_abandoned_call(db, &call).await?;
    }
    Ok(())
}

/// Settles one pending call whose worker is gone (see [`settle_abandoned`]).
pub(crate) async fn settle_abandoned_call<C: ConnectionTrait>(
    db: &C,
    call: &provider_calls::Model,
) -> Result<(), ServiceError> {
    let now = time::now();
    if call.sent_at.is_some() {
        let amount = call.reserved_cost_usd;
        provider_calls::Entity::update_many()
            .col_expr(
                provider_calls::Column::Status,
                Expr::value(CallStatus::Unknown),
            )
            .col_expr(
                provider_calls::Column::PossiblyBilledUsd,
                Expr::col(provider_calls::Column::PossiblyBilledUsd).add(amount),
            )
            .col_expr(
                provider_calls::Column::ErrorCode,
                Expr::value("provider_outcome_unknown"),
            )
            .col_expr(
                provider_calls::Column::ErrorMessage,
                Expr::value("the call was in flight when its worker stopped"),
            )
            .col_expr(
                provider_calls::Column::SentAt,
                Expr::value(Option::<chrono::DateTime<chrono::Utc>>::None),
            )
            .col_expr(provider_calls::Column::FinishedAt, Expr::value(now))
            .col_expr(provider_calls::Column::UpdatedAt, Expr::value(now))
            .filter(provider_calls::Column::Id.eq(call.id))
            .filter(provider_calls::Column::Status.eq(CallStatus::Pending))
            .exec(db)
            .await?;
        if amount > 0.0 {
            cost_events::Entity::insert(cost_events::ActiveModel::from(cost_event(
                call,
                amount,
                None,
                "possibly_billed",
                json!({ "attempt": call.attempt, "outcome": "unknown",
                    "cost": { "basis": "reservation", "reason": "worker_stopped" } }),
            )))
            .exec_without_returning(db)
            .await?;
        }
    } else {
        provider_calls::Entity::update_many()
            .col_expr(
                provider_calls::Column::Status,
                Expr::value(CallStatus::Failed),
            )
            .col_expr(provider_calls::Column::ErrorCode, Expr::value("not_sent"))
            .col_expr(
                provider_calls::Column::ErrorMessage,
                Expr::value("reserved but not sent when its worker stopped"),
            )
            .col_expr(provider_calls::Column::UpdatedAt, Expr::value(now))
            .filter(provider_calls::Column::Id.eq(call.id))
            .filter(provider_calls::Column::Status.eq(CallStatus::Pending))
            .exec(db)
            .await?;
    }
    Ok(())
}

/// A ledger row for `call`.
pub(crate) fn cost_event(
    call: &provider_calls::Model,
    usd: f64,
    model: Option<String>,
    billing: &str,
    meta: serde_json::Value,
) -> cost_events::Model {
    let mut meta_json = json!({ "idempotency_key": call.idempotency_key });
    if let (Some(m), Some(extra)) = (meta_json.as_object_mut(), meta.as_object()) {
        m.extend(extra.clone());
    }
    cost_events::Model {
        id: Uuid::now_v7(),
        project_id: call.project_id,
        run_id: call.run_id,
        job_id: call.job_id,
        provider_call_id: Some(call.id),
        provider_code: call.provider_code.clone(),
        model_name: model.or_else(|| call.model_name.clone()),
        event_type: match call.operation.as_str() {
            "bg_remove" => "background_removal",
            "transcription" => "transcription",
            "speech" => "speech",
            _ => "image_generation",
        }
        .into(),
        units: 1.0,
        unit_cost_usd: usd,
        total_cost_usd: usd,
        currency: "USD".into(),
        meta_json,
        billing: billing.into(),
        created_at: time::now(),
    }
}

/// A delivered call's completion: the record marked succeeded with its
/// result, actual cost and usage (any error of an earlier attempt cleared)
/// and, for a paid call, its cost event. Both commit with the result's file.
pub(in crate::runs) fn completion(
    call: &provider_calls::Model,
    delivered: Delivered<'_>,
) -> (provider_calls::Model, Option<cost_events::Model>) {
    let now = time::now();
    let Delivered {
        result_asset_id,
        sha256,
        cost,
        model,
        provider_request_id,
        attempt,
    } = delivered;
    let event = (cost.usd > 0.0).then(|| {
        cost_event(
            call,
            cost.usd,
            model.clone(),
            "billed",
            json!({ "attempt": attempt, "cost": cost.detail.clone() }),
        )
    });
    let done = provider_calls::Model {
        status: CallStatus::Succeeded.into(),
        model_name: model.or_else(|| call.model_name.clone()),
        attempt: attempt as i32,
        actual_cost_usd: Some(cost.usd),
        result_asset_id: Some(result_asset_id),
        provider_request_id,
        response_json: json!({ "sha256": sha256, "cost": cost.detail.clone() }),
        error_code: None,
        error_message: None,
        sent_at: None,
        finished_at: Some(now),
        updated_at: now,
        ..call.clone()
    };
    (done, event)
}

/// What a delivered attempt produced.
pub(in crate::runs) struct Delivered<'a> {
    pub result_asset_id: Uuid,
    pub sha256: &'a str,
    pub cost: &'a Cost,
    pub model: Option<String>,
    pub provider_request_id: Option<String>,
    pub attempt: u32,
}
