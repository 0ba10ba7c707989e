//! What a package holds, read in one snapshot of the database (a project
//! that changes meanwhile is exported as it was when the export began), and
//! its manifest.

use std::collections::{BTreeMap, HashSet};

use entities::{
    asset_links, assets, cost_events, projects, quality_reports, run_candidates, run_jobs, runs,
};
use sea_orm::{
    AccessMode, ColumnTrait, DatabaseConnection, DbBackend, EntityTrait, IsolationLevel,
    QueryFilter, QueryOrder, TransactionTrait,
};
use serde_json::{Value, json};
use storage::{ObjectKey, ProjectFiles};
use uuid::Uuid;

use super::package::PackageFormat;
use crate::ServiceError;

/// The package format's version (in the manifest).
pub const FORMAT_VERSION: u32 = 1;

/// One stored file in the package.
#[derive(Clone, Debug)]
pub struct PackageFile {
    pub asset_id: Uuid,
    /// Its name in the package: `files/` + its storage key.
    pub entry: String,
    pub key: String,
    pub backend: String,
    pub sha256: String,
    pub size: i64,
    pub kind: String,
    pub mime: Option<String>,
    /// `false`: the row names a file storage does not hold (listed in the
    /// manifest as missing, not packaged).
    pub present: bool,
}

impl PackageFile {
    pub fn extension(&self) -> &'static str {
        match self.mime.as_deref() {
            Some("image/jpeg") => "jpg",
            Some("image/webp") => "webp",
            Some("application/json") => "json",
            _ => "png",
        }
    }
}

pub struct Snapshot {
    pub project: projects::Model,
    pub runs: Vec<runs::Model>,
    pub jobs: Vec<run_jobs::Model>,
    pub candidates: Vec<run_candidates::Model>,
    /// Sorted by entry name.
    pub files: Vec<PackageFile>,
    pub links: Vec<asset_links::Model>,
    pub costs: Vec<cost_events::Model>,
    pub quality: Vec<quality_reports::Model>,
}

