//! Restoring a package into an installation that does not have its project:
//! checked first (every checksum, nothing escaping), then its files written
//! into the project's storage one at a time and its rows recreated in one
//! transaction, under the same ids — so exporting the restored project
//! gives the same package, byte for byte.

use std::collections::HashSet;
use std::io::Read;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use entities::{
    asset_links, assets, cost_events, project_storage, projects, quality_reports, run_candidates,
    run_jobs, runs,
};
use sea_orm::{ColumnTrait, Condition, DatabaseConnection, EntityTrait, QueryFilter};
use serde_json::{Value, json};
use storage::{ObjectKey, ObjectStore};
use uuid::Uuid;

use super::verify;
use crate::{ServiceError, StorageRoots, time};

#[derive(Debug, serde::Serialize)]
pub struct Restored {
    pub project_id: Uuid,
    pub slug: String,
    pub files: u64,
    pub runs: u64,
}

fn bad(message: impl Into<String>) -> ServiceError {
    ServiceError::validation("invalid_package", message)
}

fn uuid(v: &Value) -> Option<Uuid> {
    v.as_str().and_then(|s| Uuid::parse_str(s).ok())
}

fn ts(v: &Value) -> Option<DateTime<Utc>> {
    v.as_str()
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&Utc))
}

fn text(v: &Value) -> Option<String> {
    v.as_str().map(str::to_string)
}

fn list<'a>(m: &'a Value, key: &str) -> &'a [Value] {
    m[key].as_array().map(Vec::as_slice).unwrap_or(&[])
}

/// Reads the package's `files/…` entries in a blocking thread and hands
/// them over one at a time (the channel holds at most two).
fn read_files(
    package: PathBuf,
    tx: tokio::sync::mpsc::Sender<(String, Vec<u8>)>,
) -> Result<(), ServiceError> {
    let mut magic = [0u8; 2];
    std::fs::File::open(&package)?.read_exact(&mut magic)?;
    let send = |name: String, bytes: Vec<u8>| {
        if name.starts_with("files/") {
            tx.blocking_send((name, bytes))
                .map_err(|_| bad("restore stopped"))?;
        }
        Ok::<_, ServiceError>(())
    };
    if magic == [0x1f, 0x8b] {
        let mut tar =
            tar::Archive::new(flate2::read::GzDecoder::new(std::fs::File::open(&package)?));
        for entry in tar.entries()? {
            let mut entry = entry?;
            let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes)?;
            send(name, bytes)?;
        }
    } else {
        let mut zip =
            zip::ZipArchive::new(std::fs::File::open(&package)?).map_err(|e| bad(e.to_string()))?;
        for i in 0..zip.len() {
            let mut entry = zip.by_index(i).map_err(|e| bad(e.to_string()))?;
            let name = entry.name().map_err(|e| bad(e.to_string()))?.to_string();
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes)?;
            send(name, bytes)?;
        }
    }
    Ok(())
}

