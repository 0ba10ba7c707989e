//! The `atelier` command line.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::database;
use crate::settings::{Overrides, Settings};
use crate::startup::{Application, StartupError};

#[derive(Parser, Debug)]
#[command(
    name = "atelier",
    version,
    about = "Atelier: backend core of a project-first AI image studio for comics and graphic novels",
    long_about = "Atelier keeps each story universe (style guides, characters, references, runs, \
assets, costs, history) in one project and serves it over an HTTP API.\n\n\
Data lives under --data-dir (default ./var): app state in DIR/backend (SQLite at \
DIR/backend/app.db), project files in DIR/projects. Set DATABASE_URL to use PostgreSQL."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug, Clone)]
pub struct GlobalArgs {
    /// Root directory for app state (DIR/backend) and project files (DIR/projects).
    #[arg(long, global = true, env = "ATELIER_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// TOML config file (default: DIR/backend/atelier.toml when it exists).
    #[arg(long, global = true, env = "ATELIER_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// The main job: take sample scenes through style -> time -> weather on the
    /// built-in local provider (offline, free) and print where everything went.
    Demo {
        /// Number of sample scenes.
        #[arg(long, default_value_t = 3)]
        scenes: u32,
        /// Candidates generated per job; the best one wins.
        #[arg(long, default_value_t = 3)]
        candidates: u32,
        /// day, dusk or night.
        #[arg(long, default_value = "dusk")]
        time: String,
        /// clear, rain, snow or fog.
        #[arg(long, default_value = "rain")]
        weather: String,
    },
    /// Measure the execution engine (see docs/performance.md).
    Bench {
        #[command(subcommand)]
        what: BenchWhat,
    },
    /// Run the HTTP API (migrates the database first).
    Serve {
        /// Address to listen on; port 0 picks a free port.
        #[arg(long, env = "ATELIER_BIND", value_name = "ADDR")]
        bind: Option<String>,
    },
    /// Inspect or change the database schema.
    Migrate {
        #[command(subcommand)]
        action: MigrateAction,
    },
    /// Manage API tokens without going through HTTP.
    Token {
        #[command(subcommand)]
        action: TokenAction,
    },
    /// Export a project (or some of its runs) as a reproducible package,
    /// stored as an asset of the project; `export verify FILE` checks one.
    #[command(args_conflicts_with_subcommands = true)]
    Export {
        #[command(subcommand)]
        check: Option<ExportCheck>,
        /// The project's slug.
        #[arg(long, value_name = "SLUG")]
        project: Option<String>,
        /// zip, tar.gz or cbz (the winners in scene order, as a comic book archive).
        #[arg(long, default_value = "zip")]
        format: String,
        /// Only this run (repeatable); default: the whole project.
        #[arg(long = "run", value_name = "RUN_ID")]
        runs: Vec<String>,
    },
    /// Copy a project's files to its bucket (push) or back (pull),
    /// incrementally by SHA-256 (docs/operations.md "S3 sync").
    Sync {
        #[command(subcommand)]
        direction: SyncDirection,
    },
    /// Send confirmed agent instructions to their agent endpoint (what
    /// `serve` does in the background), until interrupted.
    AgentWorker {
        /// Handle at most one due instruction, then exit.
        #[arg(long)]
        once: bool,
        /// This worker's name in an instruction's lock (default: worker-<hex>).
        #[arg(long)]
        worker_id: Option<String>,
    },
    /// Move in from elsewhere (README "Moving in").
    Import {
        #[command(subcommand)]
        what: ImportWhat,
    },
}

#[derive(Args, Debug)]
pub struct SyncArgs {
    /// The project's slug.
    #[arg(long, value_name = "SLUG")]
    project: String,
    /// Say what would move; move nothing.
    #[arg(long)]
    dry_run: bool,
    /// Replace what someone else changed on the other side (default: refuse
    /// and report it).
    #[arg(long)]
    overwrite: bool,
    /// Transfers in flight at most.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Push: list the bucket even when the last sync's record may be
    /// trusted (finds objects someone else deleted or changed since).
    #[arg(long)]
    full: bool,
}

#[derive(Subcommand, Debug)]
pub enum SyncDirection {
    /// Local files to the bucket.
    Push(SyncArgs),
    /// The bucket's objects back into the local root.
    Pull(SyncArgs),
}

