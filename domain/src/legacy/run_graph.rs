//! Assets, runs, jobs and candidates: paths made foreign keys, statuses
//! made terminal, lineage derived from the run graph.

use std::collections::HashMap;

use entities::*;
use serde_json::json;
use uuid::Uuid;

use super::files::{FileAsset, Resolved};
use super::project::*;
use super::*;

/// The earlier system's own asset rows: kept under their ids, their files
/// copied when they exist.
pub(super) async fn map_assets(m: &mut Mapper<'_>) -> Result<(), ServiceError> {
    let project = m.project;
    let legacy = m.legacy;
    for r in legacy.of(project, "assets") {
        m.count("assets").read += 1;
        let Some(raw_id) = r.text(&["id"]) else {
            m.orphan("assets");
            continue;
        };
        let id = legacy.id("assets", &raw_id);
        let kind = r
            .text(&["kind", "asset_kind"])
            .unwrap_or_else(|| "asset".into());
        let path = r.text(&["storage_uri", "rel_path"]).unwrap_or_default();
        let mut metadata = r.object(&["metadata_json", "meta_json"]);
        let found = match m.files.resolve(&path) {
            Resolved::Found { path: file, key } => {
                Some(m.files.register(&file, &key, Some(id)).await?)
            }
            Resolved::Missing(raw) => {
                m.report.files.missing.push(raw);
                None
            }
            Resolved::Outside(raw) => {
                m.report.files.outside_root.push(raw);
                None
            }
        };
        let ids = (
            legacy.reference("runs", r.text(&["run_id"])),
            legacy.reference("run_jobs", r.text(&["job_id"])),
            legacy.reference("run_candidates", r.text(&["candidate_id"])),
        );
        match found {
            Some(file) => {
                m.report.files.registered += file.fresh as u64;
                // Its own id and key, even when the same file was met first.
                let file = FileAsset { id, ..file };
                m.push_asset(&file, &kind, ids, metadata);
            }
            None => {
                // The row is the user's: kept, pointing at the file it
                // named, which storage reports missing when read.
                if let Some(o) = metadata.as_object_mut() {
                    o.insert("file_missing_at_import".into(), json!(true));
                }
                let key = storage::ObjectKey::parse(&path)
                    .map(|k| k.as_str().to_string())
                    .unwrap_or_else(|_| format!("imported/missing/{id}"));
                m.assets.insert(id);
                m.batch
                    .assets
                    .push(assets::ActiveModel::from(assets::Model {
                        id,
                        project_id: project,
                        kind,
                        storage_backend: r
                            .text(&["storage_backend"])
                            .unwrap_or_else(|| "local".into()),
                        storage_key: key.clone(),
                        storage_uri: key,
                        mime_type: r.text(&["mime_type"]),
                        width: r.int(&["width"]).map(|v| v as i32),
                        height: r.int(&["height"]).map(|v| v as i32),
                        byte_size: None,
                        sha256: r.text(&["sha256"]),
                        run_id: ids.0,
                        job_id: ids.1,
                        candidate_id: ids.2,
                        metadata_json: metadata,
                        created_at: r.time(&["created_at"]).unwrap_or(m.now),
                    }));
            }
        }
    }
    Ok(())
}

pub(super) fn run_status(raw: Option<String>) -> &'static str {
    match raw
        .as_deref()
        .map(|s| s.trim().to_ascii_lowercase())
        .as_deref()
    {
        Some("ok" | "done" | "completed" | "succeeded") => "done",
        Some("partial") => "partial",
        Some("canceled" | "cancelled") => "canceled",
        // Never `queued` or `running`: an imported run is history, and
        // nothing here may resume (and pay for) it.
        _ => "failed",
    }
}

pub(super) fn job_status(raw: Option<String>) -> &'static str {
    match raw
        .as_deref()
        .map(|s| s.trim().to_ascii_lowercase())
        .as_deref()
    {
        Some("done" | "ok") => "done",
        Some("planned") => "planned",
        Some("skipped") => "skipped",
        Some("canceled" | "cancelled") => "canceled",
        _ => "failed",
    }
}

pub(super) fn candidate_status(raw: Option<String>) -> &'static str {
    match raw
        .as_deref()
        .map(|s| s.trim().to_ascii_lowercase())
        .as_deref()
    {
        Some("done" | "ok" | "planned" | "generated") => "done",
        Some("failed_output_guard") => "failed_output_guard",
        _ => "failed",
    }
}

