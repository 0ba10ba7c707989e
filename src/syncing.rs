//! `atelier sync push|pull --project SLUG`: a project's files to and from
//! its bucket (see `domain::sync`).

use domain::sync::{Direction, SyncOptions, SyncProgress};
use indicatif::{ProgressBar, ProgressStyle};

use crate::cli::CliError;
use crate::settings::Settings;

fn service(e: domain::ServiceError) -> CliError {
    CliError::Service(e.to_string())
}

struct Bar(ProgressBar);

impl SyncProgress for Bar {
    fn planned(&self, objects: u64) {
        self.0.set_length(objects);
    }
    fn moved(&self, _: &str, bytes: u64) {
        self.0.inc(1);
        self.0.set_message(format!("{} KiB", bytes / 1024));
    }
}

pub struct SyncArgs {
    pub project: String,
    pub direction: Direction,
    pub dry_run: bool,
    pub overwrite: bool,
    pub concurrency: usize,
    pub full: bool,
}

pub async fn run(settings: Settings, args: SyncArgs) -> Result<(), CliError> {
    let (db, project, files) = crate::packages::open_project(&settings, &args.project).await?;
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("objects [{bar:40}] {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let options = SyncOptions {
        direction: args.direction,
        dry_run: args.dry_run,
        overwrite: args.overwrite,
        concurrency: args.concurrency,
        full: args.full,
    };
    let report = domain::sync::sync(&db.conn, &files, &project, &options, &Bar(bar.clone())).await;
    bar.finish_and_clear();
    let report = report.map_err(service)?;
    let verb = if report.dry_run {
        "would move"
    } else {
        "moved"
    };
    println!(
        "{verb} {} objects ({} bytes); {} unchanged; {} conflicts; {} skipped",
        report.transferred.len(),
        report.bytes,
        report.unchanged,
        report.conflicts.len(),
        report.skipped.len()
    );
    if !report.listed {
        println!("(trusted the last sync's record for unchanged files; --full lists the bucket)");
    }
    for key in &report.conflicts {
        println!("CONFLICT {key} (changed on the other side; --overwrite replaces it)");
    }
    for key in &report.skipped {
        println!("SKIPPED  {key}");
    }
    if report.conflicts.is_empty() {
        Ok(())
    } else {
        Err(CliError::Service(format!(
            "{} conflicting objects were left alone",
            report.conflicts.len()
        )))
    }
}
