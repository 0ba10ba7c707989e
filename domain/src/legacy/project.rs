//! The earlier system's rows grouped by project, mapped onto this schema and
//! written in one transaction per project.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Mutex;

use entities::*;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use serde_json::{Value, json};
use storage::ObjectStore;
use uuid::Uuid;

use super::files::{FileAsset, LegacyFiles, Resolved};
use super::source::{LegacyRow, LegacySource};
use super::*;
use crate::time;

/// Tables read per project, in the order they are written (parents first).
const PROJECT_TABLES: &[&str] = &[
    "project_storage",
    "provider_accounts",
    "project_secrets",
    "style_guides",
    "characters",
    "prompt_templates",
    "reference_sets",
    "reference_set_items",
    "assets",
    "runs",
    "run_jobs",
    "run_candidates",
    "asset_links",
    "quality_reports",
    "cost_events",
    "project_exports",
    "audit_events",
    "chat_sessions",
    "chat_messages",
    "agent_instructions",
    "agent_instruction_events",
    "api_tokens",
];

pub struct LegacyProject {
    pub id: Uuid,
    pub slug: String,
    row: LegacyRow,
}

/// Everything read from the legacy database, grouped.
pub struct Legacy {
    users: Vec<LegacyRow>,
    pub projects: Vec<LegacyProject>,
    rows: HashMap<(Uuid, &'static str), Vec<LegacyRow>>,
    global_tokens: Vec<LegacyRow>,
    global_audit: Vec<LegacyRow>,
    /// Rows of no known project (their project, run or job is gone).
    pub unassigned: BTreeMap<&'static str, u64>,
    ids: Mutex<IdMap>,
}

impl Legacy {
    pub async fn read(source: &LegacySource, ids: &mut IdMap) -> Result<Self, ServiceError> {
        let mut users = source.rows("app_users").await?;
        let seen: HashSet<String> = users.iter().filter_map(|u| u.text(&["id"])).collect();
        users.extend(
            source
                .rows("users")
                .await?
                .into_iter()
                .filter(|u| u.text(&["id"]).is_some_and(|id| !seen.contains(&id))),
        );
        let mut projects = Vec::new();
        for row in source.rows("projects").await? {
            let (Some(id), Some(slug)) = (row.text(&["id"]), row.text(&["slug"])) else {
                continue;
            };
            projects.push(LegacyProject {
                id: ids.id("projects", &id),
                slug: slug.trim().to_string(),
                row,
            });
        }
        let mut legacy = Self {
            users,
            projects,
            rows: HashMap::new(),
            global_tokens: Vec::new(),
            global_audit: Vec::new(),
            unassigned: BTreeMap::new(),
            ids: Mutex::new(std::mem::take(ids)),
        };
        let mut run_project: HashMap<String, Uuid> = HashMap::new();
        let mut job_project: HashMap<String, Uuid> = HashMap::new();
        for table in PROJECT_TABLES {
            let mut rows = source.rows(table).await?;
            if *table == "run_candidates" {
                // Older runs have their candidates only in the older table;
                // newer ones in both, under the same id (the newer row wins,
                // the older fills its gaps).
                let mut by_id: BTreeMap<String, LegacyRow> = BTreeMap::new();
                let mut order = Vec::new();
                for row in source.rows("run_job_candidates").await? {
                    if let Some(id) = row.text(&["id"]) {
                        order.push(id.clone());
                        by_id.insert(id, row);
                    }
                }
                for row in rows {
                    let Some(id) = row.text(&["id"]) else {
                        continue;
                    };
                    match by_id.get_mut(&id) {
                        Some(older) => {
                            for (k, v) in row.0 {
                                if !v.is_null() {
                                    older.0.insert(k, v);
                                }
                            }
                        }
                        None => {
                            order.push(id.clone());
                            by_id.insert(id, row);
                        }
                    }
                }
                rows = order.iter().filter_map(|id| by_id.remove(id)).collect();
            }
            for row in rows {
                let project = match *table {
                    "run_jobs" => row
                        .text(&["run_id"])
                        .and_then(|r| run_project.get(&r).copied()),
                    "run_candidates" => row
                        .text(&["job_id"])
                        .and_then(|j| job_project.get(&j).copied()),
                    _ => row.text(&["project_id"]).map(|p| legacy.id("projects", &p)),
                };
                match (*table, project) {
                    ("api_tokens", None) => legacy.global_tokens.push(row),
                    ("audit_events", None) => legacy.global_audit.push(row),
                    (_, None) => *legacy.unassigned.entry(table).or_default() += 1,
                    (_, Some(p)) => {
                        if *table == "runs"
                            && let Some(id) = row.text(&["id"])
                        {
                            run_project.insert(id, p);
                        }
                        if *table == "run_jobs"
                            && let Some(id) = row.text(&["id"])
                        {
                            job_project.insert(id, p);
                        }
                        legacy.rows.entry((p, table)).or_default().push(row);
                    }
                }
            }
        }
        Ok(legacy)
    }

