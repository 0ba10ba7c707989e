//! The cluster under faults: three real `atelier serve` nodes on one
//! PostgreSQL database, a loopback OpenAI stub that counts what it served
//! per idempotency key, runs of one project with a budget spread over the
//! nodes, and a run-scoped feed client per run on a node that survives.
//! Each scenario ends with the same checks: every run finished, nothing
//! left open, no paid call repeated, the budget never exceeded, and each
//! feed client saw its run's events exactly once, in order, without a gap.

use std::time::Duration;

use futures_util::StreamExt;
use reqwest::{Method, StatusCode};
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

use super::private_pg::PrivatePg;
use super::{Ws, feed, refuse_connections};
use crate::binary::{Deployment, Server, eventually};
use crate::openai_stub::{OpenAiStub, Reply};
use crate::recovery::deployment_on;

/// What the project may spend: less than every candidate would cost
/// (about 0.24 USD each), so the budget is what stops some of them.
const BUDGET: f64 = 3.0;

const NAMES: [&str; 3] = ["node-a", "node-b", "node-c"];

/// Heartbeat and node timeout of the scenarios that stop PostgreSQL for
/// longer than the timeout: a second and two, so the nodes come back at
/// moments apart, and within a timeout of each other as in production.
const OUTAGE_TIMING: [(&str, &str); 2] = [
    ("ATELIER_ENGINE__HEARTBEAT_MS", "1000"),
    ("ATELIER_ENGINE__NODE_TIMEOUT_MS", "2000"),
];

struct Cluster {
    stub: OpenAiStub,
    deploy: Deployment,
    nodes: Vec<Server>,
    client: reqwest::Client,
    token: String,
    db: DatabaseConnection,
}

impl Cluster {
    async fn start(extra: &[(&str, &str)]) -> Self {
        assert!(
            crate::helpers::on_postgres(),
            "PostgreSQL only: scripts/test.sh runs this module on PostgreSQL"
        );
        Self::start_on(crate::helpers::TestDb::create().await, extra).await
    }

    /// The cluster on the database `db`.
    async fn start_on(db: crate::helpers::TestDb, extra: &[(&str, &str)]) -> Self {
        let stub = OpenAiStub::start().await;
        stub.set_latency(Duration::from_millis(200));
        let mut env = vec![
            ("ATELIER_ENGINE__MAX_JOBS_PER_RUN", "2"),
            ("ATELIER_ENGINE__MAX_RUNS_PER_PROJECT", "3"),
            ("ATELIER_ENGINE__NODE_TIMEOUT_MS", "1000"),
            ("ATELIER_ENGINE__LEASE_SECONDS", "120"),
        ];
        env.extend_from_slice(extra);
        let mut deploy = deployment_on(db, &stub, &env);
        let mut nodes = Vec::new();
        for name in NAMES {
            nodes.push(deploy.start_node(name).await);
        }
        let client = deploy.client.clone();
        let token = nodes[0].bootstrap(&client).await;
        nodes[0]
            .create_project(&client, &token, "Chaos", "chaos")
            .await;
        let db = deploy.connect().await;
        Self {
            stub,
            deploy,
            nodes,
            client,
            token,
            db,
        }
    }

    /// One run submitted to each node (so each node drives one).
    async fn trigger_one_per_node(&self, scenes: usize) -> Vec<Uuid> {
        let scene_refs: Vec<String> = (1..=scenes).map(|i| format!("sample:{i}")).collect();
        let mut runs = Vec::new();
        for node in &self.nodes {
            let (s, body) = node
                .call(
                    &self.client,
                    Method::POST,
                    "/api/projects/chaos/runs/trigger",
                    Some(&self.token),
                    Some(json!({
                        "mode": "run", "provider": "openai", "confirm_spend": true,
                        "scene_refs": scene_refs, "stage": "style", "candidates": 1,
                        "manifest": {"policy": {"project_budget_usd": BUDGET}},
                    })),
                )
                .await;
            assert_eq!(s, StatusCode::OK, "{body}");
            runs.push(body["run_id"].as_str().unwrap().parse().unwrap());
        }
        runs
    }

    /// A run-scoped feed client per run, attached to `node`.
    async fn follow(&self, node: usize, runs: &[Uuid]) -> Vec<Ws> {
        let mut feeds = Vec::new();
        for run in runs {
            feeds.push(
                feed(
                    &self.nodes[node],
                    &format!("/api/projects/chaos/events/ws?run_id={run}&since=0"),
                    &self.token,
                )
                .await,
            );
        }
        feeds
    }

