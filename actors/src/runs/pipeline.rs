//! One job, end to end: every candidate through the provider (idempotently),
//! the output guard, storage and the registry; then ranking and the winner.
//! A plain async function: the WorkerActor schedules it and heartbeats the
//! job's lease; nothing here knows about actors.

use std::sync::Arc;
use std::time::Duration;

use entities::{asset_links, provider_calls, quality_reports, run_candidates, run_jobs, runs};
use futures_util::future::join_all;
use imaging::DecodeLimits;
use imaging::effects::{TimeOfDay, Weather};
use imaging::guard::{self, GuardReport, GuardSettings};
use providers::{GenerateRequest, ImageProvider, Stage};
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter};
use serde_json::json;
use storage::ObjectStore;
use tokio::sync::Semaphore;
use uuid::Uuid;

use super::events::{self, EventHub};
use super::manifest::Manifest;
use super::store::status;
use crate::assets::{self, NewAsset};
use crate::{ServiceError, time};

#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    /// Provider attempts per candidate (first call included).
    pub max_attempts: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
}

impl RetryPolicy {
    /// Exponential backoff with full jitter, capped.
    pub fn delay(&self, attempt: u32, jitter_seed: u64) -> Duration {
        let exp = self.base_delay.saturating_mul(1u32 << attempt.min(16));
        let cap = exp.min(self.max_delay);
        let frac = (imaging::effects::Rng::new(jitter_seed).next_u64() % 1000) as u32;
        cap.mul_f64(f64::from(frac) / 1000.0)
    }
}

/// Everything a job needs, handed over by the engine.
#[derive(Clone)]
pub struct JobEnv {
    pub db: DatabaseConnection,
    pub hub: EventHub,
    pub provider: Arc<dyn ImageProvider>,
    /// Bounds concurrent calls to this provider across all runs.
    pub provider_slots: Arc<Semaphore>,
    pub store: ObjectStore,
    pub retry: RetryPolicy,
    pub limits: DecodeLimits,
    /// The CostActor: asked before every paid attempt.
    pub spend: Option<actix::Recipient<crate::engine::ReserveSpend>>,
    /// The AuditActor: told about every paid call.
    pub audit: Option<actix::Recipient<crate::engine::PaidCall>>,
    pub project_budget_usd: Option<f64>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum JobOutcome {
    Done {
        final_asset_id: Uuid,
        selected_index: i32,
    },
    Failed {
        reason: String,
    },
    Canceled,
}

/// What every candidate of one job shares.
struct JobCtx<'a> {
    env: &'a JobEnv,
    run: &'a runs::Model,
    job: &'a run_jobs::Model,
    stage: Stage,
    input: &'a image::RgbaImage,
    input_id: Uuid,
    guard: GuardSettings,
}

#[derive(Debug, Clone)]
struct CandidateResult {
    index: i32,
    status: String,
    asset_id: Option<Uuid>,
    report: Option<GuardReport>,
}

fn stage_of(job: &run_jobs::Model) -> Result<Stage, ServiceError> {
    let variant = job
        .meta_json
        .get("variant")
        .and_then(|v| v.as_str())
        .unwrap_or("");
    let bad = || ServiceError::Internal(format!("job {} has an unknown stage", job.id));
    Ok(match job.stage.as_str() {
        "style" => Stage::Style,
        "time" => Stage::Time(match variant {
            "day" => TimeOfDay::Day,
            "dusk" => TimeOfDay::Dusk,
            "night" => TimeOfDay::Night,
            _ => return Err(bad()),
        }),
        "weather" => Stage::Weather(match variant {
            "clear" => Weather::Clear,
            "rain" => Weather::Rain,
            "snow" => Weather::Snow,
            "fog" => Weather::Fog,
            _ => return Err(bad()),
        }),
        _ => return Err(bad()),
    })
}

/// CPU-bound image work runs on the blocking pool, never on the actor threads.
async fn cpu<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, ServiceError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ServiceError::Internal(format!("image task failed: {e}")))
}

