//! One candidate of a job: its earlier state reused (a decided verdict, a
//! stored result), its provider call attempted under the call plan, and its
//! result taken through the guard and the passes into its rows.

use crate::runs::lease::Fence;
use entities::{assets, provider_calls, run_candidates};
use imaging::guard::{self, GuardReport};
use providers::GenerateRequest;
use serde_json::json;
use uuid::Uuid;

use crate::ServiceError;
use crate::assets::{self as registry, NewAsset};
use crate::runs::calls::{self, Attempted, CallPlan};
use crate::runs::delivery::{self, Delivery, Placement};
use crate::runs::passes::{LinkType, link};
use crate::runs::record::recorded;
use crate::status::{CallStatus, CandidateStatus};

use super::{JobCtx, cpu};

#[derive(Debug, Clone)]
pub(in crate::runs) struct CandidateResult {
    pub index: i32,
    pub status: String,
    pub asset_id: Option<Uuid>,
    /// After the post-process passes (the output itself when none ran).
    pub final_asset_id: Option<Uuid>,
    /// The candidate's row already records `final_asset_id` as its final
    /// asset (nothing to update when it wins).
    pub final_recorded: bool,
    pub report: Option<GuardReport>,
}

impl CandidateResult {
    fn failed(index: i32) -> Self {
        Self {
            index,
            status: CandidateStatus::Failed.into(),
            asset_id: None,
            final_asset_id: None,
            final_recorded: false,
            report: None,
        }
    }
}

/// How one candidate ended.
pub(super) enum CandidateEnd {
    Decided(CandidateResult),
    Canceled,
    Interrupted,
}

/// A candidate's state from earlier attempts of its job.
pub(super) enum Prior {
    /// Recorded with its guard verdict: kept as it is.
    Decided(run_candidates::Model),
    /// Its provider call is on record (maybe already succeeded).
    Call {
        call: Box<provider_calls::Model>,
        /// Recorded in flight for its first attempt just now.
        in_flight: bool,
    },
}

