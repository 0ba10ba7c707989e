//! What runs need from the process around them: the shared connections,
//! providers, limits, event hub and row writer, and the ports through which
//! the engine's actors are reached (set by the engine when it starts).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use imaging::DecodeLimits;
use providers::ImageProvider;
use providers::governor::Governor;
use sea_orm::DatabaseConnection;
use storage::paths::StorageRoots;
use uuid::Uuid;

use super::drain::Drain;
use super::events::EventHub;
use super::pipeline::RetryPolicy;
use super::writer::RowWriter;
use crate::ports::{PaidCallLog, SpendGate};

/// The engine's bounds and timings.
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
    /// A node whose heartbeat is older than this is dead (see `cluster`).
    pub node_timeout: Duration,
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
    /// Memory the post-process passes of all candidates may hold at once
    /// (see `runs::memory`).
    pub pass_memory_mib: u32,
    /// Push every project whose storage names a bucket this often (the
    /// background actor's schedule); `None`: syncs run only on request.
    pub sync_push_every: Option<Duration>,
    /// The agent worker (`None`: confirmed instructions wait).
    pub agent: Option<crate::agent::AgentConfig>,
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
            node_timeout: Duration::from_secs(15),
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
            pass_memory_mib: 768,
            sync_push_every: None,
            agent: None,
        }
    }
}

/// What the engine and the run services share: connections, providers,
/// limits and the ports to the engine's actors.
pub struct EngineDeps {
    pub db: DatabaseConnection,
    pub hub: EventHub,
    pub roots: StorageRoots,
    pub providers: HashMap<String, Arc<dyn ImageProvider>>,
    /// Calls in flight per provider code (image providers and removal
    /// services), adapted to the provider's rate-limit signals.
    pub governors: Arc<HashMap<String, Arc<Governor>>>,
    pub config: EngineConfig,
    /// Distinguishes this process's leases from other nodes'.
    pub node_id: String,
    /// Asked before every paid attempt (the engine's CostActor), set when
    /// the engine starts.
    pub spend: Option<Arc<dyn SpendGate>>,
    /// Told about every paid call (the engine's AuditActor), set when the
    /// engine starts.
    pub audit: Option<Arc<dyn PaidCallLog>>,
    /// Group commit for the job pipeline's rows, started with the engine.
    pub writer: Option<RowWriter>,
    /// The candidates' content lookups, answered together; started with
    /// the engine.
    pub content: Option<crate::assets::ContentLookups>,
    /// Operator switch: while set, no queued run starts and no job is leased
    /// (running jobs finish). This node's copy of the persisted setting
    /// (`cluster::control`), refreshed every heartbeat.
    pub paused_all: std::sync::atomic::AtomicBool,
    /// Whether this node's last heartbeat reached the database (while it
    /// did not, the node leases nothing and `/health` answers 503), and
    /// whether it may judge the others by their heartbeats.
    pub reachability: crate::cluster::reachability::Reachability,
    /// This node's liveness lock (PostgreSQL), once taken: how other nodes
    /// see its death at once, and how it sees theirs (`cluster::liveness`).
    pub liveness: std::sync::OnceLock<Arc<crate::cluster::liveness::Liveness>>,
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
    /// Admission of pass work by memory.
    pub pass_budget: Arc<super::memory::PassBudget>,
    /// Speech to text and text to speech.
    pub voice: crate::voice::VoiceSetup,
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
            pass_budget: Arc::new(super::memory::PassBudget::new(config.pass_memory_mib)),
            roots,
            providers: providers
                .into_iter()
                .map(|p| (p.code().to_string(), p))
                .collect(),
            governors,
            config,
            node_id: format!("node-{}", Uuid::new_v4().simple()),
            spend: None,
            audit: None,
            writer: None,
            content: None,
            writer_db: None,
            removers: HashMap::new(),
            paused_all: std::sync::atomic::AtomicBool::new(false),
            reachability: Default::default(),
            liveness: std::sync::OnceLock::new(),
            secret_keys: None,
            drain: Arc::new(Drain::default()),
            outbound: crate::netpolicy::OutboundPolicy::default(),
            voice: crate::voice::VoiceSetup::default(),
        }
    }

    /// How this node judges the others (see `cluster::members`).
    pub fn observer(&self) -> crate::cluster::Observer<'_> {
        crate::cluster::Observer {
            liveness: self
                .liveness
                .get()
                .map_or(crate::cluster::Observer::outside().liveness, |l| l.as_ref()),
            reachability: &self.reachability,
        }
    }

    pub fn provider(&self, code: &str) -> Option<Arc<dyn ImageProvider>> {
        self.providers.get(code).cloned()
    }
}

/// A governor for one provider, adaptive or fixed per the configuration.
pub fn governor(config: &EngineConfig) -> Arc<Governor> {
    if config.adaptive_governors {
        Governor::new(config.provider_concurrency)
    } else {
        Governor::fixed(config.provider_concurrency)
    }
}
