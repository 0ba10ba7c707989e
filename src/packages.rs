//! `atelier export` and `atelier export verify`: export packages from the
//! command line (see `domain::exports`).

use std::path::PathBuf;

use domain::exports::{ExportRequest, PackageFormat, PackageProgress};
use indicatif::{ProgressBar, ProgressStyle};
use uuid::Uuid;

use crate::cli::CliError;
use crate::database;
use crate::settings::Settings;
use crate::startup::StartupError;

fn service(e: domain::ServiceError) -> CliError {
    CliError::Service(e.to_string())
}

struct Bar(ProgressBar);

impl PackageProgress for Bar {
    fn file_written(&self, done: u64, total: u64) {
        self.0.set_length(total);
        self.0.set_position(done);
    }
}

/// The database, a project found by its slug, and its files, as the server
/// would open them (its storage policy, secrets and outbound policy).
pub(crate) async fn open_project(
    settings: &Settings,
    slug: &str,
) -> Result<
    (
        database::Db,
        entities::projects::Model,
        storage::ProjectFiles,
    ),
    CliError,
> {
    let db = database::open(settings).await.map_err(StartupError::from)?;
    let slug = domain::projects::parse_slug(slug).map_err(service)?;
    let project = domain::projects::find_by_slug(&db.conn, &slug)
        .await
        .map_err(service)?
        .ok_or_else(|| CliError::Service(format!("no project '{slug}'")))?;
    let roots = domain::StorageRoots::new(&settings.data_dir, &settings.storage.allowed_roots);
    let keys = crate::startup::secret_keys(settings);
    let outbound = crate::startup::outbound_policy(settings)?;
    let files = domain::projects::project_files(
        &db.conn,
        domain::projects::FileAccess {
            roots: &roots,
            keys: Some(&keys),
            outbound: &outbound,
        },
        &project,
    )
    .await
    .map_err(service)?;
    Ok((db, project, files))
}

pub struct ExportArgs {
    pub project: String,
    pub format: String,
    pub runs: Vec<String>,
}

pub async fn export(settings: Settings, args: ExportArgs) -> Result<(), CliError> {
    let format = PackageFormat::parse(&args.format).map_err(service)?;
    let run_ids = args
        .runs
        .iter()
        .map(|r| {
            Uuid::parse_str(r.trim())
                .map_err(|_| CliError::Service(format!("'{r}' is not a run id")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let (db, project, files) = open_project(&settings, &args.project).await?;
    let request = ExportRequest { format, run_ids };
    let node = crate::startup::node_id(&settings)?;
    let started = domain::exports::start(
        &db.conn,
        &domain::Principal::DevBypass,
        &project,
        &request,
        &node,
    )
    .await
    .map_err(service)?;
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("files [{bar:40}] {pos}/{len}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let done = domain::exports::run(
        &db.conn,
        &files,
        &project,
        started,
        &request,
        api::CONTRACT_VERSION,
        &Bar(bar.clone()),
    )
    .await;
    bar.finish_and_clear();
    let done = done.map_err(service)?;
    println!("export {} of {}: {}", done.id, project.slug, done.status);
    if let Some(key) = &done.rel_path {
        let local = files
            .local_root()
            .map(|r| r.join(key))
            .filter(|p| p.exists());
        match local {
            Some(path) => println!("package  {}", path.display()),
            None => println!("package  {key} (in the project's bucket)"),
        }
    }
    println!(
        "sha256   {}\nsize     {} bytes",
        done.checksum_sha256.unwrap_or_default(),
        done.file_size_bytes.unwrap_or_default()
    );
    Ok(())
}

pub async fn verify(package: PathBuf) -> Result<(), CliError> {
    let report = tokio::task::spawn_blocking(move || domain::exports::verify::verify(&package))
        .await
        .map_err(|e| CliError::Service(e.to_string()))?
        .map_err(service)?;
    for problem in &report.problems {
        println!("PROBLEM  {problem}");
    }
    if report.ok() {
        println!(
            "ok: {} files match the manifest ({})",
            report.files_checked, report.container
        );
        Ok(())
    } else {
        Err(CliError::Service(format!(
            "the package is not whole: {} problem(s)",
            report.problems.len()
        )))
    }
}

pub async fn restore(settings: Settings, package: PathBuf) -> Result<(), CliError> {
    let db = database::open(&settings)
        .await
        .map_err(StartupError::from)?;
    let roots = domain::StorageRoots::new(&settings.data_dir, &settings.storage.allowed_roots);
    let owner = domain::auth::users::ensure_local_user(&db.conn)
        .await
        .map_err(service)?;
    let restored = domain::exports::restore::restore(&db.conn, &roots, &package, owner)
        .await
        .map_err(service)?;
    println!(
        "restored project {} ({}): {} files, {} runs",
        restored.slug, restored.project_id, restored.files, restored.runs
    );
    Ok(())
}
