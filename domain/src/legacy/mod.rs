//! Moving in from the earlier system: its SQLite database (and the files its
//! rows point at) imported into this schema.
//!
//! - Users first (merged by username), then each project in **one
//!   transaction** (all of it or nothing), then tokens and audit events that
//!   belong to no project.
//! - Ids that are UUIDs are kept; any other id becomes a stable UUID derived
//!   from it (the same on every import), listed in the report's `id_map`.
//! - Every row is inserted only if its id (or natural key) is not there yet,
//!   so importing the same database again changes nothing, and says so.
//! - Paths become foreign keys: candidate output/final paths, job final
//!   outputs and export paths are resolved under the files root, copied into
//!   the project's storage and registered as assets (one per content); a
//!   file that is missing is reported, never invented, and a path outside
//!   the files root is reported and never read.
//! - Lineage the earlier system never recorded is derived from the run
//!   graph (`asset_links`, `derived_from`).
//! - `dry_run` does all of it and rolls every transaction back (files
//!   copied into storage stay: unreferenced, and reused by the real import).

mod files;
pub mod fixture;
mod project;
mod read;
mod records;
mod run_graph;
mod settings;
pub mod source;
mod users;

use std::collections::BTreeMap;
use std::path::PathBuf;

use sea_orm::DatabaseConnection;
use serde::Serialize;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::ServiceError;
use crate::secrets::cipher::MasterKeys;
pub use source::LegacySource;

/// The file is not a database of the earlier system, or cannot be
/// imported as it is (the message says what is missing or wrong).
pub(crate) fn unrecognised(message: impl Into<String>) -> ServiceError {
    ServiceError::validation("legacy_unrecognised", message)
}

/// The file cannot be read (missing, truncated, locked, unreadable rows).
pub(crate) fn unreadable(message: impl std::fmt::Display) -> ServiceError {
    ServiceError::validation(
        "legacy_unreadable",
        format!("cannot read the legacy database: {message}"),
    )
}

pub struct ImportOptions {
    /// Only these project slugs (all when empty).
    pub projects: Vec<String>,
    /// The earlier system's root, which stored paths are relative to and
    /// every file read must lie under.
    pub files_root: PathBuf,
    pub dry_run: bool,
    /// A secret no key decrypts is then left out (and reported) instead of
    /// refusing its project.
    pub skip_undecryptable_secrets: bool,
}

/// Where the import goes.
pub struct ImportTarget<'a> {
    pub db: &'a DatabaseConnection,
    pub roots: &'a crate::StorageRoots,
    /// This installation's keys: secrets are stored under them.
    pub keys: &'a MasterKeys,
    /// The earlier system's key, when it differs from this installation's.
    pub legacy_keys: Option<&'a MasterKeys>,
}

/// Told as the import goes (a progress bar, in the CLI).
pub trait Progress {
    fn start(&self, what: &str, total: u64);
    fn advance(&self, n: u64);
}

/// No progress shown.
pub struct Quiet;

impl Progress for Quiet {
    fn start(&self, _: &str, _: u64) {}
    fn advance(&self, _: u64) {}
}