#[derive(Subcommand, Debug)]
pub enum ExportCheck {
    /// Check every file of a package against its manifest (nothing is
    /// extracted); exits non-zero when anything differs or could escape.
    Verify { package: PathBuf },
}

#[derive(Subcommand, Debug)]
pub enum ImportWhat {
    /// A database of the earlier system (Kroma's `var/backend/app.db`) and
    /// the files its rows name. One transaction per project; importing the
    /// same database again changes nothing.
    Legacy {
        /// The earlier system's SQLite file (opened read-only).
        #[arg(long, value_name = "PATH")]
        db: PathBuf,
        /// The earlier system's root: stored paths are relative to it, and no
        /// file outside it is read. Default: the folder holding `var/` of
        /// `--db` (`ROOT/var/backend/app.db`), else the folder of `--db`.
        #[arg(long, value_name = "DIR")]
        files_root: Option<PathBuf>,
        /// The earlier system's master key file, when it is not this
        /// installation's key (or ATELIER_LEGACY_MASTER_KEY); its secrets are
        /// re-encrypted under this installation's key.
        #[arg(long, value_name = "FILE")]
        master_key_file: Option<PathBuf>,
        /// Only this project (repeatable); default: every project.
        #[arg(long = "project", value_name = "SLUG")]
        projects: Vec<String>,
        /// Do everything, then roll it back.
        #[arg(long)]
        dry_run: bool,
        /// Leave out secrets no key decrypts (reported) instead of refusing
        /// their project.
        #[arg(long)]
        skip_undecryptable_secrets: bool,
        /// Also write the full report (counts per table, files, id map) as JSON.
        #[arg(long, value_name = "FILE")]
        report: Option<PathBuf>,
    },
    /// An export package (zip or tar.gz) of another installation: checked,
    /// then restored as a new project under the same ids (the project must
    /// not be here yet).
    Package {
        /// The package file.
        file: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
pub enum BenchWhat {
    /// How close to a provider's rate limit a batch runs, with the adaptive
    /// governor and with a fixed concurrency (a loopback stub enforces the limit).
    Governor {
        /// Requests the stub accepts per window.
        #[arg(long, default_value_t = 10)]
        limit: usize,
        #[arg(long, default_value_t = 2000)]
        window_ms: u64,
        #[arg(long, default_value_t = 100)]
        calls: u32,
        /// Calls in flight at most.
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        /// The stub's answer time per call.
        #[arg(long, default_value_t = 100)]
        latency_ms: u64,
    },
    /// The window in which a delivered paid result could be lost (arrival to
    /// durable commit), with post-process passes on.
    Durability {
        #[arg(long, default_value_t = 40)]
        calls: u32,
        #[arg(long, default_value_t = 4)]
        concurrency: usize,
        /// Size of the delivered images, `<w>x<h>`.
        #[arg(long, default_value = "1024x1536")]
        output: String,
    },
    /// Orchestration throughput (zero-latency provider) and latency-bound efficiency.
    Engine {
        #[arg(long, default_value_t = 200)]
        scenes: u32,
        #[arg(long, default_value_t = 10)]
        candidates: u32,
        #[arg(long, default_value_t = 200)]
        latency_ms: u64,
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        #[arg(long, default_value_t = 64)]
        latency_calls: u32,
        /// Sample scene size for the throughput measurement, `<w>x<h>`.
        #[arg(long, default_value = "64x48")]
        scene_size: String,
        /// Provider calls in flight for the throughput measurement (twice as many jobs).
        #[arg(long, default_value_t = 32)]
        throughput_concurrency: usize,
        /// Rounds (each on fresh files); the report gives min / median / max.
        #[arg(long, default_value_t = 3)]
        rounds: u32,
    },
    /// Export package MB/s against a plain tar of the same files, and peak
    /// memory for two project sizes.
    Export {
        #[arg(long, default_value_t = 800)]
        files: u32,
        #[arg(long, default_value_t = 256)]
        size_kib: usize,
        #[arg(long, default_value_t = 3)]
        rounds: u32,
    },
    /// A second push of an unchanged project against the first (needs an
    /// S3-compatible server, e.g. `moto_server -p 5000`).
    Sync {
        #[arg(long, value_name = "URL")]
        endpoint: String,
        #[arg(long, default_value_t = 2000)]
        files: u32,
        #[arg(long, default_value_t = 64)]
        size_kib: usize,
    },
    /// Legacy import in rows/s against a plain bulk insert of the same rows.
    Import {
        #[arg(long, default_value_t = 400)]
        runs: u32,
        #[arg(long, default_value_t = 10)]
        jobs: u32,
        #[arg(long, default_value_t = 4)]
        candidates: u32,
        #[arg(long, default_value_t = 3)]
        rounds: u32,
    },
    /// Post-process passes in megapixels/s against baselines, and upscale quality.
    Passes {
        /// Width of the sample scene (height is 3/4 of it).
        #[arg(long, default_value_t = 1024)]
        side: u32,
    },
    /// Live feed latency (event committed -> WebSocket client) for N clients,
    /// and server memory with one stalled client.
    Feed {
        /// Client counts to measure, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "1,50,200,500")]
        clients: Vec<usize>,
        /// Events per second.
        #[arg(long, default_value_t = 1000)]
        rate: u32,
        /// Measured seconds per client count (after one second of warm-up).
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// Length of the stalled-client measurement.
        #[arg(long, default_value_t = 15)]
        stall_seconds: u64,
    },
    /// Several `atelier serve` nodes on one PostgreSQL server (DATABASE_URL;
    /// a database of its own per measurement): throughput with 1..N nodes
    /// against a bare SKIP LOCKED loop, submit-to-start latency, rescue
    /// after SIGKILL, cancel across nodes, and feed latency across nodes.
    Cluster {
        /// Node counts to measure, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "1,2,3")]
        nodes: Vec<usize>,
        /// Tiny jobs per throughput round.
        #[arg(long, default_value_t = 2000)]
        jobs: u32,
        /// Rounds; the report gives min / median / max.
        #[arg(long, default_value_t = 3)]
        rounds: u32,
        /// Submit-to-start samples.
        #[arg(long, default_value_t = 200)]
        samples: u32,
        /// Feed clients on a node.
        #[arg(long, default_value_t = 200)]
        clients: usize,
        /// The nodes' heartbeat.
        #[arg(long, default_value_t = 5000)]
        heartbeat_ms: u64,
        /// Which measurements: `engine` (throughput, submit-to-start),
        /// `rescue` (rescue after SIGKILL, cancel across nodes), `feed`.
        #[arg(long, value_delimiter = ',', default_value = "engine,rescue,feed")]
        parts: Vec<String>,
    },
    /// The server side of `bench feed` (run by it in a child process).
    #[command(hide = true)]
    FeedServer,
    /// Peak memory of a streamed upscale of a large image.
    UpscaleMemory {
        #[arg(long, default_value_t = 4096)]
        side: u32,
        #[arg(long, default_value_t = 4)]
        factor: u32,
    },
}

#[derive(Subcommand, Debug)]
pub enum MigrateAction {
    /// Apply every pending migration (SQLite files are backed up first).
    Up,
    /// Roll back migrations (all of them unless --steps is given); an SQLite
    /// file is backed up first.
    Down {
        #[arg(long)]
        steps: Option<u32>,
    },
    /// Show applied, pending and unknown (newer) migrations.
    Status,
}

#[derive(Subcommand, Debug)]
pub enum TokenAction {
    /// Mint a token and print it once (e.g. the first token of a server that
    /// is not reachable on loopback).
    Create {
        #[arg(long)]
        label: Option<String>,
        /// Confine the token to this project.
        #[arg(long, value_name = "SLUG")]
        project: Option<String>,
        /// RFC 3339 or YYYY-MM-DD.
        #[arg(long, value_name = "WHEN")]
        expires_at: Option<String>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Startup(#[from] StartupError),
    #[error("{0}")]
    Service(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

pub async fn run(cli: Cli) -> Result<(), CliError> {
    let mut overrides = Overrides {
        config_file: cli.global.config.clone(),
        data_dir: cli.global.data_dir.clone(),
        ..Overrides::default()
    };
    match cli.command {
        Command::Serve { bind } => {
            overrides.bind = bind;
            let settings = Settings::load(&overrides).map_err(StartupError::from)?;
            let app = Application::build(settings).await?;
            app.run_until_stopped().await?;
            Ok(())
        }
        Command::Demo {
            scenes,
            candidates,
            time,
            weather,
        } => {
            let settings = Settings::load(&overrides).map_err(StartupError::from)?;
            crate::demo::run(
                settings,
                crate::demo::DemoOptions {
                    scenes,
                    candidates,
                    time,
                    weather,
                },
            )
            .await
        }
        Command::Bench {
            what:
                BenchWhat::Engine {
                    scenes,
                    candidates,
                    latency_ms,
                    concurrency,
                    latency_calls,
                    scene_size,
                    throughput_concurrency,
                    rounds,
                },
        } => {
            let settings = Settings::load(&overrides).map_err(StartupError::from)?;
            crate::bench::run(
                settings,
                crate::bench::BenchOptions {
                    scenes,
                    candidates,
                    latency_ms,
                    concurrency,
                    latency_calls,
                    scene_size,
                    throughput_concurrency,
                    rounds,
                },
            )
            .await
        }
        Command::Bench {
            what:
                BenchWhat::Export {
                    files,
                    size_kib,
                    rounds,
                },
        } => {
            let settings = Settings::load(&overrides).map_err(StartupError::from)?;
            crate::bench::export::run(settings, files, size_kib, rounds).await
        }
        Command::Bench {
            what:
                BenchWhat::Sync {
                    endpoint,
                    files,
                    size_kib,
                },
        } => {
            let settings = Settings::load(&overrides).map_err(StartupError::from)?;
            crate::bench::sync::run(settings, endpoint, files, size_kib).await
        }
        Command::Bench {
            what:
                BenchWhat::Import {
                    runs,
                    jobs,
                    candidates,
                    rounds,
                },
        } => {
            let settings = Settings::load(&overrides).map_err(StartupError::from)?;
            crate::bench::import::run(settings, runs, jobs, candidates, rounds).await
        }
        Command::Bench {
            what: BenchWhat::Passes { side },
        } => crate::bench::passes::run(side),
        Command::Bench {
            what:
                BenchWhat::Durability {
                    calls,
                    concurrency,
                    output,
                },
        } => {
            let settings = Settings::load(&overrides).map_err(StartupError::from)?;
            let output = output
                .split_once('x')
                .and_then(|(w, h)| Some((w.parse().ok()?, h.parse().ok()?)))
                .ok_or_else(|| CliError::Service(format!("--output '{output}' is not <w>x<h>")))?;
            crate::bench::paid::durability(
                settings,
                crate::bench::paid::DurabilityOptions {
                    calls,
                    concurrency,
                    output,
                },
            )
            .await
        }
        Command::Bench {
            what:
                BenchWhat::Governor {
                    limit,
                    window_ms,
                    calls,
                    concurrency,
                    latency_ms,
                },
        } => {
            let settings = Settings::load(&overrides).map_err(StartupError::from)?;
            crate::bench::paid::run(
                settings,
                crate::bench::paid::GovernorOptions {
                    limit,
                    window_ms,
                    calls,
                    concurrency,
                    latency_ms,
                },
            )
            .await
        }
        Command::Bench {
            what:
                BenchWhat::Feed {
                    clients,
                    rate,
                    seconds,
                    stall_seconds,
                },
        } => {
            let settings = Settings::load(&overrides).map_err(StartupError::from)?;
            crate::bench::feed::run(
                settings,
                crate::bench::feed::FeedOptions {
                    clients,
                    rate,
                    seconds,
                    stall_seconds,
                },
            )
            .await
        }
        Command::Bench {
            what:
                BenchWhat::Cluster {
                    nodes,
                    jobs,
                    rounds,
                    samples,
                    clients,
                    heartbeat_ms,
                    parts,
                },
        } => {
            let settings = Settings::load(&overrides).map_err(StartupError::from)?;
            crate::bench::cluster::run(
                settings,
                &crate::bench::cluster::ClusterOptions {
                    nodes,
                    jobs,
                    rounds,
                    samples,
                    clients,
                    heartbeat_ms,
                    parts,
                },
            )
            .await
        }
        Command::Bench {
            what: BenchWhat::FeedServer,
        } => {
            let settings = Settings::load(&overrides).map_err(StartupError::from)?;
            crate::bench::feed::serve(settings).await
        }
        Command::Bench {
            what: BenchWhat::UpscaleMemory { side, factor },
        } => {
            let settings = Settings::load(&overrides).map_err(StartupError::from)?;
            std::fs::create_dir_all(&settings.data_dir)?;
            crate::bench::passes::upscale_memory(
                side,
                factor,
                &settings.data_dir.join("bench-upscale.png"),
            )
        }
        Command::Migrate { action } => {
            let settings = Settings::load(&overrides).map_err(StartupError::from)?;
            let db = database::connect(&settings)
                .await
                .map_err(StartupError::from)?;
            let status = match action {
                MigrateAction::Up => database::migrate_up(&db, &settings).await,
                MigrateAction::Down { steps } => {
                    database::migrate_down(&db, &settings, steps).await
                }
                MigrateAction::Status => database::schema_status(&db.conn)
                    .await
                    .map_err(database::DatabaseError::Migrate),
            }
            .map_err(StartupError::from)?;
            println!("database: {}", db.target);
            for name in &status.applied {
                println!("applied  {name}");
            }
            for name in &status.pending {
                println!("pending  {name}");
            }
            for name in &status.unknown {
                println!("UNKNOWN  {name} (applied by a newer Atelier)");
            }
            Ok(())
        }
        Command::AgentWorker { once, worker_id } => {
            let settings = Settings::load(&overrides).map_err(StartupError::from)?;
            crate::agent_worker::run(settings, once, worker_id).await
        }
        Command::Sync { direction } => {
            let settings = Settings::load(&overrides).map_err(StartupError::from)?;
            let (direction, args) = match direction {
                SyncDirection::Push(a) => (domain::sync::Direction::Push, a),
                SyncDirection::Pull(a) => (domain::sync::Direction::Pull, a),
            };
            crate::syncing::run(
                settings,
                crate::syncing::SyncArgs {
                    project: args.project,
                    direction,
                    dry_run: args.dry_run,
                    overwrite: args.overwrite,
                    concurrency: args.concurrency,
                    full: args.full,
                },
            )
            .await
        }
        Command::Export {
            check: Some(ExportCheck::Verify { package }),
            ..
        } => crate::packages::verify(package).await,
        Command::Export {
            check: None,
            project,
            format,
            runs,
        } => {
            let settings = Settings::load(&overrides).map_err(StartupError::from)?;
            let project = project.ok_or_else(|| {
                CliError::Service("--project SLUG is required (or: export verify FILE)".into())
            })?;
            crate::packages::export(
                settings,
                crate::packages::ExportArgs {
                    project,
                    format,
                    runs,
                },
            )
            .await
        }
        Command::Import {
            what: ImportWhat::Package { file },
        } => {
            let settings = Settings::load(&overrides).map_err(StartupError::from)?;
            crate::packages::restore(settings, file).await
        }
        Command::Import {
            what:
                ImportWhat::Legacy {
                    db,
                    files_root,
                    master_key_file,
                    projects,
                    dry_run,
                    skip_undecryptable_secrets,
                    report,
                },
        } => {
            let settings = Settings::load(&overrides).map_err(StartupError::from)?;
            crate::moving_in::import_legacy(
                settings,
                crate::moving_in::LegacyImport {
                    db,
                    files_root,
                    master_key_file,
                    projects,
                    dry_run,
                    skip_undecryptable_secrets,
                    report,
                },
            )
            .await
        }
        Command::Token { action } => {
            let settings = Settings::load(&overrides).map_err(StartupError::from)?;
            let db = database::open(&settings)
                .await
                .map_err(StartupError::from)?;
            match action {
                TokenAction::Create {
                    label,
                    project,
                    expires_at,
                } => {
                    let verifier = domain::auth::TokenVerifier::new(std::time::Duration::ZERO);
                    let created = domain::auth::create_token(
                        &db.conn,
                        &verifier,
                        &domain::Principal::DevBypass,
                        domain::auth::CreateToken {
                            label: label.or(Some("cli".into())),
                            project_slug: project,
                            expires_at,
                        },
                    )
                    .await
                    .map_err(|e| CliError::Service(e.to_string()))?;
                    eprintln!(
                        "token {} created (id {}); it is shown only once:",
                        created.row.token_prefix, created.row.id
                    );
                    println!("{}", created.token);
                    Ok(())
                }
            }
        }
    }
}
