//! `atelier bench engine`: measures the execution engine in one process and
//! reports ratios against baselines measured in the same run (see
//! docs/performance.md).
//!
//! 1. Orchestration throughput: a zero-latency local provider, small images,
//!    end to end and persisted (SQLite by default), in candidates/s, against a
//!    baseline that does only the unavoidable per-candidate work (the same
//!    image effect, PNG encode, SHA-256, file write of distinct outputs, at
//!    the same concurrency) with no engine at all, in the same round.
//! 2. Latency-bound efficiency: provider latency L, concurrency C, N calls:
//!    ideal wall time ceil(N / C) x L divided by the measured wall time.

pub mod cluster;
pub mod export;
pub mod feed;
pub mod import;
pub mod paid;
pub mod passes;
pub mod sync;

use std::time::{Duration, Instant};

use actors::engine::Engine;
use domain::Principal;
use domain::projects::{self, UpsertProject};
use domain::runs::{plan, trigger};
use storage::paths::StorageRoots;

use crate::cli::CliError;
use crate::database;
use crate::settings::Settings;
use crate::startup::{StartupError, embedded_engine, engine_config, install_runtime_defaults};
use domain::status::RunStatus;

pub struct BenchOptions {
    pub scenes: u32,
    pub candidates: u32,
    pub latency_ms: u64,
    pub concurrency: usize,
    pub latency_calls: u32,
    /// `<w>x<h>` of the throughput measurement's sample scenes.
    pub scene_size: String,
    /// Provider calls in flight for the throughput measurement.
    pub throughput_concurrency: usize,
    /// Repetitions; the report gives min / median / max.
    pub rounds: u32,
}

/// A benchmark's own step failed (as the CLI reports it).
pub(crate) fn err(e: impl std::fmt::Display) -> CliError {
    CliError::Service(e.to_string())
}

/// A fresh SQLite installation with its data in `dir` (under `--data-dir`,
/// so the disk measured is the one asked for): its settings, database and
/// storage roots.
pub(crate) async fn sqlite_installation(
    settings: &Settings,
    dir: std::path::PathBuf,
) -> Result<(Settings, database::Db, StorageRoots), CliError> {
    let mut s = settings.clone();
    s.data_dir = dir;
    s.database_url = None;
    let db = database::open(&s).await.map_err(StartupError::from)?;
    let roots = StorageRoots::new(&s.data_dir, &[]);
    Ok((s, db, roots))
}

fn service(e: domain::ServiceError) -> CliError {
    CliError::Service(e.to_string())
}

async fn engine_with(
    settings: &Settings,
    latency_ms: u64,
    concurrency: usize,
) -> Result<(Engine, database::Db, StorageRoots), CliError> {
    let db = database::open(settings).await.map_err(StartupError::from)?;
    let mut settings = settings.clone();
    settings.providers.local.latency_ms = latency_ms;
    let mut config = engine_config(&settings);
    // C calls in flight; twice as many jobs, so the next jobs are ready
    // (input loaded, calls recorded) when a provider slot frees up.
    config.provider_concurrency = concurrency;
    config.max_jobs_per_run = 2 * concurrency;
    config.max_queued_runs = 10_000;
    let (engine, roots) = embedded_engine(&settings, &db.conn, config).await?;
    Ok((engine, db, roots))
}

