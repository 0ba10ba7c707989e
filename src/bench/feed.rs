//! `atelier bench feed`: latency of the live progress feed, from an event
//! persisted (committed) to a WebSocket client receiving it, for N clients at
//! a fixed event rate; and the server's memory while one client stalls.
//!
//! Two processes, so the load generator is not measured with the server:
//! the service runs in a child (`atelier bench feed-server`, driven over its
//! stdin/stdout), which appends, commits and publishes events through the
//! engine's code and reports each commit instant; the WebSocket clients run
//! here and note each arrival. Both clocks are the machine's wall clock.
//! Server memory is the child's own RSS. The baseline — the same publisher
//! with N in-process hub subscribers, no WebSocket or JSON — runs in the
//! child, in the same run.

use std::collections::HashMap;
use std::io::BufRead;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use domain::Principal;
use domain::projects::{self, UpsertProject};
use domain::runs::{events, plan, trigger};
use futures_util::StreamExt;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

use super::err;
use crate::cli::CliError;
use crate::settings::Settings;
use crate::startup::Application;

pub struct FeedOptions {
    pub clients: Vec<usize>,
    pub rate: u32,
    pub seconds: u64,
    pub stall_seconds: u64,
}

/// Wall-clock microseconds: comparable across the two processes.
fn wall_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

// ---------------------------------------------------------------- the server

struct Target {
    db: sea_orm::DatabaseConnection,
    hub: domain::runs::events::EventHub,
    run_id: Uuid,
    project_id: Uuid,
}

/// Appends, commits and publishes `count` events at `rate`/s; returns the
/// achieved rate and each event's commit instant by sequence number.
async fn publish(t: &Target, count: usize, rate: u32) -> Result<(f64, Vec<(i64, u64)>), CliError> {
    let period = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let start = tokio::time::Instant::now();
    let mut committed = Vec::with_capacity(count);
    for i in 0..count {
        tokio::time::sleep_until(start + period * i as u32).await;
        let payload = json!({
            "job_key": format!("scene-{i}:style"), "stage": "style", "candidate_index": i % 4,
            "status": "done", "asset_id": Uuid::now_v7(), "final_asset_id": Uuid::now_v7(),
            "thumbnail_url": "/api/projects/bench/assets/00000000-0000-0000-0000-000000000000/content",
            "guard": { "chroma_delta": 0.01, "hard_failures": 0, "soft_warnings": 0 },
            "progress": { "jobs_finished": i, "jobs_total": count }, "cost_so_far_usd": 0.0,
        });
        let txn = domain::db::begin_write(&t.db).await.map_err(err)?;
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
        domain::db::commit(txn).await.map_err(err)?;
        committed.push((event.seq, wall_us()));
        t.hub.publish(event);
    }
    Ok((count as f64 / start.elapsed().as_secs_f64(), committed))
}

/// The baseline: N in-process hub subscribers, same publisher.
async fn over_hub(
    t: &Target,
    clients: usize,
    count: usize,
    warmup: usize,
    rate: u32,
) -> Result<Stats, CliError> {
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let mut rx = t.hub.subscribe();
            tokio::spawn(async move {
                let mut arrived = Vec::with_capacity(count);
                while let Ok(e) = rx.recv().await {
                    arrived.push((e.seq, wall_us()));
                    if arrived.len() == count {
                        break;
                    }
                }
                arrived
            })
        })
        .collect();
    let (_, committed) = publish(t, count, rate).await?;
    let mut all = Vec::new();
    for task in tasks {
        all.push(task.await.map_err(err)?);
    }
    latencies(&committed, warmup, &all)
}

/// `atelier bench feed-server`: the service plus a publisher, driven by
/// lines on stdin (`publish COUNT RATE`, `hub CLIENTS COUNT WARMUP RATE`,
/// `quit`); answers on stdout.
pub async fn serve(mut settings: Settings) -> Result<(), CliError> {
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
    let run = trigger::trigger(engine.run_engine(), &principal, &project.project, valid)
        .await
        .map_err(err)?
        .created
        .run;
    let target = Target {
        db,
        hub: engine.hub().clone(),
        run_id: run.id,
        project_id: project.project.id,
    };
    println!("READY {base}");
    let (tx, mut commands) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    while let Some(line) = commands.recv().await {
        let words: Vec<&str> = line.split_whitespace().collect();
        let num = |i: usize| {
            words
                .get(i)
                .and_then(|w| w.parse::<usize>().ok())
                .unwrap_or(0)
        };
        match words.first().copied() {
            Some("publish") => {
                let (achieved, committed) = publish(&target, num(1), num(2) as u32).await?;
                let times: Vec<String> =
                    committed.iter().map(|(s, t)| format!("{s}:{t}")).collect();
                println!("DONE {achieved:.1} {}", times.join(","));
            }
            Some("hub") => {
                let s = over_hub(&target, num(1), num(2), num(3), num(4) as u32).await?;
                println!("HUB {} {} {} {}", s.received, s.p50, s.p99, s.max);
            }
            _ => break,
        }
    }
    Ok(())
}

