//! `atelier bench engine`: measures the execution engine in one process and
//! reports ratios against baselines measured in the same run (see
//! docs/performance.md).
//!
//! 1. Orchestration throughput: a zero-latency local provider, small images,
//!    end to end and persisted (SQLite by default), in candidates/s, against a
//!    baseline that does only the unavoidable per-candidate work (the same
//!    image effect, PNG encode, SHA-256, file write) with no engine at all.
//! 2. Latency-bound efficiency: provider latency L, concurrency C, N calls:
//!    ideal wall time ceil(N / C) x L divided by the measured wall time.

pub mod feed;
pub mod paid;
pub mod passes;

use std::time::{Duration, Instant};

use actors::Principal;
use actors::engine::Engine;
use actors::projects::{self, UpsertProject};
use actors::runs::{plan, trigger};
use storage::paths::StorageRoots;

use crate::cli::CliError;
use crate::database;
use crate::settings::Settings;
use crate::startup::{StartupError, embedded_engine, engine_config, install_runtime_defaults};

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
}

fn service(e: actors::ServiceError) -> CliError {
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
    let t = trigger::trigger(engine, &principal, &project.project, valid)
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

/// The per-candidate work without any engine: effect, encode, hash, then the
/// file written plainly (`std::fs::write`) and, separately, through the
/// object store the engine uses (opendal: temp file, fsync, rename).
async fn baselines(
    n: u32,
    (w, h): (u32, u32),
    dir: &std::path::Path,
) -> Result<(Duration, Duration), CliError> {
    let storage = |e: storage::StorageError| CliError::Service(e.to_string());
    std::fs::create_dir_all(dir.join("plain"))?;
    let store = storage::ObjectStore::local(&dir.join("store")).map_err(storage)?;
    let scene = imaging::scene::sample_scene(1, w, h);
    let encoded = |i: u32| {
        let img = imaging::effects::ink(&scene, i);
        let png = imaging::encode_png(&img).map_err(|e| CliError::Service(e.to_string()))?;
        let hash = actors::assets::sha256_hex(&png);
        Ok::<_, CliError>((png, hash))
    };
    let start = Instant::now();
    for i in 0..n {
        let (png, hash) = encoded(i)?;
        std::fs::write(dir.join("plain").join(format!("{hash}.png")), png)?;
    }
    let plain = start.elapsed();
    let start = Instant::now();
    for i in 0..n {
        let (png, hash) = encoded(i)?;
        let key = storage::ObjectKey::parse(&format!("b/{hash}.png")).map_err(storage)?;
        store.put(&key, png).await.map_err(storage)?;
    }
    Ok((plain, start.elapsed()))
}

pub async fn run(settings: Settings, o: BenchOptions) -> Result<(), CliError> {
    install_runtime_defaults();
    let n = o.scenes * o.candidates;
    println!(
        "Engine benchmark ({} cores, {} backend)",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        if settings.database_url.is_some() {
            "PostgreSQL"
        } else {
            "SQLite"
        }
    );

    let size = o
        .scene_size
        .split_once('x')
        .and_then(|(w, h)| Some((w.parse().ok()?, h.parse().ok()?)))
        .ok_or_else(|| {
            CliError::Service(format!("--scene-size '{}' is not <w>x<h>", o.scene_size))
        })?;
    let (plain, stored) = baselines(n, size, &settings.data_dir.join("bench-baseline")).await?;
    let (engine, db, roots) = engine_with(&settings, 0, o.throughput_concurrency).await?;
    let Timed {
        took,
        executing,
        status,
    } = timed_run(
        &engine,
        &db,
        &roots,
        "bench_throughput",
        o.scenes,
        o.candidates,
        Some(size),
    )
    .await?;
    let rate = f64::from(n) / took.as_secs_f64();
    let plain_rate = f64::from(n) / plain.as_secs_f64();
    let base_rate = f64::from(n) / stored.as_secs_f64();
    println!("\n| measurement | value |\n|---|---:|");
    println!(
        "| candidates (jobs x candidates), scenes {} | {n} ({} x {}) |",
        o.scene_size, o.scenes, o.candidates
    );
    println!(
        "| baseline: effect + PNG + SHA-256 + plain file write, no engine | {plain_rate:.0} candidates/s |"
    );
    println!(
        "| baseline: the same, written through the object store (fsync + rename) | {base_rate:.0} candidates/s |"
    );
    println!(
        "| engine end to end, persisted ({} calls in flight, run {status}) | {rate:.0} candidates/s |",
        o.throughput_concurrency
    );
    println!(
        "| engine execution only (run started -> finished) | {:.0} candidates/s |",
        f64::from(n) / executing.as_secs_f64()
    );
    println!(
        "| ratio engine end to end / object-store baseline | {:.2} |",
        rate / base_rate
    );

    let (engine, db, roots) = engine_with(&settings, o.latency_ms, o.concurrency).await?;
    let Timed {
        took,
        executing,
        status,
    } = timed_run(
        &engine,
        &db,
        &roots,
        "bench_latency",
        o.latency_calls,
        1,
        None,
    )
    .await?;
    let ideal =
        Duration::from_millis(o.latency_ms) * o.latency_calls.div_ceil(o.concurrency as u32);
    println!(
        "| latency-bound: {} calls, {} ms each, concurrency {} (run {status}) | execution {:.2} s, end to end {:.2} s (ideal {:.2} s) |",
        o.latency_calls,
        o.latency_ms,
        o.concurrency,
        executing.as_secs_f64(),
        took.as_secs_f64(),
        ideal.as_secs_f64()
    );
    println!(
        "| latency-bound efficiency, execution (ideal / measured) | {:.2} |",
        ideal.as_secs_f64() / executing.as_secs_f64()
    );
    println!(
        "| latency-bound efficiency, end to end incl. planning | {:.2} |",
        ideal.as_secs_f64() / took.as_secs_f64()
    );
    Ok(())
}
