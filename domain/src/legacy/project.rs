//! One project: its rows mapped into a batch (`Mapper`), then written in
//! one transaction, parents first.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;

use entities::*;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use serde_json::{Value, json};
use storage::ObjectStore;
use uuid::Uuid;

use super::files::{FileAsset, LegacyFiles, Resolved};
use super::source::LegacyRow;
use super::*;
use super::{read::*, records::*, run_graph::*, settings::*, users::*};
use crate::time;

pub async fn import_project(
    target: &ImportTarget<'_>,
    legacy: &Legacy,
    p: &LegacyProject,
    users: &Users,
    options: &ImportOptions,
    progress: &dyn Progress,
) -> ProjectReport {
    let mut report = ProjectReport {
        slug: p.slug.clone(),
        id: p.id,
        outcome: "refused",
        error: None,
        tables: BTreeMap::new(),
        files: FileCounts::default(),
        normalised: Normalised::default(),
        links_backfilled: 0,
        secrets: SecretCounts::default(),
        notes: Vec::new(),
    };
    match build_and_write(target, legacy, p, users, options, progress, &mut report).await {
        Ok(changed) => report.outcome = if changed { "imported" } else { "unchanged" },
        Err(e) => {
            report.outcome = "refused";
            report.error = Some(e.to_string());
        }
    }
    report
}

/// The rows of one project, ready to insert.
#[derive(Default)]
pub(super) struct Batch {
    pub(super) project: Vec<projects::ActiveModel>,
    pub(super) storage: Vec<project_storage::ActiveModel>,
    pub(super) accounts: Vec<provider_accounts::ActiveModel>,
    pub(super) secrets: Vec<project_secrets::ActiveModel>,
    pub(super) styles: Vec<style_guides::ActiveModel>,
    pub(super) characters: Vec<characters::ActiveModel>,
    pub(super) templates: Vec<prompt_templates::ActiveModel>,
    pub(super) sets: Vec<reference_sets::ActiveModel>,
    pub(super) items: Vec<reference_set_items::ActiveModel>,
    pub(super) assets: Vec<assets::ActiveModel>,
    pub(super) runs: Vec<runs::ActiveModel>,
    pub(super) jobs: Vec<run_jobs::ActiveModel>,
    pub(super) candidates: Vec<run_candidates::ActiveModel>,
    pub(super) links: Vec<asset_links::ActiveModel>,
    pub(super) quality: Vec<quality_reports::ActiveModel>,
    pub(super) costs: Vec<cost_events::ActiveModel>,
    pub(super) exports: Vec<project_exports::ActiveModel>,
    pub(super) audit: Vec<audit_events::ActiveModel>,
    pub(super) sessions: Vec<chat_sessions::ActiveModel>,
    pub(super) messages: Vec<chat_messages::ActiveModel>,
    pub(super) instructions: Vec<agent_instructions::ActiveModel>,
    pub(super) instruction_events: Vec<agent_instruction_events::ActiveModel>,
    pub(super) tokens: Vec<api_tokens::ActiveModel>,
}

/// State while one project's rows are mapped.
pub(super) struct Mapper<'a> {
    pub(super) legacy: &'a Legacy,
    pub(super) project: Uuid,
    pub(super) files: LegacyFiles,
    pub(super) report: &'a mut ProjectReport,
    /// Assets known in this project (already here, or in this batch).
    pub(super) assets: HashSet<Uuid>,
    pub(super) batch: Batch,
    pub(super) now: chrono::DateTime<chrono::Utc>,
    pub(super) runs: HashSet<Uuid>,
    /// (run, job key) -> job: legacy cost events name jobs by key.
    pub(super) job_keys: HashMap<(Uuid, String), Uuid>,
}