// ------------------------------------------------------------ the load side

/// The child process and its command channel.
struct Server {
    child: Child,
    input: ChildStdin,
    output: BufReader<ChildStdout>,
    base: String,
}

impl Server {
    async fn start(data_dir: &std::path::Path, settings: &Settings) -> Result<Self, CliError> {
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.arg("--data-dir")
            .arg(data_dir)
            .args(["bench", "feed-server"])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        if let Some(url) = &settings.database_url {
            cmd.env("DATABASE_URL", url);
        }
        let mut child = cmd.spawn()?;
        let input = child.stdin.take().ok_or_else(|| err("no stdin"))?;
        let output = BufReader::new(child.stdout.take().ok_or_else(|| err("no stdout"))?);
        let mut server = Self {
            child,
            input,
            output,
            base: String::new(),
        };
        let ready = server.line().await?;
        server.base = ready
            .strip_prefix("READY ")
            .ok_or_else(|| err(format!("feed server: {ready}")))?
            .to_string();
        Ok(server)
    }

    async fn line(&mut self) -> Result<String, CliError> {
        let mut line = String::new();
        self.output.read_line(&mut line).await?;
        if line.is_empty() {
            return Err(err("the feed server exited"));
        }
        Ok(line.trim_end().to_string())
    }

    async fn send(&mut self, command: &str) -> Result<(), CliError> {
        self.input
            .write_all(format!("{command}\n").as_bytes())
            .await?;
        Ok(self.input.flush().await?)
    }

    /// Publishes in the server; returns the achieved rate and commit instants.
    async fn publish(
        &mut self,
        count: usize,
        rate: u32,
    ) -> Result<(f64, Vec<(i64, u64)>), CliError> {
        self.send(&format!("publish {count} {rate}")).await?;
        let line = self.line().await?;
        let mut words = line
            .strip_prefix("DONE ")
            .ok_or_else(|| err(line.clone()))?
            .split(' ');
        let achieved = words.next().and_then(|w| w.parse().ok()).unwrap_or(0.0);
        let committed = words
            .next()
            .unwrap_or_default()
            .split(',')
            .filter_map(|p| {
                let (s, t) = p.split_once(':')?;
                Some((s.parse().ok()?, t.parse().ok()?))
            })
            .collect();
        Ok((achieved, committed))
    }

    fn rss_kib(&self) -> u64 {
        self.child.id().map_or(0, rss_kib)
    }
}

/// The `seq` of a feed message without parsing all of it.
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

fn stats(mut us: Vec<u64>) -> Stats {
    us.sort_unstable();
    let at = |q: f64| {
        us.get(((us.len() as f64 - 1.0) * q).round() as usize)
            .map_or(f64::NAN, |v| *v as f64 / 1000.0)
    };
    Stats {
        received: us.len(),
        p50: at(0.5),
        p99: at(0.99),
        max: at(1.0),
    }
}

/// Latencies of every client's arrivals after the first `warmup` events;
/// every client must have received every event once.
fn latencies(
    committed: &[(i64, u64)],
    warmup: usize,
    clients: &[Vec<(i64, u64)>],
) -> Result<Stats, CliError> {
    let at: HashMap<i64, u64> = committed.iter().copied().collect();
    let measured: std::collections::HashSet<i64> =
        committed.iter().skip(warmup).map(|(s, _)| *s).collect();
    let mut us = Vec::new();
    for arrivals in clients {
        let seqs: std::collections::HashSet<i64> = arrivals.iter().map(|(s, _)| *s).collect();
        if arrivals.len() != committed.len() || seqs.len() != committed.len() {
            return Err(err(format!(
                "a client received {} events ({} distinct) of {}",
                arrivals.len(),
                seqs.len(),
                committed.len()
            )));
        }
        for (seq, arrived) in arrivals {
            if measured.contains(seq) {
                let sent = at
                    .get(seq)
                    .ok_or_else(|| err(format!("event {seq} was not published")))?;
                us.push(arrived.saturating_sub(*sent));
            }
        }
    }
    Ok(stats(us))
}