/// Whether the run or this job was canceled (checked before every provider call).
async fn canceled(
    db: &DatabaseConnection,
    run_id: Uuid,
    job_id: Uuid,
) -> Result<bool, ServiceError> {
    let run_gone = runs::Entity::find_by_id(run_id)
        .one(db)
        .await?
        .is_none_or(|r| r.status == status::CANCELED);
    Ok(run_gone
        || run_jobs::Entity::find_by_id(job_id)
            .one(db)
            .await?
            .is_none_or(|j| j.status == status::CANCELED))
}

/// Runs one leased job to its outcome and persists it.
pub async fn run_job(
    env: &JobEnv,
    run: &runs::Model,
    job: &run_jobs::Model,
) -> Result<JobOutcome, ServiceError> {
    let manifest: Manifest =
        serde_json::from_value(run.settings_snapshot_json.clone()).unwrap_or_default();
    let guard_settings = GuardSettings {
        max_chroma_delta: manifest.output_guard.max_chroma_delta,
        enforce_grayscale: manifest.output_guard.enforce_grayscale,
        fail_on_chroma_exceed: manifest.output_guard.fail_on_chroma_exceed,
    };
    let candidates = job
        .meta_json
        .get("candidates")
        .and_then(|v| v.as_u64())
        .unwrap_or(1)
        .max(1) as i32;
    let stage = stage_of(job)?;
    let input_id = job
        .input_asset_id
        .ok_or_else(|| ServiceError::Internal(format!("job {} has no input", job.id)))?;
    let (_, input_bytes) = assets::load_bytes(&env.db, &env.store, input_id).await?;
    let limits = env.limits;
    let input = Arc::new(
        cpu(move || imaging::decode(&input_bytes, limits))
            .await?
            .map_err(|e| ServiceError::Internal(format!("input image: {e}")))?,
    );
    // `job.started` was recorded with the lease (engine::run).

    let ctx = JobCtx {
        env,
        run,
        job,
        stage,
        input: &input,
        input_id,
        guard: guard_settings,
    };
    let results = join_all((0..candidates).map(|index| candidate(&ctx, index))).await;
    let mut finished = Vec::new();
    for r in results {
        match r {
            Ok(Some(c)) => finished.push(c),
            Ok(None) => return Ok(JobOutcome::Canceled),
            Err(e) => return Err(e),
        }
    }
    finish_job(env, run, job, finished).await
}

