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

use entities::{provider_calls, run_jobs, runs};
use providers::governor::Governor;
use providers::{CallOutcome, ProviderError};
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter};
use serde_json::json;
use uuid::Uuid;

use super::events;
use super::lease::Fence;
use super::pipeline::JobEnv;
use crate::status::{CallStatus, JobStatus, RunStatus};
use crate::{ServiceError, time};

mod records;

use records::release;
pub use records::settle_abandoned;
pub(super) use records::{Delivered, completion};
pub(crate) use records::{cost_event, fail, settle_abandoned_call, settle_unknown};

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

/// Whether the run or this job was canceled: both status columns in one
/// read (it runs before every call that had to wait for a place).
pub(super) async fn canceled<C: ConnectionTrait>(
    db: &C,
    run_id: Uuid,
    job_id: Uuid,
) -> Result<bool, ServiceError> {
    use sea_orm::{JoinType, QuerySelect};
    let statuses: Option<(String, Option<String>)> = run_jobs::Entity::find_by_id(job_id)
        .select_only()
        .column(run_jobs::Column::Status)
        .column(runs::Column::Status)
        .join(
            JoinType::LeftJoin,
            run_jobs::Entity::belongs_to(runs::Entity)
                .from(run_jobs::Column::RunId)
                .to(runs::Column::Id)
                .into(),
        )
        .filter(run_jobs::Column::RunId.eq(run_id))
        .into_tuple()
        .one(db)
        .await?;
    Ok(match statuses {
        Some((job, Some(run))) => job == JobStatus::Canceled || run == RunStatus::Canceled,
        // The job or its run is gone: nothing more is done for it.
        _ => true,
    })
}

/// One job's last answer of [`canceled`], reused for a moment: when many of
/// its candidates get a provider place at about the same time, one read
/// answers them all. A call goes out on a cancel state at most
/// [`CANCEL_FRESH`] old; a cancel, once seen, stays seen.
#[derive(Default)]
pub struct CancelMemo(std::sync::Mutex<Option<(std::time::Instant, bool)>>);

/// How long an answer of [`canceled`] is reused within one job.
const CANCEL_FRESH: Duration = Duration::from_millis(20);

impl CancelMemo {
    pub(super) async fn canceled<C: ConnectionTrait>(
        &self,
        db: &C,
        run_id: Uuid,
        job_id: Uuid,
    ) -> Result<bool, ServiceError> {
        let last = *self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, seen)) = last
            && (seen || at.elapsed() < CANCEL_FRESH)
        {
            return Ok(seen);
        }
        let seen = canceled(db, run_id, job_id).await?;
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some((std::time::Instant::now(), seen));
        Ok(seen)
    }
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
    // Every record this worker writes is conditional on its lease.
    let fence = Fence::of(job);
    let fence = Some(&fence);
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
        if !first && env.cancel.canceled(&env.db, run.id, job.id).await? {
            return Ok(Attempted::Canceled);
        }
        if env.drain.is_draining() {
            release(
                env,
                fence,
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
            if let Err(refused) = reserve(env, fence, run, call.id, attempt, plan.bound_usd).await {
                let code = match &refused {
                    _ if super::lease::is_lost(&refused) => return Err(refused),
                    ServiceError::Policy { code, .. } => *code,
                    _ => "reservation_failed",
                };
                fail(&env.db, fence, call.id, code, &refused.to_string(), false).await?;
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
                if env.cancel.canceled(&env.db, run.id, job.id).await? {
                    release(
                        env,
                        fence,
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
                        fence,
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
            // The last check before money is spent: a worker that lost its
            // lease sends nothing.
            mark_sent(&env.db, fence, call.id).await?;
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
                Some(settle_unknown(&env.db, fence, call, attempt, plan.bound_usd, &err).await?)
            }
            _ => {
                fail(&env.db, fence, call.id, err.code(), &err.to_string(), !paid).await?;
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
        &Fence::of(job),
        run.id,
        run.project_id,
        event_type,
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
    fence: Option<&Fence>,
    run: &runs::Model,
    call_id: Uuid,
    attempt: u32,
    amount: f64,
) -> Result<(), ServiceError> {
    match (&env.spend, amount > 0.0) {
        (Some(spend), true) => {
            spend
                .reserve(crate::ports::SpendRequest {
                    fence: fence.copied(),
                    call_id,
                    project_id: run.project_id,
                    run_id: Some(run.id),
                    attempt: attempt as i32,
                    amount,
                    run_budget: run.budget_usd,
                    project_budget: env.project_budget_usd,
                })
                .await
        }
        _ => {
            let txn = crate::db::begin_write(&env.db).await?;
            super::lease::hold(&txn, fence).await?;
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
pub(crate) async fn mark_sent(
    db: &sea_orm::DatabaseConnection,
    fence: Option<&Fence>,
    call_id: Uuid,
) -> Result<(), ServiceError> {
    let txn = crate::db::begin_write(db).await?;
    super::lease::hold(&txn, fence).await?;
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
