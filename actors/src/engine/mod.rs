//! The supervised actor tree that executes runs.
//!
//! ```text
//! SystemSupervisor (actix Supervisor + SupervisionRegistry)
//! └── ProjectActor      queue per project, pause/resume, run admission, recovery at start
//!     └── RunActor      one per active run: leases jobs, chains stages, finishes the run
//!         └── WorkerActor  one per job: runs `runs::pipeline::run_job`, heartbeats the lease
//! ```
//!
//! All run/job/candidate state lives in the database; actors hold only caches
//! and addresses. A restarted ProjectActor reloads unfinished runs; a RunActor
//! reclaims jobs whose lease expired; a job body that panics or errors is
//! contained (it runs in its own task) and becomes a retry or a failed job.

mod audit;
mod cost;
mod project;
mod registry;
mod run;
mod webhook;
mod worker;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actix::{Addr, Supervisor};
use imaging::DecodeLimits;
use providers::ImageProvider;
use providers::governor::Governor;
use sea_orm::DatabaseConnection;
use storage::paths::StorageRoots;
use uuid::Uuid;

pub use audit::{AuditActor, PaidCall};
pub use cost::{CostActor, ReserveSpend};
pub use project::ProjectActor;
pub use registry::{ActorInfo, Counted, SupervisionRegistry};
pub use webhook::WebhookActor;

use crate::ServiceError;
use crate::runs::drain::Drain;
use crate::runs::events::EventHub;
use crate::runs::pipeline::RetryPolicy;
use crate::runs::writer::RowWriter;

#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Jobs of one run executing at once.
    pub max_jobs_per_run: usize,
    /// Runs of one project executing at once (others wait in its queue).
    pub max_runs_per_project: usize,
    /// Calls in flight per provider, across all runs and projects.
    pub provider_concurrency: usize,
    /// Queued + running runs the service accepts before answering 429.
    pub max_queued_runs: usize,
    pub lease: Duration,
    pub heartbeat: Duration,
    pub retry: RetryPolicy,
    /// Attempts per job (a panic or internal error consumes one).
    pub job_max_attempts: i32,
    pub limits: DecodeLimits,
    pub webhooks: crate::webhooks::WebhookConfig,
    /// Per-provider concurrency follows the provider's rate-limit signals
    /// (`false`: a fixed `provider_concurrency`).
    pub adaptive_governors: bool,
    /// Live events buffered for feed readers; one that falls further behind
    /// catches up from the database (run feeds) or is closed (project feeds).
    pub event_buffer: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            max_jobs_per_run: 4,
            max_runs_per_project: 1,
            provider_concurrency: 8,
            max_queued_runs: 256,
            lease: Duration::from_secs(30),
            heartbeat: Duration::from_secs(5),
            retry: RetryPolicy {
                max_attempts: 3,
                base_delay: Duration::from_millis(200),
                max_delay: Duration::from_secs(5),
            },
            job_max_attempts: 3,
            limits: DecodeLimits::default(),
            webhooks: crate::webhooks::WebhookConfig::default(),
            adaptive_governors: true,
            event_buffer: 4096,
        }
    }
}

pub struct EngineDeps {
    pub db: DatabaseConnection,
    pub hub: EventHub,
    pub roots: StorageRoots,
    pub providers: HashMap<String, Arc<dyn ImageProvider>>,
    /// Calls in flight per provider code (image providers and removal
    /// services), adapted to the provider's rate-limit signals.
    pub governors: Arc<HashMap<String, Arc<Governor>>>,
    pub config: EngineConfig,
    pub registry: Arc<SupervisionRegistry>,
    /// Distinguishes this process's leases from other nodes'.
    pub node_id: String,
    /// The CostActor's inbox, set when the engine starts.
    pub spend: Option<Counted<ReserveSpend>>,
    /// The AuditActor's inbox, set when the engine starts.
    pub audit: Option<Counted<PaidCall>>,
    /// Group commit for the job pipeline's rows, started with the engine.
    pub writer: Option<RowWriter>,
    /// Operator switch: while set, no queued run starts and no job is leased
    /// (running jobs finish). In memory, per process.
    pub paused_all: std::sync::atomic::AtomicBool,
    /// Remote background-removal services by code (`removebg`, `photoroom`).
    pub removers: HashMap<String, Arc<providers::bg_remote::RemoteRemover>>,
    /// A connection of the row writer's own (SQLite), so it never queues
    /// behind readers for one; `None`: it uses `db`.
    pub writer_db: Option<DatabaseConnection>,
    /// Where project secrets' master key comes from (projects' own provider
    /// keys); `None`: adapters use their environment credentials only.
    pub secret_keys: Option<crate::secrets::cipher::KeySource>,
    /// Graceful shutdown: set, nothing new is leased or sent.
    pub drain: Arc<Drain>,
    /// Where webhook deliveries may go.
    pub outbound: crate::netpolicy::OutboundPolicy,
}