#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct TableCounts {
    pub read: u64,
    /// Written by this import.
    pub imported: u64,
    /// Already there (an earlier import, or the same natural key).
    pub unchanged: u64,
    /// Pointing at a parent that does not exist: left out.
    pub orphaned: u64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct FileCounts {
    /// Files copied into storage and registered as assets.
    pub registered: u64,
    /// References to a content already registered.
    pub reused: u64,
    pub missing: Vec<String>,
    pub outside_root: Vec<String>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Normalised {
    pub candidate_output: u64,
    pub candidate_final: u64,
    pub job_final: u64,
    pub job_input: u64,
    pub export: u64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct SecretCounts {
    /// Already under this installation's key: stored as they were.
    pub kept: u64,
    pub reencrypted: u64,
    /// Plaintext in the earlier database: stored encrypted.
    pub encrypted: u64,
    /// No key decrypts them (left out with `skip_undecryptable_secrets`).
    pub undecryptable: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ProjectReport {
    pub slug: String,
    pub id: Uuid,
    /// `imported`, `unchanged` or `refused`.
    pub outcome: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub tables: BTreeMap<&'static str, TableCounts>,
    pub files: FileCounts,
    pub normalised: Normalised,
    pub links_backfilled: u64,
    pub secrets: SecretCounts,
    pub notes: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ImportReport {
    pub source: String,
    pub dry_run: bool,
    /// `false`: nothing was written (everything was there already).
    pub changed: bool,
    pub users: TableCounts,
    pub projects: Vec<ProjectReport>,
    /// Tokens and audit events of no project.
    pub global: BTreeMap<&'static str, TableCounts>,
    /// `table:old id` -> new id, for ids that were not UUIDs.
    pub id_map: BTreeMap<String, Uuid>,
}

impl ImportReport {
    pub fn rows_read(&self) -> u64 {
        self.users.read
            + self.global.values().map(|c| c.read).sum::<u64>()
            + self
                .projects
                .iter()
                .flat_map(|p| p.tables.values())
                .map(|c| c.read)
                .sum::<u64>()
    }
}

/// A stable id for something the earlier system keyed by another id or by
/// a composite key: the same input gives the same UUID on every import.
pub(crate) fn stable_id(scope: Uuid, table: &str, key: &str) -> Uuid {
    let digest = Sha256::digest(format!("atelier-legacy:{scope}:{table}:{key}"));
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    Uuid::new_v8(bytes)
}

/// Old ids to new ones.
#[derive(Default)]
pub(crate) struct IdMap {
    pub remapped: BTreeMap<String, Uuid>,
}

impl IdMap {
    /// The id itself when it is a UUID, else its stable replacement.
    pub fn id(&mut self, table: &str, raw: &str) -> Uuid {
        let raw = raw.trim();
        if let Ok(id) = Uuid::parse_str(raw) {
            return id;
        }
        let id = stable_id(Uuid::nil(), table, raw);
        self.remapped.insert(format!("{table}:{raw}"), id);
        id
    }
}

/// Imports `source` into `target`.
pub async fn import(
    source: &LegacySource,
    target: ImportTarget<'_>,
    options: &ImportOptions,
    progress: &dyn Progress,
) -> Result<ImportReport, ServiceError> {
    let mut ids = IdMap::default();
    let legacy = read::Legacy::read(source, &mut ids).await?;
    drop(ids);
    let users = users::import_users(&target, &legacy, options.dry_run).await?;
    let mut report = ImportReport {
        source: source.path.display().to_string(),
        dry_run: options.dry_run,
        changed: false,
        users: users.counts.clone(),
        projects: Vec::new(),
        global: BTreeMap::new(),
        id_map: BTreeMap::new(),
    };
    let chosen: Vec<&read::LegacyProject> = legacy
        .projects
        .iter()
        .filter(|p| options.projects.is_empty() || options.projects.contains(&p.slug))
        .collect();
    for slug in &options.projects {
        if !legacy.projects.iter().any(|p| &p.slug == slug) {
            return Err(unrecognised(format!(
                "the legacy database has no project '{slug}'"
            )));
        }
    }
    progress.start("rows", legacy.row_count(&chosen));
    for p in chosen {
        let outcome = project::import_project(&target, &legacy, p, &users, options, progress).await;
        report.projects.push(outcome);
    }
    if options.projects.is_empty() {
        report.global = records::import_global(&target, &legacy, &users, options.dry_run).await?;
        // Rows whose project (or run, or job) does not exist.
        for (table, n) in &legacy.unassigned {
            let c = report.global.entry(table).or_default();
            c.read += n;
            c.orphaned += n;
        }
    }
    report.id_map = legacy.take_id_map();
    report.changed = !options.dry_run
        && (report.users.imported > 0
            || report.global.values().any(|c| c.imported > 0)
            || report.projects.iter().any(|p| p.outcome == "imported"));
    Ok(report)
}