/// Reads everything of the project (or of `run_ids`) in one read-only
/// transaction; file presence and missing hashes are filled in from storage.
pub async fn take(
    db: &DatabaseConnection,
    files: &ProjectFiles,
    project: &projects::Model,
    run_ids: &[Uuid],
) -> Result<Snapshot, ServiceError> {
    let txn = match db.get_database_backend() {
        DbBackend::Postgres => {
            db.begin_with_config(
                Some(IsolationLevel::RepeatableRead),
                Some(AccessMode::ReadOnly),
            )
            .await?
        }
        // A SQLite read transaction sees one snapshot from its first read.
        _ => db.begin().await?,
    };
    let mut run_query = runs::Entity::find().filter(runs::Column::ProjectId.eq(project.id));
    if !run_ids.is_empty() {
        run_query = run_query.filter(runs::Column::Id.is_in(run_ids.to_vec()));
    }
    let runs = run_query
        .order_by_asc(runs::Column::CreatedAt)
        .order_by_asc(runs::Column::Id)
        .all(&txn)
        .await?;
    if runs.len() < run_ids.len() {
        return Err(ServiceError::not_found(
            "One of the runs asked for is not in this project",
        ));
    }
    let ids: Vec<Uuid> = runs.iter().map(|r| r.id).collect();
    let in_runs = |ids: &[Uuid]| ids.to_vec();
    let jobs = run_jobs::Entity::find()
        .filter(run_jobs::Column::RunId.is_in(in_runs(&ids)))
        .order_by_asc(run_jobs::Column::CreatedAt)
        .order_by_asc(run_jobs::Column::Id)
        .all(&txn)
        .await?;
    let candidates = run_candidates::Entity::find()
        .filter(run_candidates::Column::RunId.is_in(in_runs(&ids)))
        .order_by_asc(run_candidates::Column::JobId)
        .order_by_asc(run_candidates::Column::CandidateIndex)
        .all(&txn)
        .await?;
    let mut asset_rows = assets::Entity::find()
        .filter(assets::Column::ProjectId.eq(project.id))
        .filter(assets::Column::Kind.ne("export"))
        .all(&txn)
        .await?;
    if !run_ids.is_empty() {
        // The runs' own files and the inputs their jobs started from.
        let inputs: HashSet<Uuid> = jobs.iter().filter_map(|j| j.input_asset_id).collect();
        let runs_set: HashSet<Uuid> = ids.iter().copied().collect();
        asset_rows
            .retain(|a| a.run_id.is_some_and(|r| runs_set.contains(&r)) || inputs.contains(&a.id));
    }
    let included: HashSet<Uuid> = asset_rows.iter().map(|a| a.id).collect();
    let links = asset_links::Entity::find()
        .filter(asset_links::Column::ProjectId.eq(project.id))
        .order_by_asc(asset_links::Column::Id)
        .all(&txn)
        .await?
        .into_iter()
        .filter(|l| included.contains(&l.parent_asset_id) && included.contains(&l.child_asset_id))
        .collect();
    let mut costs =
        cost_events::Entity::find().filter(cost_events::Column::ProjectId.eq(project.id));
    let mut quality =
        quality_reports::Entity::find().filter(quality_reports::Column::ProjectId.eq(project.id));
    if !run_ids.is_empty() {
        costs = costs.filter(cost_events::Column::RunId.is_in(in_runs(&ids)));
        quality = quality.filter(quality_reports::Column::RunId.is_in(in_runs(&ids)));
    }
    let costs = costs
        .order_by_asc(cost_events::Column::Id)
        .all(&txn)
        .await?;
    let quality = quality
        .order_by_asc(quality_reports::Column::Id)
        .all(&txn)
        .await?;
    txn.commit().await?;

    let mut package_files = Vec::with_capacity(asset_rows.len());
    // What the bucket holds, from one listing (a request per thousand
    // objects rather than one per file).
    let in_bucket: Option<HashSet<String>> = if asset_rows.iter().any(|a| a.storage_backend == "s3")
    {
        match files.bucket() {
            Ok(bucket) => Some(
                bucket
                    .list_all()
                    .await?
                    .into_iter()
                    .map(|o| o.key)
                    .collect(),
            ),
            Err(_) => Some(HashSet::new()),
        }
    } else {
        None
    };
    for a in asset_rows {
        let key = ObjectKey::parse(&a.storage_key)?;
        let (sha256, size, present) = match (&a.sha256, a.byte_size) {
            (Some(sha), Some(size)) => {
                let present = match (&in_bucket, a.storage_backend.as_str()) {
                    (Some(listed), "s3") => listed.contains(&a.storage_key),
                    _ => files
                        .exists_in(&a.storage_backend, &key)
                        .await
                        .unwrap_or(false),
                };
                (sha.clone(), size, present)
            }
            _ => match files.get_in(&a.storage_backend, &key).await {
                Ok(bytes) => (crate::assets::sha256_hex(&bytes), bytes.len() as i64, true),
                Err(_) => (String::new(), 0, false),
            },
        };
        package_files.push(PackageFile {
            asset_id: a.id,
            entry: format!("files/{}", a.storage_key),
            key: a.storage_key,
            backend: a.storage_backend,
            sha256,
            size,
            kind: a.kind,
            mime: a.mime_type,
            present,
        });
    }
    package_files.sort_by(|a, b| a.entry.cmp(&b.entry).then(a.asset_id.cmp(&b.asset_id)));
    // Two rows of one key are one file in the package.
    package_files.dedup_by(|a, b| a.entry == b.entry);
    Ok(Snapshot {
        project: project.clone(),
        runs,
        jobs,
        candidates,
        files: package_files,
        links,
        costs,
        quality,
    })
}

impl Snapshot {
    /// The winners, one per scene of each run (its last stage's), in run
    /// order and then scene order: a comic's pages.
    pub fn pages(&self) -> impl Iterator<Item = &PackageFile> {
        let mut last: BTreeMap<(usize, String), &run_jobs::Model> = BTreeMap::new();
        for j in self.jobs.iter().filter(|j| j.final_asset_id.is_some()) {
            let run_order = self.runs.iter().position(|r| r.id == j.run_id).unwrap_or(0);
            let scene = j.scene_ref.clone().unwrap_or_else(|| j.job_key.clone());
            let slot = last.entry((run_order, scene)).or_insert(j);
            if j.stage_index > slot.stage_index {
                *slot = j;
            }
        }
        let by_id: BTreeMap<Uuid, &PackageFile> = self
            .files
            .iter()
            .filter(|f| f.present)
            .map(|f| (f.asset_id, f))
            .collect();
        let pages: Vec<&PackageFile> = last
            .into_values()
            .filter_map(|j| j.final_asset_id.and_then(|a| by_id.get(&a).copied()))
            .collect();
        pages.into_iter()
    }

    /// The package's file entries: every present file under `files/`, or
    /// for a CBZ the pages `0001.png`, `0002.png`, ….
    pub fn entries(&self, format: PackageFormat) -> Vec<(String, &PackageFile)> {
        match format {
            PackageFormat::Cbz => self
                .pages()
                .enumerate()
                .map(|(i, f)| (format!("{:04}.{}", i + 1, f.extension()), f))
                .collect(),
            _ => self
                .files
                .iter()
                .filter(|f| f.present)
                .map(|f| (f.entry.clone(), f))
                .collect(),
        }
    }

