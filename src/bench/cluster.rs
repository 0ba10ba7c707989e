//! `atelier bench cluster`: several real `atelier serve` nodes (child
//! processes of this one, so the load generator is not measured with them)
//! on one PostgreSQL server, each measurement on a fresh database:
//!
//! 1. Throughput of tiny jobs (the built-in provider at zero latency, 16x16
//!    scenes, one candidate) with 1, 2, 3… nodes, against a bare
//!    `FOR UPDATE SKIP LOCKED` dequeue/complete loop with the same number of
//!    connections, measured in the same round.
//! 2. Submit-to-start latency on an idle cluster: the trigger request sent
//!    (wall clock here) to its job leased (`run_jobs.started_at`), and to
//!    that job's worker recording its call (`provider_calls.created_at`).
//! 3. Rescue after SIGKILL: a node killed with jobs in flight, to every job
//!    it held leased again by a survivor (or settled); against the heartbeat.
//! 4. Cancel across nodes: a cancel sent to one node, to the run another
//!    node drives recorded canceled and none of its jobs running.
//! 5. Feed across nodes: N WebSocket clients on one node, the run on
//!    another, event committed (its timestamp) to client; against the same
//!    clients on the driving node, in the same round.

use std::process::Stdio;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use sea_orm::sqlx::Connection;
use sea_orm::sqlx::postgres::PgConnection;
use sea_orm::{ConnectionTrait, Database, DatabaseConnection, DbBackend, Statement};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

use super::err;
use crate::cli::CliError;
use crate::settings::Settings;

pub struct ClusterOptions {
    pub nodes: Vec<usize>,
    pub jobs: u32,
    pub rounds: u32,
    pub samples: u32,
    pub clients: usize,
    pub heartbeat_ms: u64,
    /// Which measurements: `engine` (1, 2), `rescue` (3, 4), `feed` (5).
    pub parts: Vec<String>,
}

/// One node: a child `atelier serve`.
struct Node {
    child: tokio::process::Child,
    base: String,
    id: String,
}