    /// The node driving `run` now.
    async fn owner(&self, run: Uuid) -> String {
        entities::run_owners::Entity::find_by_id(run)
            .one(&self.db)
            .await
            .unwrap()
            .unwrap()
            .node_id
    }

    /// Calls refused because the project's budget would have been exceeded.
    async fn refused_by_budget(&self) -> usize {
        entities::provider_calls::Entity::find()
            .filter(entities::provider_calls::Column::ErrorCode.eq("project_budget_exceeded"))
            .all(&self.db)
            .await
            .unwrap()
            .len()
    }

    async fn wait_served(&self, n: u32) {
        eventually("the provider serving", Duration::from_secs(30), || async {
            (self.stub.served_total() >= n).then_some(())
        })
        .await;
    }

    /// Waits for every run to finish, then checks what must hold whatever
    /// happened to the nodes.
    async fn check(&self, runs: &[Uuid], feeds: Vec<Ws>) {
        let finished = eventually("every run finished", Duration::from_secs(90), || async {
            let mut rows = entities::runs::Entity::find()
                .filter(entities::runs::Column::Id.is_in(runs.iter().copied()))
                .all(&self.db)
                .await
                .unwrap();
            rows.sort_by_key(|r| runs.iter().position(|id| *id == r.id));
            rows.iter()
                .all(|r| ["done", "partial", "failed"].contains(&r.status.as_str()))
                .then_some(rows)
        })
        .await;
        let open_jobs = entities::run_jobs::Entity::find()
            .filter(entities::run_jobs::Column::RunId.is_in(runs.iter().copied()))
            .filter(entities::run_jobs::Column::Status.is_in(["pending", "running", "blocked"]))
            .all(&self.db)
            .await
            .unwrap();
        assert!(open_jobs.is_empty(), "jobs left open: {open_jobs:#?}");
        let calls = entities::provider_calls::Entity::find()
            .filter(entities::provider_calls::Column::RunId.is_in(runs.iter().copied()))
            .all(&self.db)
            .await
            .unwrap();
        assert!(
            calls.iter().all(|c| c.status != "pending"),
            "calls left pending: {calls:#?}"
        );
        assert!(
            self.stub.images_served().values().all(|n| *n <= 1),
            "a paid image was bought twice: {:?}",
            self.stub.images_served()
        );
        let spent: f64 = entities::cost_events::Entity::find()
            .all(&self.db)
            .await
            .unwrap()
            .iter()
            .map(|c| c.total_cost_usd)
            .sum();
        assert!(
            spent <= BUDGET + 1e-9,
            "spent {spent} of a budget of {BUDGET}"
        );
        for (mut ws, run) in feeds.into_iter().zip(&finished) {
            let seqs = seqs_until_finished(&mut ws).await;
            let want: Vec<i64> = (1..=run.last_event_seq).collect();
            assert_eq!(seqs, want, "the feed of run {} on a surviving node", run.id);
        }
    }
}

/// A failed scenario shows what its nodes logged (which node saw which
/// as dead, adopted what, gave up what): the assertion alone cannot tell.
impl Drop for Cluster {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        for (i, log) in self.deploy.each_log().iter().enumerate() {
            // Migrations, their notices and TLS set-up are alike on every node.
            let lines: Vec<&str> = log
                .lines()
                .filter(|l| {
                    !["migration", "postgres::notice", "rustls"]
                        .iter()
                        .any(|n| l.contains(n))
                })
                .collect();
            let tail = &lines[lines.len().saturating_sub(150)..];
            eprintln!(
                "--- server start {} of this deployment, last {} lines ---\n{}",
                i + 1,
                tail.len(),
                tail.join("\n")
            );
        }
    }
}

/// Sequence numbers a run-scoped feed sent, until `run.finished`.
async fn seqs_until_finished(ws: &mut Ws) -> Vec<i64> {
    let mut seqs = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while let Ok(Some(msg)) = tokio::time::timeout_at(deadline, ws.next()).await {
        if let Message::Text(text) = msg.unwrap() {
            let v: Value = serde_json::from_str(&text).unwrap();
            seqs.push(v["seq"].as_i64().unwrap());
            if v["event_type"] == "run.finished" {
                return seqs;
            }
        }
    }
    panic!("no run.finished on the feed; got {seqs:?}");
}

