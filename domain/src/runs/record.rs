//! A decided candidate's rows: its post-process passes (when its job has
//! any and it passed the guard), its thumbnail, the candidate itself, its
//! quality report and its `candidate.ready` event.

use entities::{quality_reports, run_candidates};
use imaging::guard::GuardReport;
use serde_json::json;
use uuid::Uuid;

use super::passes;
use super::pipeline::{CandidateResult, JobCtx};
use super::writer::{PendingEvent, Rows};
use crate::status::CandidateStatus;
use crate::{ServiceError, time};

/// Runs the candidate's passes (when its job has any and it passed the
/// guard) and builds its rows.
pub(super) async fn recorded(
    ctx: &JobCtx<'_>,
    index: i32,
    img: image::RgbaImage,
    output: Uuid,
    report: GuardReport,
    call_id: Option<Uuid>,
) -> Result<Option<(Rows, CandidateResult)>, ServiceError> {
    // The passes' frames are admitted by memory and held until the
    // thumbnail has been made from the last of them.
    let mut memory = None;
    let (final_asset_id, notes, final_image, mut assets, mut links, mut files) =
        match ctx.postprocess {
            Some(pp) if report.hard_failures == 0 => {
                let peak = super::memory::pass_peak_bytes(img.width(), img.height(), pp);
                memory = Some(ctx.env.pass_budget.admit(peak).await?);
                match passes::apply(ctx.env, pp, ctx.run, ctx.job, index, img, output).await? {
                    Some(d) => (
                        d.final_asset_id,
                        d.notes,
                        d.final_image,
                        d.assets,
                        d.links,
                        d.files,
                    ),
                    // Shutting down: a paid pass's result is stored; the
                    // candidate is decided again at the next start.
                    None => return Ok(None),
                }
            }
            _ => (output, Vec::new(), img, Vec::new(), Vec::new(), Vec::new()),
        };
    let thumb = passes::thumbnail(
        ctx.env,
        ctx.run,
        ctx.job,
        index,
        (final_asset_id, &final_image),
    )
    .await?;
    drop(final_image);
    drop(memory);
    assets.extend(thumb.assets);
    links.extend(thumb.links);
    files.extend(thumb.files);
    let (mut rows, result) = candidate_rows(
        ctx,
        index,
        Produced {
            output,
            final_asset_id,
            thumbnail_id: thumb.id,
            passes: notes,
        },
        report,
        call_id,
    );
    // Files in foreign-key order: the pass outputs, the thumbnail, their links.
    rows.assets.extend(assets);
    rows.links.extend(links);
    rows.files.extend(files);
    Ok(Some((rows, result)))
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
        CandidateStatus::FailedOutputGuard
    } else {
        CandidateStatus::Done
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
            "candidate_index": index, "status": status.as_str(), "asset_id": asset_id, "final_asset_id": final_asset_id,
            "thumbnail_asset_id": thumbnail_id,
            "thumbnail_url": format!("/api/projects/{}/assets/{thumbnail_id}/content", ctx.env.project_slug),
            "guard": { "chroma_delta": report.chroma_delta, "hard_failures": report.hard_failures, "soft_warnings": report.soft_warnings },
        }),
    });
    let result = CandidateResult {
        index,
        status: status.into(),
        asset_id: Some(asset_id),
        final_asset_id: Some(final_asset_id),
        final_recorded: true,
        report: Some(report),
    };
    (rows, result)
}
