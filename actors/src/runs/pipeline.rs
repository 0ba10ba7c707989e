//! One job, end to end: every candidate through the provider (idempotently),
//! the output guard, storage and the registry; then ranking and the winner.
//! A plain async function: the WorkerActor schedules it and heartbeats the
//! job's lease; nothing here knows about actors.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use entities::{provider_calls, quality_reports, run_candidates, run_jobs, runs};
use futures_util::future::join_all;
use imaging::DecodeLimits;
use imaging::effects::{TimeOfDay, Weather};
use imaging::guard::{self, GuardReport, GuardSettings};
use providers::{GenerateRequest, ImageProvider, Stage};
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QuerySelect};
use serde_json::json;
use storage::ObjectStore;
use tokio::sync::Semaphore;
use uuid::Uuid;

use super::events::{self, EventHub};
use super::manifest::{Manifest, Postprocess};
use super::passes::{self, LinkType, link};
use super::store::status;
use super::writer::{JobCompletion, PendingEvent, RowWriter, Rows};
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
    pub spend: Option<crate::engine::Counted<crate::engine::ReserveSpend>>,
    /// The AuditActor: told about every paid call.
    pub audit: Option<crate::engine::Counted<crate::engine::PaidCall>>,
    pub project_budget_usd: Option<f64>,
    /// Group commit for the candidates' rows.
    pub writer: Option<RowWriter>,
    /// Remote background-removal services by code.
    pub removers: HashMap<String, Arc<providers::bg_remote::RemoteRemover>>,
    /// Image providers by code, for the refine step after background removal.
    pub refiners: HashMap<String, Arc<dyn ImageProvider>>,
    /// For projects' own provider keys (see `secrets::provider_key`).
    pub secret_keys: Option<crate::secrets::cipher::KeySource>,
}

impl JobEnv {
    pub(super) fn writer(&self) -> Result<&RowWriter, ServiceError> {
        self.writer
            .as_ref()
            .ok_or_else(|| ServiceError::Internal("row writer not started".into()))
    }
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
    /// `None`: generated from the prompt alone.
    input: Option<&'a image::RgbaImage>,
    input_id: Option<Uuid>,
    guard: GuardSettings,
    /// The passes to run on each candidate (last stage, when any is on).
    postprocess: Option<&'a Postprocess>,
    references: Arc<Vec<image::RgbaImage>>,
    /// For the URLs in events.
    project_slug: String,
    /// The project's own key for the provider, if it has one.
    api_key: Option<providers::credentials::Secret>,
}

