//! The life of one provider call record, across its attempts.
//!
//! Every attempt ends in one of four ways, and each is recorded before the
//! next step:
//! - **not sent** (the connection failed, the service is draining, a cancel
//!   came first): the reservation is released; a retry is free;
//! - **refused** by the provider (4xx, 5xx, 429): nothing was billed; a
//!   retryable refusal is retried under the engine's policy;
//! - **succeeded**: the caller makes the delivered file durable and marks the
//!   call succeeded with its actual cost in one commit ([`completion`]);
//! - **outcome unknown** (sent, answer lost or broken): the reservation is
//!   kept as possibly billed (a cost event says so) and the call is retried
//!   only if the provider's policy allows it (`retry_unknown_outcome`).
//!
//! Before a paid attempt goes out, `sent_at` is written: after a crash, a
//! pending call with `sent_at` had an unknown outcome, one without it was
//! never sent ([`settle_abandoned`]).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use entities::{cost_events, provider_calls, run_jobs, runs};
use providers::governor::Governor;
use providers::{CallOutcome, Cost, ProviderError};
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter};
use serde_json::json;
use uuid::Uuid;

use super::events;
use super::pipeline::JobEnv;
use crate::status::{CallStatus, JobStatus, RunStatus};
use crate::{ServiceError, time};

/// How one call may be attempted.
#[derive(Clone)]
pub(super) struct CallPlan {
    /// The most the call can cost (reserved per attempt); 0: free.
    pub bound_usd: f64,
    /// Whether an unknown outcome may be sent again.
    pub retry_unknown: bool,
    pub governor: Arc<Governor>,
    /// For the events: the candidate it belongs to.
    pub index: i32,
}

/// How the attempts of a call ended.
pub(super) enum Attempted<T> {
    Delivered {
        value: T,
        attempt: u32,
        /// When the answer arrived (the durable-write window starts here).
        arrived: std::time::Instant,
    },
    /// No usable result; the call's record says why.
    GaveUp {
        code: &'static str,
    },
    Canceled,
    /// The service is shutting down: nothing more is sent.
    Interrupted,
}

/// Whether the run or this job was canceled; reads two status columns.
pub(super) async fn canceled<C: ConnectionTrait>(
    db: &C,
    run_id: Uuid,
    job_id: Uuid,
) -> Result<bool, ServiceError> {
    use sea_orm::QuerySelect;
    let run: Option<String> = runs::Entity::find_by_id(run_id)
        .select_only()
        .column(runs::Column::Status)
        .into_tuple()
        .one(db)
        .await?;
    if run.is_none_or(|s| s == RunStatus::Canceled) {
        return Ok(true);
    }
    let job: Option<String> = run_jobs::Entity::find_by_id(job_id)
        .select_only()
        .column(run_jobs::Column::Status)
        .into_tuple()
        .one(db)
        .await?;
    Ok(job.is_none_or(|s| s == JobStatus::Canceled))
}