/// SIGKILL of a node in the middle of its run: the others adopt the run
/// within about a node timeout and finish it.
#[actix_web::test]
async fn chaos_sigkill_of_a_node_mid_run() {
    let mut cluster = Cluster::start(&[]).await;
    let runs = cluster.trigger_one_per_node(6).await;
    let feeds = cluster.follow(2, &runs).await;
    cluster.wait_served(3).await;
    cluster.nodes[0].kill9();
    cluster.check(&runs, feeds).await;
    assert_ne!(cluster.owner(runs[0]).await, "node-a", "adopted");
    assert!(
        cluster.refused_by_budget().await > 0,
        "the budget was binding"
    );
}

/// A node frozen (SIGSTOP) for longer than the node timeout, then woken:
/// its runs were adopted meanwhile, and its late writes are refused.
#[actix_web::test]
async fn chaos_a_frozen_node_wakes_as_a_zombie() {
    let cluster = Cluster::start(&[]).await;
    let runs = cluster.trigger_one_per_node(6).await;
    let feeds = cluster.follow(2, &runs).await;
    cluster.wait_served(3).await;
    cluster.nodes[0].signal("STOP");
    tokio::time::sleep(Duration::from_millis(3000)).await;
    cluster.nodes[0].signal("CONT");
    cluster.check(&runs, feeds).await;
    assert_ne!(
        cluster.owner(runs[0]).await,
        "node-a",
        "adopted while frozen"
    );
    eventually(
        "the woken node to stop driving its old run",
        Duration::from_secs(20),
        || async {
            cluster
                .deploy
                .logs()
                .contains("another node drives this run now")
                .then_some(())
        },
    )
    .await;
    assert!(
        cluster.refused_by_budget().await > 0,
        "the budget was binding"
    );
}

/// Every node killed at once and all started again: every run resumes and
/// finishes; nothing paid is bought again.
#[actix_web::test]
async fn chaos_all_nodes_killed_and_restarted_together() {
    let mut cluster = Cluster::start(&[]).await;
    let runs = cluster.trigger_one_per_node(6).await;
    cluster.wait_served(3).await;
    for node in &mut cluster.nodes {
        node.kill9();
    }
    cluster.nodes.clear();
    for name in NAMES {
        let node = cluster.deploy.start_node(name).await;
        cluster.nodes.push(node);
    }
    let feeds = cluster.follow(2, &runs).await;
    cluster.check(&runs, feeds).await;
    assert!(
        cluster.refused_by_budget().await > 0,
        "the budget was binding"
    );
}

/// The provider refuses every node at once for a while (429 with
/// Retry-After, then 503s): the retries back off and the runs finish.
#[actix_web::test]
async fn chaos_a_retry_storm_from_the_provider() {
    let cluster = Cluster::start(&[("ATELIER_ENGINE__RETRY_MAX_MS", "200")]).await;
    let mut storm = Vec::new();
    for _ in 0..6 {
        storm.push(Reply::Error {
            status: 429,
            code: "rate_limit_exceeded",
            retry_after: Some(1),
        });
        storm.push(Reply::Error {
            status: 503,
            code: "server_error",
            retry_after: None,
        });
    }
    cluster.stub.script(storm);
    let runs = cluster.trigger_one_per_node(4).await;
    let feeds = cluster.follow(1, &runs).await;
    cluster.check(&runs, feeds).await;
    let calls = entities::provider_calls::Entity::find()
        .all(&cluster.db)
        .await
        .unwrap();
    let sent: i32 = calls.iter().map(|c| c.sent_attempts).sum();
    assert!(
        sent >= calls.len() as i32 + 6,
        "the storm was retried through: {sent} attempts for {} calls",
        calls.len()
    );
}

/// Tiny connection pools (two per node) and more runs than they serve at
/// once: work waits for connections instead of failing.
#[actix_web::test]
async fn chaos_tiny_pools_under_many_runs() {
    let cluster = Cluster::start(&[("ATELIER_DATABASE__MAX_CONNECTIONS", "2")]).await;
    let mut runs = cluster.trigger_one_per_node(3).await;
    runs.extend(cluster.trigger_one_per_node(3).await);
    let feeds = cluster.follow(1, &runs).await;
    cluster.check(&runs, feeds).await;
}

