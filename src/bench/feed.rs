//! `atelier bench feed`: latency of the live progress feed, from an event
//! persisted (committed) to a WebSocket client receiving it, for N clients at
//! a fixed event rate; and server memory while one client stalls.
//!
//! Everything runs in this process: the real service on a loopback port,
//! real WebSocket clients (tokio-tungstenite), events appended and committed
//! through the same code the engine uses, then published on the hub. The
//! baseline is the same publisher with N in-process hub subscribers (no
//! WebSocket, no JSON), measured in the same run.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use actors::Principal;
use actors::projects::{self, UpsertProject};
use actors::runs::{events, plan, trigger};
use futures_util::StreamExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

use crate::cli::CliError;
use crate::settings::Settings;
use crate::startup::Application;

pub struct FeedOptions {
    pub clients: Vec<usize>,
    pub rate: u32,
    pub seconds: u64,
    pub stall_seconds: u64,
}

fn err(e: impl std::fmt::Display) -> CliError {
    CliError::Service(e.to_string())
}

/// Commit instants (ns since `epoch`) by sequence number, from `base`.
struct Clock {
    epoch: Instant,
    base: i64,
    sent: Vec<AtomicU64>,
}

impl Clock {
    fn new(base: i64, capacity: usize) -> Self {
        Self {
            epoch: Instant::now(),
            base,
            sent: (0..capacity).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn slot(&self, seq: i64) -> Option<&AtomicU64> {
        self.sent.get(usize::try_from(seq - self.base).ok()?)
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    fn latency_us(&self, seq: i64) -> Option<u32> {
        let sent = self.slot(seq)?.load(Ordering::Acquire);
        (sent > 0).then(|| (self.now().saturating_sub(sent) / 1_000) as u32)
    }
}

struct Target {
    app_base: String,
    db: sea_orm::DatabaseConnection,
    hub: actors::runs::events::EventHub,
    run_id: Uuid,
    project_id: Uuid,
}

/// Appends, commits and publishes `count` events at `rate`/s, recording each
/// commit instant; returns the achieved rate.
async fn publish(t: &Target, clock: &Clock, count: usize, rate: u32) -> Result<f64, CliError> {
    let period = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let start = tokio::time::Instant::now();
    for i in 0..count {
        tokio::time::sleep_until(start + period * i as u32).await;
        let payload = json!({
            "job_key": format!("scene-{i}:style"), "stage": "style", "candidate_index": i % 4,
            "status": "done", "asset_id": Uuid::now_v7(), "final_asset_id": Uuid::now_v7(),
            "thumbnail_url": "/api/projects/bench/assets/00000000-0000-0000-0000-000000000000/content",
            "guard": { "chroma_delta": 0.01, "hard_failures": 0, "soft_warnings": 0 },
            "progress": { "jobs_finished": i, "jobs_total": count }, "cost_so_far_usd": 0.0,
        });
        let txn = actors::db::begin_write(&t.db).await.map_err(err)?;
        let event = events::append(
            &txn,
            t.run_id,
            t.project_id,
            "candidate.ready",
            None,
            payload,
        )
        .await
        .map_err(err)?;
        actors::db::commit(txn).await.map_err(err)?;
        if let Some(slot) = clock.slot(event.seq) {
            slot.store(clock.now(), Ordering::Release);
        }
        t.hub.publish(event);
    }
    Ok(count as f64 / start.elapsed().as_secs_f64())
}

/// The `seq` of a feed message without parsing all of it (the clients share
/// the machine with the server; they should cost as little as possible).
fn seq_of(text: &str) -> Option<i64> {
    let rest = &text[text.find("\"seq\":")? + 6..];
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

struct Stats {
    received: usize,
    p50: f64,
    p99: f64,
    max: f64,
}

fn stats(mut us: Vec<u32>) -> Stats {
    us.sort_unstable();
    let at = |q: f64| {
        us.get(((us.len() as f64 - 1.0) * q).round() as usize)
            .map_or(f64::NAN, |v| f64::from(*v) / 1000.0)
    };
    Stats {
        received: us.len(),
        p50: at(0.5),
        p99: at(0.99),
        max: at(1.0),
    }
}

/// N WebSocket clients on the project feed; latencies of events from `first`.
async fn over_websocket(
    t: &Target,
    clients: usize,
    rate: u32,
    seconds: u64,
) -> Result<(Stats, f64), CliError> {
    let warmup = rate as usize; // one second
    let count = warmup + rate as usize * seconds as usize;
    let url = format!(
        "{}/api/projects/bench/events/ws",
        t.app_base.replacen("http", "ws", 1)
    );
    let mut sockets = Vec::with_capacity(clients);
    for _ in 0..clients {
        let (ws, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .map_err(err)?;
        sockets.push(ws);
    }
    let base = current_seq(t).await?;
    let clock = Arc::new(Clock::new(base, count + 1));
    let first = base + warmup as i64 + 1;
    let last = first + (count - warmup) as i64 - 1;
    let tasks: Vec<_> = sockets
        .into_iter()
        .map(|mut ws| {
            let clock = clock.clone();
            tokio::spawn(async move {
                let mut us = Vec::new();
                loop {
                    let msg = match ws.next().await {
                        Some(Ok(msg)) => msg,
                        Some(Err(e)) => {
                            eprintln!("feed client: {e}");
                            break;
                        }
                        None => break,
                    };
                    if let Message::Close(frame) = &msg {
                        eprintln!("feed client closed: {frame:?}");
                        break;
                    }
                    if let Message::Text(text) = msg
                        && let Some(seq) = seq_of(&text)
                    {
                        if seq >= first
                            && let Some(l) = clock.latency_us(seq)
                        {
                            us.push(l);
                        }
                        if seq >= last {
                            break;
                        }
                    }
                }
                us
            })
        })
        .collect();
    let achieved = publish(t, &clock, count, rate).await?;
    let mut all = Vec::new();
    for task in tasks {
        match tokio::time::timeout(Duration::from_secs(30), task).await {
            Ok(Ok(us)) => all.extend(us),
            _ => return Err(CliError::Service("a feed client did not finish".into())),
        }
    }
    let expected = (count - warmup) * clients;
    if all.len() != expected {
        return Err(CliError::Service(format!(
            "clients received {} of {expected} events",
            all.len()
        )));
    }
    Ok((stats(all), achieved))
}

/// The baseline: N in-process hub subscribers, same publisher.
async fn over_hub(t: &Target, clients: usize, rate: u32, seconds: u64) -> Result<Stats, CliError> {
    let warmup = rate as usize;
    let count = warmup + rate as usize * seconds as usize;
    let base = current_seq(t).await?;
    let clock = Arc::new(Clock::new(base, count + 1));
    let first = base + warmup as i64 + 1;
    let last = first + (count - warmup) as i64 - 1;
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let mut rx = t.hub.subscribe();
            let clock = clock.clone();
            tokio::spawn(async move {
                let mut us = Vec::new();
                while let Ok(e) = rx.recv().await {
                    if e.seq >= first
                        && let Some(l) = clock.latency_us(e.seq)
                    {
                        us.push(l);
                    }
                    if e.seq >= last {
                        break;
                    }
                }
                us
            })
        })
        .collect();
    publish(t, &clock, count, rate).await?;
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.map_err(err)?);
    }
    Ok(stats(all))
}

async fn current_seq(t: &Target) -> Result<i64, CliError> {
    use sea_orm::EntityTrait;
    Ok(entities::runs::Entity::find_by_id(t.run_id)
        .one(&t.db)
        .await
        .map_err(err)?
        .map_or(0, |r| r.last_event_seq))
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// One client that never reads and one that does, at `rate` for `seconds`:
/// server memory over time, and how the stalled client was cut off.
async fn stalled(t: &Target, rate: u32, seconds: u64) -> Result<(), CliError> {
    let url = format!(
        "{}/api/projects/bench/events/ws",
        t.app_base.replacen("http", "ws", 1)
    );
    let (mut stalled, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .map_err(err)?;
    let (mut reader, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .map_err(err)?;
    let done = Arc::new(AtomicBool::new(false));
    let read = {
        let done = done.clone();
        tokio::spawn(async move {
            let mut n = 0usize;
            while !done.load(Ordering::Relaxed) {
                match tokio::time::timeout(Duration::from_millis(200), reader.next()).await {
                    Ok(Some(Ok(Message::Text(_)))) => n += 1,
                    Ok(Some(Ok(_))) | Err(_) => {}
                    _ => break,
                }
            }
            n
        })
    };
    let count = rate as usize * seconds as usize;
    let clock = Clock::new(current_seq(t).await?, count + 1);
    let sampler = {
        let done = done.clone();
        tokio::spawn(async move {
            let mut samples = Vec::new();
            while !done.load(Ordering::Relaxed) {
                samples.push(rss_kib());
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            samples
        })
    };
    let before = rss_kib();
    publish(t, &clock, count, rate).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    done.store(true, Ordering::Relaxed);
    let samples = sampler.await.map_err(err)?;
    let read_by_reader = read.await.map_err(err)?;
    // Now drain the stalled client: what it was sent, then how it was closed.
    let mut got = 0usize;
    let mut close = String::from("still open");
    while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_secs(5), stalled.next()).await {
        match msg {
            Ok(Message::Text(_)) => got += 1,
            Ok(Message::Close(frame)) => {
                close = frame.map_or("close without code".into(), |f| {
                    format!("{} {}", u16::from(f.code), f.reason)
                });
                break;
            }
            Ok(_) => {}
            Err(e) => {
                close = format!("connection ended: {e}");
                break;
            }
        }
    }
    let max = samples.iter().copied().max().unwrap_or(before);
    println!(
        "stalled client: {count} events in {seconds} s; reading client got {read_by_reader}; \
         stalled client got {got} then: {close}"
    );
    println!(
        "server RSS: {:.1} MiB before, {:.1} MiB max during, {:.1} MiB at the end (samples/s: {:?})",
        before as f64 / 1024.0,
        max as f64 / 1024.0,
        rss_kib() as f64 / 1024.0,
        samples.iter().map(|k| k / 1024).collect::<Vec<_>>()
    );
    Ok(())
}

pub async fn run(mut settings: Settings, o: FeedOptions) -> Result<(), CliError> {
    let dir = settings.data_dir.join("bench-feed");
    let _ = std::fs::remove_dir_all(&dir);
    settings.data_dir = dir;
    settings.bind = "127.0.0.1:0".into();
    settings.auth.dev_bypass = true;
    let app = Application::build(settings.clone())
        .await
        .map_err(CliError::from)?;
    let base = format!("http://{}", app.addr());
    let db = app.db().clone();
    let engine = app.engine().clone();
    actix_web::rt::spawn(app.run_until_stopped());

    let principal = Principal::DevBypass;
    let roots = engine.deps.roots.clone();
    let project = projects::upsert(
        &db,
        &roots,
        &principal,
        UpsertProject {
            name: Some("bench".into()),
            slug: Some("bench".into()),
            ..UpsertProject::default()
        },
    )
    .await
    .map_err(err)?;
    let valid = plan::validate(&plan::TriggerInput {
        mode: Some("dry".into()),
        scene_refs: Some(vec!["sample:1@32x24".into()]),
        ..plan::TriggerInput::default()
    })
    .map_err(err)?;
    let run = trigger::trigger(&engine, &principal, &project.project, valid)
        .await
        .map_err(err)?
        .created
        .run;
    let target = Target {
        app_base: base,
        db,
        hub: engine.hub().clone(),
        run_id: run.id,
        project_id: project.project.id,
    };

    println!(
        "feed latency, event committed -> received, {} events/s for {} s after 1 s warm-up",
        o.rate, o.seconds
    );
    println!(
        "{:>8} {:>10} {:>9} {:>9} {:>9} {:>14} {:>12}",
        "clients", "received", "p50 ms", "p99 ms", "max ms", "hub p99 ms", "p99 / hub"
    );
    for &n in &o.clients {
        let (ws, achieved) = over_websocket(&target, n, o.rate, o.seconds).await?;
        let hub = over_hub(&target, n, o.rate, o.seconds).await?;
        println!(
            "{:>8} {:>10} {:>9.2} {:>9.2} {:>9.2} {:>14.3} {:>12.1}   ({achieved:.0} events/s achieved)",
            n,
            ws.received,
            ws.p50,
            ws.p99,
            ws.max,
            hub.p99,
            ws.p99 / hub.p99.max(0.001)
        );
    }
    stalled(&target, o.rate, o.stall_seconds).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_is_read_from_a_feed_message() {
        assert_eq!(
            seq_of(r#"{"type":"event","run_id":"x","seq":1234,"event_type":"a"}"#),
            Some(1234)
        );
        assert_eq!(seq_of(r#"{"type":"lagged"}"#), None);
    }

    #[test]
    fn percentiles() {
        let s = stats((1..=100).map(|i| i * 1000).collect());
        assert_eq!((s.received, s.p50, s.max), (100, 51.0, 100.0));
        assert_eq!(s.p99, 99.0);
    }
}