async fn candidate(ctx: &JobCtx<'_>, index: i32) -> Result<Option<CandidateResult>, ServiceError> {
    let JobCtx {
        env,
        run,
        job,
        input_id,
        ..
    } = *ctx;
    let guard_settings = &ctx.guard;
    // Already decided by an earlier attempt of this job: keep that verdict.
    if let Some(existing) = run_candidates::Entity::find()
        .filter(run_candidates::Column::JobId.eq(job.id))
        .filter(run_candidates::Column::CandidateIndex.eq(index))
        .one(&env.db)
        .await?
    {
        return Ok(Some(CandidateResult {
            index,
            status: existing.status,
            asset_id: existing.output_asset_id,
            report: Some(GuardReport {
                chroma_delta: 0.0,
                hard_failures: existing.rank_hard_failures as u32,
                soft_warnings: existing.rank_soft_warnings as u32,
                chroma_exceed: existing.rank_avg_chroma_exceed,
                reasons: Vec::new(),
            }),
        }));
    }
    let key = format!("{}:{}:c{}", run.id, job.job_key, index);
    let call = provider_calls::Entity::find()
        .filter(provider_calls::Column::IdempotencyKey.eq(key.as_str()))
        .one(&env.db)
        .await?;
    // A stored result is never paid for again: not after a retry, not after a crash.
    let (image, call_id) = match call {
        Some(c) if c.status == "succeeded" && c.result_asset_id.is_some() => {
            let asset_id = c.result_asset_id.unwrap_or_default();
            let (_, bytes) = assets::load_bytes(&env.db, &env.store, asset_id).await?;
            let img = imaging::decode(&bytes, env.limits)
                .map_err(|e| ServiceError::Internal(e.to_string()))?;
            let report = guard::check(&img, guard_settings);
            return record_candidate(env, run, job, index, asset_id, report, Some(c.id))
                .await
                .map(Some);
        }
        other => call_with_retries(ctx, index, &key, other).await?,
    };
    let Some((img, cost, model, request_id)) = image else {
        return Ok(if canceled(&env.db, run.id, job.id).await? {
            None
        } else {
            Some(CandidateResult {
                index,
                status: status::FAILED.into(),
                asset_id: None,
                report: None,
            })
        });
    };
    let settings = *guard_settings;
    let (img, report, png) = cpu(move || {
        let report = guard::check(&img, &settings);
        let png = imaging::encode_png(&img);
        (img, report, png)
    })
    .await?;
    let png = png.map_err(|e| ServiceError::Internal(e.to_string()))?;
    let archived = report.hard_failures > 0;
    // Failed candidates go to the archive, never deleted or overwritten
    // (run-scoped keys are unique).
    let storage_key = if archived {
        format!("archive/{}/{}/c{index}.png", run.id, job.job_key)
    } else {
        format!("runs/{}/{}/c{index}.png", run.id, job.job_key)
    };
    let txn = crate::db::begin_write(&env.db).await?;
    let asset = assets::store(
        &txn,
        &env.store,
        NewAsset {
            project_id: run.project_id,
            kind: if archived { "archived" } else { "generated" },
            key: &storage_key,
            width: img.width(),
            height: img.height(),
            bytes: png,
            mime: "image/png",
            run_id: Some(run.id),
            job_id: Some(job.id),
            candidate_id: None,
            metadata: json!({ "candidate_index": index, "stage": job.stage, "model": model }),
            dedup: false,
        },
    )
    .await?;
    provider_calls::Entity::update_many()
        .col_expr(provider_calls::Column::Status, Expr::value("succeeded"))
        .col_expr(provider_calls::Column::ActualCostUsd, Expr::value(cost))
        .col_expr(provider_calls::Column::ResultAssetId, Expr::value(asset.id))
        .col_expr(
            provider_calls::Column::ProviderRequestId,
            Expr::value(request_id),
        )
        .col_expr(provider_calls::Column::FinishedAt, Expr::value(time::now()))
        .col_expr(provider_calls::Column::UpdatedAt, Expr::value(time::now()))
        .filter(provider_calls::Column::Id.eq(call_id))
        .exec(&txn)
        .await?;
    if cost > 0.0 {
        entities::cost_events::Entity::insert(entities::cost_events::ActiveModel::from(
            entities::cost_events::Model {
                id: Uuid::now_v7(),
                project_id: run.project_id,
                run_id: Some(run.id),
                job_id: Some(job.id),
                provider_call_id: Some(call_id),
                provider_code: env.provider.code().into(),
                model_name: Some(model),
                event_type: "image_generation".into(),
                units: 1.0,
                unit_cost_usd: cost,
                total_cost_usd: cost,
                currency: "USD".into(),
                meta_json: json!({ "idempotency_key": key }),
                created_at: time::now(),
            },
        ))
        .exec_without_returning(&txn)
        .await?;
    }
    asset_links::Entity::insert(asset_links::ActiveModel::from(asset_links::Model {
        id: Uuid::now_v7(),
        project_id: run.project_id,
        parent_asset_id: input_id,
        child_asset_id: asset.id,
        link_type: "derived_from".into(),
        created_at: time::now(),
        updated_at: time::now(),
    }))
    .exec_without_returning(&txn)
    .await?;
    crate::db::commit(txn).await?;
    if cost > 0.0
        && let Some(audit) = &env.audit
    {
        // Acknowledged: the paid call is audited before the candidate is recorded.
        let sent = audit
            .send(crate::engine::PaidCall {
                project_id: run.project_id,
                run_id: run.id,
                job_id: job.id,
                provider_call_id: call_id,
                provider_code: env.provider.code().into(),
                idempotency_key: key.clone(),
                cost_usd: cost,
            })
            .await;
        if let Err(e) = sent {
            tracing::error!(error = %e, "audit actor unavailable");
        }
    }
    record_candidate(env, run, job, index, asset.id, report, Some(call_id))
        .await
        .map(Some)
}