pub(super) async fn candidate(
    ctx: &JobCtx<'_>,
    index: i32,
    prior: Prior,
) -> Result<CandidateEnd, ServiceError> {
    let JobCtx { env, run, job, .. } = *ctx;
    let (call, in_flight) = match prior {
        // Already decided by an earlier attempt of this job: keep that verdict.
        Prior::Decided(existing) => {
            return Ok(CandidateEnd::Decided(CandidateResult {
                index,
                status: existing.status,
                asset_id: existing.output_asset_id,
                final_asset_id: existing.final_asset_id.or(existing.output_asset_id),
                final_recorded: existing.final_asset_id.is_some(),
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
    if call.status == CallStatus::Succeeded
        && let Some(asset_id) = call.result_asset_id
    {
        let (asset, bytes) = registry::load_bytes(&env.db, &env.store, asset_id).await?;
        return decide(ctx, index, call.id, asset, bytes, None).await;
    }
    let plan = CallPlan {
        index,
        ..ctx.plan.clone()
    };
    let attempted = calls::attempt(env, run, job, &call, &plan, in_flight, |attempt| {
        env.provider.generate(GenerateRequest {
            idempotency_key: call.idempotency_key.clone(),
            stage: ctx.stage,
            prompt: job.prompt_text.clone().unwrap_or_default(),
            input: ctx.input.cloned(),
            references: ctx.references.clone(),
            candidate_index: index as u32,
            attempt,
            api_key: ctx.api_key.clone(),
            options: ctx.options.clone(),
        })
    })
    .await?;
    let (generated, attempt, arrived) = match attempted {
        Attempted::Delivered {
            value,
            attempt,
            arrived,
        } => (value, attempt, arrived),
        Attempted::GaveUp { code } => {
            tracing::debug!(run_id = %run.id, job_key = %job.job_key, index, code, "candidate gave up");
            return Ok(if calls::canceled(&env.db, run.id, job.id).await? {
                CandidateEnd::Canceled
            } else {
                CandidateEnd::Decided(CandidateResult::failed(index))
            });
        }
        Attempted::Canceled => return Ok(CandidateEnd::Canceled),
        Attempted::Interrupted => return Ok(CandidateEnd::Interrupted),
    };
    plan.governor.observe_success(&generated.rate);
    let delivered = Delivery::from(generated);
    if plan.bound_usd <= 0.0 {
        return free_result(ctx, index, &call, delivered, attempt).await;
    }
    // Paid: durable before anything else is done with it.
    let (asset, bytes, decoded) = delivery::keep(
        env,
        run,
        job,
        Placement {
            kind: "generated",
            key_stem: format!("runs/{}/{}/c{index}", run.id, job.job_key),
            parent: ctx.input_id,
            metadata: json!({ "candidate_index": index, "stage": job.stage }),
            call: &call,
            attempt,
            arrived,
        },
        delivered,
    )
    .await?;
    if env.drain.is_draining() {
        return Ok(CandidateEnd::Interrupted);
    }
    decide(ctx, index, call.id, asset, bytes, decoded).await
}

/// A delivered image (decoded from `bytes` unless the provider handed it
/// over decoded) and the output guard's report on it. Blocking.
fn guarded(
    bytes: &[u8],
    decoded: Option<image::RgbaImage>,
    limits: imaging::DecodeLimits,
    settings: &guard::GuardSettings,
) -> Result<(image::RgbaImage, GuardReport), imaging::ImagingError> {
    let img = match decoded {
        Some(img) => img,
        None => imaging::decode(bytes, limits)?,
    };
    let report = guard::check(&img, settings);
    Ok((img, report))
}

/// A stored result through the guard (archived when it fails), the passes
/// and the candidate's rows.
pub(super) async fn decide(
    ctx: &JobCtx<'_>,
    index: i32,
    call_id: Uuid,
    asset: assets::Model,
    bytes: Vec<u8>,
    decoded: Option<image::RgbaImage>,
) -> Result<CandidateEnd, ServiceError> {
    let (env, limits, guard_settings) = (ctx.env, ctx.env.limits, ctx.guard);
    let (checked, bytes) = cpu(move || {
        let checked = guarded(&bytes, decoded, limits, &guard_settings);
        (checked, bytes)
    })
    .await?;
    let (img, report) = match checked {
        Ok(v) => v,
        Err(e) => {
            // Paid for and kept, but unusable: the candidate fails.
            tracing::warn!(asset_id = %asset.id, error = %e, "a delivered image does not decode");
            return Ok(CandidateEnd::Decided(CandidateResult::failed(index)));
        }
    };
    let (output, archived_row) = if report.hard_failures > 0 {
        delivery::archive(env, ctx.run, ctx.job, index, &asset, &bytes).await?
    } else {
        (asset.id, None)
    };
    let Some((mut rows, result)) = recorded(ctx, index, img, output, report, Some(call_id)).await?
    else {
        return Ok(CandidateEnd::Interrupted);
    };
    if let Some(row) = archived_row {
        rows.assets.insert(0, row);
    }
    env.writer()?.write(Some(Fence::of(ctx.job)), rows).await?;
    Ok(CandidateEnd::Decided(result))
}

/// A free result (the local provider): nothing to lose in a crash, so its
/// file, call and candidate commit together, the file stored where the
/// guard's verdict puts it.
pub(super) async fn free_result(
    ctx: &JobCtx<'_>,
    index: i32,
    call: &provider_calls::Model,
    delivered: Delivery,
    attempt: u32,
) -> Result<CandidateEnd, ServiceError> {
    let (env, run, job) = (ctx.env, ctx.run, ctx.job);
    let (limits, guard_settings) = (env.limits, ctx.guard);
    let Delivery {
        bytes,
        mime,
        decoded,
        cost,
        model,
        provider_request_id,
        ..
    } = delivered;
    let ext = delivery::extension(mime);
    // Failed candidates go to the archive, never deleted or overwritten
    // (run-scoped keys are unique).
    let keys = [
        format!("runs/{}/{}/c{index}.{ext}", run.id, job.job_key),
        format!("archive/{}/{}/c{index}.{ext}", run.id, job.job_key),
    ];
    // The guard and the hash, then (to a local root, with the core released)
    // the file's write, in one blocking call: one hop per candidate, not three.
    let (local, to_write) = (env.store.local_writer(), keys.clone());
    let (checked, bytes, sha, written) = imaging::cpu::run_then(
        move || {
            let checked = guarded(&bytes, decoded, limits, &guard_settings);
            let sha = registry::sha256_hex(&bytes);
            (checked, bytes, sha)
        },
        move |(checked, bytes, sha)| {
            let written = match (&checked, local) {
                (Ok((_, report)), Some(local)) => Some(
                    local.write_unsynced(&to_write[usize::from(report.hard_failures > 0)], &bytes),
                ),
                _ => None,
            };
            (checked, bytes, sha, written)
        },
    )
    .await?;
    let Ok((img, report)) = checked else {
        return Ok(CandidateEnd::Decided(CandidateResult::failed(index)));
    };
    let archived = report.hard_failures > 0;
    let storage_key = &keys[usize::from(archived)];
    let (width, height) = img.dimensions();
    let asset = NewAsset {
        project_id: run.project_id,
        kind: if archived { "archived" } else { "generated" },
        key: storage_key,
        width,
        height,
        bytes,
        mime,
        run_id: Some(run.id),
        job_id: Some(job.id),
        candidate_id: None,
        metadata: json!({ "candidate_index": index, "stage": job.stage, "model": model }),
    };
    // Synced by the row writer with the rest of its batch, before the rows
    // that point at it commit.
    let stored = match written {
        Some(written) => {
            let written = written?;
            let found = env.existing_asset(run.project_id, asset.kind, &sha).await?;
            registry::adopt_written(found, &env.store, asset, sha.clone(), written).await?
        }
        None => registry::put_unsynced(&env.db, &env.store, asset, Some(sha.clone())).await?,
    };
    let asset_id = stored.row.id;
    let Some((mut rows, result)) =
        recorded(ctx, index, img, asset_id, report, Some(call.id)).await?
    else {
        return Ok(CandidateEnd::Interrupted);
    };
    let (done, cost_event) = calls::completion(
        call,
        calls::Delivered {
            result_asset_id: asset_id,
            sha256: &sha,
            cost: &cost,
            model,
            provider_request_id,
            attempt,
        },
    );
    rows.provider_calls.push(done);
    rows.cost_events.extend(cost_event);
    if let Some(input_id) = ctx.input_id {
        rows.links
            .push(link(run, input_id, asset_id, LinkType::DerivedFrom));
    }
    // Foreign-key order: the output before the pass files derived from it.
    rows.files.extend(stored.unsynced);
    if stored.fresh {
        rows.assets.insert(0, stored.row);
    }
    env.writer()?.write(Some(Fence::of(ctx.job)), rows).await?;
    Ok(CandidateEnd::Decided(result))
}
