//! Benchmarks against a paid provider's stand-in (the `stubs` crate's
//! OpenAI stub, official wire format, in this process on its own loopback
//! server; the batches below are bound by the provider, not by CPU).
//!
//! `atelier bench governor`: how close to a provider's rate limit a batch
//! runs. A loopback OpenAI stub (the `stubs` crate, official wire format)
//! accepts at most `limit` requests per `window` and answers the rest 429
//! with `retry-after-ms` and `x-ratelimit-*` headers. The same batch runs
//! through the real engine twice, in the same process: with the adaptive
//! governor, and with a fixed concurrency that ignores the signals (only
//! the per-call retry honours Retry-After). Reported: achieved rate as a
//! fraction of the limit, and 429s per image.
//!
//! `atelier bench durability`: the window in which a delivered paid result
//! could be lost — from the answer's arrival to the commit that makes it
//! durable (`atelier_delivery_durable_seconds`) — for a batch of paid calls
//! with post-process passes on, on this machine's disk.

use std::sync::Arc;
use std::time::{Duration, Instant};

use domain::Principal;
use domain::projects::{self, UpsertProject};
use domain::runs::{plan, trigger};
use providers::credentials::{Credentials, Secret};

use crate::cli::CliError;
use crate::database;
use crate::settings::Settings;
use crate::startup::{StartupError, embedded_engine_with, engine_config, install_runtime_defaults};

pub struct GovernorOptions {
    pub limit: usize,
    pub window_ms: u64,
    pub calls: u32,
    pub concurrency: usize,
    pub latency_ms: u64,
}

/// The stub's key, for the benchmark's engine only.
struct StubKey;

impl Credentials for StubKey {
    fn secret(&self, _: &str) -> Option<Secret> {
        Some(Secret::new(stubs::openai::KEY))
    }
}

struct Outcome {
    took: Duration,
    served: u32,
    throttled: u64,
    status: String,
}

/// What the batch asks of the stub.
struct Batch {
    calls: u32,
    concurrency: usize,
    rate_limit: Option<(usize, Duration)>,
    latency: Duration,
    output: (u32, u32),
    postprocess: serde_json::Value,
}