/// The database goes away mid-run: every session is terminated and
/// connections are refused for two seconds (the server itself stays up;
/// see the next scenario for a real restart). The nodes reconnect and
/// every run finishes.
#[actix_web::test]
async fn chaos_the_database_drops_every_connection_mid_run() {
    let cluster = Cluster::start(&[]).await;
    let runs = cluster.trigger_one_per_node(6).await;
    let feeds = cluster.follow(2, &runs).await;
    cluster.wait_served(3).await;
    refuse_connections(&cluster.deploy, true).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    refuse_connections(&cluster.deploy, false).await;
    // The feed clients' nodes lost their listeners too: they reconnect.
    cluster.check(&runs, feeds).await;
}

/// PostgreSQL itself is stopped mid-run (fast shutdown: sessions
/// terminated, open transactions rolled back) and started again three
/// seconds later, as an operator's `pg_ctlcluster restart` with a pause. A
/// server of the test's own, so the rest of the suite keeps its database.
/// The nodes ride it out (`/health` 503 meanwhile), reconnect, and every
/// run finishes with nothing bought twice and every feed whole.
#[actix_web::test]
async fn chaos_postgresql_restarted_mid_run() {
    assert!(
        crate::helpers::on_postgres(),
        "PostgreSQL only: scripts/test.sh runs this module on PostgreSQL"
    );
    let pg = PrivatePg::start();
    // The outage lasts longer than the node timeout: every heartbeat is
    // stale when the server is back, and no node may take that for the
    // others' deaths (adopting their runs would send their in-flight paid
    // calls again). Heartbeats a second apart, so the nodes come back at
    // moments far enough apart for the first to see the others still stale.
    let cluster = Cluster::start_on(pg.database(), &OUTAGE_TIMING).await;
    let runs = cluster.trigger_one_per_node(6).await;
    let feeds = cluster.follow(2, &runs).await;
    cluster.wait_served(3).await;
    let mut owners = Vec::new();
    for run in &runs {
        owners.push(cluster.owner(*run).await);
    }
    pg.down();
    eventually(
        "a node to say on /health that its database is gone",
        Duration::from_secs(10),
        || async {
            let r = cluster
                .client
                .get(format!("{}/health", cluster.nodes[1].base))
                .send()
                .await
                .ok()?;
            (r.status() == StatusCode::SERVICE_UNAVAILABLE).then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    pg.up();
    cluster.check(&runs, feeds).await;
    for (run, before) in runs.iter().zip(owners) {
        assert_eq!(
            cluster.owner(*run).await,
            before,
            "every node lived through the outage: none may have adopted run {run}"
        );
    }
}

/// Paid answers that arrive while the database is stopped: each worker holds
/// its result until the database is back, then stores it — nothing bought
/// twice, nothing paid for lost, every run done.
#[actix_web::test]
async fn paid_results_arriving_while_postgresql_is_down_are_kept() {
    assert!(
        crate::helpers::on_postgres(),
        "PostgreSQL only: scripts/test.sh runs this module on PostgreSQL"
    );
    let pg = PrivatePg::start();
    let cluster = Cluster::start_on(pg.database(), &OUTAGE_TIMING).await;
    cluster.stub.set_latency(Duration::from_secs(3));
    let runs = cluster.trigger_one_per_node(1).await;
    let feeds = cluster.follow(2, &runs).await;
    eventually(
        "every node's call sent",
        Duration::from_secs(30),
        || async { (cluster.stub.calls().values().sum::<u32>() >= 3).then_some(()) },
    )
    .await;
    pg.down();
    assert_eq!(
        cluster.stub.served_total(),
        0,
        "the answers must arrive while the database is down"
    );
    cluster.stub.wait_served(3).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    pg.up();
    cluster.check(&runs, feeds).await;
    for run in &runs {
        let run = entities::runs::Entity::find_by_id(*run)
            .one(&cluster.db)
            .await
            .unwrap()
            .unwrap();
        let calls: Vec<(String, Option<String>)> = entities::provider_calls::Entity::find()
            .filter(entities::provider_calls::Column::RunId.eq(run.id))
            .all(&cluster.db)
            .await
            .unwrap()
            .into_iter()
            .map(|c| (c.status, c.error_message))
            .collect();
        let jobs: Vec<(String, Option<String>)> = entities::run_jobs::Entity::find()
            .filter(entities::run_jobs::Column::RunId.eq(run.id))
            .all(&cluster.db)
            .await
            .unwrap()
            .into_iter()
            .map(|j| (j.status, j.last_error))
            .collect();
        assert_eq!(
            run.status, "done",
            "run {} kept its paid result; jobs {jobs:?}, calls {calls:?}",
            run.id
        );
    }
}
