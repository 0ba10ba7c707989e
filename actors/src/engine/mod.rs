//! The supervised actor tree that executes runs.
//!
//! ```text
//! SystemSupervisor (actix Supervisor + SupervisionRegistry)
//! ├── ProjectActor      queue per project, pause/resume, run admission, recovery at start
//! │   └── RunActor      one per active run: leases jobs, chains stages, finishes the run
//! │       └── WorkerActor  one per job: runs `runs::pipeline::run_job`, heartbeats the lease
//! ├── CostActor, AuditActor, WebhookActor
//! ├── BackgroundActor   export packages and S3 syncs, scheduled pushes
//! └── AgentActor        sends confirmed agent instructions to their agent
//! ```
//!
//! All run/job/candidate state lives in the database; actors hold only caches
//! and addresses. A restarted ProjectActor reloads unfinished runs; a RunActor
//! reclaims jobs whose lease expired; a job body that panics or errors is
//! contained (it runs in its own task) and becomes a retry or a failed job.

mod agent;
mod audit;
mod background;
mod cost;
mod project;
mod registry;
mod run;
mod webhook;
mod worker;

use std::sync::Arc;
use std::time::Duration;

use actix::{Addr, Supervisor};
use uuid::Uuid;

pub use agent::AgentActor;
pub use audit::{AuditActor, PaidCall};
pub use background::{BackgroundActor, Work};
pub use cost::{CostActor, ReserveSpend};
pub use project::ProjectActor;
pub use registry::{ActorInfo, Counted, SupervisionRegistry};
pub use webhook::WebhookActor;

use domain::ServiceError;
use domain::ports::{RunEngine, RunQueue};
use domain::runs::deps::governor;
pub use domain::runs::deps::{EngineConfig, EngineDeps};
use domain::runs::events::EventHub;
use domain::runs::lifecycle::{Created, Leased};
use domain::runs::writer::RowWriter;

/// What every actor of the tree shares: the domain's dependencies (reached
/// through `Deref`) and the supervision registry.
pub struct Shared {
    pub deps: EngineDeps,
    pub registry: Arc<SupervisionRegistry>,
}

impl std::ops::Deref for Shared {
    type Target = EngineDeps;

    fn deref(&self) -> &EngineDeps {
        &self.deps
    }
}

/// What a graceful shutdown did.
#[derive(Debug, Clone)]
pub struct ShutdownReport {
    pub waited: Duration,
    /// Calls still in flight when the window closed (their outcome is
    /// unknown; recorded as possibly billed).
    pub calls_cut_off: usize,
    pub leases_released: usize,
}

/// Handle to the running engine; cheap to clone.
#[derive(Clone)]
pub struct Engine {
    project: Addr<ProjectActor>,
    cost: Addr<CostActor>,
    audit: Addr<AuditActor>,
    webhooks: Addr<WebhookActor>,
    background: Addr<BackgroundActor>,
    agent: Addr<AgentActor>,
    pub deps: Arc<Shared>,
}

/// Actors an operator can restart through their supervisor.
pub const RESTARTABLE: &[&str] = &[
    "project",
    "cost",
    "audit",
    "webhooks",
    "background",
    "agent",
];

const MAILBOX_TIMEOUT: Duration = Duration::from_secs(10);

fn unavailable(e: actix::MailboxError) -> ServiceError {
    tracing::error!(error = %e, "an engine actor did not answer");
    ServiceError::Unavailable {
        code: "engine_unavailable",
        message: "The engine did not answer; try again".into(),
    }
}

#[async_trait::async_trait]
impl RunQueue for Engine {
    async fn submit(
        &self,
        run_id: Uuid,
        project_id: Uuid,
        created: Option<Created>,
        started: Option<Box<Leased>>,
    ) -> Result<(), ServiceError> {
        self.ask(
            "project",
            &self.project,
            project::SubmitRun {
                run_id,
                project_id,
                created,
                started,
                span: tracing::Span::current(),
            },
        )
        .await
    }

    async fn would_admit(&self, project_id: Uuid) -> bool {
        // Not answering is "no": the run goes the queue's way.
        self.ask("project", &self.project, project::WouldAdmit { project_id })
            .await
            .unwrap_or(false)
    }

    async fn set_paused(&self, project_id: Uuid, paused: bool) -> Result<(), ServiceError> {
        Engine::set_paused(self, project_id, paused).await
    }
}

