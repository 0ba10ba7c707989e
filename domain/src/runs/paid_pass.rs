//! Paid post-process steps (remote background removal, the refine step),
//! with the same safety as generation calls: a call record before the call,
//! a reservation per attempt, retries under the engine's policy, the result
//! made durable as soon as it arrives, and a stored result reused instead of
//! paid again.

use crate::runs::lease::Fence;
use std::sync::Arc;

use entities::{assets, provider_calls, run_jobs, runs};
use image::RgbaImage;
use providers::{CallShape, GenerateRequest, ImageOptions, Stage};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use serde_json::{Value, json};

use super::calls::{self, Attempted, CallPlan};
use super::delivery::{self, Delivery, Placement};
use super::pipeline::{JobEnv, cpu, new_call};
use super::writer::Rows;
use crate::ServiceError;
use crate::status::CallStatus;

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
pub(super) const REFINE_PROMPT: &str = "Refine this cut-out: clean the edges of the subject, remove any \
    leftover background, keep the subject exactly as it is, keep the background transparent.";

/// How a paid step ended.
pub(super) enum PassEnd {
    Done {
        image: RgbaImage,
        asset: Box<assets::Model>,
        /// What it cost and, for remove.bg, the resolution it returned.
        cost: Value,
    },
    /// Not configured, refused, failed or canceled: the caller goes on
    /// without it.
    Skipped,
    /// The service is shutting down; the step resumes at the next start.
    Interrupted,
}

/// The most one call of the step costs, and whether a lost answer may be
/// sent again; `None`: not configured.
fn terms(env: &JobEnv, pass: PaidPass<'_>) -> Option<(f64, bool)> {
    match pass {
        PaidPass::Remove(c) => env
            .removers
            .get(c)
            .map(|r| (r.max_cost_usd(), r.retry_unknown_outcome())),
        PaidPass::Refine(c) => env.refiners.get(c).map(|p| {
            let shape = CallShape {
                input_images: 1,
                prompt_chars: REFINE_PROMPT.len(),
            };
            (
                p.max_cost_usd(&ImageOptions::default(), shape),
                p.retry_unknown_outcome(),
            )
        }),
    }
}

pub(super) async fn paid_pass(
    env: &JobEnv,
    run: &runs::Model,
    job: &run_jobs::Model,
    index: i32,
    image: &RgbaImage,
    pass: PaidPass<'_>,
) -> Result<PassEnd, ServiceError> {
    let code = pass.code();
    let (operation, kind) = pass.names();
    let Some((bound, retry_unknown)) = terms(env, pass) else {
        return Ok(PassEnd::Skipped);
    };
    let key = format!("{}:{}:c{index}:{operation}:{code}", run.id, job.job_key);
    let existing = provider_calls::Entity::find()
        .filter(provider_calls::Column::IdempotencyKey.eq(key.as_str()))
        .one(&env.db)
        .await?;
    if let Some(c) = &existing
        && c.status == CallStatus::Succeeded
        && let Some(asset_id) = c.result_asset_id
    {
        let (asset, bytes) = crate::assets::load_bytes(&env.db, &env.store, asset_id).await?;
        let cost = c.response_json.get("cost").cloned().unwrap_or(Value::Null);
        return decoded(env, asset, bytes, cost).await;
    }
    if calls::canceled(&env.db, run.id, job.id).await? {
        return Ok(PassEnd::Skipped);
    }
    let call = match existing {
        Some(c) => c,
        None => {
            let c = provider_calls::Model {
                provider_code: code.to_string(),
                operation: operation.into(),
                request_json: json!({ "stage": job.stage, "candidate_index": index, "pass": operation }),
                ..new_call(run, job, code, &key, false, bound)
            };
            env.writer()?
                .write(
                    Some(Fence::of(job)),
                    Rows {
                        provider_calls: vec![c.clone()],
                        ..Rows::default()
                    },
                )
                .await?;
            c
        }
    };
    let api_key =
        crate::secrets::provider_key(&env.db, env.secret_keys.as_ref(), run.project_id, code)
            .await?;
    let plan = CallPlan {
        bound_usd: bound,
        retry_unknown,
        governor: env.governor(code),
        index,
    };
    let attempted = calls::attempt(env, run, job, &call, &plan, false, |attempt| {
        let (image, api_key, key) = (image.clone(), api_key.clone(), key.clone());
        async move {
            match pass {
                PaidPass::Remove(c) => match env.removers.get(c) {
                    Some(r) => r.remove(image, api_key).await.map(Delivery::from),
                    None => Err(providers::ProviderError::NotConfigured(c.to_string())),
                },
                PaidPass::Refine(c) => match env.refiners.get(c) {
                    Some(p) => p
                        .generate(GenerateRequest {
                            idempotency_key: key,
                            stage: Stage::Refine,
                            prompt: REFINE_PROMPT.into(),
                            input: Some(image),
                            references: Arc::new(Vec::new()),
                            candidate_index: index as u32,
                            attempt,
                            api_key,
                            options: ImageOptions::default(),
                        })
                        .await
                        .map(Delivery::from),
                    None => Err(providers::ProviderError::NotConfigured(c.to_string())),
                },
            }
        }
    })
    .await?;
    let (delivered, attempt, arrived) = match attempted {
        Attempted::Delivered {
            value,
            attempt,
            arrived,
        } => (value, attempt, arrived),
        Attempted::Interrupted => return Ok(PassEnd::Interrupted),
        Attempted::GaveUp { .. } | Attempted::Canceled => return Ok(PassEnd::Skipped),
    };
    plan.governor.observe_success(&delivered.rate);
    let cost = delivered.cost.detail.clone();
    let (asset, bytes, _) = delivery::keep(
        env,
        run,
        job,
        Placement {
            kind,
            key_stem: format!("runs/{}/{}/c{index}.{kind}", run.id, job.job_key),
            parent: None,
            metadata: json!({ "candidate_index": index, "stage": job.stage, "pass": kind, "backend": code }),
            call: &call,
            attempt,
            arrived,
        },
        delivered,
    )
    .await?;
    if env.drain.is_draining() {
        return Ok(PassEnd::Interrupted);
    }
    decoded(env, asset, bytes, cost).await
}

/// The step's stored result, decoded; a file that does not decode (it was
/// paid for and is kept) is skipped with a warning.
async fn decoded(
    env: &JobEnv,
    asset: assets::Model,
    bytes: Vec<u8>,
    cost: Value,
) -> Result<PassEnd, ServiceError> {
    let limits = env.limits;
    match cpu(move || imaging::decode(&bytes, limits)).await? {
        Ok(image) => Ok(PassEnd::Done {
            image,
            asset: Box::new(asset),
            cost,
        }),
        Err(e) => {
            tracing::warn!(asset_id = %asset.id, error = %e, "a paid pass delivered an image that does not decode");
            Ok(PassEnd::Skipped)
        }
    }
}