/// Attempts `call` until it delivers, gives up, is canceled or interrupted.
/// `in_flight`: its first attempt was recorded as started with the call
/// (free calls), so it needs no reservation.
pub(super) async fn attempt<T, F, Fut>(
    env: &JobEnv,
    run: &runs::Model,
    job: &run_jobs::Model,
    call: &provider_calls::Model,
    plan: &CallPlan,
    in_flight: bool,
    mut send: F,
) -> Result<Attempted<T>, ServiceError>
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<T, ProviderError>>,
{
    let paid = plan.bound_usd > 0.0;
    let mut attempt = Ord::max(call.attempt, 0) as u32;
    let mut sent = Ord::max(call.sent_attempts, 0) as u32;
    if call.status == CallStatus::Unknown && !plan.retry_unknown {
        return Ok(Attempted::GaveUp {
            code: "provider_outcome_unknown",
        });
    }
    if sent >= env.retry.max_attempts && call.status != CallStatus::Pending {
        return Ok(Attempted::GaveUp {
            code: "attempts_exhausted",
        });
    }
    let mut first = true;
    loop {
        // The job checked for a cancel just before its first attempts.
        if !first && canceled(&env.db, run.id, job.id).await? {
            return Ok(Attempted::Canceled);
        }
        if env.drain.is_draining() {
            release(
                env,
                call.id,
                "not_sent_shutdown",
                "the service was shutting down",
            )
            .await?;
            return Ok(Attempted::Interrupted);
        }
        let already_in_flight = first && in_flight;
        first = false;
        if !already_in_flight {
            attempt += 1;
            if let Err(refused) = reserve(env, run, call.id, attempt, plan.bound_usd).await {
                let code = match &refused {
                    ServiceError::Policy { code, .. } => *code,
                    _ => "reservation_failed",
                };
                fail(env, call.id, code, &refused.to_string(), false).await?;
                emit(
                    env,
                    run,
                    job,
                    "candidate.failed",
                    json!({
                        "candidate_index": plan.index, "attempt": attempt, "error_code": code,
                        "operation": call.operation,
                    }),
                )
                .await?;
                return Ok(Attempted::GaveUp { code });
            }
        }
        let _permit = match plan.governor.try_acquire() {
            Some(permit) => permit,
            None => {
                let permit = plan.governor.acquire().await;
                // Waited for a place: a cancel or a shutdown may have come meanwhile.
                if canceled(&env.db, run.id, job.id).await? {
                    release(
                        env,
                        call.id,
                        CallStatus::Canceled.as_str(),
                        "canceled before the call was made",
                    )
                    .await?;
                    return Ok(Attempted::Canceled);
                }
                if env.drain.is_draining() {
                    release(
                        env,
                        call.id,
                        "not_sent_shutdown",
                        "the service was shutting down",
                    )
                    .await?;
                    return Ok(Attempted::Interrupted);
                }
                permit
            }
        };
        if paid {
            mark_sent(env, call.id).await?;
        }
        let _calling = env.drain.call_started();
        let began = std::time::Instant::now();
        let result = send(attempt).await;
        let arrived = std::time::Instant::now();
        sent += 1;
        crate::metrics::observe_call(
            &call.provider_code,
            result.as_ref().map_or_else(|e| e.code(), |_| "ok"),
            began.elapsed(),
        );
        let err = match result {
            Ok(value) => {
                return Ok(Attempted::Delivered {
                    value,
                    attempt,
                    arrived,
                });
            }
            Err(err) => err,
        };
        match &err {
            ProviderError::RateLimited { retry_after, .. } => {
                plan.governor.observe_throttled(*retry_after)
            }
            ProviderError::Server { status: 503 } => plan.governor.observe_overloaded(),
            _ => {}
        }
        let outcome = err.outcome();
        let retry = err.is_retryable()
            && sent < env.retry.max_attempts
            && (outcome != CallOutcome::Unknown || plan.retry_unknown);
        let possibly_billed = match outcome {
            CallOutcome::Unknown => {
                Some(settle_unknown(env, call, attempt, plan.bound_usd, &err).await?)
            }
            _ => {
                fail(env, call.id, err.code(), &err.to_string(), !paid).await?;
                None
            }
        };
        emit(
            env,
            run,
            job,
            if retry {
                "candidate.retry_scheduled"
            } else {
                "candidate.failed"
            },
            json!({
                "candidate_index": plan.index, "attempt": attempt, "error_code": err.code(),
                "operation": call.operation,
                "outcome": match outcome {
                    CallOutcome::NotSent => "not_sent",
                    CallOutcome::Refused => "refused",
                    CallOutcome::Unknown => "unknown",
                },
                "possibly_billed_usd": possibly_billed,
            }),
        )
        .await?;
        if !retry {
            return Ok(Attempted::GaveUp {
                code: if outcome == CallOutcome::Unknown {
                    "provider_outcome_unknown"
                } else {
                    err.code()
                },
            });
        }
        tokio::time::sleep(retry_wait(env, job, plan.index, attempt, &err)).await;
    }
}

async fn emit(
    env: &JobEnv,
    run: &runs::Model,
    job: &run_jobs::Model,
    event_type: &str,
    payload: serde_json::Value,
) -> Result<(), ServiceError> {
    events::emit(
        &env.db,
        &env.hub,
        run.id,
        run.project_id,
        event_type,
        Some(job.id),
        payload,
    )
    .await
}