impl Mapper<'_> {
    pub(super) fn count(&mut self, table: &'static str) -> &mut TableCounts {
        self.report.tables.entry(table).or_default()
    }

    pub(super) fn orphan(&mut self, table: &'static str) {
        self.count(table).orphaned += 1;
    }

    /// A stored path as an asset of this project: registered (copied) the
    /// first time its content is seen; missing or outside files reported.
    pub(super) async fn path_asset(
        &mut self,
        raw: Option<String>,
        kind: &str,
        ids: (Option<Uuid>, Option<Uuid>, Option<Uuid>),
    ) -> Result<Option<Uuid>, ServiceError> {
        let Some(raw) = raw.filter(|r| !r.trim().is_empty()) else {
            return Ok(None);
        };
        match self.files.resolve(&raw) {
            Resolved::Found { path, key } => {
                let asset = self.files.register(&path, &key, None).await?;
                if self.assets.contains(&asset.id) && asset.fresh {
                    // Registered by an earlier import: already a row here.
                    self.report.files.reused += 1;
                    return Ok(Some(asset.id));
                }
                if asset.fresh {
                    self.report.files.registered += 1;
                    self.push_asset(&asset, kind, ids, json!({ "imported_from": raw }));
                } else {
                    self.report.files.reused += 1;
                }
                Ok(Some(asset.id))
            }
            Resolved::Missing(raw) => {
                if !self.report.files.missing.contains(&raw) {
                    self.report.files.missing.push(raw);
                }
                Ok(None)
            }
            Resolved::Outside(raw) => {
                if !self.report.files.outside_root.contains(&raw) {
                    self.report.files.outside_root.push(raw);
                }
                Ok(None)
            }
        }
    }

    pub(super) fn push_asset(
        &mut self,
        a: &FileAsset,
        kind: &str,
        (run, job, candidate): (Option<Uuid>, Option<Uuid>, Option<Uuid>),
        metadata: Value,
    ) {
        self.assets.insert(a.id);
        self.batch
            .assets
            .push(assets::ActiveModel::from(assets::Model {
                id: a.id,
                project_id: self.project,
                kind: kind.to_string(),
                storage_backend: "local".into(),
                storage_key: a.key.clone(),
                storage_uri: a.key.clone(),
                mime_type: Some(a.mime.to_string()),
                width: a.width,
                height: a.height,
                byte_size: Some(a.size),
                sha256: Some(a.sha256.clone()),
                run_id: run,
                job_id: job,
                candidate_id: candidate,
                metadata_json: metadata,
                created_at: self.now,
            }));
    }

    /// An asset id stored in a row, if that asset exists in this project.
    pub(super) fn known_asset(&self, raw: Option<String>) -> Option<Uuid> {
        self.legacy
            .reference("assets", raw)
            .filter(|id| self.assets.contains(id))
    }

    pub(super) fn link(&mut self, parent: Option<Uuid>, child: Option<Uuid>) {
        let (Some(parent), Some(child)) = (parent, child) else {
            return;
        };
        if parent == child {
            return;
        }
        let key = format!("{parent}:{child}:derived_from");
        self.batch
            .links
            .push(asset_links::ActiveModel::from(asset_links::Model {
                id: stable_id(self.project, "asset_links", &key),
                project_id: self.project,
                parent_asset_id: parent,
                child_asset_id: child,
                link_type: "derived_from".into(),
                created_at: self.now,
                updated_at: self.now,
            }));
        self.report.links_backfilled += 1;
    }
}

/// Maps the project's rows and writes them in one transaction; `true` when
/// anything was written.
pub(super) async fn build_and_write(
    target: &ImportTarget<'_>,
    legacy: &Legacy,
    p: &LegacyProject,
    users: &Users,
    options: &ImportOptions,
    progress: &dyn Progress,
    report: &mut ProjectReport,
) -> Result<bool, ServiceError> {
    crate::projects::parse_slug(&p.slug)
        .map_err(|_| unrecognised(format!("'{}' is not a valid project slug", p.slug)))?;
    if let Some(other) = projects::Entity::find()
        .filter(projects::Column::Slug.eq(p.slug.as_str()))
        .one(target.db)
        .await?
        && other.id != p.id
    {
        return Err(unrecognised(format!(
            "a different project already has the slug '{}' here (id {}); nothing of it was imported",
            p.slug, other.id
        )));
    }
    let now = time::now();
    let storage_row = legacy.of(p.id, "project_storage").first().cloned();
    let legacy_root = legacy_project_root(&options.files_root, p, storage_row.as_ref());
    let root = target
        .roots
        .project_root(storage::paths::DEFAULT_BASE_DIR, None, &p.slug)?;
    std::fs::create_dir_all(&root)?;
    let store = ObjectStore::local(&root)?;
    let existing_assets: HashSet<Uuid> = assets::Entity::find()
        .filter(assets::Column::ProjectId.eq(p.id))
        .all(target.db)
        .await?
        .into_iter()
        .map(|a| a.id)
        .collect();
    let mut m = Mapper {
        legacy,
        project: p.id,
        files: LegacyFiles::new(&options.files_root, legacy_root, store, p.id)?,
        report,
        assets: existing_assets,
        batch: Batch::default(),
        now,
        runs: HashSet::new(),
        job_keys: HashMap::new(),
    };
    map_project(&mut m, p, &users.map, storage_row.as_ref())?;
    map_settings(&mut m, target, options)?;
    map_catalogue(&mut m);
    map_assets(&mut m).await?;
    map_runs(&mut m).await?;
    map_records(&mut m, &users.map).await?;
    let batch = std::mem::take(&mut m.batch);
    drop(m);
    write(target, users, batch, report, options.dry_run, progress).await
}

/// Where the project's files lived: its explicit root, else
/// `{files root}/{base dir}/{slug}` (from its storage row or, in older
/// files, its settings).
pub(super) fn legacy_project_root(
    files_root: &std::path::Path,
    p: &LegacyProject,
    storage: Option<&LegacyRow>,
) -> PathBuf {
    let settings = p.row.object(&["settings_json"]);
    let local = &settings["storage"]["local"];
    let explicit = storage
        .and_then(|s| s.text(&["local_project_root"]))
        .or_else(|| local["project_root"].as_str().map(str::to_string));
    if let Some(root) = explicit {
        let root = PathBuf::from(root);
        return if root.is_absolute() {
            root
        } else {
            files_root.join(root)
        };
    }
    let base = storage
        .and_then(|s| s.text(&["local_base_dir"]))
        .or_else(|| local["base_dir"].as_str().map(str::to_string))
        .unwrap_or_else(|| "var/projects".into());
    let base = PathBuf::from(base);
    let base = if base.is_absolute() {
        base
    } else {
        files_root.join(base)
    };
    base.join(&p.slug)
}