async fn batch(settings: &Settings, b: &Batch, adaptive: bool) -> Result<Outcome, CliError> {
    let stub = stubs::openai::OpenAiStub::start().await;
    if let Some((limit, window)) = b.rate_limit {
        stub.set_rate_limit(limit, window);
    }
    stub.set_latency(b.latency);
    stub.set_output_size(b.output.0, b.output.1);
    let dir = tempfile::tempdir_in(&settings.data_dir)?;
    let mut settings = settings.clone();
    settings.data_dir = dir.path().to_path_buf();
    settings.database_url = None;
    settings.providers.openai.enabled = true;
    settings.providers.openai.base_url = stub.base_url.clone();
    settings.engine.adaptive_rate_limits = adaptive;
    let db = database::open(&settings)
        .await
        .map_err(StartupError::from)?;
    let mut config = engine_config(&settings);
    config.provider_concurrency = b.concurrency;
    config.max_jobs_per_run = b.concurrency;
    // Enough attempts that both modes finish the batch; what differs is
    // how many refusals it takes.
    config.retry.max_attempts = 50;
    config.retry.base_delay = Duration::from_millis(50);
    config.retry.max_delay = b.rate_limit.map_or(Duration::from_secs(1), |(_, w)| w);
    let (engine, roots) =
        embedded_engine_with(&settings, &db.conn, config, Arc::new(StubKey)).await?;
    let service = |e: domain::ServiceError| CliError::Service(e.to_string());
    let principal = Principal::DevBypass;
    let project = projects::upsert(
        &db.conn,
        &roots,
        &principal,
        UpsertProject {
            name: Some("governor".into()),
            slug: Some("governor".into()),
            ..UpsertProject::default()
        },
    )
    .await
    .map_err(service)?;
    let valid = plan::validate(&plan::TriggerInput {
        mode: Some("run".into()),
        provider: Some("openai".into()),
        confirm_spend: Some(true),
        scene_refs: Some((1..=b.calls).map(|i| format!("sample:{i}@64x48")).collect()),
        candidates: Some(1),
        manifest: Some(serde_json::json!({ "safe_batch_limit": 1_000_000 })),
        postprocess: Some(b.postprocess.clone()),
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
    super::run_log_written(&db.conn, run.id).await?;
    Ok(Outcome {
        took,
        served: stub.served_total(),
        throttled: stub.throttled(),
        status: run.status,
    })
}

pub async fn run(settings: Settings, o: GovernorOptions) -> Result<(), CliError> {
    install_runtime_defaults();
    let limit_rate = o.limit as f64 / (o.window_ms as f64 / 1000.0);
    println!(
        "Governor benchmark: {} calls, the provider allows {} per {} ms ({limit_rate:.1}/s), {} ms per call, {} calls in flight at most",
        o.calls, o.limit, o.window_ms, o.latency_ms, o.concurrency
    );
    println!(
        "\n| mode | run | wall time | images/s | of the limit | 429s | 429s per image |\n|---|---|---:|---:|---:|---:|---:|"
    );
    std::fs::create_dir_all(&settings.data_dir)?;
    let b = Batch {
        calls: o.calls,
        concurrency: o.concurrency,
        rate_limit: Some((o.limit, Duration::from_millis(o.window_ms))),
        latency: Duration::from_millis(o.latency_ms),
        output: (64, 48),
        postprocess: serde_json::json!({}),
    };
    for (name, adaptive) in [("adaptive governor", true), ("fixed concurrency", false)] {
        let r = batch(&settings, &b, adaptive).await?;
        let rate = f64::from(r.served) / r.took.as_secs_f64();
        println!(
            "| {name} | {} | {:.1} s | {rate:.1} | {:.2} | {} | {:.2} |",
            r.status,
            r.took.as_secs_f64(),
            rate / limit_rate,
            r.throttled,
            r.throttled as f64 / f64::from(r.served.max(1))
        );
    }
    Ok(())
}

pub struct DurabilityOptions {
    pub calls: u32,
    pub concurrency: usize,
    /// `<w>x<h>` of the delivered images.
    pub output: (u32, u32),
}

/// The bucket bound under which `q` of the observations fall.
fn quantile(h: &domain::metrics::Histogram, q: f64) -> String {
    let wanted = (h.count as f64 * q).ceil() as u64;
    domain::metrics::LATENCY_BUCKETS
        .iter()
        .zip(h.counts)
        .find(|(_, n)| *n >= wanted)
        .map_or("> 60 s".into(), |(b, _)| format!("≤ {:.1} ms", b * 1000.0))
}

pub async fn durability(settings: Settings, o: DurabilityOptions) -> Result<(), CliError> {
    install_runtime_defaults();
    std::fs::create_dir_all(&settings.data_dir)?;
    println!(
        "Durability window: {} paid calls, {} in flight, {}x{} PNG deliveries, background removal + 2x upscale + colour on, data in {}",
        o.calls,
        o.concurrency,
        o.output.0,
        o.output.1,
        settings.data_dir.display()
    );
    let b = Batch {
        calls: o.calls,
        concurrency: o.concurrency,
        rate_limit: None,
        latency: Duration::from_millis(20),
        output: o.output,
        postprocess: serde_json::json!({"bg_remove": true, "upscale": true, "upscale_factor": 2, "color": true}),
    };
    let r = batch(&settings, &b, true).await?;
    let windows = domain::metrics::durable_windows();
    let Some((_, h)) = windows.iter().find(|(p, _)| p == "openai") else {
        return Err(CliError::Service("no delivery was measured".into()));
    };
    println!("\n| measurement | value |\n|---|---:|");
    println!("| run | {} ({} images) |", r.status, r.served);
    println!("| deliveries measured | {} |", h.count);
    println!(
        "| mean window (arrival -> file and rows durable) | {:.2} ms |",
        h.sum_seconds * 1000.0 / h.count.max(1) as f64
    );
    println!("| p50 | {} |", quantile(h, 0.5));
    println!("| p99 | {} |", quantile(h, 0.99));
    println!("| whole batch | {:.1} s |", r.took.as_secs_f64());
    Ok(())
}