    fn id(&self, table: &str, raw: &str) -> Uuid {
        self.ids
            .lock()
            .map(|mut m| m.id(table, raw))
            .unwrap_or_else(|p| p.into_inner().id(table, raw))
    }

    fn reference(&self, table: &str, raw: Option<String>) -> Option<Uuid> {
        raw.filter(|r| !r.trim().is_empty())
            .map(|r| self.id(table, &r))
    }

    fn of(&self, project: Uuid, table: &'static str) -> &[LegacyRow] {
        self.rows
            .get(&(project, table))
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    pub fn row_count(&self, projects: &[&LegacyProject]) -> u64 {
        projects
            .iter()
            .map(|p| {
                1 + PROJECT_TABLES
                    .iter()
                    .map(|t| self.of(p.id, t).len() as u64)
                    .sum::<u64>()
            })
            .sum()
    }

    pub fn take_id_map(&self) -> BTreeMap<String, Uuid> {
        self.ids
            .lock()
            .map(|m| m.remapped.clone())
            .unwrap_or_default()
    }
}

pub struct Users {
    pub counts: TableCounts,
    /// Legacy user id -> the user here (the same id, or the user who
    /// already has the username).
    pub map: HashMap<String, Uuid>,
    /// The users to create, for a dry run's later transactions to see
    /// (its own transaction for users was rolled back).
    dry_run_rows: Vec<app_users::Model>,
}

impl Users {
    async fn visible_in(&self, txn: &crate::db::WriteTxn) -> Result<(), ServiceError> {
        let rows = self
            .dry_run_rows
            .iter()
            .cloned()
            .map(app_users::ActiveModel::from);
        crate::db::insert_new(txn, rows.collect()).await?;
        Ok(())
    }
}

pub async fn import_users(
    target: &ImportTarget<'_>,
    legacy: &Legacy,
    dry_run: bool,
) -> Result<Users, ServiceError> {
    let existing: HashMap<String, Uuid> = app_users::Entity::find()
        .all(target.db)
        .await?
        .into_iter()
        .map(|u| (u.username, u.id))
        .collect();
    let mut map = HashMap::new();
    let mut rows = Vec::new();
    let mut counts = TableCounts::default();
    let now = time::now();
    for u in &legacy.users {
        counts.read += 1;
        let (Some(raw), Some(username)) = (u.text(&["id"]), u.text(&["username"])) else {
            counts.orphaned += 1;
            continue;
        };
        if let Some(id) = existing.get(&username) {
            map.insert(raw, *id);
            continue;
        }
        let id = legacy.id("app_users", &raw);
        map.insert(raw, id);
        rows.push(app_users::Model {
            id,
            display_name: u
                .text(&["display_name"])
                .unwrap_or_else(|| username.clone()),
            username,
            email: u.text(&["email"]),
            is_active: u.flag("is_active").unwrap_or(true),
            created_at: u.time(&["created_at"]).unwrap_or(now),
            updated_at: u.time(&["updated_at", "created_at"]).unwrap_or(now),
        });
    }
    let txn = crate::db::begin_write(target.db).await?;
    counts.imported = crate::db::insert_new(
        &txn,
        rows.iter()
            .cloned()
            .map(app_users::ActiveModel::from)
            .collect(),
    )
    .await?;
    counts.unchanged = counts.read - counts.imported - counts.orphaned;
    finish(txn, dry_run).await?;
    Ok(Users {
        counts,
        map,
        dry_run_rows: if dry_run { rows } else { Vec::new() },
    })
}

async fn finish(txn: crate::db::WriteTxn, dry_run: bool) -> Result<(), ServiceError> {
    if dry_run {
        crate::db::rollback(txn).await?;
    } else {
        crate::db::commit(txn).await?;
    }
    Ok(())
}

/// The legacy owner of a project, or of a token.
fn owner(users: &HashMap<String, Uuid>, row: &LegacyRow, columns: &[&str]) -> Option<Uuid> {
    columns
        .iter()
        .filter_map(|c| row.text(&[c]))
        .find_map(|raw| users.get(&raw).copied())
}

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
struct Batch {
    project: Vec<projects::ActiveModel>,
    storage: Vec<project_storage::ActiveModel>,
    accounts: Vec<provider_accounts::ActiveModel>,
    secrets: Vec<project_secrets::ActiveModel>,
    styles: Vec<style_guides::ActiveModel>,
    characters: Vec<characters::ActiveModel>,
    templates: Vec<prompt_templates::ActiveModel>,
    sets: Vec<reference_sets::ActiveModel>,
    items: Vec<reference_set_items::ActiveModel>,
    assets: Vec<assets::ActiveModel>,
    runs: Vec<runs::ActiveModel>,
    jobs: Vec<run_jobs::ActiveModel>,
    candidates: Vec<run_candidates::ActiveModel>,
    links: Vec<asset_links::ActiveModel>,
    quality: Vec<quality_reports::ActiveModel>,
    costs: Vec<cost_events::ActiveModel>,
    exports: Vec<project_exports::ActiveModel>,
    audit: Vec<audit_events::ActiveModel>,
    sessions: Vec<chat_sessions::ActiveModel>,
    messages: Vec<chat_messages::ActiveModel>,
    instructions: Vec<agent_instructions::ActiveModel>,
    instruction_events: Vec<agent_instruction_events::ActiveModel>,
    tokens: Vec<api_tokens::ActiveModel>,
}

/// State while one project's rows are mapped.
struct Mapper<'a> {
    legacy: &'a Legacy,
    project: Uuid,
    files: LegacyFiles,
    report: &'a mut ProjectReport,
    /// Assets known in this project (already here, or in this batch).
    assets: HashSet<Uuid>,
    batch: Batch,
    now: chrono::DateTime<chrono::Utc>,
    runs: HashSet<Uuid>,
    /// (run, job key) -> job: legacy cost events name jobs by key.
    job_keys: HashMap<(Uuid, String), Uuid>,
}

impl Mapper<'_> {
    fn count(&mut self, table: &'static str) -> &mut TableCounts {
        self.report.tables.entry(table).or_default()
    }

