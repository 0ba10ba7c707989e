//! A job's verdict: the best candidate that passed the output guard wins
//! and becomes the input of the next stage; without one the job fails.

use crate::runs::lease::Fence;
use entities::{run_jobs, runs};
use imaging::guard::GuardReport;
use serde_json::json;

use super::pipeline::{CandidateResult, JobEnv, JobOutcome};
use super::writer::{JobCompletion, PendingEvent, Rows};
use crate::ServiceError;
use crate::status::{CandidateStatus, JobStatus};

/// Fewest hard failures, then fewest soft warnings, then lowest chroma
/// excess, then lowest index; only candidates that passed the guard.
fn select_winner(candidates: &[CandidateResult]) -> Option<&CandidateResult> {
    candidates
        .iter()
        .filter(|c| c.status == CandidateStatus::Done && c.asset_id.is_some())
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

pub(super) async fn finish_job(
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
    let winner = select_winner(&candidates)
        .and_then(|w| Some((w.index, w.final_asset_id?, w.final_recorded)));
    // The last stage of a chain unblocks nothing.
    let chain_ends = job.meta_json.get("last_stage") == Some(&json!(true));
    let (outcome, completion) = match winner {
        Some((index, asset_id, winner_recorded)) => (
            JobOutcome::Done {
                final_asset_id: asset_id,
                selected_index: index,
            },
            JobCompletion {
                job_id: job.id,
                status: JobStatus::Done,
                last_error: None,
                winner: Some((index, asset_id)),
                winner_recorded,
                chain_ends,
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
            let reason = if candidates
                .iter()
                .any(|c| c.status == CandidateStatus::FailedOutputGuard)
            {
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
                    status: JobStatus::Failed,
                    last_error: Some(reason.into()),
                    winner: None,
                    winner_recorded: false,
                    chain_ends,
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
        .write(
            Some(Fence::of(job)),
            Rows {
                completions: vec![completion],
                ..Rows::default()
            },
        )
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
    use uuid::Uuid;

    use super::*;

    fn c(index: i32, status: &str, hard: u32, soft: u32, exceed: f64) -> CandidateResult {
        CandidateResult {
            index,
            status: status.into(),
            asset_id: Some(Uuid::now_v7()),
            final_asset_id: None,
            final_recorded: true,
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
}