type Generated = Option<(image::RgbaImage, f64, String, Option<String>)>;

/// Calls the provider under its concurrency bound, recording every attempt
/// in `provider_calls` before the call; retries only retryable errors with
/// capped, jittered exponential backoff. `None`: gave up or canceled.
async fn call_with_retries(
    ctx: &JobCtx<'_>,
    index: i32,
    key: &str,
    existing: Option<provider_calls::Model>,
) -> Result<(Generated, Uuid), ServiceError> {
    let JobCtx {
        env,
        run,
        job,
        stage,
        input,
        ..
    } = *ctx;
    if canceled(&env.db, run.id, job.id).await? {
        return Ok((None, existing.map(|c| c.id).unwrap_or_default()));
    }
    // A new record of a free call is written already in flight (attempt 1),
    // sparing the separate reservation write of the first attempt.
    let free = env.provider.unit_price_usd() <= 0.0;
    let fresh = existing.is_none();
    let call_id = match &existing {
        Some(c) => c.id,
        None => {
            let id = Uuid::now_v7();
            let txn = crate::db::begin_write(&env.db).await?;
            provider_calls::Entity::insert(provider_calls::ActiveModel::from(provider_calls::Model {
                id,
                project_id: run.project_id,
                idempotency_key: key.to_string(),
                run_id: Some(run.id),
                job_id: Some(job.id),
                candidate_id: None,
                provider_code: env.provider.code().into(),
                operation: "generate".into(),
                model_name: None,
                status: "pending".into(),
                attempt: if free { 1 } else { 0 },
                started_at: if free { Some(time::now()) } else { None },
                reserved_cost_usd: env.provider.unit_price_usd(),
                actual_cost_usd: None,
                request_json: json!({ "stage": job.stage, "candidate_index": index, "prompt": job.prompt_text }),
                response_json: json!({}),
                result_asset_id: None,
                provider_request_id: None,
                error_code: None,
                error_message: None,
                finished_at: None,
                created_at: time::now(),
                updated_at: time::now(),
            }))
            .exec_without_returning(&txn)
            .await?;
            crate::db::commit(txn).await?;
            id
        }
    };
    let mut attempt = existing.map_or(0, |c| c.attempt.max(0) as u32);
    loop {
        if canceled(&env.db, run.id, job.id).await? {
            return Ok((None, call_id));
        }
        attempt += 1;
        let already_in_flight = fresh && free && attempt == 1;
        if !already_in_flight && let Err(refused) = reserve(env, run, call_id, attempt).await {
            let code = match &refused {
                ServiceError::Policy { code, .. } => *code,
                _ => "reservation_failed",
            };
            fail_call(env, call_id, code, &refused.to_string()).await?;
            events::emit(
                &env.db,
                &env.hub,
                run.id,
                run.project_id,
                "candidate.failed",
                Some(job.id),
                json!({ "candidate_index": index, "attempt": attempt, "error_code": code }),
            )
            .await?;
            return Ok((None, call_id));
        }
        let result = {
            let _permit = env
                .provider_slots
                .acquire()
                .await
                .map_err(|_| ServiceError::Internal("provider slots closed".into()))?;
            env.provider
                .generate(GenerateRequest {
                    idempotency_key: key.to_string(),
                    stage,
                    prompt: job.prompt_text.clone().unwrap_or_default(),
                    input: input.clone(),
                    candidate_index: index as u32,
                    attempt,
                })
                .await
        };
        match result {
            Ok(g) => {
                return Ok((
                    Some((g.image, g.cost_usd, g.model, g.provider_request_id)),
                    call_id,
                ));
            }
            Err(err) => {
                let retry = err.is_retryable() && attempt < env.retry.max_attempts;
                fail_call(env, call_id, err.code(), &err.to_string()).await?;
                events::emit(&env.db, &env.hub, run.id, run.project_id,
                    if retry { "candidate.retry_scheduled" } else { "candidate.failed" },
                    Some(job.id),
                    json!({ "candidate_index": index, "attempt": attempt, "error_code": err.code() }),
                )
                .await?;
                if !retry {
                    return Ok((None, call_id));
                }
                let seed = u64::from(attempt) ^ (index as u64) << 8 ^ job.id.as_u128() as u64;
                tokio::time::sleep(env.retry.delay(attempt, seed)).await;
            }
        }
    }
}

