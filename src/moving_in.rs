//! `atelier import legacy`: a database of the earlier system, imported with
//! a progress bar and a report (see `domain::legacy`).

use std::path::{Path, PathBuf};

use domain::legacy::{ImportOptions, ImportReport, ImportTarget, LegacySource, Progress};
use domain::secrets::cipher::KeySource;
use indicatif::{ProgressBar, ProgressStyle};

use crate::cli::CliError;
use crate::database;
use crate::settings::Settings;
use crate::startup::StartupError;

pub struct LegacyImport {
    pub db: PathBuf,
    pub files_root: Option<PathBuf>,
    pub master_key_file: Option<PathBuf>,
    pub projects: Vec<String>,
    pub dry_run: bool,
    pub skip_undecryptable_secrets: bool,
    pub report: Option<PathBuf>,
}

/// The environment variable that may hold the earlier system's key
/// (base64url of 32 bytes), instead of `--master-key-file`.
pub const LEGACY_KEY_ENV: &str = "ATELIER_LEGACY_MASTER_KEY";

struct Bar(ProgressBar);

impl Progress for Bar {
    fn start(&self, what: &str, total: u64) {
        self.0.set_length(total);
        self.0.set_message(what.to_string());
    }
    fn advance(&self, n: u64) {
        self.0.inc(n);
    }
}

/// The earlier system kept its database at `{root}/var/backend/app.db`.
fn default_files_root(db: &Path) -> PathBuf {
    let dir = db.parent().unwrap_or(Path::new("."));
    match (dir.file_name(), dir.parent()) {
        (Some(b), Some(var)) if b == "backend" && var.file_name().is_some_and(|v| v == "var") => {
            var.parent().unwrap_or(Path::new(".")).to_path_buf()
        }
        _ => dir.to_path_buf(),
    }
}

pub async fn import_legacy(settings: Settings, args: LegacyImport) -> Result<(), CliError> {
    let source = LegacySource::open(&args.db)
        .await
        .map_err(|e| CliError::Service(e.to_string()))?;
    let db = database::open(&settings)
        .await
        .map_err(StartupError::from)?;
    let keys = crate::startup::secret_keys(&settings)
        .load(true)
        .map_err(|e| CliError::Service(e.to_string()))?;
    let legacy_keys = match (&args.master_key_file, std::env::var(LEGACY_KEY_ENV)) {
        (None, Err(_)) => None,
        (file, _) => Some(
            KeySource {
                key_env: LEGACY_KEY_ENV.into(),
                key_file: file.clone().unwrap_or_default(),
                key_ref: "legacy".into(),
                previous_env: format!("{LEGACY_KEY_ENV}_UNUSED"),
            }
            .load(false)
            .map_err(|e| CliError::Service(format!("the legacy key: {e}")))?,
        ),
    };
    let roots = domain::StorageRoots::new(&settings.data_dir, &settings.storage.allowed_roots);
    let options = ImportOptions {
        projects: args.projects,
        files_root: args
            .files_root
            .clone()
            .unwrap_or_else(|| default_files_root(&args.db)),
        dry_run: args.dry_run,
        skip_undecryptable_secrets: args.skip_undecryptable_secrets,
    };
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{msg:>6} [{bar:40}] {pos}/{len} ({per_sec})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let started = std::time::Instant::now();
    let report = domain::legacy::import(
        &source,
        ImportTarget {
            db: &db.conn,
            roots: &roots,
            keys: &keys,
            legacy_keys: legacy_keys.as_ref(),
        },
        &options,
        &Bar(bar.clone()),
    )
    .await
    .map_err(|e| CliError::Service(e.to_string()));
    bar.finish_and_clear();
    source.close().await;
    let report = report?;
    tracing::info!(
        rows = report.rows_read(),
        seconds = started.elapsed().as_secs_f64(),
        "legacy import finished"
    );
    print_summary(&report);
    if let Some(path) = &args.report {
        let json =
            serde_json::to_vec_pretty(&report).map_err(|e| CliError::Service(e.to_string()))?;
        std::fs::write(path, json)?;
    }
    let refused: Vec<&str> = report
        .projects
        .iter()
        .filter(|p| p.outcome == "refused")
        .map(|p| p.slug.as_str())
        .collect();
    if refused.is_empty() {
        Ok(())
    } else {
        Err(CliError::Service(format!(
            "not imported: {} (see the report)",
            refused.join(", ")
        )))
    }
}

fn print_summary(r: &ImportReport) {
    let verb = if r.dry_run {
        "would import"
    } else {
        "imported"
    };
    println!("legacy database {}", r.source);
    println!(
        "users: {} read, {} {verb}, {} already here",
        r.users.read, r.users.imported, r.users.unchanged
    );
    for p in &r.projects {
        println!("project {} ({}): {}", p.slug, p.id, p.outcome);
        if let Some(e) = &p.error {
            println!("  error: {e}");
        }
        for (table, c) in &p.tables {
            if c.read > 0 {
                println!(
                    "  {table:<26} {:>7} read {:>7} {verb} {:>7} already here {:>5} orphaned",
                    c.read, c.imported, c.unchanged, c.orphaned
                );
            }
        }
        println!(
            "  files: {} registered, {} reused, {} missing, {} outside the files root",
            p.files.registered,
            p.files.reused,
            p.files.missing.len(),
            p.files.outside_root.len()
        );
        let n = &p.normalised;
        println!(
            "  paths made asset ids: {} candidate outputs, {} candidate finals, {} job finals, {} job inputs, {} exports; {} lineage links derived",
            n.candidate_output,
            n.candidate_final,
            n.job_final,
            n.job_input,
            n.export,
            p.links_backfilled
        );
        let s = &p.secrets;
        println!(
            "  secrets: {} kept, {} re-encrypted, {} encrypted (were plaintext), {} undecryptable",
            s.kept,
            s.reencrypted,
            s.encrypted,
            s.undecryptable.len()
        );
        for note in &p.notes {
            println!("  note: {note}");
        }
    }
    for (table, c) in &r.global {
        println!(
            "{table} of no project: {} read, {} {verb}, {} orphaned",
            c.read, c.imported, c.orphaned
        );
    }
    if r.dry_run {
        println!("dry run: nothing was written to the database");
    } else if !r.changed {
        println!("nothing changed: everything was already imported");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_files_root_defaults_to_the_earlier_systems_root() {
        assert_eq!(
            default_files_root(Path::new("/home/a/kroma/var/backend/app.db")),
            PathBuf::from("/home/a/kroma")
        );
        assert_eq!(
            default_files_root(Path::new("/tmp/copy/app.db")),
            PathBuf::from("/tmp/copy")
        );
    }
}