    /// Everything a reader (or `export verify`, or a restore) needs; no
    /// export id or date, so the same content gives the same manifest.
    pub fn manifest(&self, format: PackageFormat, contract_version: &str) -> Value {
        let p = &self.project;
        let mut by_provider: BTreeMap<&str, (u64, f64)> = BTreeMap::new();
        for c in &self.costs {
            let e = by_provider.entry(c.provider_code.as_str()).or_default();
            e.0 += 1;
            e.1 += c.total_cost_usd;
        }
        let total_usd: f64 = self.costs.iter().map(|c| c.total_cost_usd).sum();
        json!({
            "format": "atelier-export",
            "format_version": FORMAT_VERSION,
            "package": format.as_str(),
            "contract_version": contract_version,
            "project": {
                "id": p.id, "slug": p.slug, "name": p.name, "description": p.description,
                "status": p.status, "settings": p.settings_json, "created_at": p.created_at,
            },
            "runs": self.runs.iter().map(|r| json!({
                "id": r.id, "status": r.status, "mode": r.run_mode, "stage": r.stage,
                "time_of_day": r.time_of_day, "weather": r.weather, "provider": r.provider_code,
                "model": r.model_name, "settings": r.settings_snapshot_json,
                "created_at": r.created_at, "finished_at": r.finished_at,
            })).collect::<Vec<_>>(),
            "jobs": self.jobs.iter().map(|j| json!({
                "id": j.id, "run_id": j.run_id, "job_key": j.job_key, "scene_ref": j.scene_ref,
                "stage": j.stage, "stage_index": j.stage_index, "status": j.status,
                "prompt": j.prompt_text, "input_asset_id": j.input_asset_id,
                "selected_candidate_index": j.selected_candidate_index,
                "final_asset_id": j.final_asset_id, "created_at": j.created_at,
            })).collect::<Vec<_>>(),
            "candidates": self.candidates.iter().map(|c| json!({
                "id": c.id, "job_id": c.job_id, "index": c.candidate_index, "status": c.status,
                "output_asset_id": c.output_asset_id, "final_asset_id": c.final_asset_id,
                "rank": {"hard_failures": c.rank_hard_failures, "soft_warnings": c.rank_soft_warnings,
                         "avg_chroma_exceed": c.rank_avg_chroma_exceed},
                "created_at": c.created_at,
            })).collect::<Vec<_>>(),
            "winners": self.pages().map(|f| f.asset_id).collect::<Vec<_>>(),
            "files": self.entries(format).iter().map(|(path, f)| json!({
                "path": path, "asset_id": f.asset_id, "sha256": f.sha256, "size": f.size,
                "role": f.kind, "mime": f.mime,
            })).collect::<Vec<_>>(),
            "missing_files": self.files.iter().filter(|f| !f.present).map(|f| json!({
                "path": f.entry, "asset_id": f.asset_id, "role": f.kind,
            })).collect::<Vec<_>>(),
            "lineage": self.links.iter().map(|l| json!({
                "id": l.id, "parent": l.parent_asset_id, "child": l.child_asset_id, "type": l.link_type,
            })).collect::<Vec<_>>(),
            "costs": {
                "events": self.costs.len(),
                "total_usd": total_usd,
                "by_provider": by_provider.iter().map(|(k, (n, usd))| (k.to_string(), json!({"events": n, "total_usd": usd}))).collect::<serde_json::Map<_, _>>(),
            },
            "quality": {
                "reports": self.quality.len(),
                "hard_failures": self.quality.iter().map(|q| i64::from(q.hard_failures)).sum::<i64>(),
                "soft_warnings": self.quality.iter().map(|q| i64::from(q.soft_warnings)).sum::<i64>(),
            },
            // The rows themselves, so a package restores whole.
            "cost_events": self.costs.iter().map(|c| json!({
                "id": c.id, "run_id": c.run_id, "job_id": c.job_id, "provider": c.provider_code,
                "model": c.model_name, "event_type": c.event_type, "units": c.units,
                "unit_cost_usd": c.unit_cost_usd, "total_cost_usd": c.total_cost_usd,
                "currency": c.currency, "billing": c.billing, "created_at": c.created_at,
            })).collect::<Vec<_>>(),
            "quality_reports": self.quality.iter().map(|q| json!({
                "id": q.id, "run_id": q.run_id, "job_id": q.job_id, "candidate_id": q.candidate_id,
                "asset_id": q.asset_id, "report_type": q.report_type, "grade": q.grade,
                "hard_failures": q.hard_failures, "soft_warnings": q.soft_warnings,
                "avg_chroma_exceed": q.avg_chroma_exceed, "summary": q.summary_json,
                "created_at": q.created_at,
            })).collect::<Vec<_>>(),
        })
    }
}