impl Engine {
    /// Starts the supervision tree (needs a running actix System). Unfinished
    /// runs found in the database are resumed.
    pub fn start(deps: EngineDeps) -> Self {
        let mut deps = deps;
        // Removal services get their governors like image providers.
        let mut governors = (*deps.governors).clone();
        for code in deps.removers.keys() {
            governors
                .entry(code.clone())
                .or_insert_with(|| governor(&deps.config));
        }
        deps.governors = Arc::new(governors);
        let registry = Arc::new(SupervisionRegistry::default());
        let (db, reg) = (deps.db.clone(), registry.clone());
        let cost = Supervisor::start(move |_| CostActor::new(db, reg));
        deps.spend = Some(Arc::new(registry.counted("cost", cost.clone().recipient())));
        let (db, reg) = (deps.db.clone(), registry.clone());
        let audit = Supervisor::start(move |_| AuditActor::new(db, reg));
        deps.audit = Some(Arc::new(
            registry.counted("audit", audit.clone().recipient()),
        ));
        let (db, reg, config) = (deps.db.clone(), registry.clone(), deps.config.webhooks);
        let keys = deps.secret_keys.clone();
        let outbound = deps.outbound.clone();
        let webhooks = Supervisor::start(move |_| {
            WebhookActor::new(db, config, keys, outbound.clone(), reg.clone())
        });
        let (db, reg, config) = (deps.db.clone(), registry.clone(), deps.config.agent.clone());
        let (keys, outbound) = (deps.secret_keys.clone(), deps.outbound.clone());
        let agent = Supervisor::start(move |_| {
            AgentActor::new(
                db.clone(),
                config.clone(),
                keys.clone(),
                outbound.clone(),
                reg.clone(),
            )
        });
        let writer_db = deps.writer_db.clone().unwrap_or_else(|| deps.db.clone());
        deps.writer = Some(RowWriter::start(writer_db, deps.hub.clone()));
        deps.content = Some(domain::assets::ContentLookups::start(deps.db.clone()));
        let deps = Arc::new(Shared { deps, registry });
        // What this node's previous process held is ready again at once.
        let (db, node, started) = (deps.db.clone(), deps.node_id.clone(), chrono::Utc::now());
        actix::spawn(async move {
            match domain::runs::lease::release_node_leases(&db, &node, Some(started)).await {
                Ok(ids) if !ids.is_empty() => {
                    tracing::info!(
                        jobs = ids.len(),
                        "took back the leases of this node's previous process"
                    )
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "cannot take back this node's old leases"),
            }
        });
        let for_actor = deps.clone();
        let project = Supervisor::start(move |_| ProjectActor::new(for_actor));
        let (for_actor, work) = (deps.clone(), Arc::new(Work::default()));
        let background = Supervisor::start(move |_| BackgroundActor::new(for_actor, work));
        // Voice requests a stopped process left: settled, or run again.
        let (db, to, node) = (deps.db.clone(), background.clone(), deps.node_id.clone());
        let started = chrono::Utc::now();
        actix::spawn(async move {
            match domain::voice::recover(&db, &node, started).await {
                Ok(queued) => queued
                    .into_iter()
                    .for_each(|id| to.do_send(background::RunVoice(id))),
                Err(e) => tracing::warn!(error = %e, "cannot recover voice requests"),
            }
        });
        Self {
            project,
            cost,
            audit,
            webhooks,
            background,
            agent,
            deps,
        }
    }

    pub fn hub(&self) -> &EventHub {
        &self.deps.hub
    }