impl Node {
    fn kill(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// Nodes on one fresh database and one data directory.
struct Cluster {
    nodes: Vec<Node>,
    db: DatabaseConnection,
    url: String,
    admin_url: String,
    name: String,
    dir: std::path::PathBuf,
    env: Vec<(String, String)>,
    http: reqwest::Client,
}

impl Cluster {
    async fn start(
        admin_url: &str,
        data_dir: &std::path::Path,
        nodes: usize,
        env: &[(&str, String)],
    ) -> Result<Self, CliError> {
        let name = format!("atelier_bench_{}", Uuid::now_v7().simple());
        let admin = Database::connect(admin_url).await.map_err(err)?;
        admin
            .execute_unprepared(&format!("CREATE DATABASE {name}"))
            .await
            .map_err(err)?;
        admin.close().await.ok();
        let url = match admin_url.rsplit_once('/') {
            Some((root, _)) => format!("{root}/{name}"),
            None => return Err(err("--database-url must name a database")),
        };
        let dir = data_dir.join(&name);
        let db = async {
            std::fs::create_dir_all(&dir)?;
            Database::connect(&url).await.map_err(err)
        };
        let db = match db.await {
            Ok(db) => db,
            Err(e) => {
                drop_database(admin_url, &name).await;
                return Err(e);
            }
        };
        let mut cluster = Self {
            nodes: Vec::new(),
            db,
            url,
            admin_url: admin_url.to_string(),
            name,
            dir,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
            http: reqwest::Client::new(),
        };
        let started = async {
            for i in 0..nodes {
                let node = cluster.spawn(&format!("bench-node-{i}")).await?;
                cluster.nodes.push(node);
            }
            cluster
                .call(
                    0,
                    "POST",
                    "/api/projects",
                    json!({"name": "Bench", "slug": "bench"}),
                )
                .await
        }
        .await;
        match started {
            Ok(_) => Ok(cluster),
            Err(e) => cluster.finish(Err(e)).await,
        }
    }

    async fn spawn(&self, id: &str) -> Result<Node, CliError> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let log = std::fs::File::create(self.dir.join(format!("{id}.log")))?;
        let mut cmd = tokio::process::Command::new(std::env::current_exe()?);
        cmd.arg("--data-dir")
            .arg(&self.dir)
            .args(["serve", "--bind", &format!("127.0.0.1:{port}")])
            .env("DATABASE_URL", &self.url)
            .env("ATELIER_ENGINE__NODE_ID", id)
            .env("ATELIER_AUTH__DEV_BYPASS", "true")
            .env("ATELIER_ENGINE__MAX_RUNS_PER_PROJECT", "1000")
            .env("ATELIER_ENGINE__MAX_QUEUED_RUNS", "10000")
            .env("RUST_LOG", "warn")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true);
        let node = Node {
            child: cmd.spawn()?,
            base: format!("http://127.0.0.1:{port}"),
            id: id.to_string(),
        };
        let began = Instant::now();
        loop {
            if let Ok(r) = self.http.get(format!("{}/health", node.base)).send().await
                && r.status().is_success()
            {
                return Ok(node);
            }
            if began.elapsed() > Duration::from_secs(60) {
                return Err(err(format!(
                    "node {id} did not come up; see {}",
                    self.dir.join(format!("{id}.log")).display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn call(
        &self,
        node: usize,
        method: &str,
        path: &str,
        body: Value,
    ) -> Result<Value, CliError> {
        let url = format!("{}{path}", self.nodes[node].base);
        let request = match method {
            "POST" => self.http.post(url).json(&body),
            _ => self.http.get(url),
        };
        let response = request.send().await.map_err(err)?;
        let status = response.status();
        let body: Value = response.json().await.map_err(err)?;
        if !status.is_success() {
            return Err(err(format!("{method} {path}: {status} {body}")));
        }
        Ok(body)
    }

    /// Submits a run of `scenes` tiny scenes to `node`; returns its id.
    async fn trigger(&self, node: usize, scenes: u32, first: u32) -> Result<Uuid, CliError> {
        let scene_refs: Vec<String> = (first..first + scenes)
            .map(|i| format!("sample:{i}@16x16"))
            .collect();
        let body = self
            .call(
                node,
                "POST",
                "/api/projects/bench/runs/trigger",
                json!({"mode": "run", "scene_refs": scene_refs, "stage": "style", "candidates": 1}),
            )
            .await?;
        body["run_id"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| err(format!("no run_id in {body}")))
    }

    async fn scalar(&self, sql: &str) -> Result<i64, CliError> {
        let row = self
            .db
            .query_one_raw(Statement::from_string(DbBackend::Postgres, sql))
            .await
            .map_err(err)?
            .ok_or_else(|| err("no row"))?;
        row.try_get_by_index::<i64>(0).map_err(err)
    }

    /// Waits (polling the database) until none of `runs` is unfinished.
    async fn wait_finished(&self, runs: &[Uuid], limit: Duration) -> Result<(), CliError> {
        let list = in_list(runs);
        let began = Instant::now();
        loop {
            let open = self
                .scalar(&format!(
                    "SELECT count(*) FROM runs WHERE id IN ({list}) \
                     AND status NOT IN ('done', 'partial', 'failed', 'canceled')"
                ))
                .await?;
            if open == 0 {
                return Ok(());
            }
            if began.elapsed() > limit {
                return Err(err(format!("{open} runs did not finish in {limit:?}")));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Stops the nodes and drops the database, whatever `outcome` is; the
    /// nodes' data directory (their logs) is removed after a success and
    /// kept, and named, after a failure.
    async fn finish<T>(mut self, outcome: Result<T, CliError>) -> Result<T, CliError> {
        for node in &mut self.nodes {
            node.kill();
        }
        for node in &mut self.nodes {
            let _ = node.child.wait().await;
        }
        self.db.close().await.ok();
        drop_database(&self.admin_url, &self.name).await;
        match outcome {
            Ok(value) => {
                let _ = std::fs::remove_dir_all(&self.dir);
                Ok(value)
            }
            Err(e) => Err(err(format!(
                "{e} (the nodes' logs are kept in {})",
                self.dir.display()
            ))),
        }
    }
}

async fn drop_database(admin_url: &str, name: &str) {
    if let Ok(admin) = Database::connect(admin_url).await {
        let _ = admin
            .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .await;
        admin.close().await.ok();
    }
}

fn in_list(ids: &[Uuid]) -> String {
    ids.iter()
        .map(|id| format!("'{id}'"))
        .collect::<Vec<_>>()
        .join(",")
}

/// min / median / max.
fn spread(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    (v[0], v[v.len() / 2], v[v.len() - 1])
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    sorted
        .get(((sorted.len() as f64 - 1.0) * q).round() as usize)
        .copied()
        .unwrap_or(f64::NAN)
}

// ------------------------------------------------------------- the baseline

/// A bare queue: `jobs` rows dequeued `FOR UPDATE SKIP LOCKED` and completed
/// by `connections` workers, each on its own connection; jobs/s.
async fn bare_loop(url: &str, connections: u32, jobs: u32) -> Result<f64, CliError> {
    let mut setup = PgConnection::connect(url).await.map_err(err)?;
    sea_orm::sqlx::raw_sql(
        "DROP TABLE IF EXISTS bench_queue; \
         CREATE TABLE bench_queue (id bigserial PRIMARY KEY, state text NOT NULL, \
           owner int, started_at timestamptz, finished_at timestamptz); \
         CREATE INDEX ON bench_queue (state, id);",
    )
    .execute(&mut setup)
    .await
    .map_err(err)?;
    sea_orm::sqlx::query(
        "INSERT INTO bench_queue (state) SELECT 'pending' FROM generate_series(1, $1)",
    )
    .bind(jobs as i64)
    .execute(&mut setup)
    .await
    .map_err(err)?;
    let mut conns = Vec::new();
    for _ in 0..connections {
        conns.push(PgConnection::connect(url).await.map_err(err)?);
    }
    let began = Instant::now();
    let workers: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(i, mut conn)| {
            tokio::spawn(async move {
                loop {
                    let id: Option<i64> = sea_orm::sqlx::query_scalar(
                        "UPDATE bench_queue SET state = 'running', owner = $1, started_at = now() \
                         WHERE id = (SELECT id FROM bench_queue WHERE state = 'pending' \
                           ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING id",
                    )
                    .bind(i as i32)
                    .fetch_optional(&mut conn)
                    .await?;
                    let Some(id) = id else { break };
                    sea_orm::sqlx::query(
                        "UPDATE bench_queue SET state = 'done', finished_at = now() WHERE id = $1",
                    )
                    .bind(id)
                    .execute(&mut conn)
                    .await?;
                }
                Ok::<_, sea_orm::sqlx::Error>(())
            })
        })
        .collect();
    for w in workers {
        w.await.map_err(err)?.map_err(err)?;
    }
    let rate = f64::from(jobs) / began.elapsed().as_secs_f64();
    sea_orm::sqlx::raw_sql("DROP TABLE bench_queue")
        .execute(&mut setup)
        .await
        .map_err(err)?;
    Ok(rate)
}

// ------------------------------------------------------------- measurements

/// Runs per throughput round, whatever the node count (divisible by 1, 2,
/// 3, 4 and 6: every node gets the same share).
const RUNS: u32 = 12;

/// `jobs` tiny jobs through the engine in [`RUNS`] runs spread round-robin
/// over the nodes, submitted at once; jobs/s end to end.
async fn throughput(cluster: &Cluster, jobs: u32, round: u32) -> Result<f64, CliError> {
    let per_run = jobs.div_ceil(RUNS).max(1);
    let runs = jobs.div_ceil(per_run);
    let began = Instant::now();
    let submissions = (0..runs).map(|r| {
        let scenes = per_run.min(jobs - r * per_run);
        let first = round * jobs + r * per_run + 1;
        cluster.trigger(r as usize % cluster.nodes.len(), scenes, first)
    });
    let ids = futures_util::future::try_join_all(submissions).await?;
    cluster
        .wait_finished(&ids, Duration::from_secs(600))
        .await?;
    Ok(f64::from(jobs) / began.elapsed().as_secs_f64())
}

/// Submit-to-start on an idle cluster, in ms, one run of one scene at a
/// time, round-robin over the nodes: to its job leased (the lease's
/// timestamp, taken in the transaction that leases it, before its commit)
/// and to that job's worker recording its provider call (the worker at
/// work, after the lease committed).
async fn submit_to_start(
    cluster: &Cluster,
    samples: u32,
) -> Result<(Vec<f64>, Vec<f64>), CliError> {
    let (mut leased, mut at_work) = (Vec::new(), Vec::new());
    let ms = |d: chrono::TimeDelta| d.num_microseconds().unwrap_or(0) as f64 / 1000.0;
    for i in 0..samples {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let sent = Utc::now();
        let run = cluster
            .trigger(i as usize % cluster.nodes.len(), 1, 1_000_000 + i)
            .await?;
        cluster
            .wait_finished(&[run], Duration::from_secs(30))
            .await?;
        let row = cluster
            .db
            .query_one_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT (SELECT min(started_at) FROM run_jobs WHERE run_id = $1), \
                        (SELECT min(created_at) FROM provider_calls WHERE run_id = $1)",
                [run.into()],
            ))
            .await
            .map_err(err)?
            .ok_or_else(|| err("no job"))?;
        let started: DateTime<Utc> = row.try_get_by_index(0).map_err(err)?;
        let called: DateTime<Utc> = row.try_get_by_index(1).map_err(err)?;
        leased.push(ms(started - sent));
        at_work.push(ms(called - sent));
    }
    Ok((leased, at_work))
}

/// Jobs of `run` in `running`, with their lease owner.
async fn running(cluster: &Cluster, run: Uuid) -> Result<Vec<(Uuid, String)>, CliError> {
    let rows = cluster
        .db
        .query_all_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT id, coalesce(lease_owner, '') FROM run_jobs WHERE run_id = $1 AND status = 'running'",
            [run.into()],
        ))
        .await
        .map_err(err)?;
    rows.iter()
        .map(|r| {
            Ok((
                r.try_get_by_index::<Uuid>(0).map_err(err)?,
                r.try_get_by_index::<String>(1).map_err(err)?,
            ))
        })
        .collect()
}

/// Waits until `run` has at least `n` jobs running.
async fn until_running(cluster: &Cluster, run: Uuid, n: usize) -> Result<(), CliError> {
    let began = Instant::now();
    while running(cluster, run).await?.len() < n {
        if began.elapsed() > Duration::from_secs(30) {
            return Err(err("the run's jobs did not start"));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// SIGKILL of the last node while it has jobs in flight, to every one of
/// them leased again by a survivor or settled; seconds. The node is started
/// again (a new process, a new liveness lock) for the next round.
async fn rescue(cluster: &mut Cluster, round: u32) -> Result<f64, CliError> {
    let victim = cluster.nodes.len() - 1;
    let run = cluster.trigger(victim, 2, 2_000_000 + round * 10).await?;
    until_running(cluster, run, 2).await?;
    let held: Vec<Uuid> = running(cluster, run)
        .await?
        .into_iter()
        .filter(|(_, owner)| *owner == cluster.nodes[victim].id)
        .map(|(id, _)| id)
        .collect();
    if held.is_empty() {
        return Err(err("the node to kill held none of its run's jobs"));
    }
    let killed = Instant::now();
    cluster.nodes[victim].kill();
    let _ = cluster.nodes[victim].child.wait().await;
    let victim_id = cluster.nodes[victim].id.clone();
    loop {
        let still = cluster
            .scalar(&format!(
                "SELECT count(*) FROM run_jobs WHERE id IN ({}) \
                 AND status = 'running' AND lease_owner = '{victim_id}'",
                in_list(&held)
            ))
            .await?;
        if still == 0 {
            break;
        }
        if killed.elapsed() > Duration::from_secs(120) {
            return Err(err("the dead node's jobs were not rescued in 120 s"));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let took = killed.elapsed().as_secs_f64();
    cluster.nodes[victim] = cluster.spawn(&victim_id).await?;
    Ok(took)
}

/// A cancel sent to node 0 for a run node 1 drives, with its jobs in
/// flight: (to the run recorded canceled, to none of its jobs running), s.
async fn cancel_across(cluster: &Cluster, round: u32) -> Result<(f64, f64), CliError> {
    let run = cluster.trigger(1, 4, 3_000_000 + round * 10).await?;
    until_running(cluster, run, 2).await?;
    let sent = Instant::now();
    cluster
        .call(
            0,
            "POST",
            &format!("/api/projects/bench/runs/{run}/cancel"),
            json!({}),
        )
        .await?;
    let mut canceled = None;
    loop {
        let status = cluster
            .scalar(&format!(
                "SELECT count(*) FROM runs WHERE id = '{run}' AND status = 'canceled'"
            ))
            .await?;
        if status == 1 && canceled.is_none() {
            canceled = Some(sent.elapsed().as_secs_f64());
        }
        if canceled.is_some() && running(cluster, run).await?.is_empty() {
            return Ok((canceled.unwrap_or(0.0), sent.elapsed().as_secs_f64()));
        }
        if sent.elapsed() > Duration::from_secs(120) {
            return Err(err("the cancel did not take effect in 120 s"));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// `clients` project-feed clients on `watch`, a run of `scenes` submitted
/// to `drive`: each event's commit (its timestamp) to its arrival, in ms.
async fn feed_latency(
    cluster: &Cluster,
    watch: usize,
    drive: usize,
    clients: usize,
    scenes: u32,
    first: u32,
) -> Result<(Vec<f64>, usize), CliError> {
    let url = format!(
        "{}/api/projects/bench/events/ws",
        cluster.nodes[watch].base.replacen("http", "ws", 1)
    );
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .map_err(err)?;
        tasks.push(tokio::spawn(async move {
            // (run, seq, latency in ms) of every event received.
            let mut seen = Vec::new();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
            while let Ok(Some(Ok(msg))) = tokio::time::timeout_at(deadline, ws.next()).await {
                let Message::Text(text) = msg else { continue };
                let arrived = Utc::now();
                let Ok(v) = serde_json::from_str::<Value>(&text) else {
                    continue;
                };
                let (Some(at), Some(run), Some(seq)) = (
                    v["timestamp"]
                        .as_str()
                        .and_then(|t| DateTime::parse_from_rfc3339(t).ok()),
                    v["run_id"].as_str().and_then(|r| r.parse::<Uuid>().ok()),
                    v["seq"].as_i64(),
                ) else {
                    continue;
                };
                let ms = (arrived - at.with_timezone(&Utc))
                    .num_microseconds()
                    .unwrap_or(0) as f64
                    / 1000.0;
                seen.push((run, seq, ms));
                if v["event_type"] == "run.finished" {
                    break;
                }
            }
            seen
        }));
    }
    let run = cluster.trigger(drive, scenes, first).await?;
    let mut all = Vec::new();
    let mut received = Vec::new();
    for t in tasks {
        let seen: Vec<_> = t
            .await
            .map_err(err)?
            .into_iter()
            .filter(|(r, _, _)| *r == run)
            .collect();
        received.push(seen.iter().map(|(_, seq, _)| *seq).collect::<Vec<_>>());
        all.extend(seen.into_iter().map(|(_, _, ms)| ms));
    }
    // A latency figure means nothing if events went missing: every client
    // must have received every event of the run up to its end, in order.
    let committed = cluster
        .scalar(&format!(
            "SELECT count(*) FROM run_events WHERE run_id = '{run}' AND seq <= \
             (SELECT max(seq) FROM run_events WHERE run_id = '{run}' AND event_type = 'run.finished')"
        ))
        .await?;
    if committed == 0 {
        return Err(err(format!(
            "run {run} had not finished when the feed clients stopped (a connection closed, or 120 s passed)"
        )));
    }
    if let Some((client, seqs)) = received
        .iter()
        .enumerate()
        .find(|(_, seqs)| !gap_free(seqs, committed))
    {
        return Err(err(format!(
            "feed client {client} received {} of the run's {committed} events (not every one, or out of order)",
            seqs.len()
        )));
    }
    all.sort_by(f64::total_cmp);
    Ok((all, committed as usize))
}

/// `seqs` is 1, 2, ..., `count`.
fn gap_free(seqs: &[i64], count: i64) -> bool {
    seqs.len() as i64 == count && seqs.iter().zip(1..).all(|(seq, want)| *seq == want)
}

// ------------------------------------------------------------------ report

pub async fn run(settings: Settings, o: &ClusterOptions) -> Result<(), CliError> {
    let admin_url = settings
        .database_url
        .clone()
        .filter(|u| u.starts_with("postgres"))
        .ok_or_else(|| {
            err("bench cluster needs a PostgreSQL server: set DATABASE_URL (e.g. postgres://postgres@127.0.0.1:5432/test); each measurement makes and drops a database of its own there")
        })?;
    if let Some(unknown) = o
        .parts
        .iter()
        .find(|p| !["engine", "rescue", "feed"].contains(&p.as_str()))
    {
        return Err(err(format!(
            "unknown part '{unknown}': the parts are engine, rescue, feed"
        )));
    }
    std::fs::create_dir_all(&settings.data_dir)?;
    let at = Where {
        admin_url: &admin_url,
        data_dir: &settings.data_dir,
        pool: settings.pool_size(),
    };
    if o.parts.iter().any(|p| p == "engine") {
        engine_parts(&at, o).await?;
    }
    if o.parts.iter().any(|p| p == "rescue") {
        rescue_parts(&at, o).await?;
    }
    if o.parts.iter().any(|p| p == "feed") {
        feed_part(&at, o).await?;
    }
    Ok(())
}

/// Where the clusters run.
struct Where<'a> {
    admin_url: &'a str,
    data_dir: &'a std::path::Path,
    /// Connections per node.
    pool: u32,
}

/// Parts 1 and 2: throughput by node count, submit-to-start.
async fn engine_parts(at: &Where<'_>, o: &ClusterOptions) -> Result<(), CliError> {
    let pool = at.pool;
    // Room for every run at once, and enough jobs in flight per node to
    // keep its connections busy.
    let base_env = [
        ("ATELIER_ENGINE__HEARTBEAT_MS", o.heartbeat_ms.to_string()),
        ("ATELIER_ENGINE__MAX_JOBS_PER_RUN", "8".to_string()),
        ("ATELIER_ENGINE__PROVIDER_CONCURRENCY", "64".to_string()),
    ];

    println!(
        "1. tiny jobs through the engine vs a bare SKIP LOCKED loop ({} jobs per round, {} rounds, {pool} connections per node; min / median / max jobs/s)",
        o.jobs, o.rounds
    );
    println!(
        "{:>6} {:>26} {:>26} {:>22}",
        "nodes", "engine", "bare loop (same conns)", "ratio"
    );
    let mut by_nodes = Vec::new();
    for &n in &o.nodes {
        let cluster = Cluster::start(at.admin_url, at.data_dir, n, &base_env).await?;
        let measured = async {
            let (mut engine, mut bare, mut ratio) = (Vec::new(), Vec::new(), Vec::new());
            for round in 0..o.rounds {
                let e = throughput(&cluster, o.jobs, round).await?;
                let b = bare_loop(&cluster.url, pool * n as u32, o.jobs).await?;
                engine.push(e);
                bare.push(b);
                ratio.push(e / b);
            }
            let mut latency = (Vec::new(), Vec::new());
            if n == *o.nodes.iter().max().unwrap_or(&1) {
                latency = submit_to_start(&cluster, o.samples).await?;
            }
            Ok((engine, bare, ratio, latency))
        }
        .await;
        let (engine, bare, ratio, (mut lat, mut at_work)) = cluster.finish(measured).await?;
        let (e, b, r) = (spread(engine), spread(bare), spread(ratio));
        println!(
            "{n:>6} {:>8.0} / {:>6.0} / {:>6.0} {:>8.0} / {:>6.0} / {:>6.0} {:>6.2} / {:>5.2} / {:>5.2}",
            e.0, e.1, e.2, b.0, b.1, b.2, r.0, r.1, r.2
        );
        by_nodes.push((n, e.1));
        if !lat.is_empty() {
            lat.sort_by(f64::total_cmp);
            at_work.sort_by(f64::total_cmp);
            println!(
                "2. submit-to-start on an idle cluster of {n} nodes, {} runs: to the job leased p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; to its worker's call recorded p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
                lat.len(),
                percentile(&lat, 0.5),
                percentile(&lat, 0.99),
                percentile(&lat, 1.0),
                percentile(&at_work, 0.5),
                percentile(&at_work, 0.99),
                percentile(&at_work, 1.0)
            );
        }
    }
    if let (Some(first), Some(last)) = (by_nodes.first(), by_nodes.last()) {
        println!(
            "   {} nodes / {} node(s), medians: {:.2}",
            last.0,
            first.0,
            last.1 / first.1
        );
    }

    Ok(())
}

/// Parts 3 and 4: rescue after SIGKILL, cancel across nodes.
async fn rescue_parts(at: &Where<'_>, o: &ClusterOptions) -> Result<(), CliError> {
    // Slow jobs (3 s each) for what needs work in flight.
    let slow_env = [
        ("ATELIER_ENGINE__HEARTBEAT_MS", o.heartbeat_ms.to_string()),
        ("ATELIER_PROVIDERS__LOCAL__LATENCY_MS", "3000".to_string()),
    ];
    let mut cluster = Cluster::start(at.admin_url, at.data_dir, 3, &slow_env).await?;
    let measured = async {
        let mut rescues = Vec::new();
        for round in 0..o.rounds {
            rescues.push(rescue(&mut cluster, round).await?);
        }
        let (mut recorded, mut stopped) = (Vec::new(), Vec::new());
        for round in 0..o.rounds {
            let (a, b) = cancel_across(&cluster, round).await?;
            recorded.push(a * 1000.0);
            stopped.push(b * 1000.0);
        }
        Ok((rescues, recorded, stopped))
    }
    .await;
    let (rescues, recorded, stopped) = cluster.finish(measured).await?;
    let r = spread(rescues);
    println!(
        "3. rescue after SIGKILL of a node with jobs in flight (3 nodes, heartbeat {} ms): min / median / max {:.2} / {:.2} / {:.2} s = {:.2} / {:.2} / {:.2} x heartbeat",
        o.heartbeat_ms,
        r.0,
        r.1,
        r.2,
        r.0 * 1000.0 / o.heartbeat_ms as f64,
        r.1 * 1000.0 / o.heartbeat_ms as f64,
        r.2 * 1000.0 / o.heartbeat_ms as f64
    );
    let (a, b) = (spread(recorded), spread(stopped));
    println!(
        "4. cancel sent to one node, run driven by another (jobs of 3 s in flight): recorded canceled {:.0} / {:.0} / {:.0} ms, no job running {:.0} / {:.0} / {:.0} ms (min / median / max)",
        a.0, a.1, a.2, b.0, b.1, b.2
    );
    Ok(())
}

/// Part 5: the feed on the driving node and on another.
async fn feed_part(at: &Where<'_>, o: &ClusterOptions) -> Result<(), CliError> {
    // A steady event stream: jobs of 20 ms, four at a time.
    let feed_env = [
        ("ATELIER_ENGINE__HEARTBEAT_MS", o.heartbeat_ms.to_string()),
        ("ATELIER_PROVIDERS__LOCAL__LATENCY_MS", "20".to_string()),
        ("ATELIER_ENGINE__PROVIDER_CONCURRENCY", "4".to_string()),
        ("ATELIER_ENGINE__MAX_JOBS_PER_RUN", "4".to_string()),
    ];
    let cluster = Cluster::start(at.admin_url, at.data_dir, 2, &feed_env).await?;
    println!(
        "5. feed, event committed -> received, {} clients, min / median / max of {} rounds (ms):",
        o.clients, o.rounds
    );
    let measured = async {
        let (mut same, mut across) = ((Vec::new(), Vec::new()), (Vec::new(), Vec::new()));
        let mut events = 0;
        for round in 0..o.rounds {
            let first = 4_000_000 + round * 1000;
            let (s, _) = feed_latency(&cluster, 1, 1, o.clients, 200, first).await?;
            let (x, n) = feed_latency(&cluster, 0, 1, o.clients, 200, first + 500).await?;
            events = n;
            same.0.push(percentile(&s, 0.5));
            same.1.push(percentile(&s, 0.99));
            across.0.push(percentile(&x, 0.5));
            across.1.push(percentile(&x, 0.99));
        }
        Ok((same, across, events))
    }
    .await;
    let (same, across, events) = cluster.finish(measured).await?;
    for (label, (p50, p99)) in [("same node (baseline)", same), ("across nodes", across)] {
        let (a, b) = (spread(p50), spread(p99));
        println!(
            "   {label:<22} p50 {:.1} / {:.1} / {:.1}   p99 {:.1} / {:.1} / {:.1}   ({events} events per client per round)",
            a.0, a.1, a.2, b.0, b.1, b.2
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_and_percentiles() {
        assert_eq!(spread(vec![3.0, 1.0, 2.0]), (1.0, 2.0, 3.0));
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 51.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert!(spread(Vec::new()).0.is_nan());
    }

    #[test]
    fn a_feed_with_a_gap_or_out_of_order_is_not_complete() {
        assert!(gap_free(&[1, 2, 3], 3));
        assert!(!gap_free(&[1, 3], 3));
        assert!(!gap_free(&[1, 3, 2], 3));
        assert!(!gap_free(&[1, 2, 3], 4));
        assert!(!gap_free(&[2, 3, 4], 3));
    }
}