/// The pause before the next attempt: the policy's jittered backoff, or the
/// provider's Retry-After when longer.
fn retry_wait(
    env: &JobEnv,
    job: &run_jobs::Model,
    index: i32,
    attempt: u32,
    err: &ProviderError,
) -> Duration {
    let seed = u64::from(attempt) ^ (index as u64) << 8 ^ job.id.as_u128() as u64;
    env.retry
        .delay(attempt, seed)
        .max(err.retry_after().unwrap_or_default())
}

/// Marks the call in flight for this attempt; paid calls go through the
/// CostActor, which refuses when a budget would be exceeded.
async fn reserve(
    env: &JobEnv,
    run: &runs::Model,
    call_id: Uuid,
    attempt: u32,
    amount: f64,
) -> Result<(), ServiceError> {
    match (&env.spend, amount > 0.0) {
        (Some(spend), true) => {
            spend
                .reserve(crate::ports::SpendRequest {
                    call_id,
                    project_id: run.project_id,
                    run_id: run.id,
                    attempt: attempt as i32,
                    amount,
                    run_budget: run.budget_usd,
                    project_budget: env.project_budget_usd,
                })
                .await
        }
        _ => {
            let txn = crate::db::begin_write(&env.db).await?;
            provider_calls::Entity::update_many()
                .col_expr(
                    provider_calls::Column::Status,
                    Expr::value(CallStatus::Pending),
                )
                .col_expr(provider_calls::Column::Attempt, Expr::value(attempt as i32))
                .col_expr(provider_calls::Column::StartedAt, Expr::value(time::now()))
                .col_expr(
                    provider_calls::Column::SentAt,
                    Expr::value(Option::<chrono::DateTime<chrono::Utc>>::None),
                )
                .col_expr(provider_calls::Column::UpdatedAt, Expr::value(time::now()))
                .filter(provider_calls::Column::Id.eq(call_id))
                .exec(&txn)
                .await?;
            crate::db::commit(txn).await?;
            Ok(())
        }
    }
}

/// The attempt is going out now: from here a crash leaves an unknown outcome.
async fn mark_sent(env: &JobEnv, call_id: Uuid) -> Result<(), ServiceError> {
    let txn = crate::db::begin_write(&env.db).await?;
    provider_calls::Entity::update_many()
        .col_expr(provider_calls::Column::SentAt, Expr::value(time::now()))
        .col_expr(
            provider_calls::Column::SentAttempts,
            Expr::col(provider_calls::Column::SentAttempts).add(1),
        )
        .col_expr(provider_calls::Column::UpdatedAt, Expr::value(time::now()))
        .filter(provider_calls::Column::Id.eq(call_id))
        .exec(&txn)
        .await?;
    crate::db::commit(txn).await?;
    Ok(())
}

/// The attempt failed without a bill (refused, or never sent): the record
/// says why and the reservation is released. `count_attempt`: the attempt
/// was not counted by [`mark_sent`] (free calls).
pub(super) async fn fail(
    env: &JobEnv,
    call_id: Uuid,
    code: &str,
    message: &str,
    count_attempt: bool,
) -> Result<(), ServiceError> {
    let txn = crate::db::begin_write(&env.db).await?;
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
async fn release(
    env: &JobEnv,
    call_id: Uuid,
    code: &str,
    message: &str,
) -> Result<(), ServiceError> {
    let txn = crate::db::begin_write(&env.db).await?;
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
async fn settle_unknown(
    env: &JobEnv,
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
    let txn = crate::db::begin_write(&env.db).await?;
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
    let now = time::now();
    for call in pending {
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
                    &call,
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
    }
    Ok(())
}

/// A ledger row for `call`.
pub(super) fn cost_event(
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
pub(super) fn completion(
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
pub(super) struct Delivered<'a> {
    pub result_asset_id: Uuid,
    pub sha256: &'a str,
    pub cost: &'a Cost,
    pub model: Option<String>,
    pub provider_request_id: Option<String>,
    pub attempt: u32,
}