async fn timed_run(
    engine: &Engine,
    db: &database::Db,
    roots: &StorageRoots,
    slug: &str,
    scenes: u32,
    candidates: u32,
    size: Option<(u32, u32)>,
) -> Result<Timed, CliError> {
    let principal = Principal::DevBypass;
    let project = projects::upsert(
        &db.conn,
        roots,
        &principal,
        UpsertProject {
            name: Some(slug.into()),
            slug: Some(slug.into()),
            ..UpsertProject::default()
        },
    )
    .await
    .map_err(service)?;
    let valid = plan::validate(&plan::TriggerInput {
        mode: Some("run".into()),
        scene_refs: Some(
            (1..=scenes)
                .map(|i| match size {
                    Some((w, h)) => format!("sample:{i}@{w}x{h}"),
                    None => format!("sample:{i}"),
                })
                .collect(),
        ),
        candidates: Some(i64::from(candidates)),
        manifest: Some(serde_json::json!({ "safe_batch_limit": 1_000_000, "generation": { "max_candidates": 16 } })),
        ..plan::TriggerInput::default()
    })
    .map_err(service)?;
    let start = Instant::now();
    let t = trigger::trigger(engine.run_engine(), &principal, &project.project, valid)
        .await
        .map_err(service)?;
    let run = engine
        .wait_finished(t.created.run.id, Duration::from_secs(3600))
        .await
        .map_err(service)?;
    let took = start.elapsed();
    run_log_written(&db.conn, run.id).await?;
    let executing = match (run.started_at, run.finished_at) {
        (Some(a), Some(b)) => (b - a).to_std().unwrap_or(took),
        _ => took,
    };
    Ok(Timed {
        took,
        executing,
        status: run.status,
    })
}