/// Marks the call in flight for this attempt; paid calls go through the
/// CostActor, which refuses when a budget would be exceeded.
async fn reserve(
    env: &JobEnv,
    run: &runs::Model,
    call_id: Uuid,
    attempt: u32,
) -> Result<(), ServiceError> {
    let amount = env.provider.unit_price_usd();
    match (&env.spend, amount > 0.0) {
        (Some(spend), true) => spend
            .send(crate::engine::ReserveSpend {
                call_id,
                project_id: run.project_id,
                run_id: run.id,
                attempt: attempt as i32,
                amount,
                run_budget: run.budget_usd,
                project_budget: env.project_budget_usd,
            })
            .await
            .map_err(|e| ServiceError::Internal(format!("cost actor unavailable: {e}")))?,
        _ => {
            let txn = crate::db::begin_write(&env.db).await?;
            provider_calls::Entity::update_many()
                .col_expr(provider_calls::Column::Status, Expr::value("pending"))
                .col_expr(provider_calls::Column::Attempt, Expr::value(attempt as i32))
                .col_expr(provider_calls::Column::StartedAt, Expr::value(time::now()))
                .col_expr(provider_calls::Column::UpdatedAt, Expr::value(time::now()))
                .filter(provider_calls::Column::Id.eq(call_id))
                .exec(&txn)
                .await?;
            crate::db::commit(txn).await?;
            Ok(())
        }
    }
}

/// Records that an attempt of the call failed (or was refused before it was made).
async fn fail_call(
    env: &JobEnv,
    call_id: Uuid,
    code: &str,
    message: &str,
) -> Result<(), ServiceError> {
    let txn = crate::db::begin_write(&env.db).await?;
    provider_calls::Entity::update_many()
        .col_expr(provider_calls::Column::Status, Expr::value("failed"))
        .col_expr(provider_calls::Column::ErrorCode, Expr::value(code))
        .col_expr(provider_calls::Column::ErrorMessage, Expr::value(message))
        .col_expr(provider_calls::Column::FinishedAt, Expr::value(time::now()))
        .col_expr(provider_calls::Column::UpdatedAt, Expr::value(time::now()))
        .filter(provider_calls::Column::Id.eq(call_id))
        .exec(&txn)
        .await?;
    crate::db::commit(txn).await?;
    Ok(())
}