impl EngineDeps {
    /// What opening a project's files needs.
    pub fn file_access(&self) -> crate::projects::FileAccess<'_> {
        crate::projects::FileAccess {
            roots: &self.roots,
            keys: self.secret_keys.as_ref(),
            outbound: &self.outbound,
        }
    }

    pub fn new(
        db: DatabaseConnection,
        roots: StorageRoots,
        providers: Vec<Arc<dyn ImageProvider>>,
        config: EngineConfig,
    ) -> Self {
        let governors = Arc::new(
            providers
                .iter()
                .map(|p| (p.code().to_string(), governor(&config)))
                .collect(),
        );
        Self {
            db,
            hub: EventHub::new(config.event_buffer),
            roots,
            providers: providers
                .into_iter()
                .map(|p| (p.code().to_string(), p))
                .collect(),
            governors,
            config,
            registry: Arc::new(SupervisionRegistry::default()),
            node_id: format!("node-{}", Uuid::new_v4().simple()),
            spend: None,
            audit: None,
            writer: None,
            writer_db: None,
            removers: HashMap::new(),
            paused_all: std::sync::atomic::AtomicBool::new(false),
            secret_keys: None,
            drain: Arc::new(Drain::default()),
            outbound: crate::netpolicy::OutboundPolicy::default(),
        }
    }

    pub fn provider(&self, code: &str) -> Option<Arc<dyn ImageProvider>> {
        self.providers.get(code).cloned()
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

fn governor(config: &EngineConfig) -> Arc<Governor> {
    if config.adaptive_governors {
        Governor::new(config.provider_concurrency)
    } else {
        Governor::fixed(config.provider_concurrency)
    }
}

/// Handle to the running engine; cheap to clone.
#[derive(Clone)]
pub struct Engine {
    project: Addr<ProjectActor>,
    cost: Addr<CostActor>,
    audit: Addr<AuditActor>,
    webhooks: Addr<WebhookActor>,
    pub deps: Arc<EngineDeps>,
}

/// Actors an operator can restart through their supervisor.
pub const RESTARTABLE: &[&str] = &["project", "cost", "audit", "webhooks"];

const MAILBOX_TIMEOUT: Duration = Duration::from_secs(10);

fn unavailable(e: actix::MailboxError) -> ServiceError {
    ServiceError::Internal(format!("engine unavailable: {e}"))
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
        let (db, registry) = (deps.db.clone(), deps.registry.clone());
        let cost = Supervisor::start(move |_| CostActor::new(db, registry));
        deps.spend = Some(deps.registry.counted("cost", cost.clone().recipient()));
        let (db, registry) = (deps.db.clone(), deps.registry.clone());
        let audit = Supervisor::start(move |_| AuditActor::new(db, registry));
        deps.audit = Some(deps.registry.counted("audit", audit.clone().recipient()));
        let (db, registry, config) = (deps.db.clone(), deps.registry.clone(), deps.config.webhooks);
        let keys = deps.secret_keys.clone();
        let outbound = deps.outbound.clone();
        let webhooks = Supervisor::start(move |_| {
            WebhookActor::new(db, config, keys, outbound.clone(), registry.clone())
        });
        let writer_db = deps.writer_db.clone().unwrap_or_else(|| deps.db.clone());
        deps.writer = Some(RowWriter::start(writer_db, deps.hub.clone()));
        let deps = Arc::new(deps);
        // What this node's previous process held is ready again at once.
        let (db, node, started) = (deps.db.clone(), deps.node_id.clone(), chrono::Utc::now());
        actix::spawn(async move {
            match crate::runs::lease::release_node_leases(&db, &node, Some(started)).await {
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
        Self {
            project,
            cost,
            audit,
            webhooks,
            deps,
        }
    }

    pub fn hub(&self) -> &EventHub {
        &self.deps.hub
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

    pub async fn submit(&self, run_id: Uuid, project_id: Uuid) -> Result<(), ServiceError> {
        self.ask(
            "project",
            &self.project,
            project::SubmitRun { run_id, project_id },
        )
        .await
    }

    pub async fn cancel_run(
        &self,
        run_id: Uuid,
        principal: &crate::Principal,
    ) -> Result<(), ServiceError> {
        let cancel = project::CancelRun {
            run_id,
            principal: principal.clone(),
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

    /// Pauses or resumes all processing in this process (see
    /// [`EngineDeps::paused_all`]); running RunActors resume leasing on their
    /// next heartbeat pass.
    pub async fn set_all_paused(&self, paused: bool) -> Result<(), ServiceError> {
        self.deps
            .paused_all
            .store(paused, std::sync::atomic::Ordering::SeqCst);
        if !paused {
            self.ask("project", &self.project, project::Pump).await?;
        }
        Ok(())
    }

    pub fn all_paused(&self) -> bool {
        self.deps
            .paused_all
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Stops the named actor so its supervisor restarts it (see [`RESTARTABLE`]).
    pub async fn restart_actor(&self, name: &str) -> Result<(), ServiceError> {
        match name {
            "project" => self.ask(name, &self.project, project::Restart).await,
            "cost" => self.ask(name, &self.cost, project::Restart).await,
            "audit" => self.ask(name, &self.audit, project::Restart).await,
            "webhooks" => self.ask(name, &self.webhooks, project::Restart).await,
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
            match crate::runs::lease::release_node_leases(&self.deps.db, &self.deps.node_id, None)
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
        use sea_orm::EntityTrait;
        let mut rx = self.deps.hub.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let run = entities::runs::Entity::find_by_id(run_id)
                .one(&self.deps.db)
                .await?
                .ok_or_else(|| ServiceError::not_found("Run not found"))?;
            if crate::runs::store::status::run_is_terminal(&run.status)
                || tokio::time::Instant::now() >= deadline
            {
                return Ok(run);
            }
            // Re-check on any event of this run, or every second at most.
            let wait = tokio::time::sleep_until(
                deadline.min(tokio::time::Instant::now() + Duration::from_secs(1)),
            );
            tokio::select! {
                _ = wait => {}
                _ = rx.recv() => {}
            }
        }
    }
}
