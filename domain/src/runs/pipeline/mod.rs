//! One job, end to end: every candidate through the provider (see
//! [`super::calls`] for the call's life), its result made durable at once
//! when it was paid for ([`super::delivery`]), then the output guard, the
//! passes and the candidate's rows ([`super::record`]), and finally the
//! verdict ([`super::verdict`]). A plain async function: the WorkerActor
//! schedules it and heartbeats the job's lease; nothing here knows about
//! actors.

use crate::runs::lease::Fence;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use entities::{provider_calls, run_candidates, run_jobs, runs};
use futures_util::future::join_all;
use imaging::DecodeLimits;
use imaging::effects::{TimeOfDay, Weather};
use imaging::guard::GuardSettings;
use providers::governor::Governor;
use providers::{CallShape, ImageOptions, ImageProvider, Stage};
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter};
use serde_json::json;
use storage::ProjectFiles;
use uuid::Uuid;

use super::calls::{self, CallPlan};
use super::drain::Drain;
use super::events::EventHub;
use super::manifest::{Manifest, Postprocess};
use super::passes::{self};
use super::verdict::finish_job;
use super::writer::{RowWriter, Rows};
use crate::assets::{self as registry};
use crate::status::CallStatus;
use crate::{ServiceError, time};

mod candidate;

pub(super) use candidate::CandidateResult;
use candidate::{CandidateEnd, Prior, candidate};

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
    /// Per provider code: how many calls may be in flight, following the
    /// provider's rate-limit signals (shared by all runs).
    pub governors: Arc<HashMap<String, Arc<Governor>>>,
    pub store: ProjectFiles,
    pub retry: RetryPolicy,
    pub limits: DecodeLimits,
    /// Asked before every paid attempt (the engine's CostActor).
    pub spend: Option<Arc<dyn crate::ports::SpendGate>>,
    /// Told about every paid call (the engine's AuditActor).
    pub audit: Option<Arc<dyn crate::ports::PaidCallLog>>,
    pub project_budget_usd: Option<f64>,
    /// Group commit for the candidates' rows.
    pub writer: Option<RowWriter>,
    /// Remote background-removal services by code.
    pub removers: HashMap<String, Arc<providers::bg_remote::RemoteRemover>>,
    /// Image providers by code, for the refine step after background removal.
    pub refiners: HashMap<String, Arc<dyn ImageProvider>>,
    /// For projects' own provider keys (see `secrets::provider_key`).
    pub secret_keys: Option<crate::secrets::cipher::KeySource>,
    /// Set when the service shuts down: nothing new is sent.
    pub drain: Arc<Drain>,
    /// Admission of pass work by memory (shared by the whole engine).
    pub pass_budget: Arc<super::memory::PassBudget>,
    /// This job's last cancel check, shared by its candidates.
    pub cancel: Arc<calls::CancelMemo>,
    /// Content lookups answered together (shared by the whole engine).
    pub content: Option<registry::ContentLookups>,
    /// For the URLs in events.
    pub project_slug: Arc<str>,
    /// The job is at its first claim with nothing recorded for it yet
    /// (`RunShared::first_claim`): its earlier decisions and calls are not
    /// looked up.
    pub first_claim: bool,
}

impl JobEnv {
    /// A job's environment from the engine's shared dependencies, for the
    /// run's (already resolved) provider.
    pub fn new(
        deps: &super::deps::EngineDeps,
        provider: Arc<dyn ImageProvider>,
        shared: &super::lifecycle::RunShared,
        job: &run_jobs::Model,
    ) -> Self {
        let (run, store) = (&shared.run, shared.store.clone());
        Self {
            db: deps.db.clone(),
            hub: deps.hub.clone(),
            provider,
            governors: deps.governors.clone(),
            store,
            retry: deps.config.retry,
            limits: deps.config.limits,
            spend: deps.spend.clone(),
            audit: deps.audit.clone(),
            writer: deps.writer.clone(),
            removers: deps.removers.clone(),
            refiners: deps.providers.clone(),
            secret_keys: deps.secret_keys.clone(),
            drain: deps.drain.clone(),
            pass_budget: deps.pass_budget.clone(),
            cancel: Arc::default(),
            content: deps.content.clone(),
            project_slug: shared.project_slug.clone(),
            first_claim: shared.first_claim(job),
            project_budget_usd: serde_json::from_value::<super::manifest::Manifest>(
                run.settings_snapshot_json.clone(),
            )
            .ok()
            .and_then(|m| m.policy.project_budget_usd),
        }
    }

