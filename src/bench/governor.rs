//! `atelier bench governor`: how close to a provider's rate limit a batch
//! runs. A loopback OpenAI stub (the `stubs` crate, official wire format)
//! accepts at most `limit` requests per `window` and answers the rest 429
//! with `retry-after-ms` and `x-ratelimit-*` headers. The same batch runs
//! through the real engine twice, in the same process: with the adaptive
//! governor, and with a fixed concurrency that ignores the signals (only
//! the per-call retry honours Retry-After). Reported: achieved rate as a
//! fraction of the limit, and 429s per image.
//!
//! The stub runs in this process (on its own loopback server): the batch is
//! bound by the rate limit, not by CPU, so it does not distort the figure.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actors::Principal;
use actors::projects::{self, UpsertProject};
use actors::runs::{plan, trigger};
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

async fn batch(
    settings: &Settings,
    o: &GovernorOptions,
    adaptive: bool,
) -> Result<Outcome, CliError> {
    let stub = stubs::openai::OpenAiStub::start().await;
    stub.set_rate_limit(o.limit, Duration::from_millis(o.window_ms));
    stub.set_latency(Duration::from_millis(o.latency_ms));
    let dir = tempfile::tempdir()?;
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
    config.provider_concurrency = o.concurrency;
    config.max_jobs_per_run = o.concurrency;
    // Enough attempts that both modes finish the batch; what differs is
    // how many refusals it takes.
    config.retry.max_attempts = 50;
    config.retry.base_delay = Duration::from_millis(50);
    config.retry.max_delay = Duration::from_millis(o.window_ms);
    let (engine, roots) =
        embedded_engine_with(&settings, &db.conn, config, Arc::new(StubKey)).await?;
    let service = |e: actors::ServiceError| CliError::Service(e.to_string());
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
        scene_refs: Some((1..=o.calls).map(|i| format!("sample:{i}@64x48")).collect()),
        candidates: Some(1),
        manifest: Some(serde_json::json!({ "safe_batch_limit": 1_000_000 })),
        ..plan::TriggerInput::default()
    })
    .map_err(service)?;
    let start = Instant::now();
    let t = trigger::trigger(&engine, &principal, &project.project, valid)
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
    for (name, adaptive) in [("adaptive governor", true), ("fixed concurrency", false)] {
        let r = batch(&settings, &o, adaptive).await?;
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