/// N WebSocket clients on the project feed, each reading `count` events.
async fn over_websocket(
    server: &mut Server,
    clients: usize,
    rate: u32,
    seconds: u64,
) -> Result<(Stats, f64), CliError> {
    let warmup = rate as usize; // one second
    let count = warmup + rate as usize * seconds as usize;
    let url = format!(
        "{}/api/projects/bench/events/ws",
        server.base.replacen("http", "ws", 1)
    );
    let mut tasks = Vec::with_capacity(clients);
    for _ in 0..clients {
        let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .map_err(err)?;
        tasks.push(tokio::spawn(async move {
            let mut arrived = Vec::with_capacity(count);
            while arrived.len() < count {
                match ws.next().await {
                    Some(Ok(Message::Text(text))) => {
                        if let Some(seq) = seq_of(&text) {
                            arrived.push((seq, wall_us()));
                        }
                    }
                    Some(Ok(Message::Close(frame))) => {
                        eprintln!("feed client closed: {frame:?}");
                        break;
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        eprintln!("feed client: {e}");
                        break;
                    }
                    None => break,
                }
            }
            arrived
        }));
    }
    let (achieved, committed) = server.publish(count, rate).await?;
    let mut all = Vec::new();
    for task in tasks {
        match tokio::time::timeout(Duration::from_secs(30), task).await {
            Ok(Ok(arrived)) => all.push(arrived),
            _ => return Err(err("a feed client did not finish")),
        }
    }
    Ok((latencies(&committed, warmup, &all)?, achieved))
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// One client that never reads and one that does, at `rate` for `seconds`:
/// the server process's memory over time, and how the stalled client was
/// cut off.
async fn stalled(server: &mut Server, rate: u32, seconds: u64) -> Result<(), CliError> {
    let url = format!(
        "{}/api/projects/bench/events/ws",
        server.base.replacen("http", "ws", 1)
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
    let pid = server.child.id().unwrap_or(0);
    let sampler = {
        let done = done.clone();
        tokio::spawn(async move {
            let mut samples = Vec::new();
            while !done.load(Ordering::Relaxed) {
                samples.push(rss_kib(pid));
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            samples
        })
    };
    let before = server.rss_kib();
    let count = rate as usize * seconds as usize;
    server.publish(count, rate).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    done.store(true, Ordering::Relaxed);
    let samples = sampler.await.map_err(err)?;
    let read_by_reader = read.await.map_err(err)?;
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
        "server process RSS: {:.1} MiB before, {:.1} MiB max during, {:.1} MiB at the end (samples/s: {:?})",
        before as f64 / 1024.0,
        max as f64 / 1024.0,
        server.rss_kib() as f64 / 1024.0,
        samples.iter().map(|k| k / 1024).collect::<Vec<_>>()
    );
    Ok(())
}

pub async fn run(settings: Settings, o: FeedOptions) -> Result<(), CliError> {
    let dir = settings
        .data_dir
        .join(format!("bench-feed-{}", Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir)?;
    let result = measure(&dir, &settings, &o).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn measure(
    dir: &std::path::Path,
    settings: &Settings,
    o: &FeedOptions,
) -> Result<(), CliError> {
    let mut server = Server::start(dir, settings).await?;
    println!(
        "feed latency, event committed (server process) -> received (client process), {} events/s for {} s after 1 s warm-up",
        o.rate, o.seconds
    );
    println!(
        "{:>8} {:>10} {:>9} {:>9} {:>9} {:>14} {:>12}",
        "clients", "received", "p50 ms", "p99 ms", "max ms", "hub p99 ms", "p99 / hub"
    );
    for &n in &o.clients {
        let (ws, achieved) = over_websocket(&mut server, n, o.rate, o.seconds).await?;
        let warmup = o.rate as usize;
        let count = warmup + o.rate as usize * o.seconds as usize;
        server
            .send(&format!("hub {n} {count} {warmup} {}", o.rate))
            .await?;
        let line = server.line().await?;
        let hub: Vec<f64> = line
            .strip_prefix("HUB ")
            .ok_or_else(|| err(line.clone()))?
            .split(' ')
            .filter_map(|w| w.parse().ok())
            .collect();
        let hub_p99 = hub.get(2).copied().unwrap_or(f64::NAN);
        println!(
            "{:>8} {:>10} {:>9.2} {:>9.2} {:>9.2} {:>14.3} {:>12.1}   ({achieved:.0} events/s achieved)",
            n,
            ws.received,
            ws.p50,
            ws.p99,
            ws.max,
            hub_p99,
            ws.p99 / hub_p99.max(0.001)
        );
    }
    stalled(&mut server, o.rate, o.stall_seconds).await?;
    server.send("quit").await?;
    let _ = server.child.wait().await;
    Ok(())
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
        let s = stats((1..=100u64).map(|i| i * 1000).collect());
        assert_eq!((s.received, s.p50, s.max), (100, 51.0, 100.0));
        assert_eq!(s.p99, 99.0);
    }
}