    fn orphan(&mut self, table: &'static str) {
        self.count(table).orphaned += 1;
    }

    /// A stored path as an asset of this project: registered (copied) the
    /// first time its content is seen; missing or outside files reported.
    async fn path_asset(
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

    fn push_asset(
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
    fn known_asset(&self, raw: Option<String>) -> Option<Uuid> {
        self.legacy
            .reference("assets", raw)
            .filter(|id| self.assets.contains(id))
    }

    fn link(&mut self, parent: Option<Uuid>, child: Option<Uuid>) {
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
async fn build_and_write(
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
fn legacy_project_root(
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

fn map_project(
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

/// Provider accounts and secrets (a secret no key decrypts refuses the
/// project unless the user chose to leave such secrets out).
fn map_settings(
    m: &mut Mapper<'_>,
    target: &ImportTarget<'_>,
    options: &ImportOptions,
) -> Result<(), ServiceError> {
    let project = m.project;
    for r in m.legacy.of(project, "provider_accounts") {
        m.count("provider_accounts").read += 1;
        let Some(code) = r.text(&["provider_code"]) else {
            m.orphan("provider_accounts");
            continue;
        };
        m.batch.accounts.push(provider_accounts::ActiveModel::from(
            provider_accounts::Model {
                id: stable_id(project, "provider_accounts", &code),
                project_id: project,
                display_name: r.text(&["display_name"]).unwrap_or_else(|| code.clone()),
                provider_code: code,
                account_ref: r.text(&["account_ref"]),
                base_url: r.text(&["base_url"]),
                enabled: r.flag("enabled").unwrap_or(true),
                config_json: r.object(&["config_json"]),
                created_at: r.time(&["created_at"]).unwrap_or(m.now),
                updated_at: r.time(&["updated_at", "created_at"]).unwrap_or(m.now),
            },
        ));
    }
    for r in m.legacy.of(project, "project_secrets") {
        m.count("project_secrets").read += 1;
        let (Some(code), Some(name), Some(stored)) = (
            r.text(&["provider_code"]),
            r.text(&["secret_name"]),
            r.text(&["secret_value"]),
        ) else {
            m.orphan("project_secrets");
            continue;
        };
        let label = format!("{code}/{name}");
        let value = match secret_for_here(target, &stored) {
            Some((value, how)) => {
                match how {
                    SecretWas::Kept => m.report.secrets.kept += 1,
                    SecretWas::Reencrypted => m.report.secrets.reencrypted += 1,
                    SecretWas::Plaintext => m.report.secrets.encrypted += 1,
                }
                value
            }
            None => {
                m.report.secrets.undecryptable.push(label.clone());
                if options.skip_undecryptable_secrets {
                    m.orphan("project_secrets");
                    continue;
                }
                return Err(unrecognised(format!(
                    "secret {label} cannot be decrypted with this installation's key or the legacy key given; \
                     name the earlier system's key (--master-key-file) or leave such secrets out (--skip-undecryptable-secrets)"
                )));
            }
        };
        m.batch
            .secrets
            .push(project_secrets::ActiveModel::from(project_secrets::Model {
                id: stable_id(project, "project_secrets", &label),
                project_id: project,
                provider_code: code,
                secret_name: name,
                secret_value: value,
                key_ref: target.keys.key_ref.clone(),
                created_at: r.time(&["created_at"]).unwrap_or(m.now),
                updated_at: r.time(&["updated_at", "created_at"]).unwrap_or(m.now),
            }));
    }
    Ok(())
}

enum SecretWas {
    Kept,
    Reencrypted,
    Plaintext,
}

/// The value to store here, or `None` when no key opens it. The plaintext
/// never leaves this function.
fn secret_for_here(target: &ImportTarget<'_>, stored: &str) -> Option<(String, SecretWas)> {
    use crate::secrets::cipher::PREFIX;
    if !stored.starts_with(PREFIX) {
        return Some((target.keys.encrypt(stored).ok()?, SecretWas::Plaintext));
    }
    if target.keys.decrypt(stored).is_ok() {
        return Some((stored.to_string(), SecretWas::Kept));
    }
    let plain = target.legacy_keys?.decrypt(stored).ok()?;
    Some((target.keys.encrypt(&plain).ok()?, SecretWas::Reencrypted))
}

fn map_catalogue(m: &mut Mapper<'_>) {
    let project = m.project;
    let legacy = m.legacy;
    for r in legacy.of(project, "style_guides") {
        m.count("style_guides").read += 1;
        let (Some(id), Some(name)) = (r.text(&["id"]), r.text(&["name"])) else {
            m.orphan("style_guides");
            continue;
        };
        m.batch
            .styles
            .push(style_guides::ActiveModel::from(style_guides::Model {
                id: legacy.id("style_guides", &id),
                project_id: project,
                name,
                instructions: r.text_or_empty("instructions"),
                notes: r.text(&["notes"]),
                created_at: r.time(&["created_at"]).unwrap_or(m.now),
                updated_at: r.time(&["updated_at", "created_at"]).unwrap_or(m.now),
            }));
    }
    for r in legacy.of(project, "characters") {
        m.count("characters").read += 1;
        let (Some(id), Some(name)) = (r.text(&["id"]), r.text(&["name"])) else {
            m.orphan("characters");
            continue;
        };
        m.batch
            .characters
            .push(characters::ActiveModel::from(characters::Model {
                id: legacy.id("characters", &id),
                project_id: project,
                name,
                description: r.text(&["description"]),
                prompt_text: r.text(&["prompt_text"]),
                created_at: r.time(&["created_at"]).unwrap_or(m.now),
                updated_at: r.time(&["updated_at", "created_at"]).unwrap_or(m.now),
            }));
    }
    for r in legacy.of(project, "prompt_templates") {
        m.count("prompt_templates").read += 1;
        let (Some(id), Some(name)) = (r.text(&["id"]), r.text(&["name"])) else {
            m.orphan("prompt_templates");
            continue;
        };
        m.batch.templates.push(prompt_templates::ActiveModel::from(
            prompt_templates::Model {
                id: legacy.id("prompt_templates", &id),
                project_id: project,
                name,
                template_text: r.text_or_empty("template_text"),
                version: 1,
                created_at: r.time(&["created_at"]).unwrap_or(m.now),
                updated_at: r.time(&["updated_at", "created_at"]).unwrap_or(m.now),
            },
        ));
    }
    let mut sets = HashSet::new();
    for r in legacy.of(project, "reference_sets") {
        m.count("reference_sets").read += 1;
        let (Some(id), Some(name)) = (r.text(&["id"]), r.text(&["name"])) else {
            m.orphan("reference_sets");
            continue;
        };
        let id = legacy.id("reference_sets", &id);
        sets.insert(id);
        m.batch
            .sets
            .push(reference_sets::ActiveModel::from(reference_sets::Model {
                id,
                project_id: project,
                name,
                description: r.text(&["description"]),
                created_at: r.time(&["created_at"]).unwrap_or(m.now),
                updated_at: r.time(&["updated_at", "created_at"]).unwrap_or(m.now),
            }));
    }
    for r in legacy.of(project, "reference_set_items") {
        m.count("reference_set_items").read += 1;
        let set = legacy.reference("reference_sets", r.text(&["reference_set_id"]));
        let (Some(id), Some(set)) = (r.text(&["id"]), set.filter(|s| sets.contains(s))) else {
            m.orphan("reference_set_items");
            continue;
        };
        m.batch.items.push(reference_set_items::ActiveModel::from(
            reference_set_items::Model {
                id: legacy.id("reference_set_items", &id),
                project_id: project,
                reference_set_id: set,
                label: r.text_or_empty("label"),
                content_uri: r.text(&["content_uri"]),
                content_text: r.text(&["content_text"]),
                asset_id: None,
                sort_order: r.int(&["sort_order"]).unwrap_or(0) as i32,
                weight: None,
                notes: None,
                metadata_json: r.object(&["metadata_json"]),
                created_at: r.time(&["created_at"]).unwrap_or(m.now),
                updated_at: r.time(&["updated_at", "created_at"]).unwrap_or(m.now),
            },
        ));
    }
}

/// The earlier system's own asset rows: kept under their ids, their files
/// copied when they exist.
async fn map_assets(m: &mut Mapper<'_>) -> Result<(), ServiceError> {
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

fn run_status(raw: Option<String>) -> &'static str {
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

fn job_status(raw: Option<String>) -> &'static str {
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

fn candidate_status(raw: Option<String>) -> &'static str {
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
async fn map_runs(m: &mut Mapper<'_>) -> Result<(), ServiceError> {
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

/// A run id stored in a row: `Ok(None)` when empty, `Err(())` when it
/// names a run that does not exist (the row is an orphan).
fn run_ref(m: &Mapper<'_>, r: &LegacyRow) -> Result<Option<Uuid>, ()> {
    match m.legacy.reference("runs", r.text(&["run_id"])) {
        None => Ok(None),
        Some(id) if m.runs.contains(&id) => Ok(Some(id)),
        Some(_) => Err(()),
    }
}

fn instruction_status(raw: Option<String>) -> &'static str {
    match raw
        .as_deref()
        .map(|s| s.trim().to_ascii_lowercase())
        .as_deref()
    {
        Some("draft" | "pending") => "pending",
        Some("confirmed") => "confirmed",
        Some("done") => "done",
        Some("canceled" | "cancelled") => "canceled",
        // `running`: a worker of the earlier system held it; it is not
        // running here.
        _ => "failed",
    }
}

/// Quality, costs, exports, audit, conversations, instructions, tokens.
async fn map_records(
    m: &mut Mapper<'_>,
    users: &HashMap<String, Uuid>,
) -> Result<(), ServiceError> {
    let project = m.project;
    let legacy = m.legacy;
    for r in legacy.of(project, "quality_reports") {
        m.count("quality_reports").read += 1;
        let (Some(raw), Ok(run)) = (r.text(&["id"]), run_ref(m, r)) else {
            m.orphan("quality_reports");
            continue;
        };
        m.batch
            .quality
            .push(quality_reports::ActiveModel::from(quality_reports::Model {
                id: legacy.id("quality_reports", &raw),
                project_id: project,
                run_id: run,
                job_id: None,
                candidate_id: None,
                asset_id: m.known_asset(r.text(&["asset_id"])),
                report_type: r
                    .text(&["report_type"])
                    .unwrap_or_else(|| "output_guard".into()),
                grade: r.text(&["grade"]),
                hard_failures: r.int(&["hard_failures"]).unwrap_or(0) as i32,
                soft_warnings: r.int(&["soft_warnings"]).unwrap_or(0) as i32,
                avg_chroma_exceed: r.real(&["avg_chroma_exceed"]).unwrap_or(0.0),
                summary_json: r.object(&["summary_json", "meta_json"]),
                created_at: r.time(&["created_at"]).unwrap_or(m.now),
            }));
    }
    for r in legacy.of(project, "cost_events") {
        m.count("cost_events").read += 1;
        let (Some(raw), Ok(run)) = (r.text(&["id"]), run_ref(m, r)) else {
            m.orphan("cost_events");
            continue;
        };
        // The earlier ingest stored the job's key here, not its id.
        let job_text = r.text(&["job_id"]);
        let job = job_text.as_ref().and_then(|j| {
            let by_id = legacy.id("run_jobs", j);
            run.and_then(|run| m.job_keys.get(&(run, j.clone())).copied())
                .or_else(|| m.job_keys.values().find(|v| **v == by_id).copied())
        });
        let mut meta = r.object(&["meta_json"]);
        if let (Some(o), Some(j)) = (meta.as_object_mut(), job_text) {
            o.entry("legacy_job").or_insert(json!(j));
        }
        let units = r.real(&["units"]).unwrap_or(0.0);
        let total = r.real(&["total_cost_usd"]).unwrap_or(0.0);
        m.batch
            .costs
            .push(cost_events::ActiveModel::from(cost_events::Model {
                id: legacy.id("cost_events", &raw),
                project_id: project,
                run_id: run,
                job_id: job,
                provider_call_id: None,
                provider_code: r
                    .text(&["provider_code"])
                    .unwrap_or_else(|| "unknown".into()),
                model_name: r.text(&["model_name"]),
                event_type: r
                    .text(&["event_type"])
                    .unwrap_or_else(|| "legacy_event".into()),
                units,
                unit_cost_usd: r.real(&["unit_cost_usd"]).unwrap_or(if units > 0.0 {
                    total / units
                } else {
                    0.0
                }),
                total_cost_usd: total,
                currency: r.text(&["currency"]).unwrap_or_else(|| "USD".into()),
                meta_json: meta,
                billing: "billed".into(),
                created_at: r.time(&["created_at"]).unwrap_or(m.now),
            }));
    }
    for r in legacy.of(project, "project_exports") {
        m.count("project_exports").read += 1;
        let (Some(raw), Ok(run)) = (r.text(&["id"]), run_ref(m, r)) else {
            m.orphan("project_exports");
            continue;
        };
        let path = r.text(&["rel_path", "storage_uri"]);
        let asset = m
            .path_asset(path.clone(), "export", (run, None, None))
            .await?;
        m.report.normalised.export += asset.is_some() as u64;
        m.batch
            .exports
            .push(project_exports::ActiveModel::from(project_exports::Model {
                id: legacy.id("project_exports", &raw),
                project_id: project,
                run_id: run,
                status: r.text(&["status"]).unwrap_or_else(|| "completed".into()),
                export_format: r
                    .text(&["export_format"])
                    .unwrap_or_else(|| "unknown".into()),
                storage_uri: r.text(&["storage_uri"]),
                rel_path: r.text(&["rel_path"]),
                file_size_bytes: r.int(&["file_size_bytes"]),
                checksum_sha256: r.text(&["checksum_sha256"]),
                export_asset_id: asset,
                manifest_json: r.object(&["manifest_json"]),
                created_at: r.time(&["created_at"]).unwrap_or(m.now),
                completed_at: r.time(&["completed_at"]),
            }));
    }
    for r in legacy.of(project, "audit_events") {
        m.count("audit_events").read += 1;
        if let Some(row) = audit_row(legacy, users, r, Some(project), m.now) {
            m.batch.audit.push(row);
        } else {
            m.orphan("audit_events");
        }
    }
    let mut sessions = HashSet::new();
    for r in legacy.of(project, "chat_sessions") {
        m.count("chat_sessions").read += 1;
        let Some(raw) = r.text(&["id"]) else {
            m.orphan("chat_sessions");
            continue;
        };
        let id = legacy.id("chat_sessions", &raw);
        sessions.insert(id);
        m.batch
            .sessions
            .push(chat_sessions::ActiveModel::from(chat_sessions::Model {
                id,
                project_id: project,
                title: r.text_or_empty("title"),
                status: r.text(&["status"]).unwrap_or_else(|| "active".into()),
                created_at: r.time(&["created_at"]).unwrap_or(m.now),
                updated_at: r.time(&["updated_at", "created_at"]).unwrap_or(m.now),
            }));
    }
    for r in legacy.of(project, "chat_messages") {
        m.count("chat_messages").read += 1;
        let session = legacy.reference("chat_sessions", r.text(&["session_id"]));
        let (Some(raw), Some(session)) =
            (r.text(&["id"]), session.filter(|s| sessions.contains(s)))
        else {
            m.orphan("chat_messages");
            continue;
        };
        m.batch
            .messages
            .push(chat_messages::ActiveModel::from(chat_messages::Model {
                id: legacy.id("chat_messages", &raw),
                project_id: project,
                session_id: session,
                role: r.text(&["role"]).unwrap_or_else(|| "user".into()),
                content: r.text_or_empty("content"),
                created_at: r.time(&["created_at"]).unwrap_or(m.now),
            }));
    }
    let mut instructions = HashSet::new();
    for r in legacy.of(project, "agent_instructions") {
        m.count("agent_instructions").read += 1;
        let Some(raw) = r.text(&["id"]) else {
            m.orphan("agent_instructions");
            continue;
        };
        let id = legacy.id("agent_instructions", &raw);
        instructions.insert(id);
        let status = instruction_status(r.text(&["status"]));
        let interrupted = status == "failed" && r.text(&["status"]).as_deref() == Some("running");
        m.batch
            .instructions
            .push(agent_instructions::ActiveModel::from(
                agent_instructions::Model {
                    id,
                    project_id: project,
                    instruction_text: r.text_or_empty("instruction_text"),
                    status: status.into(),
                    attempts: r.int(&["attempts"]).unwrap_or(0) as i32,
                    max_attempts: r.int(&["max_attempts"]).unwrap_or(3) as i32,
                    next_attempt_at: None,
                    last_error: if interrupted {
                        Some("running in the earlier system when it was imported".into())
                    } else {
                        r.text(&["last_error"])
                    },
                    locked_by: None,
                    locked_at: None,
                    agent_response_json: match r.json(&["agent_response_json"]) {
                        Value::Null => None,
                        v => Some(v),
                    },
                    created_at: r.time(&["created_at"]).unwrap_or(m.now),
                    updated_at: r.time(&["updated_at", "created_at"]).unwrap_or(m.now),
                    confirmed_at: r.time(&["confirmed_at"]),
                    canceled_at: r.time(&["canceled_at"]),
                },
            ));
    }
    for r in legacy.of(project, "agent_instruction_events") {
        m.count("agent_instruction_events").read += 1;
        let instruction = legacy.reference("agent_instructions", r.text(&["instruction_id"]));
        let (Some(raw), Some(instruction)) = (
            r.text(&["id"]),
            instruction.filter(|i| instructions.contains(i)),
        ) else {
            m.orphan("agent_instruction_events");
            continue;
        };
        m.batch
            .instruction_events
            .push(agent_instruction_events::ActiveModel::from(
                agent_instruction_events::Model {
                    id: legacy.id("agent_instruction_events", &raw),
                    project_id: project,
                    instruction_id: instruction,
                    event_type: r.text(&["event_type"]).unwrap_or_else(|| "note".into()),
                    message: r.text(&["message"]),
                    created_at: r.time(&["created_at"]).unwrap_or(m.now),
                },
            ));
    }
    for r in legacy.of(project, "api_tokens") {
        m.count("api_tokens").read += 1;
        match token_row(legacy, users, r, Some(project)) {
            Some(t) => m.batch.tokens.push(t),
            None => m.orphan("api_tokens"),
        }
    }
    Ok(())
}

/// A token, its hash carried over so the clients holding it keep working.
fn token_row(
    legacy: &Legacy,
    users: &HashMap<String, Uuid>,
    r: &LegacyRow,
    project: Option<Uuid>,
) -> Option<api_tokens::ActiveModel> {
    let raw = r.text(&["id"])?;
    let hash = r.text(&["token_hash"])?;
    let user = owner(users, r, &["user_id"])?;
    let created = r.time(&["created_at"]).unwrap_or_else(time::now);
    Some(api_tokens::ActiveModel::from(api_tokens::Model {
        id: legacy.id("api_tokens", &raw),
        user_id: user,
        project_id: project,
        token_prefix: r
            .text(&["token_prefix"])
            .unwrap_or_else(|| hash.chars().take(8).collect()),
        token_hash: hash.to_ascii_lowercase(),
        label: r.text(&["label"]).unwrap_or_else(|| "imported".into()),
        expires_at: r.time(&["expires_at"]),
        revoked_at: r.time(&["revoked_at"]),
        last_used_at: r.time(&["last_used_at"]),
        created_at: created,
        created_by_token_id: None,
    }))
}

fn audit_row(
    legacy: &Legacy,
    users: &HashMap<String, Uuid>,
    r: &LegacyRow,
    project: Option<Uuid>,
    now: chrono::DateTime<chrono::Utc>,
) -> Option<audit_events::ActiveModel> {
    let raw = r.text(&["id"])?;
    let code = r.text(&["event_code"])?;
    Some(audit_events::ActiveModel::from(audit_events::Model {
        id: legacy.id("audit_events", &raw),
        project_id: project,
        actor_user_id: owner(users, r, &["actor_user_id"]),
        actor_token_id: None,
        event_code: code,
        payload_json: match r.json(&["payload_json"]) {
            Value::Null => json!({}),
            v => v,
        },
        request_id: None,
        created_at: r.time(&["created_at"]).unwrap_or(now),
    }))
}

/// Writes the batch in one transaction, parents first; `true` when any row
/// was new.
async fn write(
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

/// Tokens and audit events that belong to no project.
pub async fn import_global(
    target: &ImportTarget<'_>,
    legacy: &Legacy,
    all_users: &Users,
    dry_run: bool,
) -> Result<BTreeMap<&'static str, TableCounts>, ServiceError> {
    let users = &all_users.map;
    let mut counts: BTreeMap<&'static str, TableCounts> = BTreeMap::new();
    let now = time::now();
    let tokens: Vec<_> = legacy
        .global_tokens
        .iter()
        .filter_map(|r| token_row(legacy, users, r, None))
        .collect();
    let audit: Vec<_> = legacy
        .global_audit
        .iter()
        .filter_map(|r| audit_row(legacy, users, r, None, now))
        .collect();
    let txn = crate::db::begin_write(target.db).await?;
    all_users.visible_in(&txn).await?;
    for (table, read, kept, inserted) in [
        (
            "api_tokens",
            legacy.global_tokens.len() as u64,
            tokens.len() as u64,
            crate::db::insert_new(&txn, tokens).await?,
        ),
        (
            "audit_events",
            legacy.global_audit.len() as u64,
            audit.len() as u64,
            crate::db::insert_new(&txn, audit).await?,
        ),
    ] {
        counts.insert(
            table,
            TableCounts {
                read,
                imported: inserted,
                unchanged: kept - inserted,
                orphaned: read - kept,
            },
        );
    }
    finish(txn, dry_run).await?;
    Ok(counts)
}
