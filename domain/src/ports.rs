//! What the domain asks of the running engine, as traits the `actors` crate
//! implements (its `Engine` handle, its CostActor and AuditActor). Domain
//! code holds these, never an actor address, so nothing here depends on the
//! actor tree and the tree can change without touching the domain.

use async_trait::async_trait;
use uuid::Uuid;

use crate::ServiceError;

/// A paid attempt asking for its reservation.
#[derive(Debug, Clone)]
pub struct SpendRequest {
    /// The lease of the job worker asking (`None`: a call outside any job):
    /// a worker that lost its lease reserves nothing.
    pub fence: Option<crate::runs::lease::Fence>,
    pub call_id: Uuid,
    pub project_id: Uuid,
    /// `None`: a call outside any run (voice); only the project's budget applies.
    pub run_id: Option<Uuid>,
    pub attempt: i32,
    pub amount: f64,
    pub run_budget: Option<f64>,
    pub project_budget: Option<f64>,
}

/// Says yes or no to spending, one request at a time (so two attempts can
/// never both take the last of a budget): see `runs::budget::reserve`.
#[async_trait]
pub trait SpendGate: Send + Sync {
    async fn reserve(&self, request: SpendRequest) -> Result<(), ServiceError>;
}

/// A paid call whose rows have committed, for the audit log.
#[derive(Debug, Clone)]
pub struct PaidCallRecord {
    pub project_id: Uuid,
    pub run_id: Uuid,
    pub job_id: Uuid,
    pub provider_call_id: Uuid,
    pub provider_code: String,
    pub idempotency_key: String,
    pub cost_usd: f64,
}

/// Told about every paid call (best effort: the call itself is already on
/// record in the ledger).
#[async_trait]
pub trait PaidCallLog: Send + Sync {
    async fn record(&self, call: PaidCallRecord);
}

/// The engine's run queue: where persisted runs are handed over for
/// execution, and where a project's queue is paused.
#[async_trait]
pub trait RunQueue: Send + Sync {
    /// A persisted run is ready to execute (or to resume); `created` when
    /// this process's trigger just created it, `started` when that trigger
    /// also started it and leased its first jobs here (its RunActor starts
    /// their workers at once, outside the queue: the run is running).
    async fn submit(
        &self,
        run_id: Uuid,
        project_id: Uuid,
        created: Option<crate::runs::lifecycle::Created>,
        started: Option<Box<crate::runs::lifecycle::Leased>>,
    ) -> Result<(), ServiceError>;
    /// Whether this node's queue would start a run of the project at once:
    /// none of its runs waiting here, the project not paused, room on this
    /// node. (Room across the cluster is the database's to say.)
    async fn would_admit(&self, project_id: Uuid) -> bool;
    async fn set_paused(&self, project_id: Uuid, paused: bool) -> Result<(), ServiceError>;
}

/// The engine as the domain's services see it: the dependencies it shares
/// and its run queue. Cheap to copy; built by the engine's handle.
#[derive(Clone, Copy)]
pub struct RunEngine<'a> {
    pub deps: &'a crate::runs::deps::EngineDeps,
    pub queue: &'a dyn RunQueue,
}

impl RunEngine<'_> {
    /// Hands a recorded run to this node's queue; this node owns it from now
    /// on (another node adopts it only if this one dies).
    pub async fn submit(&self, run_id: Uuid, project_id: Uuid) -> Result<(), ServiceError> {
        crate::cluster::claim_run(&self.deps.db, run_id, &self.deps.node_id).await?;
        self.queue.submit(run_id, project_id, None, None).await
    }

    /// Hands a run its trigger just recorded, with this node as its owner,
    /// to this node's queue (`started`: the trigger started it too).
    pub async fn submit_created(
        &self,
        run_id: Uuid,
        project_id: Uuid,
        created: crate::runs::lifecycle::Created,
        started: Option<Box<crate::runs::lifecycle::Leased>>,
    ) -> Result<(), ServiceError> {
        self.queue
            .submit(run_id, project_id, Some(created), started)
            .await
    }

    pub async fn set_paused(&self, project_id: Uuid, paused: bool) -> Result<(), ServiceError> {
        self.queue.set_paused(project_id, paused).await
    }
}