async fn record_candidate(
    env: &JobEnv,
    run: &runs::Model,
    job: &run_jobs::Model,
    index: i32,
    asset_id: Uuid,
    report: GuardReport,
    call_id: Option<Uuid>,
) -> Result<CandidateResult, ServiceError> {
    let status = if report.hard_failures > 0 {
        "failed_output_guard"
    } else {
        status::DONE
    };
    let now = time::now();
    let txn = crate::db::begin_write(&env.db).await?;
    let candidate_id = Uuid::now_v7();
    run_candidates::Entity::insert(run_candidates::ActiveModel::from(run_candidates::Model {
        id: candidate_id,
        project_id: run.project_id,
        run_id: run.id,
        job_id: job.id,
        candidate_index: index,
        status: status.into(),
        output_asset_id: Some(asset_id),
        final_asset_id: None,
        rank_hard_failures: report.hard_failures as i32,
        rank_soft_warnings: report.soft_warnings as i32,
        rank_avg_chroma_exceed: report.chroma_exceed,
        meta_json: json!({ "provider_call_id": call_id, "guard_reasons": report.reasons }),
        created_at: now,
        updated_at: now,
    }))
    .exec_without_returning(&txn)
    .await?;
    quality_reports::Entity::insert(quality_reports::ActiveModel::from(quality_reports::Model {
        id: Uuid::now_v7(),
        project_id: run.project_id,
        run_id: Some(run.id),
        job_id: Some(job.id),
        candidate_id: Some(candidate_id),
        asset_id: Some(asset_id),
        report_type: "output_guard".into(),
        grade: Some(
            if report.hard_failures > 0 {
                "fail"
            } else if report.soft_warnings > 0 {
                "warn"
            } else {
                "pass"
            }
            .into(),
        ),
        hard_failures: report.hard_failures as i32,
        soft_warnings: report.soft_warnings as i32,
        avg_chroma_exceed: report.chroma_exceed,
        summary_json: json!({ "chroma_delta": report.chroma_delta, "reasons": report.reasons }),
        created_at: now,
    }))
    .exec_without_returning(&txn)
    .await?;
    let event = events::append(&txn, run.id, run.project_id, "candidate.ready", Some(job.id), json!({
        "candidate_index": index, "status": status, "asset_id": asset_id,
        "guard": { "chroma_delta": report.chroma_delta, "hard_failures": report.hard_failures, "soft_warnings": report.soft_warnings },
    }))
    .await?;
    crate::db::commit(txn).await?;
    env.hub.publish(event);
    Ok(CandidateResult {
        index,
        status: status.into(),
        asset_id: Some(asset_id),
        report: Some(report),
    })
}

/// Fewest hard failures, then fewest soft warnings, then lowest chroma
/// excess, then lowest index; only candidates that passed the guard.
fn select_winner(candidates: &[CandidateResult]) -> Option<&CandidateResult> {
    candidates
        .iter()
        .filter(|c| c.status == status::DONE && c.asset_id.is_some())
        .min_by(|a, b| {
            let key = |c: &CandidateResult| {
                let r = c.report.clone().unwrap_or(GuardReport {
                    chroma_delta: 0.0,
                    hard_failures: u32::MAX,
                    soft_warnings: u32::MAX,
                    chroma_exceed: f64::MAX,
                    reasons: vec![],
                });
                (r.hard_failures, r.soft_warnings, r.chroma_exceed, c.index)
            };
            let (ka, kb) = (key(a), key(b));
            ka.0.cmp(&kb.0)
                .then(ka.1.cmp(&kb.1))
                .then(ka.2.total_cmp(&kb.2))
                .then(ka.3.cmp(&kb.3))
        })
}