    /// The engine as the domain's services take it.
    pub fn run_engine(&self) -> RunEngine<'_> {
        RunEngine {
            deps: &self.deps.deps,
            queue: self,
        }
    }

    pub fn registry(&self) -> &SupervisionRegistry {
        &self.deps.registry
    }

    /// Sends a request to one of the engine's actors, counted in its mailbox
    /// depth, with the engine's mailbox timeout.
    async fn ask<A, M>(&self, name: &str, to: &Addr<A>, msg: M) -> Result<M::Result, ServiceError>
    where
        A: actix::Actor + actix::Handler<M>,
        A::Context: actix::dev::ToEnvelope<A, M>,
        M: actix::Message + Send + 'static,
        M::Result: Send,
    {
        let inbox = self.deps.registry.counted(name, to.clone().recipient());
        match tokio::time::timeout(MAILBOX_TIMEOUT, inbox.send(msg)).await {
            Ok(answer) => answer.map_err(unavailable),
            Err(_) => Err(unavailable(actix::MailboxError::Timeout)),
        }
    }

    pub async fn cancel_run(
        &self,
        run_id: Uuid,
        principal: &domain::Principal,
    ) -> Result<(), ServiceError> {
        let cancel = project::CancelRun {
            run_id,
            principal: principal.clone(),
            span: tracing::Span::current(),
        };
        self.ask("project", &self.project, cancel).await?
    }

    pub async fn set_paused(&self, project_id: Uuid, paused: bool) -> Result<(), ServiceError> {
        self.ask(
            "project",
            &self.project,
            project::SetPaused { project_id, paused },
        )
        .await
    }

    pub async fn is_paused(&self, project_id: Uuid) -> Result<bool, ServiceError> {
        self.ask("project", &self.project, project::IsPaused { project_id })
            .await
    }

    /// Pauses or resumes all processing (see [`EngineDeps::paused_all`]):
    /// persisted, so every node follows it within a heartbeat and it holds
    /// across restarts; here at once. Running RunActors resume leasing on
    /// their next heartbeat pass.
    pub async fn set_all_paused(&self, paused: bool) -> Result<(), ServiceError> {
        domain::cluster::set_paused_all(&self.deps.db, paused).await?;
        self.ask("project", &self.project, project::SetAllPaused(paused))
            .await
    }

    pub fn all_paused(&self) -> bool {
        self.deps
            .paused_all
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Builds the package of an export already recorded `running`, in the
    /// background; its progress and end come on the project's feed.
    pub async fn start_export(
        &self,
        project: entities::projects::Model,
        export: entities::project_exports::Model,
        request: domain::exports::ExportRequest,
    ) -> Result<(), ServiceError> {
        let start = background::StartExport {
            project,
            export,
            request,
        };
        self.ask("background", &self.background, start).await
    }

    /// Records this node in the database and keeps its heartbeat there
    /// every `heartbeat` while the engine runs. A beat that fails or takes
    /// longer than two heartbeats (at least a second) marks the database
    /// unreachable — this node leases nothing and `/health` answers 503 —
    /// until a beat succeeds again, and for a node timeout after that it
    /// does not take the others' stale heartbeats for deaths
    /// (`domain::cluster::reachability`).
    pub async fn announce(&self, node: domain::cluster::NodeInfo) {
        let timeout = self.deps.deps.config.node_timeout;
        let sent = domain::time::now();
        let first = domain::cluster::heartbeat(&self.deps.db, &node).await;
        if let Err(e) = &first {
            tracing::warn!(error = %e, "cannot record this node in the database");
        }
        self.deps
            .deps
            .reachability
            .record(sent, domain::time::now(), first.is_ok(), timeout);
        let shared = self.deps.clone();
        let every = shared.deps.config.heartbeat;
        let limit = (every * 2).max(Duration::from_secs(1));
        actix::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks.tick().await;
            loop {
                ticks.tick().await;
                let sent = domain::time::now();
                let beat =
                    tokio::time::timeout(limit, domain::cluster::heartbeat(&shared.deps.db, &node))
                        .await;
                let reachable = matches!(beat, Ok(Ok(())));
                let was =
                    shared
                        .deps
                        .reachability
                        .record(sent, domain::time::now(), reachable, timeout);
                match beat {
                    Ok(Ok(())) if !was => tracing::warn!("the database is reachable again"),
                    Ok(Ok(())) => {}
                    Ok(Err(e)) if was => {
                        tracing::error!(error = %e, "the database is unreachable: this node leases nothing until it is back")
                    }
                    Err(_) if was => tracing::error!(
                        "the database did not answer a heartbeat in time: this node leases nothing until it does"
                    ),
                    _ => {}
                }
            }
        });
    }

    /// Whether this node's last heartbeat reached the database.
    pub fn database_reachable(&self) -> bool {
        self.deps.deps.reachability.reachable()
    }

    /// On PostgreSQL, takes this node's liveness lock on a connection of its
    /// own (`url`) and keeps it while the process lives, so other nodes see
    /// its death at once (`domain::cluster::liveness`); returns the lock's
    /// key for the node's row.
    pub async fn keep_alive(&self, url: Option<String>) -> Option<i32> {
        let liveness = domain::cluster::liveness::hold(&self.deps.db, url?).await?;
        let key = liveness.key();
        let _ = self.deps.liveness.set(liveness);
        key
    }

    /// On PostgreSQL, relays the feed between the nodes on the database:
    /// this node's committed events are announced, the others' republished
    /// on this node's hub (`domain::cluster::feed`). `url`: the database's,
    /// for the listener's own connection.
    /// Returns once this node listens (or after a few seconds of trying):
    /// a node that served before it followed the others would miss their
    /// writes meanwhile (its caches would stay stale for their window).
    pub async fn relay_feed(&self, url: Option<String>, node_id: String) {
        let Some(url) = url else { return };
        if !domain::cluster::feed::relays(&self.deps.db) {
            return;
        }
        let outbox = domain::cluster::feed::outbox(&self.deps.hub);
        let db = domain::cluster::feed::own_pool(&url)
            .await
            .unwrap_or_else(|| self.deps.db.clone());
        actix::spawn(domain::cluster::feed::announce(
            db.clone(),
            node_id.clone(),
            outbox,
        ));
        let (listening, ready) = tokio::sync::oneshot::channel();
        actix::spawn(domain::cluster::feed::listen(
            url,
            db,
            self.deps.hub.clone(),
            node_id,
            listening,
        ));
        if tokio::time::timeout(Duration::from_secs(5), ready)
            .await
            .is_err()
        {
            tracing::warn!("feed relay: not listening yet; serving meanwhile");
        }
    }

    /// Runs a recorded voice request in the background.
    pub async fn run_voice(&self, id: Uuid) -> Result<(), ServiceError> {
        self.ask("background", &self.background, background::RunVoice(id))
            .await
    }

    /// Raises an export's cancel flag; `false`: it is not being built on
    /// this node.
    pub async fn cancel_export(&self, export_id: Uuid) -> Result<bool, ServiceError> {
        let cancel = background::CancelExport(export_id);
        self.ask("background", &self.background, cancel).await
    }

    /// Starts a sync of the project's files with its bucket (one per project
    /// at a time: `sync_running`); answers the sync's id.
    pub async fn start_sync(
        &self,
        project: entities::projects::Model,
        principal: domain::Principal,
        options: domain::sync::SyncOptions,
    ) -> Result<Uuid, ServiceError> {
        let start = background::StartSync {
            project,
            principal,
            options,
        };
        self.ask("background", &self.background, start).await?
    }

    pub async fn is_syncing(&self, project_id: Uuid) -> Result<bool, ServiceError> {
        let ask = background::IsSyncing(project_id);
        self.ask("background", &self.background, ask).await
    }

    /// Stops the named actor so its supervisor restarts it (see [`RESTARTABLE`]).
    pub async fn restart_actor(&self, name: &str) -> Result<(), ServiceError> {
        match name {
            "project" => self.ask(name, &self.project, project::Restart).await,
            "cost" => self.ask(name, &self.cost, project::Restart).await,
            "audit" => self.ask(name, &self.audit, project::Restart).await,
            "webhooks" => self.ask(name, &self.webhooks, project::Restart).await,
            "background" => self.ask(name, &self.background, project::Restart).await,
            "agent" => self.ask(name, &self.agent, project::Restart).await,
            _ => Err(ServiceError::not_found(format!(
                "No restartable actor '{name}'"
            ))),
        }
    }

    /// Graceful shutdown of the engine: from now on nothing is leased and no
    /// provider call is sent; calls in flight finish within `window` and
    /// their results are stored; then whatever this node still holds goes
    /// back to the queue (its calls settled), so the next start resumes at
    /// once.
    pub async fn shutdown(&self, window: Duration) -> ShutdownReport {
        let began = tokio::time::Instant::now();
        self.deps.drain.begin();
        let deadline = began + window;
        while self.deps.registry.live_workers() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let calls_cut_off = self.deps.drain.calls_in_flight();
        let released =
            match domain::runs::lease::release_node_leases(&self.deps.db, &self.deps.node_id, None)
                .await
            {
                Ok(ids) => ids.len(),
                Err(e) => {
                    tracing::error!(error = %e, "cannot release this node's leases");
                    0
                }
            };
        ShutdownReport {
            waited: began.elapsed(),
            calls_cut_off,
            leases_released: released,
        }
    }

    /// Waits until the run is in a terminal state (or `timeout` passes).
    pub async fn wait_finished(
        &self,
        run_id: Uuid,
        timeout: Duration,
    ) -> Result<entities::runs::Model, ServiceError> {
        let mut rx = self.deps.hub.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let run = domain::runs::store::run_by_id(&self.deps.db, run_id).await?;
            if domain::status::RunStatus::is_terminal(&run.status)
                || tokio::time::Instant::now() >= deadline
            {
                return Ok(run);
            }
            // Re-check on this run's own run-level events, or every second
            // at most (not on every candidate of every run: each check
            // reads the whole run row).
            let wait = tokio::time::sleep_until(
                deadline.min(tokio::time::Instant::now() + Duration::from_secs(1)),
            );
            tokio::select! {
                _ = wait => {}
                _ = run_level_event(&mut rx, run_id) => {}
            }
        }
    }
}

/// Returns at the next run-level event (`run.*`) of `run_id`, or when
/// events were missed (the run may have ended meanwhile).
async fn run_level_event(
    rx: &mut tokio::sync::broadcast::Receiver<Arc<domain::runs::events::LiveEvent>>,
    run_id: Uuid,
) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        match rx.recv().await {
            Ok(e) if e.event.run_id == run_id && e.event.event_type.starts_with("run.") => return,
            Ok(_) => {}
            Err(RecvError::Lagged(_)) => return,
            // No more events: only the timer re-checks.
            Err(RecvError::Closed) => std::future::pending::<()>().await,
        }
    }
}