#[derive(Debug, Clone)]
struct CandidateResult {
    index: i32,
    status: String,
    asset_id: Option<Uuid>,
    /// After the post-process passes (the output itself when none ran).
    final_asset_id: Option<Uuid>,
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

/// CPU-bound image work: on the blocking pool, one task per core at a time.
async fn cpu<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, ServiceError> {
    imaging::cpu::run(f)
        .await
        .map_err(|e| ServiceError::Internal(e.to_string()))
}

/// Whether the run or this job was canceled (checked before provider calls);
/// reads the two status columns only.
async fn canceled(
    db: &DatabaseConnection,
    run_id: Uuid,
    job_id: Uuid,
) -> Result<bool, ServiceError> {
    let run: Option<String> = runs::Entity::find_by_id(run_id)
        .select_only()
        .column(runs::Column::Status)
        .into_tuple()
        .one(db)
        .await?;
    if run.is_none_or(|s| s == status::CANCELED) {
        return Ok(true);
    }
    let job: Option<String> = run_jobs::Entity::find_by_id(job_id)
        .select_only()
        .column(run_jobs::Column::Status)
        .into_tuple()
        .one(db)
        .await?;
    Ok(job.is_none_or(|s| s == status::CANCELED))
}

/// The run's style references (asset ids recorded in its plan), decoded.
async fn load_references(
    env: &JobEnv,
    run: &runs::Model,
) -> Result<Vec<image::RgbaImage>, ServiceError> {
    let ids: Vec<Uuid> = run
        .plan_json
        .get("style_ref_assets")
        .and_then(|v| serde_json::from_value(v.clone()).ok())
        .unwrap_or_default();
    let mut images = Vec::with_capacity(ids.len());
    for id in ids {
        let (_, bytes) = assets::load_bytes(&env.db, &env.store, id).await?;
        let limits = env.limits;
        images.push(
            cpu(move || imaging::decode(&bytes, limits))
                .await?
                .map_err(|e| ServiceError::Internal(format!("style reference: {e}")))?,
        );
    }
    Ok(images)
}

/// The call's idempotency key: stable across retries, restarts and nodes.
fn call_key(run: &runs::Model, job: &run_jobs::Model, index: i32) -> String {
    format!("{}:{}:c{}", run.id, job.job_key, index)
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
    let prompt_only = job
        .meta_json
        .get("prompt_only")
        .and_then(|v| v.as_bool())
        .unwrap_or(false);
    let input_id = match job.input_asset_id {
        Some(id) => Some(id),
        None if prompt_only => None,
        None => {
            return Err(ServiceError::Internal(format!(
                "job {} has no input",
                job.id
            )));
        }
    };
    // What an earlier attempt of this job already decided or paid for.
    let mut decided: HashMap<i32, run_candidates::Model> = run_candidates::Entity::find()
        .filter(run_candidates::Column::JobId.eq(job.id))
        .all(&env.db)
        .await?
        .into_iter()
        .map(|c| (c.candidate_index, c))
        .collect();
    let keys: Vec<String> = (0..candidates).map(|i| call_key(run, job, i)).collect();
    let mut calls: HashMap<String, provider_calls::Model> = provider_calls::Entity::find()
        .filter(provider_calls::Column::IdempotencyKey.is_in(keys.clone()))
        .all(&env.db)
        .await?
        .into_iter()
        .map(|c| (c.idempotency_key.clone(), c))
        .collect();
    if canceled(&env.db, run.id, job.id).await? {
        return Ok(JobOutcome::Canceled);
    }
    let input = match input_id {
        Some(id) => {
            let (_, input_bytes) = assets::load_bytes(&env.db, &env.store, id).await?;
            let limits = env.limits;
            Some(
                cpu(move || imaging::decode(&input_bytes, limits))
                    .await?
                    .map_err(|e| ServiceError::Internal(format!("input image: {e}")))?,
            )
        }
        None => None,
    };
    let references = Arc::new(load_references(env, run).await?);
    let project_slug = entities::projects::Entity::find_by_id(run.project_id)
        .one(&env.db)
        .await?
        .map(|p| p.slug)
        .unwrap_or_default();
    // Every call not yet on record is recorded, in one write, before any is
    // made. A free call's record starts in flight (attempt 1), sparing a
    // separate write per attempt; a paid one is reserved per attempt by the
    // CostActor.
    let free = env.provider.unit_price_usd() <= 0.0;
    let mut fresh = Vec::new();
    let priors: Vec<Prior> = (0..candidates)
        .map(|i| {
            let key = &keys[i as usize];
            if let Some(c) = decided.remove(&i) {
                Prior::Decided(c)
            } else if let Some(call) = calls.remove(key) {
                Prior::Call {
                    call: Box::new(call),
                    in_flight: false,
                }
            } else {
                let call = new_call(env, run, job, i, key, free);
                fresh.push(call.clone());
                Prior::Call {
                    call: Box::new(call),
                    in_flight: free,
                }
            }
        })
        .collect();
    if !fresh.is_empty() {
        env.writer()?
            .write(Rows {
                provider_calls: fresh,
                ..Rows::default()
            })
            .await?;
    }
    // `job.started` was recorded with the lease (engine::run).

    let last_stage = job
        .meta_json
        .get("last_stage")
        .and_then(|v| v.as_bool())
        .unwrap_or(false);
    let ctx = JobCtx {
        env,
        run,
        job,
        stage,
        input: input.as_ref(),
        input_id,
        guard: guard_settings,
        postprocess: (last_stage && passes::any_enabled(&manifest.postprocess))
            .then_some(&manifest.postprocess),
        references,
        project_slug,
        api_key: crate::secrets::provider_key(
            &env.db,
            env.secret_keys.as_ref(),
            run.project_id,
            env.provider.code(),
        )
        .await?,
    };
    let work = priors
        .into_iter()
        .zip(0..)
        .map(|(prior, index)| candidate(&ctx, index, prior));
    let results = join_all(work).await;
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

/// A candidate's state from earlier attempts of its job.
enum Prior {
    /// Recorded with its guard verdict: kept as it is.
    Decided(run_candidates::Model),
    /// Its provider call is on record (maybe already succeeded).
    Call {
        call: Box<provider_calls::Model>,
        /// Recorded in flight for its first attempt just now.
        in_flight: bool,
    },
}

fn new_call(
    env: &JobEnv,
    run: &runs::Model,
    job: &run_jobs::Model,
    index: i32,
    key: &str,
    in_flight: bool,
) -> provider_calls::Model {
    let now = time::now();
    provider_calls::Model {
        id: Uuid::now_v7(),
        project_id: run.project_id,
        idempotency_key: key.to_string(),
        run_id: Some(run.id),
        job_id: Some(job.id),
        candidate_id: None,
        provider_code: env.provider.code().into(),
        operation: "generate".into(),
        model_name: None,
        status: "pending".into(),
        attempt: if in_flight { 1 } else { 0 },
        started_at: in_flight.then_some(now),
        reserved_cost_usd: env.provider.unit_price_usd(),
        actual_cost_usd: None,
        request_json: json!({ "stage": job.stage, "candidate_index": index, "prompt": job.prompt_text }),
        response_json: json!({}),
        result_asset_id: None,
        provider_request_id: None,
        error_code: None,
        error_message: None,
        finished_at: None,
        created_at: now,
        updated_at: now,
    }
}

async fn candidate(
    ctx: &JobCtx<'_>,
    index: i32,
    prior: Prior,
) -> Result<Option<CandidateResult>, ServiceError> {
    let JobCtx {
        env,
        run,
        job,
        input_id,
        ..
    } = *ctx;
    let guard_settings = ctx.guard;
    let (call, in_flight) = match prior {
        // Already decided by an earlier attempt of this job: keep that verdict.
        Prior::Decided(existing) => {
            return Ok(Some(CandidateResult {
                index,
                status: existing.status,
                asset_id: existing.output_asset_id,
                final_asset_id: existing.final_asset_id.or(existing.output_asset_id),
                report: Some(GuardReport {
                    chroma_delta: 0.0,
                    hard_failures: existing.rank_hard_failures as u32,
                    soft_warnings: existing.rank_soft_warnings as u32,
                    chroma_exceed: existing.rank_avg_chroma_exceed,
                    reasons: Vec::new(),
                }),
            }));
        }
        Prior::Call { call, in_flight } => (call, in_flight),
    };
    // A stored result is never paid for again: not after a retry, not after a crash.
    if call.status == "succeeded"
        && let Some(asset_id) = call.result_asset_id
    {
        let (_, bytes) = assets::load_bytes(&env.db, &env.store, asset_id).await?;
        let limits = env.limits;
        let (img, report) = cpu(move || {
            imaging::decode(&bytes, limits).map(|img| {
                let report = guard::check(&img, &guard_settings);
                (img, report)
            })
        })
        .await?
        .map_err(|e| ServiceError::Internal(e.to_string()))?;
        let (rows, result) = recorded(ctx, index, img, asset_id, report, Some(call.id)).await?;
        env.writer()?.write(rows).await?;
        return Ok(Some(result));
    }
    let call_id = call.id;
    let Some(generated) = call_with_retries(ctx, index, &call, in_flight).await? else {
        return Ok(if canceled(&env.db, run.id, job.id).await? {
            None
        } else {
            Some(CandidateResult {
                index,
                status: status::FAILED.into(),
                asset_id: None,
                final_asset_id: None,
                report: None,
            })
        });
    };
    let (img, cost, model, request_id) = generated;
    let (width, height) = img.dimensions();
    let (img, report, png, sha) = cpu(move || {
        let report = guard::check(&img, &guard_settings);
        let png = imaging::encode_png(&img);
        let sha = png.as_ref().map(|b| assets::sha256_hex(b)).ok();
        (img, report, png, sha)
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
    // The file first: a crash before the rows commit leaves an orphan file at
    // a run-scoped key (rewritten with the same content on resume), never a
    // row without its file.
    let stored = assets::put(
        &env.db,
        &env.store,
        NewAsset {
            project_id: run.project_id,
            kind: if archived { "archived" } else { "generated" },
            key: &storage_key,
            width,
            height,
            bytes: png,
            mime: "image/png",
            run_id: Some(run.id),
            job_id: Some(job.id),
            candidate_id: None,
            metadata: json!({ "candidate_index": index, "stage": job.stage, "model": model }),
        },
        sha,
    )
    .await?;
    let asset_id = stored.row.id;
    let (mut rows, result) = recorded(ctx, index, img, asset_id, report, Some(call_id)).await?;
    let (done, cost_event) = completed_call(&call, asset_id, cost, Some(model), request_id);
    rows.provider_calls.push(done);
    rows.cost_events.extend(cost_event);
    if let Some(input_id) = input_id {
        rows.links
            .push(link(run, input_id, asset_id, LinkType::DerivedFrom));
    }
    // Foreign-key order: the output before the pass files derived from it.
    if stored.fresh {
        rows.assets.insert(0, stored.row);
    }
    env.writer()?.write(rows).await?;
    audit_paid(env, &call, cost).await;
    Ok(Some(result))
}

type Generated = (image::RgbaImage, f64, String, Option<String>);

/// Calls the provider under its concurrency bound; every attempt is on
/// record before it is made. Retries only retryable errors with capped,
/// jittered exponential backoff. `None`: gave up, refused or canceled.
async fn call_with_retries(
    ctx: &JobCtx<'_>,
    index: i32,
    call: &provider_calls::Model,
    in_flight: bool,
) -> Result<Option<Generated>, ServiceError> {
    let JobCtx {
        env,
        run,
        job,
        stage,
        input,
        ..
    } = *ctx;
    let mut attempt = call.attempt.max(0) as u32;
    let mut first = true;
    loop {
        // The job checked for a cancel just before its first attempts.
        if !first && canceled(&env.db, run.id, job.id).await? {
            return Ok(None);
        }
        let already_in_flight = first && in_flight;
        first = false;
        if !already_in_flight {
            attempt += 1;
            if let Err(refused) =
                reserve(env, run, call.id, attempt, env.provider.unit_price_usd()).await
            {
                let code = match &refused {
                    ServiceError::Policy { code, .. } => *code,
                    _ => "reservation_failed",
                };
                fail_call(env, call.id, code, &refused.to_string()).await?;
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
                return Ok(None);
            }
        }
        let result = {
            let _permit = match env.provider_slots.try_acquire() {
                Ok(permit) => permit,
                Err(_) => {
                    let permit = env
                        .provider_slots
                        .acquire()
                        .await
                        .map_err(|_| ServiceError::Internal("provider slots closed".into()))?;
                    // Waited for a slot: a cancel may have come meanwhile.
                    if canceled(&env.db, run.id, job.id).await? {
                        fail_call(
                            env,
                            call.id,
                            "canceled",
                            "canceled before the call was made",
                        )
                        .await?;
                        return Ok(None);
                    }
                    permit
                }
            };
            let began = std::time::Instant::now();
            let result = env
                .provider
                .generate(GenerateRequest {
                    idempotency_key: call.idempotency_key.clone(),
                    stage,
                    prompt: job.prompt_text.clone().unwrap_or_default(),
                    input: input.cloned(),
                    references: ctx.references.clone(),
                    candidate_index: index as u32,
                    attempt,
                    api_key: ctx.api_key.clone(),
                })
                .await;
            let outcome = result.as_ref().map_or_else(|e| e.code(), |_| "ok");
            crate::metrics::observe_call(env.provider.code(), outcome, began.elapsed());
            result
        };
        match result {
            Ok(g) => return Ok(Some((g.image, g.cost_usd, g.model, g.provider_request_id))),
            Err(err) => {
                let retry = err.is_retryable() && attempt < env.retry.max_attempts;
                fail_call(env, call.id, err.code(), &err.to_string()).await?;
                events::emit(&env.db, &env.hub, run.id, run.project_id,
                    if retry { "candidate.retry_scheduled" } else { "candidate.failed" },
                    Some(job.id),
                    json!({ "candidate_index": index, "attempt": attempt, "error_code": err.code() }),
                )
                .await?;
                if !retry {
                    return Ok(None);
                }
                tokio::time::sleep(retry_wait(env, job, index, attempt, &err)).await;
            }
        }
    }
}

/// The pause before the next attempt: the policy's jittered backoff, or the
/// provider's Retry-After when longer (up to a minute).
fn retry_wait(
    env: &JobEnv,
    job: &run_jobs::Model,
    index: i32,
    attempt: u32,
    err: &providers::ProviderError,
) -> Duration {
    let seed = u64::from(attempt) ^ (index as u64) << 8 ^ job.id.as_u128() as u64;
    env.retry.delay(attempt, seed).max(
        err.retry_after()
            .unwrap_or_default()
            .min(Duration::from_secs(60)),
    )
}

/// A paid post-process step: what it is and who does it.
#[derive(Clone, Copy)]
pub(super) enum PaidPass<'a> {
    /// Background removal by a remote service (`removebg`, `photoroom`).
    Remove(&'a str),
    /// Refinement of a cut-out by an image provider (`openai`, `local`).
    Refine(&'a str),
}

impl PaidPass<'_> {
    fn code(&self) -> &str {
        match self {
            PaidPass::Remove(c) | PaidPass::Refine(c) => c,
        }
    }

    /// The operation recorded on the call and the asset kind of its output.
    fn names(&self) -> (&'static str, &'static str) {
        match self {
            PaidPass::Remove(_) => ("bg_remove", "bg_removed"),
            PaidPass::Refine(_) => ("bg_refine", "bg_refined"),
        }
    }
}

/// What a refine step asks of the provider.
const REFINE_PROMPT: &str = "Refine this cut-out: clean the edges of the subject, remove any \
    leftover background, keep the subject exactly as it is, keep the background transparent.";

/// One paid post-process call with the same safety as generation calls: a
/// call record before the call, a reservation through the CostActor per
/// attempt, retryable errors retried under the engine's policy, the result
/// (file, asset, call, cost event) committed as soon as it arrives, and a
/// stored result reused instead of paid again. `None`: not configured,
/// refused, failed or canceled (the caller goes on without it).
pub(super) async fn paid_pass(
    env: &JobEnv,
    run: &runs::Model,
    job: &run_jobs::Model,
    index: i32,
    image: &image::RgbaImage,
    pass: PaidPass<'_>,
) -> Result<Option<(image::RgbaImage, entities::assets::Model)>, ServiceError> {
    let code = pass.code();
    let (operation, kind) = pass.names();
    let price = match pass {
        PaidPass::Remove(c) => env.removers.get(c).map(|r| r.unit_price_usd()),
        PaidPass::Refine(c) => env.refiners.get(c).map(|p| p.unit_price_usd()),
    };
    let Some(price) = price else {
        return Ok(None);
    };
    let key = format!("{}:{}:c{index}:{operation}:{code}", run.id, job.job_key);
    let existing = provider_calls::Entity::find()
        .filter(provider_calls::Column::IdempotencyKey.eq(key.as_str()))
        .one(&env.db)
        .await?;
    if let Some(c) = &existing
        && c.status == "succeeded"
        && let Some(asset_id) = c.result_asset_id
    {
        let (asset, bytes) = assets::load_bytes(&env.db, &env.store, asset_id).await?;
        let limits = env.limits;
        let img = cpu(move || imaging::decode(&bytes, limits))
            .await?
            .map_err(|e| ServiceError::Internal(e.to_string()))?;
        return Ok(Some((img, asset)));
    }
    if canceled(&env.db, run.id, job.id).await? {
        return Ok(None);
    }
    let call = match existing {
        Some(c) => c,
        None => {
            let c = provider_calls::Model {
                provider_code: code.to_string(),
                operation: operation.into(),
                reserved_cost_usd: price,
                request_json: json!({ "stage": job.stage, "candidate_index": index, "pass": operation }),
                ..new_call(env, run, job, index, &key, false)
            };
            env.writer()?
                .write(Rows {
                    provider_calls: vec![c.clone()],
                    ..Rows::default()
                })
                .await?;
            c
        }
    };
    let api_key =
        crate::secrets::provider_key(&env.db, env.secret_keys.as_ref(), run.project_id, code)
            .await?;
    let mut attempt = call.attempt.max(0) as u32;
    let (img, cost, request_id) = loop {
        attempt += 1;
        if let Err(refused) = reserve(env, run, call.id, attempt, price).await {
            let code = match &refused {
                ServiceError::Policy { code, .. } => *code,
                _ => "reservation_failed",
            };
            fail_call(env, call.id, code, &refused.to_string()).await?;
            return Ok(None);
        }
        let began = std::time::Instant::now();
        let result = match pass {
            PaidPass::Remove(c) => match env.removers.get(c) {
                Some(r) => r
                    .remove(image.clone(), api_key.clone())
                    .await
                    .map(|r| (r.image, r.cost_usd, r.provider_request_id)),
                None => return Ok(None),
            },
            PaidPass::Refine(c) => match env.refiners.get(c) {
                Some(p) => p
                    .generate(GenerateRequest {
                        idempotency_key: key.clone(),
                        stage: Stage::Refine,
                        prompt: REFINE_PROMPT.into(),
                        input: Some(image.clone()),
                        references: Arc::new(Vec::new()),
                        candidate_index: index as u32,
                        attempt,
                        api_key: api_key.clone(),
                    })
                    .await
                    .map(|g| (g.image, g.cost_usd, g.provider_request_id)),
                None => return Ok(None),
            },
        };
        let outcome = result.as_ref().map_or_else(|e| e.code(), |_| "ok");
        crate::metrics::observe_call(code, outcome, began.elapsed());
        match result {
            Ok(r) => break r,
            Err(e) => {
                fail_call(env, call.id, e.code(), &e.to_string()).await?;
                // Retryable errors get the generation calls' policy; anything
                // else gives up at once (the caller goes on without it).
                if !e.is_retryable()
                    || attempt >= env.retry.max_attempts
                    || canceled(&env.db, run.id, job.id).await?
                {
                    return Ok(None);
                }
                tokio::time::sleep(retry_wait(env, job, index, attempt, &e)).await;
            }
        }
    };
    let (img, png, sha) = cpu(move || {
        let png = imaging::encode_png(&img);
        let sha = png.as_ref().map(|b| assets::sha256_hex(b)).ok();
        (img, png, sha)
    })
    .await?;
    let png = png.map_err(|e| ServiceError::Internal(e.to_string()))?;
    let stored = assets::put(
        &env.db,
        &env.store,
        NewAsset {
            project_id: run.project_id,
            kind,
            key: &format!("runs/{}/{}/c{index}.{kind}.png", run.id, job.job_key),
            width: img.width(),
            height: img.height(),
            bytes: png,
            mime: "image/png",
            run_id: Some(run.id),
            job_id: Some(job.id),
            candidate_id: None,
            metadata: json!({ "candidate_index": index, "stage": job.stage, "pass": kind, "backend": code }),
        },
        sha,
    )
    .await?;
    let asset = stored.row.clone();
    let (done, cost_event) = completed_call(&call, asset.id, cost, None, request_id);
    let rows = Rows {
        provider_calls: vec![done],
        cost_events: cost_event.into_iter().collect(),
        assets: stored.fresh.then_some(stored.row).into_iter().collect(),
        ..Rows::default()
    };
    env.writer()?.write(rows).await?;
    audit_paid(env, &call, cost).await;
    Ok(Some((img, asset)))
}

/// A call's completion: the record marked succeeded with its result and, for
/// a paid call, its cost event (both commit with the result's rows).
fn completed_call(
    call: &provider_calls::Model,
    result_asset_id: Uuid,
    cost: f64,
    model: Option<String>,
    provider_request_id: Option<String>,
) -> (provider_calls::Model, Option<entities::cost_events::Model>) {
    let now = time::now();
    let event = (cost > 0.0).then(|| entities::cost_events::Model {
        id: Uuid::now_v7(),
        project_id: call.project_id,
        run_id: call.run_id,
        job_id: call.job_id,
        provider_call_id: Some(call.id),
        provider_code: call.provider_code.clone(),
        model_name: model.clone(),
        event_type: if call.operation == "bg_remove" {
            "background_removal"
        } else {
            "image_generation"
        }
        .into(),
        units: 1.0,
        unit_cost_usd: cost,
        total_cost_usd: cost,
        currency: "USD".into(),
        meta_json: json!({ "idempotency_key": call.idempotency_key }),
        created_at: now,
    });
    let done = provider_calls::Model {
        status: "succeeded".into(),
        model_name: model.or_else(|| call.model_name.clone()),
        actual_cost_usd: Some(cost),
        result_asset_id: Some(result_asset_id),
        provider_request_id,
        finished_at: Some(now),
        updated_at: now,
        ..call.clone()
    };
    (done, event)
}

/// Tells the AuditActor about a paid call once its rows have committed.
async fn audit_paid(env: &JobEnv, call: &provider_calls::Model, cost: f64) {
    let (Some(audit), true, Some(run_id), Some(job_id)) =
        (&env.audit, cost > 0.0, call.run_id, call.job_id)
    else {
        return;
    };
    let sent = audit
        .send(crate::engine::PaidCall {
            project_id: call.project_id,
            run_id,
            job_id,
            provider_call_id: call.id,
            provider_code: call.provider_code.clone(),
            idempotency_key: call.idempotency_key.clone(),
            cost_usd: cost,
        })
        .await;
    if let Err(e) = sent {
        tracing::error!(error = %e, "audit actor unavailable");
    }
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

/// Runs the candidate's passes (when its job has any and it passed the
/// guard) and builds its rows.
async fn recorded(
    ctx: &JobCtx<'_>,
    index: i32,
    img: image::RgbaImage,
    output: Uuid,
    report: GuardReport,
    call_id: Option<Uuid>,
) -> Result<(Rows, CandidateResult), ServiceError> {
    let (final_asset_id, notes, final_image, mut assets, mut links) = match ctx.postprocess {
        Some(pp) if report.hard_failures == 0 => {
            let d = passes::apply(ctx.env, pp, ctx.run, ctx.job, index, img, output).await?;
            (d.final_asset_id, d.notes, d.final_image, d.assets, d.links)
        }
        _ => (output, Vec::new(), img, Vec::new(), Vec::new()),
    };
    let (thumbnail_id, thumb_assets, thumb_links) = passes::thumbnail(
        ctx.env,
        ctx.run,
        ctx.job,
        index,
        (final_asset_id, &final_image),
    )
    .await?;
    assets.extend(thumb_assets);
    links.extend(thumb_links);
    let (mut rows, result) = candidate_rows(
        ctx,
        index,
        Produced {
            output,
            final_asset_id,
            thumbnail_id,
            passes: notes,
        },
        report,
        call_id,
    );
    // Files in foreign-key order: the pass outputs, the thumbnail, their links.
    rows.assets.extend(assets);
    rows.links.extend(links);
    Ok((rows, result))
}

/// A candidate's files: the provider's output, the last pass output (the
/// output itself when no pass ran) and the thumbnail.
struct Produced {
    output: Uuid,
    final_asset_id: Uuid,
    thumbnail_id: Uuid,
    passes: Vec<serde_json::Value>,
}

/// The candidate, its quality report and its `candidate.ready` event.
fn candidate_rows(
    ctx: &JobCtx<'_>,
    index: i32,
    produced: Produced,
    report: GuardReport,
    call_id: Option<Uuid>,
) -> (Rows, CandidateResult) {
    let (run, job) = (ctx.run, ctx.job);
    let Produced {
        output: asset_id,
        final_asset_id,
        thumbnail_id,
        passes,
    } = produced;
    let status = if report.hard_failures > 0 {
        "failed_output_guard"
    } else {
        status::DONE
    };
    let now = time::now();
    let candidate_id = Uuid::now_v7();
    let mut rows = Rows::default();
    rows.candidates.push(run_candidates::Model {
        id: candidate_id,
        project_id: run.project_id,
        run_id: run.id,
        job_id: job.id,
        candidate_index: index,
        status: status.into(),
        output_asset_id: Some(asset_id),
        final_asset_id: Some(final_asset_id),
        rank_hard_failures: report.hard_failures as i32,
        rank_soft_warnings: report.soft_warnings as i32,
        rank_avg_chroma_exceed: report.chroma_exceed,
        meta_json: json!({
            "provider_call_id": call_id, "guard_reasons": report.reasons, "passes": passes,
            "thumbnail_asset_id": thumbnail_id,
        }),
        created_at: now,
        updated_at: now,
    });
    rows.quality_reports.push(quality_reports::Model {
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
    });
    rows.events.push(PendingEvent {
        run_id: run.id,
        project_id: run.project_id,
        event_type: "candidate.ready",
        job_id: Some(job.id),
        payload: json!({
            "job_key": job.job_key, "stage": job.stage,
            "candidate_index": index, "status": status, "asset_id": asset_id, "final_asset_id": final_asset_id,
            "thumbnail_asset_id": thumbnail_id,
            "thumbnail_url": format!("/api/projects/{}/assets/{thumbnail_id}/content", ctx.project_slug),
            "guard": { "chroma_delta": report.chroma_delta, "hard_failures": report.hard_failures, "soft_warnings": report.soft_warnings },
        }),
    });
    let result = CandidateResult {
        index,
        status: status.into(),
        asset_id: Some(asset_id),
        final_asset_id: Some(final_asset_id),
        report: Some(report),
    };
    (rows, result)
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
    let event = |event_type, payload| PendingEvent {
        run_id: run.id,
        project_id: run.project_id,
        event_type,
        job_id: Some(job.id),
        payload,
    };
    let winner = select_winner(&candidates).and_then(|w| Some((w.index, w.final_asset_id?)));
    let (outcome, completion) = match winner {
        Some((index, asset_id)) => (
            JobOutcome::Done {
                final_asset_id: asset_id,
                selected_index: index,
            },
            JobCompletion {
                job_id: job.id,
                status: status::DONE,
                last_error: None,
                winner: Some((index, asset_id)),
                events: vec![
                    event(
                        "job.winner_selected",
                        json!({ "job_key": job.job_key, "selected_candidate_index": index, "final_asset_id": asset_id }),
                    ),
                    event(
                        "stage.completed",
                        json!({ "job_key": job.job_key, "stage": job.stage, "final_asset_id": asset_id }),
                    ),
                ],
            },
        ),
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
                JobCompletion {
                    job_id: job.id,
                    status: status::FAILED,
                    last_error: Some(reason.into()),
                    winner: None,
                    events: vec![event(
                        "job.failed",
                        json!({ "job_key": job.job_key, "reason": reason }),
                    )],
                },
            )
        }
    };
    let applied = env
        .writer()?
        .write(Rows {
            completions: vec![completion],
            ..Rows::default()
        })
        .await?;
    // Not applied: the job was canceled while it ran; the cancel stands.
    Ok(if applied.first().copied().unwrap_or(false) {
        outcome
    } else {
        JobOutcome::Canceled
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(index: i32, status: &str, hard: u32, soft: u32, exceed: f64) -> CandidateResult {
        CandidateResult {
            index,
            status: status.into(),
            asset_id: Some(Uuid::now_v7()),
            final_asset_id: None,
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