    pub(super) fn writer(&self) -> Result<&RowWriter, ServiceError> {
        self.writer
            .as_ref()
            .ok_or_else(|| ServiceError::Internal("row writer not started".into()))
    }

    /// The project's asset with this content in this role, if it holds one
    /// (see `assets::existing`).
    pub(super) async fn existing_asset(
        &self,
        project_id: Uuid,
        kind: &'static str,
        sha256: &str,
    ) -> Result<Option<entities::assets::Model>, ServiceError> {
        let backend = self.store.backend();
        match &self.content {
            Some(lookups) => lookups.existing(project_id, kind, sha256, backend).await,
            None => registry::existing(&self.db, project_id, kind, sha256, backend).await,
        }
    }

    /// The governor of `code` (a fresh, unshared one if the engine has none).
    pub(super) fn governor(&self, code: &str) -> Arc<Governor> {
        self.governors
            .get(code)
            .cloned()
            .unwrap_or_else(|| Governor::new(8))
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
    /// The service is shutting down: the job goes back to the queue
    /// without using up an attempt; stored results are reused.
    Interrupted,
}

/// What every candidate of one job shares.
pub(super) struct JobCtx<'a> {
    pub env: &'a JobEnv,
    pub run: &'a runs::Model,
    pub job: &'a run_jobs::Model,
    stage: Stage,
    /// `None`: generated from the prompt alone.
    input: Option<&'a image::RgbaImage>,
    input_id: Option<Uuid>,
    guard: GuardSettings,
    /// The passes to run on each candidate (last stage, when any is on).
    pub postprocess: Option<&'a Postprocess>,
    references: Arc<Vec<image::RgbaImage>>,
    /// The project's own key for the provider, if it has one.
    api_key: Option<providers::credentials::Secret>,
    options: ImageOptions,
    /// How each candidate's call may be attempted.
    plan: CallPlan,
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
pub(super) async fn cpu<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ServiceError> {
    Ok(imaging::cpu::run(f).await?)
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
        let (_, bytes) = registry::load_bytes(&env.db, &env.store, id).await?;
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

/// Runs one leased job to its outcome and persists it. (No span of its
/// own: the WorkerActor runs it inside the job's span, and a second span
/// entered on every poll measurably slows the engine.)
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
    // Candidates are numbered from 1, as v1 numbers them.
    let keys: Vec<String> = (1..=candidates).map(|i| call_key(run, job, i)).collect();
    // What an earlier attempt of this job already decided or paid for
    // (nothing, at a first claim: no reads then), a cancel, the input, the
    // style references and the project's key: independent reads, asked
    // together, each a round trip before the first call.
    let earlier = async {
        if env.first_claim {
            return Ok((HashMap::new(), HashMap::new()));
        }
        let (decided, calls) = tokio::join!(
            run_candidates::Entity::find()
                .filter(run_candidates::Column::JobId.eq(job.id))
                .all(&env.db),
            provider_calls::Entity::find()
                .filter(provider_calls::Column::IdempotencyKey.is_in(keys.clone()))
                .all(&env.db),
        );
        let decided: HashMap<i32, run_candidates::Model> = decided?
            .into_iter()
            .map(|c| (c.candidate_index, c))
            .collect();
        let calls: HashMap<String, provider_calls::Model> = calls?
            .into_iter()
            .map(|c| (c.idempotency_key.clone(), c))
            .collect();
        Ok::<_, ServiceError>((decided, calls))
    };
    let input = async {
        let Some(id) = input_id else {
            return Ok(None);
        };
        let (_, input_bytes) = registry::load_bytes(&env.db, &env.store, id).await?;
        let limits = env.limits;
        Ok::<_, ServiceError>(Some(
            cpu(move || imaging::decode(&input_bytes, limits))
                .await?
                .map_err(|e| ServiceError::Internal(format!("input image: {e}")))?,
        ))
    };
    let api_key = crate::secrets::provider_key(
        &env.db,
        env.secret_keys.as_ref(),
        run.project_id,
        env.provider.code(),
    );
    let (canceled, earlier, input, references, api_key) = tokio::join!(
        env.cancel.canceled(&env.db, run.id, job.id),
        earlier,
        input,
        load_references(env, run),
        api_key,
    );
    if canceled? {
        return Ok(JobOutcome::Canceled);
    }
    let (mut decided, mut calls) = earlier?;
    let input = input?;
    let references = Arc::new(references?);
    let api_key = api_key?;
    let options = manifest.generation.image.clone();
    let shape = CallShape {
        input_images: u32::from(input.is_some()) + references.len() as u32,
        prompt_chars: job.prompt_text.as_deref().unwrap_or("").chars().count(),
    };
    // The most one call can cost: reserved per attempt, released to the
    // actual cost reported when it succeeds.
    let bound = env.provider.max_cost_usd(&options, shape);
    let free = bound <= 0.0;
    // Every call not yet on record is recorded, in one write, before any is
    // made. A free call's record starts in flight (attempt 1), sparing a
    // separate write per attempt; a paid one is reserved per attempt by the
    // CostActor.
    let mut fresh = Vec::new();
    let priors: Vec<Prior> = (1..=candidates)
        .map(|i| {
            let key = &keys[(i - 1) as usize];
            if let Some(c) = decided.remove(&i) {
                Prior::Decided(c)
            } else if let Some(call) = calls.remove(key) {
                Prior::Call {
                    call: Box::new(call),
                    in_flight: false,
                }
            } else {
                let call = provider_calls::Model {
                    request_json: json!({ "stage": job.stage, "candidate_index": i,
                        "prompt": job.prompt_text, "options": options }),
                    ..new_call(run, job, env.provider.code(), key, free, bound)
                };
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
            .write(
                Some(Fence::of(job)),
                Rows {
                    provider_calls: fresh,
                    ..Rows::default()
                },
            )
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
        api_key,
        options,
        plan: CallPlan {
            bound_usd: bound,
            retry_unknown: env.provider.retry_unknown_outcome(),
            governor: env.governor(env.provider.code()),
            index: 0,
        },
    };
    let work = priors
        .into_iter()
        .zip(1..)
        .map(|(prior, index)| candidate(&ctx, index, prior));
    // Every candidate runs to its end (calls in flight finish and are
    // stored) before the job's outcome is decided.
    let mut finished = Vec::new();
    let (mut canceled, mut interrupted) = (false, false);
    for r in join_all(work).await {
        match r? {
            CandidateEnd::Decided(c) => finished.push(c),
            CandidateEnd::Canceled => canceled = true,
            CandidateEnd::Interrupted => interrupted = true,
        }
    }
    if canceled {
        return Ok(JobOutcome::Canceled);
    }
    if interrupted {
        return Ok(JobOutcome::Interrupted);
    }
    finish_job(env, run, job, finished).await
}

/// A call record before its first attempt: `in_flight` marks a free call's
/// first attempt as started with it; `bound` is what an attempt reserves.
pub(super) fn new_call(
    run: &runs::Model,
    job: &run_jobs::Model,
    provider_code: &str,
    key: &str,
    in_flight: bool,
    bound: f64,
) -> provider_calls::Model {
    let now = time::now();
    provider_calls::Model {
        id: Uuid::now_v7(),
        project_id: run.project_id,
        idempotency_key: key.to_string(),
        run_id: Some(run.id),
        job_id: Some(job.id),
        candidate_id: None,
        provider_code: provider_code.into(),
        operation: "generate".into(),
        model_name: None,
        status: CallStatus::Pending.into(),
        attempt: if in_flight { 1 } else { 0 },
        started_at: in_flight.then_some(now),
        sent_at: None,
        sent_attempts: 0,
        possibly_billed_usd: 0.0,
        reserved_cost_usd: bound,
        actual_cost_usd: None,
        request_json: json!({}),
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

/// Tells the audit log about a paid call once its rows have committed.
pub(super) async fn audit_paid(env: &JobEnv, call: &provider_calls::Model, cost: f64) {
    let (Some(audit), true, Some(run_id), Some(job_id)) =
        (&env.audit, cost > 0.0, call.run_id, call.job_id)
    else {
        return;
    };
    audit
        .record(crate::ports::PaidCallRecord {
            project_id: call.project_id,
            run_id,
            job_id,
            provider_call_id: call.id,
            provider_code: call.provider_code.clone(),
            idempotency_key: call.idempotency_key.clone(),
            cost_usd: cost,
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

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