/// Runs, jobs and candidates, their paths made foreign keys, and the
/// lineage derived from them.
pub(super) async fn map_runs(m: &mut Mapper<'_>) -> Result<(), ServiceError> {
    let project = m.project;
    let legacy = m.legacy;
    let mut runs: HashMap<Uuid, (String, String)> = HashMap::new();
    for r in legacy.of(project, "runs") {
        m.count("runs").read += 1;
        let Some(raw) = r.text(&["id"]) else {
            m.orphan("runs");
            continue;
        };
        let id = legacy.id("runs", &raw);
        let stage = r.text(&["stage"]).unwrap_or_else(|| "style".into());
        let status = run_status(r.text(&["status"]));
        let log = m
            .path_asset(r.text(&["run_log_path"]), "run_log", (Some(id), None, None))
            .await?;
        let run_log_key = log.and_then(|a| {
            m.batch
                .assets
                .iter()
                .find(|x| x.id.as_ref() == &a)
                .map(|x| x.storage_key.as_ref().clone())
        });
        let created = r.time(&["created_at"]).unwrap_or(m.now);
        runs.insert(id, (stage.clone(), raw.clone()));
        m.batch.runs.push(runs::ActiveModel::from(runs::Model {
            id,
            project_id: project,
            run_mode: r
                .text(&["run_mode", "mode"])
                .unwrap_or_else(|| "run".into()),
            status: status.into(),
            stage: Some(stage),
            time_of_day: r.text(&["time_of_day"]),
            weather: r.text(&["weather"]),
            model_name: r.text(&["model_name", "model"]),
            provider_code: r.text(&["provider_code"]),
            image_size: r.text(&["image_size"]),
            image_quality: r.text(&["image_quality"]),
            settings_snapshot_json: r.object(&["settings_snapshot_json", "meta_json"]),
            plan_json: json!({
                "imported_from": "legacy",
                "legacy_status": r.text(&["status"]),
                "run_log_path": r.text(&["run_log_path"]),
            }),
            budget_usd: None,
            estimated_cost_usd: 0.0,
            last_event_seq: 0,
            run_log_key,
            last_error: None,
            started_at: r.time(&["started_at"]),
            finished_at: r.time(&["finished_at"]),
            created_at: created,
            updated_at: r.time(&["finished_at", "created_at"]).unwrap_or(created),
        }));
    }
    // Jobs: their input and final files as assets.
    let mut jobs: HashMap<Uuid, (Uuid, Option<Uuid>)> = HashMap::new();
    let mut job_keys: HashMap<(Uuid, String), Uuid> = HashMap::new();
    for r in legacy.of(project, "run_jobs") {
        m.count("run_jobs").read += 1;
        let run = legacy.reference("runs", r.text(&["run_id"]));
        let (Some(raw), Some(run)) = (r.text(&["id"]), run.filter(|x| runs.contains_key(x))) else {
            m.orphan("run_jobs");
            continue;
        };
        let id = legacy.id("run_jobs", &raw);
        let meta = r.object(&["meta_json"]);
        let key = r.text(&["job_key"]).unwrap_or_else(|| raw.clone());
        let scene = meta["input_images"][0]
            .as_str()
            .or(meta["input"].as_str())
            .map(str::to_string);
        let input = m
            .path_asset(scene.clone(), "input", (None, None, None))
            .await?;
        if input.is_some() {
            m.report.normalised.job_input += 1;
        }
        let mut final_asset = m.known_asset(r.text(&["final_asset_id"]));
        if final_asset.is_none() {
            final_asset = m
                .path_asset(
                    r.text(&["final_output"]),
                    "job_final_output",
                    (Some(run), Some(id), None),
                )
                .await?;
            if final_asset.is_some() {
                m.report.normalised.job_final += 1;
            }
        }
        jobs.insert(id, (run, input));
        job_keys.insert((run, key.clone()), id);
        let stage = runs
            .get(&run)
            .map(|s| s.0.clone())
            .unwrap_or_else(|| "style".into());
        let created = r.time(&["created_at"]).unwrap_or(m.now);
        m.batch
            .jobs
            .push(run_jobs::ActiveModel::from(run_jobs::Model {
                id,
                project_id: project,
                run_id: run,
                job_key: key,
                scene_ref: scene,
                stage,
                stage_index: 0,
                parent_job_id: None,
                retry_of_job_id: None,
                status: job_status(r.text(&["status"])).into(),
                prompt_text: r.text(&["prompt_text"]),
                input_asset_id: input,
                selected_candidate_index: r
                    .int(&["selected_candidate_index", "selected_candidate"])
                    .map(|v| v as i32),
                final_asset_id: final_asset,
                attempt: 1,
                max_attempts: 1,
                lease_owner: None,
                lease_expires_at: None,
                heartbeat_at: None,
                lease_epoch: 0,
                next_attempt_at: None,
                last_error: None,
                meta_json: meta,
                started_at: None,
                finished_at: None,
                created_at: created,
                updated_at: created,
            }));
    }
    let mut position: HashMap<Uuid, i32> = HashMap::new();
    for r in legacy.of(project, "run_candidates") {
        m.count("run_candidates").read += 1;
        let job = legacy.reference("run_jobs", r.text(&["job_id"]));
        let (Some(raw), Some((job, (run, input)))) = (
            r.text(&["id"]),
            job.and_then(|j| jobs.get(&j).map(|v| (j, *v))),
        ) else {
            m.orphan("run_candidates");
            continue;
        };
        let id = legacy.id("run_candidates", &raw);
        let n = position.entry(job).or_insert(0);
        *n += 1;
        let index = r.int(&["candidate_index"]).map(|v| v as i32).unwrap_or(*n);
        let mut output = m.known_asset(r.text(&["output_asset_id"]));
        if output.is_none() {
            output = m
                .path_asset(
                    r.text(&["output_path"]),
                    "candidate_output",
                    (Some(run), Some(job), Some(id)),
                )
                .await?;
            m.report.normalised.candidate_output += output.is_some() as u64;
        }
        let mut fin = m.known_asset(r.text(&["final_asset_id"]));
        if fin.is_none() {
            fin = m
                .path_asset(
                    r.text(&["final_output_path"]),
                    "candidate_final_output",
                    (Some(run), Some(job), Some(id)),
                )
                .await?;
            m.report.normalised.candidate_final += fin.is_some() as u64;
        }
        m.link(input, output);
        m.link(output, fin);
        let created = r.time(&["created_at"]).unwrap_or(m.now);
        m.batch
            .candidates
            .push(run_candidates::ActiveModel::from(run_candidates::Model {
                id,
                project_id: project,
                run_id: run,
                job_id: job,
                candidate_index: index.max(1),
                status: candidate_status(r.text(&["status"])).into(),
                output_asset_id: output,
                final_asset_id: fin,
                rank_hard_failures: r.int(&["rank_hard_failures"]).unwrap_or(0) as i32,
                rank_soft_warnings: r.int(&["rank_soft_warnings"]).unwrap_or(0) as i32,
                rank_avg_chroma_exceed: r.real(&["rank_avg_chroma_exceed"]).unwrap_or(0.0),
                meta_json: r.object(&["meta_json"]),
                created_at: created,
                updated_at: created,
            }));
    }
    // Links the earlier system's users made by hand.
    for r in legacy.of(project, "asset_links") {
        m.count("asset_links").read += 1;
        let parent = m.known_asset(r.text(&["parent_asset_id"]));
        let child = m.known_asset(r.text(&["child_asset_id"]));
        let (Some(raw), Some(parent), Some(child)) = (r.text(&["id"]), parent, child) else {
            m.orphan("asset_links");
            continue;
        };
        m.batch.links.insert(
            0,
            asset_links::ActiveModel::from(asset_links::Model {
                id: legacy.id("asset_links", &raw),
                project_id: project,
                parent_asset_id: parent,
                child_asset_id: child,
                link_type: r
                    .text(&["link_type"])
                    .unwrap_or_else(|| "derived_from".into()),
                created_at: r.time(&["created_at"]).unwrap_or(m.now),
                updated_at: r.time(&["updated_at", "created_at"]).unwrap_or(m.now),
            }),
        );
    }
    m.runs = runs.into_keys().collect();
    m.job_keys = job_keys;
    Ok(())
}