/// Waits (up to 5 s) for the RunActor's last write, the run log, so nothing
/// is left writing when the benchmark moves on or exits.
pub(crate) async fn run_log_written(
    db: &sea_orm::DatabaseConnection,
    run_id: uuid::Uuid,
) -> Result<(), CliError> {
    use sea_orm::EntityTrait;
    for _ in 0..100 {
        let r = entities::runs::Entity::find_by_id(run_id)
            .one(db)
            .await
            .map_err(|e| CliError::Service(e.to_string()))?;
        if r.is_some_and(|r| r.run_log_key.is_some()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// End to end (trigger: planning, scenes, persistence; then execution) and
/// execution alone (the run's `started_at` to `finished_at`).
struct Timed {
    took: Duration,
    executing: Duration,
    status: String,
}

/// The per-candidate work without any engine, at the engine's concurrency
/// and with the engine's distinct outputs: each scene made, then per
/// candidate the local provider's effect, PNG encode, SHA-256 and the file
/// written through the object store the engine uses (temp file, fsync,
/// rename) under its own key — one file per candidate, so never less than
/// the engine writes (it keeps identical images once). `plain`: the file is
/// written with a plain `write` instead (no sync, no rename: the floor of
/// the file work). Returns the time and how many distinct images there were.
async fn baseline(
    scenes: u32,
    candidates: u32,
    (w, h): (u32, u32),
    concurrency: usize,
    dir: &std::path::Path,
    plain: bool,
) -> Result<(Duration, usize), CliError> {
    let storage = |e: storage::StorageError| CliError::Service(e.to_string());
    let store = storage::ObjectStore::local(dir).map_err(storage)?;
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for s in 1..=scenes {
        let scene = std::sync::Arc::new(
            imaging::cpu::run(move || imaging::scene::sample_scene(u64::from(s), w, h))
                .await
                .map_err(|e| CliError::Service(e.to_string()))?,
        );
        for c in 0..candidates {
            let permit = slots
                .clone()
                .acquire_owned()
                .await
                .map_err(|e| CliError::Service(e.to_string()))?;
            let (scene, store, store_dir) = (scene.clone(), store.clone(), dir.to_path_buf());
            tasks.spawn(async move {
                let _permit = permit;
                let (png, hash) = imaging::cpu::run(move || {
                    let png = imaging::encode_png(&imaging::effects::ink(&scene, c))?;
                    let hash = domain::assets::sha256_hex(&png);
                    Ok::<_, imaging::ImagingError>((png, hash))
                })
                .await
                .map_err(|e| CliError::Service(e.to_string()))?
                .map_err(|e| CliError::Service(e.to_string()))?;
                let key = format!("runs/baseline/s{s}/c{c}.png");
                if plain {
                    let path = store_dir.join(&key);
                    if let Some(parent) = path.parent() {
                        tokio::fs::create_dir_all(parent).await?;
                    }
                    tokio::fs::write(path, png).await?;
                } else {
                    let key = storage::ObjectKey::parse(&key).map_err(storage)?;
                    store.put(&key, png).await.map_err(storage)?;
                }
                Ok::<_, CliError>(hash)
            });
        }
    }
    let mut hashes = std::collections::HashSet::new();
    while let Some(done) = tasks.join_next().await {
        hashes.insert(done.map_err(|e| CliError::Service(e.to_string()))??);
    }
    Ok((start.elapsed(), hashes.len()))
}

/// A data directory of its own for one measurement (removed afterwards):
/// a rerun never finds the previous run's files to deduplicate against.
struct FreshDir(std::path::PathBuf);

impl FreshDir {
    fn new(parent: &std::path::Path, name: &str) -> Result<Self, CliError> {
        let dir = parent.join(format!("{name}-{}", uuid::Uuid::now_v7().simple()));
        std::fs::create_dir_all(&dir)?;
        Ok(Self(dir))
    }
}

impl Drop for FreshDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn require_done(what: &str, status: &str) -> Result<(), CliError> {
    if status == RunStatus::Done {
        Ok(())
    } else {
        Err(CliError::Service(format!(
            "{what}: the run ended '{status}', not 'done'; the measurement is void"
        )))
    }
}

/// min / median / max of a measurement's rounds.
pub(crate) fn spread(values: &[f64]) -> String {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.as_slice() {
        [] => "-".into(),
        [one] => format!("{one:.2}"),
        _ => format!(
            "{:.2} / {:.2} / {:.2}",
            v[0],
            v[v.len() / 2],
            v[v.len() - 1]
        ),
    }
}

/// Waits until everything written so far is on the disk (`sync`), so a
/// timed phase does not pay for the writeback of the phase before it (the
/// plain-write baseline leaves thousands of files to the kernel).
async fn settle_disk() {
    #[cfg(target_os = "linux")]
    let _ = tokio::task::spawn_blocking(rustix::fs::sync).await;
}

struct Round {
    distinct: usize,
    baseline_rate: f64,
    plain_rate: f64,
    engine_rate: f64,
    execution_rate: f64,
    efficiency_execution: f64,
    efficiency_end_to_end: f64,
}

/// One round; its files stay in `kept` until every round is measured.
async fn round(
    settings: &Settings,
    o: &BenchOptions,
    size: (u32, u32),
    kept: &mut Vec<FreshDir>,
) -> Result<Round, CliError> {
    let n = o.scenes * o.candidates;
    // Every round on fresh files (and, on SQLite, a fresh database).
    let dir = FreshDir::new(&settings.data_dir, "bench-engine")?;
    let mut settings = settings.clone();
    settings.data_dir = dir.0.clone();
    // The baselines run just before and again just after the engine, and
    // each rate is over both: a disk whose speed drifts within minutes (as
    // virtual machines' do) then moves the baseline the way it moved the
    // engine, instead of flattering or sinking the ratio.
    let baselines = |pass: &'static str| {
        let dir = dir.0.clone();
        async move {
            // Through the object store, then with plain writes.
            let mut took = [Duration::ZERO; 2];
            let mut distinct = 0;
            for (i, (name, plain)) in [("baseline", false), ("baseline-plain", true)]
                .into_iter()
                .enumerate()
            {
                settle_disk().await;
                let path = dir.join(format!("{name}-{pass}"));
                let (t, d) = baseline(
                    o.scenes,
                    o.candidates,
                    size,
                    o.throughput_concurrency,
                    &path,
                    plain,
                )
                .await?;
                took[i] = t;
                distinct = distinct.max(d);
            }
            Ok::<_, CliError>((took[0], took[1], distinct))
        }
    };
    let (took_before, plain_before, distinct) = baselines("before").await?;
    // Unique slugs: on PostgreSQL the database outlives the round.
    let tag = uuid::Uuid::now_v7().simple().to_string();
    let (engine, db, roots) = engine_with(&settings, 0, o.throughput_concurrency).await?;
    settle_disk().await;
    let t = timed_run(
        &engine,
        &db,
        &roots,
        &format!("bench_throughput_{}", &tag[20..]),
        o.scenes,
        o.candidates,
        Some(size),
    )
    .await?;
    require_done("throughput run", &t.status)?;
    let engine_rate = f64::from(n) / t.took.as_secs_f64();
    let execution_rate = f64::from(n) / t.executing.as_secs_f64();
    let (took_after, plain_after, _) = baselines("after").await?;
    let baseline_rate = f64::from(2 * n) / (took_before + took_after).as_secs_f64();
    let plain_rate = f64::from(2 * n) / (plain_before + plain_after).as_secs_f64();
    let (engine, db, roots) = engine_with(&settings, o.latency_ms, o.concurrency).await?;
    let l = timed_run(
        &engine,
        &db,
        &roots,
        &format!("bench_latency_{}", &tag[20..]),
        o.latency_calls,
        1,
        None,
    )
    .await?;
    require_done("latency-bound run", &l.status)?;
    let ideal =
        Duration::from_millis(o.latency_ms) * o.latency_calls.div_ceil(o.concurrency as u32);
    kept.push(dir);
    Ok(Round {
        distinct,
        baseline_rate,
        plain_rate,
        engine_rate,
        execution_rate,
        efficiency_execution: ideal.as_secs_f64() / l.executing.as_secs_f64(),
        efficiency_end_to_end: ideal.as_secs_f64() / l.took.as_secs_f64(),
    })
}

pub async fn run(settings: Settings, o: BenchOptions) -> Result<(), CliError> {
    install_runtime_defaults();
    let n = o.scenes * o.candidates;
    let size = o
        .scene_size
        .split_once('x')
        .and_then(|(w, h)| Some((w.parse().ok()?, h.parse().ok()?)))
        .ok_or_else(|| {
            CliError::Service(format!("--scene-size '{}' is not <w>x<h>", o.scene_size))
        })?;
    println!(
        "Engine benchmark ({} cores, {} backend), {} rounds; {n} candidates ({} scenes {} x {} candidates), {} in flight",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        if settings.database_url.is_some() {
            "PostgreSQL"
        } else {
            "SQLite"
        },
        o.rounds,
        o.scenes,
        o.scene_size,
        o.candidates,
        o.throughput_concurrency,
    );
    let bar = indicatif::ProgressBar::new(u64::from(o.rounds));
    let mut rounds = Vec::new();
    // Every round's files are removed at the end, not between rounds: on
    // ext4, files created soon after many were deleted cost far more CPU
    // (the inode allocator skips recently freed inodes), which would be
    // measured as the next round's disk speed.
    let mut kept = Vec::new();
    for _ in 0..o.rounds.max(1) {
        rounds.push(round(&settings, &o, size, &mut kept).await?);
        bar.inc(1);
    }
    bar.finish_and_clear();
    let col = |f: fn(&Round) -> f64| spread(&rounds.iter().map(f).collect::<Vec<_>>());
    println!(
        "{} of the {n} candidate images are distinct (the engine stores identical ones once)",
        rounds.first().map_or(0, |r| r.distinct)
    );
    println!(
        "\n| measurement (min / median / max of {} rounds) | value |\n|---|---:|",
        rounds.len()
    );
    println!(
        "| baseline: the same per-candidate work at the same concurrency, no engine, each file through the object store (fsync + rename); run just before and just after the engine, rate over both | {} candidates/s |",
        col(|r| r.baseline_rate)
    );
    println!(
        "| baseline with plain writes (no sync, no rename), before and after likewise | {} candidates/s |",
        col(|r| r.plain_rate)
    );
    println!(
        "| engine end to end, persisted | {} candidates/s |",
        col(|r| r.engine_rate)
    );
    println!(
        "| engine execution only (run started -> finished) | {} candidates/s |",
        col(|r| r.execution_rate)
    );
    println!(
        "| ratio engine end to end / object-store baseline (same round) | {} |",
        col(|r| r.engine_rate / r.baseline_rate)
    );
    println!(
        "| ratio engine end to end / plain-write baseline (same round) | {} |",
        col(|r| r.engine_rate / r.plain_rate)
    );
    println!(
        "| latency-bound: {} calls, {} ms each, concurrency {}: efficiency, execution (ideal / measured) | {} |",
        o.latency_calls,
        o.latency_ms,
        o.concurrency,
        col(|r| r.efficiency_execution)
    );
    println!(
        "| latency-bound efficiency, end to end incl. planning | {} |",
        col(|r| r.efficiency_end_to_end)
    );
    Ok(())
}