async fn finish_job(
    env: &JobEnv,
    run: &runs::Model,
    job: &run_jobs::Model,
    candidates: Vec<CandidateResult>,
) -> Result<JobOutcome, ServiceError> {
    let winner = select_winner(&candidates).cloned();
    let now = time::now();
    let txn = crate::db::begin_write(&env.db).await?;
    let (outcome, event_type, payload) = match &winner {
        Some(w) => {
            let asset_id = w.asset_id.unwrap_or_default();
            run_candidates::Entity::update_many()
                .col_expr(run_candidates::Column::FinalAssetId, Expr::value(asset_id))
                .filter(run_candidates::Column::JobId.eq(job.id))
                .filter(run_candidates::Column::CandidateIndex.eq(w.index))
                .exec(&txn)
                .await?;
            (
                JobOutcome::Done {
                    final_asset_id: asset_id,
                    selected_index: w.index,
                },
                "job.winner_selected",
                json!({ "job_key": job.job_key, "selected_candidate_index": w.index, "final_asset_id": asset_id }),
            )
        }
        None => {
            let reason = if candidates.iter().any(|c| c.status == "failed_output_guard") {
                "all_candidates_failed_output_guard"
            } else {
                "all_candidates_failed"
            };
            (
                JobOutcome::Failed {
                    reason: reason.into(),
                },
                "job.failed",
                json!({ "job_key": job.job_key, "reason": reason }),
            )
        }
    };
    let (job_status, final_asset, selected, error) = match &outcome {
        JobOutcome::Done {
            final_asset_id,
            selected_index,
        } => (
            status::DONE,
            Some(*final_asset_id),
            Some(*selected_index),
            None,
        ),
        JobOutcome::Failed { reason } => (status::FAILED, None, None, Some(reason.clone())),
        JobOutcome::Canceled => (status::CANCELED, None, None, None),
    };
    run_jobs::Entity::update_many()
        .col_expr(run_jobs::Column::Status, Expr::value(job_status))
        // On success the error of an earlier attempt stays, for the record.
        .col_expr(
            run_jobs::Column::LastError,
            match error {
                Some(e) => Expr::value(e),
                None => Expr::col(run_jobs::Column::LastError),
            },
        )
        .col_expr(run_jobs::Column::FinalAssetId, Expr::value(final_asset))
        .col_expr(
            run_jobs::Column::SelectedCandidateIndex,
            Expr::value(selected),
        )
        .col_expr(
            run_jobs::Column::LeaseOwner,
            Expr::value(Option::<String>::None),
        )
        .col_expr(
            run_jobs::Column::LeaseExpiresAt,
            Expr::value(Option::<chrono::DateTime<chrono::Utc>>::None),
        )
        .col_expr(run_jobs::Column::FinishedAt, Expr::value(now))
        .col_expr(run_jobs::Column::UpdatedAt, Expr::value(now))
        .filter(run_jobs::Column::Id.eq(job.id))
        .filter(run_jobs::Column::Status.eq(status::RUNNING))
        .exec(&txn)
        .await?;
    let event = events::append(
        &txn,
        run.id,
        run.project_id,
        event_type,
        Some(job.id),
        payload,
    )
    .await?;
    crate::db::commit(txn).await?;
    env.hub.publish(event);
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(index: i32, status: &str, hard: u32, soft: u32, exceed: f64) -> CandidateResult {
        CandidateResult {
            index,
            status: status.into(),
            asset_id: Some(Uuid::now_v7()),
            report: Some(GuardReport {
                chroma_delta: 0.0,
                hard_failures: hard,
                soft_warnings: soft,
                chroma_exceed: exceed,
                reasons: vec![],
            }),
        }
    }

    #[test]
    fn ranking_prefers_fewer_warnings_then_lower_excess_then_index() {
        let list = vec![
            c(0, "done", 0, 1, 0.5),
            c(1, "done", 0, 0, 3.0),
            c(2, "done", 0, 0, 1.0),
            c(3, "failed_output_guard", 1, 0, 0.0),
        ];
        assert_eq!(select_winner(&list).map(|w| w.index), Some(2));
        let tie = vec![c(4, "done", 0, 0, 0.0), c(1, "done", 0, 0, 0.0)];
        assert_eq!(select_winner(&tie).map(|w| w.index), Some(1));
        assert!(select_winner(&[c(0, "failed_output_guard", 1, 0, 0.0)]).is_none());
    }

    #[test]
    fn backoff_is_capped_and_jittered() {
        let p = RetryPolicy {
            max_attempts: 5,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
        };
        for attempt in 1..10 {
            assert!(p.delay(attempt, attempt as u64) <= Duration::from_secs(1));
        }
        assert_ne!(p.delay(3, 1), p.delay(3, 2));
    }
}