/// Restores `package` (a `zip` or `tar.gz` export) as a new project owned by
/// `owner`. Refused when the package is not whole, is a CBZ (winners only),
/// or its project (id or slug) is already here.
pub async fn restore(
    db: &DatabaseConnection,
    roots: &StorageRoots,
    package: &Path,
    owner: Uuid,
) -> Result<Restored, ServiceError> {
    let path = package.to_path_buf();
    let report = tokio::task::spawn_blocking(move || verify::verify(&path))
        .await
        .map_err(|e| bad(e.to_string()))??;
    if !report.ok() {
        return Err(bad(format!(
            "The package is not whole ({} problems, first: {})",
            report.problems.len(),
            report.problems[0]
        )));
    }
    let m = report.manifest;
    if m["package"] == "cbz" {
        return Err(bad(
            "A CBZ holds only the winners; restore a zip or tar.gz package",
        ));
    }
    let p = &m["project"];
    let (Some(project_id), Some(slug)) = (uuid(&p["id"]), text(&p["slug"])) else {
        return Err(bad("The manifest names no project"));
    };
    let slug = crate::projects::parse_slug(&slug)?;
    if projects::Entity::find()
        .filter(
            Condition::any()
                .add(projects::Column::Id.eq(project_id))
                .add(projects::Column::Slug.eq(slug.as_str())),
        )
        .one(db)
        .await?
        .is_some()
    {
        return Err(ServiceError::Conflict {
            code: "project_exists",
            message: format!(
                "Project '{slug}' (or its id) is already here; restore into an installation without it"
            ),
        });
    }
    // Files first (a row never points at a file not yet stored).
    let root = roots.project_root(storage::paths::DEFAULT_BASE_DIR, None, &slug)?;
    std::fs::create_dir_all(&root)?;
    let store = ObjectStore::local(&root)?;
    let (tx, mut rx) = tokio::sync::mpsc::channel(2);
    let reader = tokio::task::spawn_blocking({
        let package = package.to_path_buf();
        move || read_files(package, tx)
    });
    let mut stored = HashSet::new();
    while let Some((name, bytes)) = rx.recv().await {
        let key = ObjectKey::parse(&name["files/".len()..])?;
        store.put(&key, bytes).await?;
        stored.insert(name);
    }
    reader.await.map_err(|e| bad(e.to_string()))??;

    let now = time::now();
    let mut asset_rows = Vec::new();
    let mut asset_ids = HashSet::new();
    // Missing files have no mime, size or hash in the manifest: those stay
    // empty, and the row says the file was missing.
    let listed = list(&m, "files").iter().map(|f| (f, false));
    for (f, missing) in listed.chain(list(&m, "missing_files").iter().map(|f| (f, true))) {
        let (Some(id), Some(path)) = (uuid(&f["asset_id"]), f["path"].as_str()) else {
            continue;
        };
        let key = &path["files/".len().min(path.len())..];
        asset_ids.insert(id);
        asset_rows.push(assets::Model {
            id,
            project_id,
            kind: text(&f["role"]).unwrap_or_else(|| "asset".into()),
            storage_backend: "local".into(),
            storage_key: key.into(),
            storage_uri: key.into(),
            mime_type: text(&f["mime"]),
            width: None,
            height: None,
            byte_size: f["size"].as_i64(),
            sha256: text(&f["sha256"]),
            run_id: None,
            job_id: None,
            candidate_id: None,
            metadata_json: if missing {
                json!({ "restored": true, "file_missing_at_export": true })
            } else {
                json!({ "restored": true })
            },
            created_at: now,
        });
    }
    let known = |v: &Value| uuid(v).filter(|id| asset_ids.contains(id));
    let run_rows: Vec<runs::Model> = list(&m, "runs")
        .iter()
        .filter_map(|r| {
            let created = ts(&r["created_at"]).unwrap_or(now);
            let status = text(&r["status"]).unwrap_or_default();
            Some(runs::Model {
                id: uuid(&r["id"])?,
                project_id,
                run_mode: text(&r["mode"]).unwrap_or_else(|| "run".into()),
                // A restored run is history: nothing resumes it.
                status: if crate::status::RunStatus::is_terminal(&status) {
                    status
                } else {
                    "failed".into()
                },
                stage: text(&r["stage"]),
                time_of_day: text(&r["time_of_day"]),
                weather: text(&r["weather"]),
                model_name: text(&r["model"]),
                provider_code: text(&r["provider"]),
                image_size: None,
                image_quality: None,
                settings_snapshot_json: r["settings"].clone(),
                plan_json: json!({ "restored": true }),
                budget_usd: None,
                estimated_cost_usd: 0.0,
                last_event_seq: 0,
                run_log_key: None,
                last_error: None,
                started_at: None,
                finished_at: ts(&r["finished_at"]),
                created_at: created,
                updated_at: created,
            })
        })
        .collect();
    let run_ids: HashSet<Uuid> = run_rows.iter().map(|r| r.id).collect();
    let job_rows: Vec<run_jobs::Model> = list(&m, "jobs")
        .iter()
        .filter_map(|j| {
            let run_id = uuid(&j["run_id"]).filter(|r| run_ids.contains(r))?;
            let created = ts(&j["created_at"]).unwrap_or(now);
            Some(run_jobs::Model {
                id: uuid(&j["id"])?,
                project_id,
                run_id,
                job_key: text(&j["job_key"]).unwrap_or_default(),
                scene_ref: text(&j["scene_ref"]),
                stage: text(&j["stage"]).unwrap_or_else(|| "style".into()),
                stage_index: j["stage_index"].as_i64().unwrap_or(0) as i32,
                parent_job_id: None,
                retry_of_job_id: None,
                status: text(&j["status"]).unwrap_or_else(|| "done".into()),
                prompt_text: text(&j["prompt"]),
                input_asset_id: known(&j["input_asset_id"]),
                selected_candidate_index: j["selected_candidate_index"].as_i64().map(|v| v as i32),
                final_asset_id: known(&j["final_asset_id"]),
                attempt: 1,
                max_attempts: 1,
                lease_owner: None,
                lease_expires_at: None,
                heartbeat_at: None,
                lease_epoch: 0,
                next_attempt_at: None,
                last_error: None,
                meta_json: json!({}),
                started_at: None,
                finished_at: None,
                created_at: created,
                updated_at: created,
            })
        })
        .collect();
    let job_runs: std::collections::HashMap<Uuid, Uuid> =
        job_rows.iter().map(|j| (j.id, j.run_id)).collect();
    let candidate_rows: Vec<run_candidates::Model> = list(&m, "candidates")
        .iter()
        .filter_map(|c| {
            let job_id = uuid(&c["job_id"])?;
            let run_id = *job_runs.get(&job_id)?;
            let created = ts(&c["created_at"]).unwrap_or(now);
            Some(run_candidates::Model {
                id: uuid(&c["id"])?,
                project_id,
                run_id,
                job_id,
                candidate_index: c["index"].as_i64().unwrap_or(1) as i32,
                status: text(&c["status"]).unwrap_or_else(|| "done".into()),
                output_asset_id: known(&c["output_asset_id"]),
                final_asset_id: known(&c["final_asset_id"]),
                rank_hard_failures: c["rank"]["hard_failures"].as_i64().unwrap_or(0) as i32,
                rank_soft_warnings: c["rank"]["soft_warnings"].as_i64().unwrap_or(0) as i32,
                rank_avg_chroma_exceed: c["rank"]["avg_chroma_exceed"].as_f64().unwrap_or(0.0),
                meta_json: json!({}),
                created_at: created,
                updated_at: created,
            })
        })
        .collect();
    let link_rows: Vec<asset_links::Model> = list(&m, "lineage")
        .iter()
        .filter_map(|l| {
            Some(asset_links::Model {
                id: uuid(&l["id"])?,
                project_id,
                parent_asset_id: known(&l["parent"])?,
                child_asset_id: known(&l["child"])?,
                link_type: text(&l["type"]).unwrap_or_else(|| "derived_from".into()),
                created_at: now,
                updated_at: now,
            })
        })
        .collect();
    let cost_rows: Vec<cost_events::Model> = list(&m, "cost_events")
        .iter()
        .filter_map(|c| {
            Some(cost_events::Model {
                id: uuid(&c["id"])?,
                project_id,
                run_id: uuid(&c["run_id"]).filter(|r| run_ids.contains(r)),
                job_id: uuid(&c["job_id"]),
                provider_call_id: None,
                provider_code: text(&c["provider"]).unwrap_or_else(|| "unknown".into()),
                model_name: text(&c["model"]),
                event_type: text(&c["event_type"]).unwrap_or_default(),
                units: c["units"].as_f64().unwrap_or(0.0),
                unit_cost_usd: c["unit_cost_usd"].as_f64().unwrap_or(0.0),
                total_cost_usd: c["total_cost_usd"].as_f64().unwrap_or(0.0),
                currency: text(&c["currency"]).unwrap_or_else(|| "USD".into()),
                meta_json: json!({}),
                billing: text(&c["billing"]).unwrap_or_else(|| "billed".into()),
                created_at: ts(&c["created_at"]).unwrap_or(now),
            })
        })
        .collect();
    let quality_rows: Vec<quality_reports::Model> = list(&m, "quality_reports")
        .iter()
        .filter_map(|q| {
            Some(quality_reports::Model {
                id: uuid(&q["id"])?,
                project_id,
                run_id: uuid(&q["run_id"]).filter(|r| run_ids.contains(r)),
                job_id: uuid(&q["job_id"]),
                candidate_id: uuid(&q["candidate_id"]),
                asset_id: known(&q["asset_id"]),
                report_type: text(&q["report_type"]).unwrap_or_default(),
                grade: text(&q["grade"]),
                hard_failures: q["hard_failures"].as_i64().unwrap_or(0) as i32,
                soft_warnings: q["soft_warnings"].as_i64().unwrap_or(0) as i32,
                avg_chroma_exceed: q["avg_chroma_exceed"].as_f64().unwrap_or(0.0),
                summary_json: q["summary"].clone(),
                created_at: ts(&q["created_at"]).unwrap_or(now),
            })
        })
        .collect();

    let txn = crate::db::begin_write(db).await?;
    let created = ts(&p["created_at"]).unwrap_or(now);
    projects::Entity::insert(projects::ActiveModel::from(projects::Model {
        id: project_id,
        owner_user_id: owner,
        slug: slug.clone(),
        name: text(&p["name"]).unwrap_or_else(|| slug.clone()),
        description: text(&p["description"]).unwrap_or_default(),
        status: text(&p["status"]).unwrap_or_else(|| "active".into()),
        settings_json: p["settings"].clone(),
        created_at: created,
        updated_at: now,
    }))
    .exec_without_returning(&txn)
    .await?;
    project_storage::Entity::insert(project_storage::ActiveModel::from(project_storage::Model {
        id: Uuid::now_v7(),
        project_id,
        local_base_dir: storage::paths::DEFAULT_BASE_DIR.into(),
        local_project_root: None,
        s3_enabled: false,
        s3_bucket: None,
        s3_prefix: None,
        s3_region: None,
        s3_profile: None,
        s3_endpoint_url: None,
        total_bytes: 0,
        used_bytes: 0,
        created_at: now,
        updated_at: now,
    }))
    .exec_without_returning(&txn)
    .await?;
    let (files, runs_n) = (stored.len() as u64, run_rows.len() as u64);
    crate::db::insert_new(
        &txn,
        asset_rows
            .into_iter()
            .map(assets::ActiveModel::from)
            .collect(),
    )
    .await?;
    crate::db::insert_new(
        &txn,
        run_rows.into_iter().map(runs::ActiveModel::from).collect(),
    )
    .await?;
    crate::db::insert_new(
        &txn,
        job_rows
            .into_iter()
            .map(run_jobs::ActiveModel::from)
            .collect(),
    )
    .await?;
    crate::db::insert_new(
        &txn,
        candidate_rows
            .into_iter()
            .map(run_candidates::ActiveModel::from)
            .collect(),
    )
    .await?;
    crate::db::insert_new(
        &txn,
        link_rows
            .into_iter()
            .map(asset_links::ActiveModel::from)
            .collect(),
    )
    .await?;
    crate::db::insert_new(
        &txn,
        cost_rows
            .into_iter()
            .map(cost_events::ActiveModel::from)
            .collect(),
    )
    .await?;
    crate::db::insert_new(
        &txn,
        quality_rows
            .into_iter()
            .map(quality_reports::ActiveModel::from)
            .collect(),
    )
    .await?;
    crate::db::commit(txn).await?;
    Ok(Restored {
        project_id,
        slug,
        files,
        runs: runs_n,
    })
}