pub(super) fn map_project(
    m: &mut Mapper<'_>,
    p: &LegacyProject,
    users: &HashMap<String, Uuid>,
    storage_row: Option<&LegacyRow>,
) -> Result<(), ServiceError> {
    let r = &p.row;
    let owner = owner(users, r, &["owner_user_id", "user_id"]).ok_or_else(|| {
        unrecognised(format!(
            "project '{}' has no owner among the legacy users",
            p.slug
        ))
    })?;
    let mut settings = r.object(&["settings_json"]);
    // The storage policy lives in `project_storage` here.
    if let Some(s) = settings.as_object_mut() {
        s.remove("storage");
    }
    m.count("projects").read += 1;
    m.batch
        .project
        .push(projects::ActiveModel::from(projects::Model {
            id: p.id,
            owner_user_id: owner,
            slug: p.slug.clone(),
            name: r.text(&["name"]).unwrap_or_else(|| p.slug.clone()),
            description: r.text_or_empty("description"),
            status: r.text(&["status"]).unwrap_or_else(|| "active".into()),
            settings_json: settings,
            created_at: r.time(&["created_at"]).unwrap_or(m.now),
            updated_at: r.time(&["updated_at", "created_at"]).unwrap_or(m.now),
        }));
    // Files now live under this installation's root; an S3 policy comes
    // along disabled (its credentials are checked before it is switched on).
    let s3 = storage_row.map(|s| (s.flag("s3_enabled").unwrap_or(false), s.clone()));
    m.count("project_storage").read += storage_row.is_some() as u64;
    let s = storage_row
        .cloned()
        .unwrap_or_else(|| LegacyRow(Default::default()));
    if s3.as_ref().is_some_and(|(on, _)| *on) {
        m.report
            .notes
            .push("the S3 storage policy was imported disabled: check its credentials, then enable it (PUT storage/s3)".into());
    }
    m.batch
        .storage
        .push(project_storage::ActiveModel::from(project_storage::Model {
            id: stable_id(p.id, "project_storage", ""),
            project_id: p.id,
            local_base_dir: storage::paths::DEFAULT_BASE_DIR.to_string(),
            local_project_root: None,
            s3_enabled: false,
            s3_bucket: s.text(&["s3_bucket"]),
            s3_prefix: s.text(&["s3_prefix"]),
            s3_region: s.text(&["s3_region"]),
            s3_profile: s.text(&["s3_profile"]),
            s3_endpoint_url: s.text(&["s3_endpoint_url"]),
            total_bytes: s.int(&["total_bytes"]).unwrap_or(0),
            used_bytes: s.int(&["used_bytes"]).unwrap_or(0),
            created_at: s.time(&["created_at"]).unwrap_or(m.now),
            updated_at: s.time(&["updated_at"]).unwrap_or(m.now),
        }));
    Ok(())
}

/// Writes the batch in one transaction, parents first; `true` when any row
/// was new.
pub(super) async fn write(
    target: &ImportTarget<'_>,
    users: &Users,
    b: Batch,
    report: &mut ProjectReport,
    dry_run: bool,
    progress: &dyn Progress,
) -> Result<bool, ServiceError> {
    let txn = crate::db::begin_write(target.db).await?;
    users.visible_in(&txn).await?;
    let mut written = 0u64;
    macro_rules! put {
        ($table:literal, $rows:expr) => {{
            let rows = $rows;
            let n = rows.len() as u64;
            let inserted = crate::db::insert_new(&txn, rows).await?;
            written += inserted;
            let c = report.tables.entry($table).or_default();
            c.imported += inserted;
            progress.advance(n);
        }};
    }
    put!("projects", b.project);
    put!("project_storage", b.storage);
    put!("provider_accounts", b.accounts);
    put!("project_secrets", b.secrets);
    put!("style_guides", b.styles);
    put!("characters", b.characters);
    put!("prompt_templates", b.templates);
    put!("reference_sets", b.sets);
    put!("reference_set_items", b.items);
    put!("assets", b.assets);
    put!("runs", b.runs);
    put!("run_jobs", b.jobs);
    put!("run_candidates", b.candidates);
    put!("asset_links", b.links);
    put!("quality_reports", b.quality);
    put!("cost_events", b.costs);
    put!("project_exports", b.exports);
    put!("audit_events", b.audit);
    put!("chat_sessions", b.sessions);
    put!("chat_messages", b.messages);
    put!("agent_instructions", b.instructions);
    put!("agent_instruction_events", b.instruction_events);
    put!("api_tokens", b.tokens);
    for c in report.tables.values_mut() {
        c.unchanged = c.read.saturating_sub(c.imported + c.orphaned);
    }
    finish(txn, dry_run).await?;
    Ok(written > 0)
}
