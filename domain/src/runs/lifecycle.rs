//! The life of a run in the database: started, scheduled pass by pass
//! (expired leases reclaimed, ready jobs leased for this node), finished
//! exactly once (status from its jobs, a cancel never overwritten, what a
//! cancel left open settled, webhooks enqueued, the run log written). The
//! engine's RunActor calls these; they hold no state of their own.

use chrono::Utc;
use entities::{assets, projects, run_jobs, run_owners, runs};
use sea_orm::sea_query::{Expr, ExprTrait, LockBehavior, LockType, Query};
use sea_orm::{
    ColumnTrait, EntityTrait, FromQueryResult, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect,
};
use serde_json::json;
use uuid::Uuid;

use super::deps::EngineDeps;
use super::events;
use super::store;
use crate::ServiceError;
use crate::status::{JobStatus, RunStatus};

/// What starting a run found.
pub enum Start {
    /// Drive it: it is running (now, or since before). `Some`: it started
    /// just now and its first ready jobs were leased to this node in the
    /// same transaction; their workers start at once, without waiting for a
    /// scheduling pass.
    Drive(Option<Box<Leased>>),
    /// Nothing to drive: the run is already finished (a duplicate submission
    /// that raced with recovery, or a cancel that came first).
    Nothing,
    /// Not yet: its project already runs `max_runs_per_project` runs,
    /// counted across every node on the database. Try again later.
    NoRoom,
}

/// Marks a queued run as running (with its `run.started` event), if its
/// project has room — counted in the database, under the project's
/// admission lock, so several nodes together never run more than
/// `max_runs_per_project` of one project. A canceled run with a job still
/// open is driven: its scheduling passes lease nothing and settle what the
/// jobs left once no live worker holds one.
#[tracing::instrument(skip(deps, created))]
pub async fn start(
    deps: &EngineDeps,
    run_id: Uuid,
    project_id: Uuid,
    created: Option<&Created>,
) -> Result<Start, ServiceError> {
    let txn = crate::db::begin_write(&deps.db).await?;
    crate::db::serialize(&txn, &format!("admission:{project_id}")).await?;
    if let Some(started) = start_if_room(&txn, deps, run_id, project_id).await? {
        crate::db::commit(txn).await?;
        for e in started.events {
            deps.hub.publish(e);
        }
        let first = if started.jobs.is_empty() {
            None
        } else {
            let run = std::sync::Arc::new(started.run);
            Some(Box::new(
                leased(deps, None, created, run, started.jobs).await?,
            ))
        };
        return Ok(Start::Drive(first));
    }
    let current: Option<String> = runs::Entity::find_by_id(run_id)
        .select_only()
        .column(runs::Column::Status)
        .into_tuple()
        .one(&txn)
        .await?;
    // Already finished (a duplicate submission that raced with
    // recovery, or a cancel that came first): nothing to drive, unless a
    // cancel left jobs open (e.g. held by this node's previous process).
    if current
        .as_deref()
        .is_none_or(crate::status::RunStatus::is_terminal)
    {
        let canceled = current.is_some_and(|s| s == RunStatus::Canceled);
        return Ok(if canceled && store::has_open_jobs(&txn, run_id).await? {
            Start::Drive(None)
        } else {
            Start::Nothing
        });
    }
    if current.as_deref() == Some(RunStatus::Queued.as_str()) {
        let running = runs::Entity::find()
            .filter(runs::Column::ProjectId.eq(project_id))
            .filter(runs::Column::Status.eq(RunStatus::Running))
            .filter(runs::Column::Id.ne(run_id))
            .count(&txn)
            .await?;
        if running as usize >= deps.config.max_runs_per_project {
            crate::db::rollback(txn).await?;
            return Ok(Start::NoRoom);
        }
    }
    let changed = runs::Entity::update_many()
        .col_expr(runs::Column::Status, Expr::value(RunStatus::Running))
        .col_expr(runs::Column::StartedAt, Expr::value(Utc::now()))
        .col_expr(runs::Column::UpdatedAt, Expr::value(Utc::now()))
        .filter(runs::Column::Id.eq(run_id))
        .filter(runs::Column::Status.eq(RunStatus::Queued))
        .exec(&txn)
        .await?
        .rows_affected;
    let event = if changed > 0 {
        Some(events::append(&txn, run_id, project_id, "run.started", None, json!({})).await?)
    } else {
        None
    };
    crate::db::commit(txn).await?;
    if let Some(e) = event {
        deps.hub.publish(e);
    }
    Ok(Start::Drive(None))
}

/// A run [`start_if_room`] started: the run as updated, its first jobs as
/// leased, and the events numbering both (`run.started`, then each
/// `job.started`), to publish once committed.
struct Started {
    run: runs::Model,
    jobs: Vec<run_jobs::Model>,
    events: Vec<events::RunEvent>,
}

/// The common case of [`start`]: a queued run whose project has room is
/// marked running (one conditional update, which also numbers its events)
/// and, when this node owns it and may lease, its first ready jobs are
/// leased in the same transaction — what the run's first scheduling pass
/// would do a moment later, without that pass's reads and second
/// transaction. The caller holds the project's admission lock. `None`: not
/// queued, or no room; the caller finds out which.
async fn start_if_room<C: sea_orm::ConnectionTrait>(
    txn: &C,
    deps: &EngineDeps,
    run_id: Uuid,
    project_id: Uuid,
) -> Result<Option<Started>, ServiceError> {
    let now = Utc::now();
    // Picked (and on PostgreSQL row-locked) before the run is marked, so
    // the update can number their `job.started` events with its own. Only
    // a run this node owns: another node's (adopted, or not yet claimed)
    // leases nothing until a scheduling pass has checked its owner.
    let ready: Vec<Uuid> = if may_lease(deps) {
        let owned_here = Query::select()
            .expr(Expr::val(1))
            .from(run_owners::Entity)
            .and_where(run_owners::Column::RunId.eq(run_id))
            .and_where(run_owners::Column::NodeId.eq(deps.node_id.as_str()))
            .to_owned();
        ready_jobs(run_id, deps.config.max_jobs_per_run)
            .filter(Expr::exists(owned_here))
            .into_tuple()
            .all(txn)
            .await?
    } else {
        Vec::new()
    };
    let Some(run) = mark_started(txn, deps, run_id, project_id, ready.len(), now).await? else {
        return Ok(None);
    };
    let jobs = lease_all(txn, deps, run_id, &ready, now).await?;
    let mut numbered = vec![("run.started", None, json!({}))];
    numbered.extend(started_events(&jobs));
    let first = run.last_event_seq - ready.len() as i64;
    let events = events::append_numbered(txn, run_id, project_id, first, numbered).await?;
    Ok(Some(Started { run, jobs, events }))
}

/// The conditional start itself: a queued run is marked running only while
/// its project's other running runs (counted in the same statement) are
/// below `max_runs_per_project`, and `1 + jobs` event numbers are reserved
/// (`run.started`, then a `job.started` for each job leased with it). The
/// caller holds the project's admission lock. `None`: not queued, or no room.
async fn mark_started<C: sea_orm::ConnectionTrait>(
    txn: &C,
    deps: &EngineDeps,
    run_id: Uuid,
    project_id: Uuid,
    jobs: usize,
    now: chrono::DateTime<Utc>,
) -> Result<Option<runs::Model>, ServiceError> {
    let others_running = Query::select()
        .expr(Expr::col(runs::Column::Id).count())
        .from(runs::Entity)
        .and_where(runs::Column::ProjectId.eq(project_id))
        .and_where(runs::Column::Status.eq(RunStatus::Running))
        .and_where(runs::Column::Id.ne(run_id))
        .to_owned();
    let update = Query::update()
        .table(runs::Entity)
        .value(runs::Column::Status, RunStatus::Running)
        .value(runs::Column::StartedAt, now)
        .value(runs::Column::UpdatedAt, now)
        .value(
            runs::Column::LastEventSeq,
            Expr::col(runs::Column::LastEventSeq).add(1 + jobs as i64),
        )
        .and_where(runs::Column::Id.eq(run_id))
        .and_where(runs::Column::Status.eq(RunStatus::Queued))
        .and_where(
            Expr::SubQuery(None, Box::new(others_running.into()))
                .lt(deps.config.max_runs_per_project as i64),
        )
        .returning_all()
        .to_owned();
    match txn.query_one(&update).await? {
        Some(row) => Ok(Some(runs::Model::from_query_result(&row, "")?)),
        None => Ok(None),
    }
}

/// [`lease`] of jobs the caller picked (and on PostgreSQL locked) or
/// inserted in the same transaction: every one of them is leased, or the
/// whole is refused rather than leave a gap in the run's event numbers.
async fn lease_all<C: sea_orm::ConnectionTrait>(
    txn: &C,
    deps: &EngineDeps,
    run_id: Uuid,
    ready: &[Uuid],
    now: chrono::DateTime<Utc>,
) -> Result<Vec<run_jobs::Model>, ServiceError> {
    let jobs = lease(txn, deps, ready, now).await?;
    if jobs.len() != ready.len() {
        return Err(ServiceError::Internal(format!(
            "{} of {} ready jobs leased at the start of run {run_id}",
            jobs.len(),
            ready.len()
        )));
    }
    Ok(jobs)
}

/// A run its own trigger started: the run as marked running, its first
/// jobs as leased to this node, and the events that say so (`run.started`,
/// then each `job.started`), numbered after the run's first event.
pub struct StartedByTrigger {
    pub run: runs::Model,
    pub jobs: Vec<run_jobs::Model>,
    pub events: Vec<(&'static str, Option<Uuid>, serde_json::Value)>,
}

/// Starts a run inside the transaction of the trigger that inserts it (see
/// `store::create_run`) — when the project has room across the cluster, as
/// [`start`] would find a moment later — and leases `pending` (the run's
/// first ready jobs, this node its owner) with it: the run is started and
/// at work with one commit, not two. The caller holds the project's
/// admission lock (the trigger takes it with its queue-capacity lock, in
/// that order; nothing takes the two the other way round). `None`: no room;
/// the run stays queued and the queue starts it.
pub(crate) async fn start_with_trigger<C: sea_orm::ConnectionTrait>(
    txn: &C,
    deps: &EngineDeps,
    run_id: Uuid,
    project_id: Uuid,
    pending: &[Uuid],
) -> Result<Option<StartedByTrigger>, ServiceError> {
    let now = Utc::now();
    let Some(run) = mark_started(txn, deps, run_id, project_id, pending.len(), now).await? else {
        return Ok(None);
    };
    let jobs = lease_all(txn, deps, run_id, pending, now).await?;
    let mut events = vec![("run.started", None, json!({}))];
    events.extend(started_events(&jobs));
    Ok(Some(StartedByTrigger { run, jobs, events }))
}

/// Whether this node may lease jobs now: reaching the database, not paused
/// by the operator, not shutting down.
pub(crate) fn may_lease(deps: &EngineDeps) -> bool {
    deps.reachability.reachable()
        && !deps.paused_all.load(std::sync::atomic::Ordering::SeqCst)
        && !deps.drain.is_draining()
}

/// What a run's workers share, read by its first scheduling pass: the run
/// as it was then (what the workers use of it does not change while it
/// runs), its project's files and its project's slug (never changed).
#[derive(Clone)]
pub struct RunShared {
    pub run: std::sync::Arc<runs::Model>,
    pub store: storage::ProjectFiles,
    pub project_slug: std::sync::Arc<str>,
    /// The run was created by this process's trigger (see [`Created`]).
    pub created_here: bool,
}

impl RunShared {
    /// Whether this leased job is certainly at its first claim with nothing
    /// recorded for it: its run was created by this process's trigger
    /// (every job of it began at epoch 0, and only a lease raises that), it
    /// is at epoch 1 (never reclaimed), and it is not a retry (a retry's
    /// calls share the failed attempt's keys, and its results are reused).
    /// Runs imported, restored or created before lease epochs existed are
    /// never taken for fresh.
    pub fn first_claim(&self, job: &run_jobs::Model) -> bool {
        self.created_here && job.lease_epoch == 1 && job.retry_of_job_id.is_none()
    }
}

/// What a trigger hands to the engine with the run it just created: the
/// project's files and slug it already read (the run's workers need them),
/// and so the knowledge that the run is new.
#[derive(Clone)]
pub struct Created {
    pub store: storage::ProjectFiles,
    pub project_slug: std::sync::Arc<str>,
}

/// Jobs leased to this node, with what their workers need.
pub struct Leased {
    pub shared: RunShared,
    /// The run's provider code and the provider, resolved here once for
    /// all its jobs (`None`: not configured on this node; the jobs fail).
    pub provider_code: String,
    pub provider: Option<std::sync::Arc<dyn providers::ImageProvider>>,
    pub jobs: Vec<run_jobs::Model>,
}

/// What a scheduling pass of a run found to do.
pub enum Step {
    Start(Box<Leased>),
    Finish,
    Wait,
    /// Another live node drives the run now (it adopted the run while this
    /// node was unreachable): this node stops driving it once its own
    /// workers have reported (their late writes are fenced off).
    Yield,
}

/// One scheduling pass of a run: reclaims jobs whose lease ran out, then
/// leases up to `room` ready jobs for this node (not those in `mine`, which
/// this node's workers hold), or says the run is finished or must wait.
#[tracing::instrument(level = "debug", skip_all, fields(%run_id, room))]
pub async fn next_step(
    deps: &EngineDeps,
    run_id: Uuid,
    mine: &[Uuid],
    room: usize,
    cached: Option<RunShared>,
    created: Option<&Created>,
) -> Result<Step, ServiceError> {
    if !deps.reachability.reachable() {
        // Cut off from the database: nothing is leased until it is back
        // (another node may be adopting this node's runs meanwhile).
        return Ok(Step::Wait);
    }
    // The run as its first pass read it (what the workers use does not
    // change while it runs), and its status as of now: the whole row, plan
    // included, is read once, not at every job's end.
    let (run, status) = match &cached {
        Some(RunShared { run, .. }) => {
            let status: Option<String> = runs::Entity::find_by_id(run_id)
                .select_only()
                .column(runs::Column::Status)
                .into_tuple()
                .one(&deps.db)
                .await?;
            match status {
                Some(status) => (run.clone(), status),
                None => return Ok(Step::Finish),
            }
        }
        None => match runs::Entity::find_by_id(run_id).one(&deps.db).await? {
            Some(run) => {
                let status = run.status.clone();
                (std::sync::Arc::new(run), status)
            }
            None => return Ok(Step::Finish),
        },
    };
    let elsewhere =
        crate::cluster::driven_elsewhere(&deps.db, run_id, &deps.node_id, deps.config.node_timeout)
            .await?;
    let now = Utc::now();
    // Each pass reads only what it needs (running leases, up to `room` ready
    // jobs), never the whole run: the cost of a pass must not grow with the
    // run's size.
    let running: Vec<(Uuid, Option<chrono::DateTime<Utc>>, Option<String>)> =
        run_jobs::Entity::find()
            .select_only()
            .column(run_jobs::Column::Id)
            .column(run_jobs::Column::LeaseExpiresAt)
            .column(run_jobs::Column::LeaseOwner)
            .filter(run_jobs::Column::RunId.eq(run_id))
            .filter(run_jobs::Column::Status.eq(JobStatus::Running))
            .into_tuple()
            .all(&deps.db)
            .await?;
    let others: Vec<_> = running
        .into_iter()
        .filter(|(id, _, _)| !mine.contains(id))
        .collect();
    let me = deps.node_id.as_str();
    if elsewhere {
        // Another node drives the run now: hand back what this node holds
        // of it that none of its workers works on (their outcomes could not
        // be recorded), so the driving node need not wait for the leases to
        // run out.
        let orphans = others
            .iter()
            .filter(|(_, _, owner)| owner.as_deref() == Some(me))
            .map(|(id, _, _)| *id)
            .collect();
        reclaim(deps, orphans, Vec::new(), now).await?;
        return Ok(Step::Yield);
    }
    // Leases of a dead node are taken back at once, not when they run out.
    let dead = if others
        .iter()
        .any(|(_, _, owner)| owner.as_deref().is_some_and(|o| o != deps.node_id.as_str()))
    {
        crate::cluster::dead_nodes(
            &deps.db,
            &deps.node_id,
            deps.config.node_timeout,
            deps.observer(),
        )
        .await?
    } else {
        Default::default()
    };
    // Reclaim jobs leased by a worker that is gone: its lease ran out, its
    // node died, or it was this node's and none of its workers holds it any
    // more (its outcome could not be recorded, e.g. the database dropped
    // the connection). The write happens only when there is something to
    // reclaim.
    let (expired, others_live): (Vec<_>, Vec<_>) =
        others.into_iter().partition(|(_, until, owner)| {
            until.is_none_or(|t| t < now)
                || owner
                    .as_deref()
                    .is_some_and(|o| o == me || dead.contains(o))
        });
    let ids: Vec<Uuid> = expired.into_iter().map(|(id, _, _)| id).collect();
    reclaim(deps, ids, dead.into_iter().collect(), now).await?;
    if status == RunStatus::Canceled {
        // Finished once no other live worker still holds one of its jobs.
        return Ok(if others_live.is_empty() {
            Step::Finish
        } else {
            Step::Wait
        });
    }
    if deps.paused_all.load(std::sync::atomic::Ordering::SeqCst) || deps.drain.is_draining() {
        // Operator pause or shutdown: nothing new is leased; running jobs
        // finish (or, shutting down, stop before their next call).
        return Ok(Step::Wait);
    }
    // The ready jobs are read and leased in one transaction.
    let txn = crate::db::begin_write(&deps.db).await?;
    let ready: Vec<Uuid> = ready_jobs(run_id, room).into_tuple().all(&txn).await?;
    if ready.is_empty() {
        crate::db::rollback(txn).await?;
        let undecided = run_jobs::Entity::find()
            .filter(run_jobs::Column::RunId.eq(run_id))
            .filter(run_jobs::Column::Status.is_in([
                JobStatus::Blocked,
                JobStatus::Pending,
                JobStatus::Running,
            ]))
            .count(&deps.db)
            .await?;
        return Ok(if undecided == 0 {
            Step::Finish
        } else {
            Step::Wait
        });
    }
    let jobs = lease(&txn, deps, &ready, now).await?;
    let started = events::append_many(&txn, run_id, run.project_id, started_events(&jobs)).await?;
    crate::db::commit(txn).await?;
    for e in started {
        deps.hub.publish(e);
    }
    if jobs.is_empty() {
        return Ok(Step::Wait);
    }
    Ok(Step::Start(Box::new(
        leased(deps, cached, created, run, jobs).await?,
    )))
}

/// The ids of up to `room` ready jobs of a run, in plan order. On
/// PostgreSQL their rows are locked `FOR UPDATE SKIP LOCKED`: a node racing
/// for the same rows (one whose run was adopted from under it, before it
/// has noticed) skips them instead of queueing behind this one. SQLite has
/// no row locks; its write transaction already excludes every other writer.
fn ready_jobs(run_id: Uuid, room: usize) -> sea_orm::Select<run_jobs::Entity> {
    run_jobs::Entity::find()
        .select_only()
        .column(run_jobs::Column::Id)
        .filter(run_jobs::Column::RunId.eq(run_id))
        .filter(run_jobs::Column::Status.eq(JobStatus::Pending))
        .order_by_asc(run_jobs::Column::CreatedAt)
        .order_by_asc(run_jobs::Column::Id)
        .limit(room as u64)
        .lock_with_behavior(LockType::Update, LockBehavior::SkipLocked)
}

/// Leases the jobs of `ready` that are still pending to this node (a new
/// epoch, an attempt more) in one guarded statement; returns them as leased,
/// in the order of `ready`.
async fn lease<C: sea_orm::ConnectionTrait>(
    txn: &C,
    deps: &EngineDeps,
    ready: &[Uuid],
    now: chrono::DateTime<Utc>,
) -> Result<Vec<run_jobs::Model>, ServiceError> {
    if ready.is_empty() {
        return Ok(Vec::new());
    }
    let lease_until = now + chrono::Duration::from_std(deps.config.lease).unwrap_or_default();
    let mut jobs = run_jobs::Entity::update_many()
        .col_expr(run_jobs::Column::Status, Expr::value(JobStatus::Running))
        .col_expr(
            run_jobs::Column::LeaseOwner,
            Expr::value(deps.node_id.clone()),
        )
        .col_expr(run_jobs::Column::LeaseExpiresAt, Expr::value(lease_until))
        .col_expr(run_jobs::Column::HeartbeatAt, Expr::value(now))
        .col_expr(
            run_jobs::Column::Attempt,
            Expr::col(run_jobs::Column::Attempt).add(1),
        )
        .col_expr(
            run_jobs::Column::LeaseEpoch,
            Expr::col(run_jobs::Column::LeaseEpoch).add(1),
        )
        .col_expr(run_jobs::Column::StartedAt, Expr::value(now))
        .col_expr(run_jobs::Column::UpdatedAt, Expr::value(now))
        .filter(run_jobs::Column::Id.is_in(ready.iter().copied()))
        .filter(run_jobs::Column::Status.eq(JobStatus::Pending))
        .exec_with_returning(txn)
        .await?;
    jobs.sort_by_key(|j| ready.iter().position(|id| *id == j.id));
    Ok(jobs)
}

/// The `job.started` event of each job just leased.
fn started_events(
    jobs: &[run_jobs::Model],
) -> Vec<(&'static str, Option<Uuid>, serde_json::Value)> {
    jobs.iter()
        .map(|j| {
            (
                "job.started",
                Some(j.id),
                json!({ "job_key": j.job_key, "stage": j.stage, "attempt": j.attempt }),
            )
        })
        .collect()
}

/// Leased jobs with what their workers share: `cached` when the run's
/// actor has it, else from what its trigger handed over (`created`), else
/// read now (the project's files and slug) for `run`.
pub(crate) async fn leased(
    deps: &EngineDeps,
    cached: Option<RunShared>,
    created: Option<&Created>,
    run: std::sync::Arc<runs::Model>,
    jobs: Vec<run_jobs::Model>,
) -> Result<Leased, ServiceError> {
    let shared = match (cached, created) {
        (Some(shared), _) => shared,
        (None, Some(created)) => RunShared {
            run,
            store: created.store.clone(),
            project_slug: created.project_slug.clone(),
            created_here: true,
        },
        (None, None) => {
            let project = projects::Entity::find_by_id(run.project_id)
                .one(&deps.db)
                .await?
                .ok_or_else(|| ServiceError::missing("project", run.project_id))?;
            RunShared {
                store: crate::projects::project_files(&deps.db, deps.file_access(), &project)
                    .await?,
                project_slug: project.slug.into(),
                run,
                created_here: false,
            }
        }
    };
    let provider_code = shared
        .run
        .provider_code
        .clone()
        .unwrap_or_else(|| super::plan::DEFAULT_PROVIDER.to_string());
    let provider = deps.provider(&provider_code);
    Ok(Leased {
        shared,
        provider_code,
        provider,
        jobs,
    })
}

/// Puts back to `pending` the jobs of `ids` whose worker is gone — their
/// lease ran out, their node is dead (`dead_owners`), or they are this
/// node's and none of its workers holds them (the caller picked those) —
/// raising their epoch so the old worker is fenced off, and settles what
/// their calls left in flight. Guarded, so a job re-leased meanwhile stays.
async fn reclaim(
    deps: &EngineDeps,
    ids: Vec<Uuid>,
    dead_owners: Vec<String>,
    now: chrono::DateTime<Utc>,
) -> Result<(), ServiceError> {
    if ids.is_empty() {
        return Ok(());
    }
    let txn = crate::db::begin_write(&deps.db).await?;
    let reclaimed = run_jobs::Entity::update_many()
        .col_expr(run_jobs::Column::Status, Expr::value(JobStatus::Pending))
        .col_expr(
            run_jobs::Column::LeaseOwner,
            Expr::value(Option::<String>::None),
        )
        .col_expr(
            run_jobs::Column::LeaseEpoch,
            Expr::col(run_jobs::Column::LeaseEpoch).add(1),
        )
        .filter(run_jobs::Column::Id.is_in(ids))
        .filter(run_jobs::Column::Status.eq(JobStatus::Running))
        .filter(
            sea_orm::Condition::any()
                .add(run_jobs::Column::LeaseExpiresAt.is_null())
                .add(run_jobs::Column::LeaseExpiresAt.lt(now))
                .add(run_jobs::Column::LeaseOwner.eq(deps.node_id.as_str()))
                .add(run_jobs::Column::LeaseOwner.is_in(dead_owners)),
        )
        .exec_with_returning(&txn)
        .await?;
    let reclaimed: Vec<Uuid> = reclaimed.into_iter().map(|j| j.id).collect();
    crate::runs::calls::settle_abandoned(&txn, &reclaimed).await?;
    crate::db::commit(txn).await?;
    Ok(())
}

/// Final status from the jobs; guarded so a cancel is never overwritten.
#[tracing::instrument(skip(deps))]
pub async fn finish(deps: &EngineDeps, run_id: Uuid, project_id: Uuid) -> Result<(), ServiceError> {
    let jobs = store::jobs_of(&deps.db, run_id).await?;
    let done = jobs.iter().filter(|j| j.status == JobStatus::Done).count();
    let final_status = if done == jobs.len() {
        RunStatus::Done
    } else if done == 0 {
        RunStatus::Failed
    } else {
        RunStatus::Partial
    };
    let txn = crate::db::begin_write(&deps.db).await?;
    let now = Utc::now();
    let changed = runs::Entity::update_many()
        .col_expr(runs::Column::Status, Expr::value(final_status))
        .col_expr(runs::Column::FinishedAt, Expr::value(now))
        .col_expr(runs::Column::UpdatedAt, Expr::value(now))
        .filter(runs::Column::Id.eq(run_id))
        .filter(runs::Column::Status.eq(RunStatus::Running))
        .exec(&txn)
        .await?
        .rows_affected;
    let run = runs::Entity::find_by_id(run_id).one(&txn).await?;
    if run
        .as_ref()
        .is_some_and(|r| r.status == RunStatus::Canceled)
    {
        settle_canceled(&txn, run_id, now).await?;
    }
    // Webhooks are told in the same transaction, so a crash cannot lose them.
    if changed > 0
        && let Some(run) = &run
    {
        crate::webhooks::enqueue_run_outcome(&txn, run, jobs.len(), done).await?;
    }
    let status_now = run.map(|r| r.status).unwrap_or_default();
    // A canceled run driven again only to settle what a gone worker left
    // was already told finished: it is told once.
    let told = changed == 0
        && entities::run_events::Entity::find()
            .select_only()
            .column(entities::run_events::Column::Id)
            .filter(entities::run_events::Column::RunId.eq(run_id))
            .filter(entities::run_events::Column::EventType.eq("run.finished"))
            .into_tuple::<Uuid>()
            .one(&txn)
            .await?
            .is_some();
    let event = if told {
        None
    } else {
        Some(
            events::append(
                &txn,
                run_id,
                project_id,
                "run.finished",
                None,
                json!({
                    "status": if changed > 0 { final_status.as_str() } else { status_now.as_str() },
                    "jobs": jobs.len(), "jobs_done": done,
                }),
            )
            .await?,
        )
    };
    crate::db::commit(txn).await?;
    if let Some(event) = event {
        deps.hub.publish(event);
    }
    tracing::info!(
        status = if changed > 0 {
            final_status.as_str()
        } else {
            status_now.as_str()
        },
        jobs = jobs.len(),
        jobs_done = done,
        "run finished"
    );
    if let Err(e) = write_run_log(deps, run_id).await {
        tracing::warn!(%run_id, error = %e, "cannot write the run log");
    }
    Ok(())
}

/// A canceled run leaves nothing open: every job that had not finished is
/// canceled and every call still on record as in flight is settled (a sent
/// one as possibly billed, an unsent one released). Runs once no live worker
/// holds one of its jobs.
async fn settle_canceled<C: sea_orm::ConnectionTrait>(
    db: &C,
    run_id: Uuid,
    now: chrono::DateTime<Utc>,
) -> Result<(), ServiceError> {
    let open: Vec<Uuid> = run_jobs::Entity::find()
        .select_only()
        .column(run_jobs::Column::Id)
        .filter(run_jobs::Column::RunId.eq(run_id))
        .filter(run_jobs::Column::Status.is_in([
            JobStatus::Pending,
            JobStatus::Blocked,
            JobStatus::Running,
        ]))
        .into_tuple()
        .all(db)
        .await?;
    if open.is_empty() {
        return Ok(());
    }
    run_jobs::Entity::update_many()
        .col_expr(run_jobs::Column::Status, Expr::value(JobStatus::Canceled))
        .col_expr(
            run_jobs::Column::LeaseOwner,
            Expr::value(Option::<String>::None),
        )
        .col_expr(run_jobs::Column::UpdatedAt, Expr::value(now))
        .filter(run_jobs::Column::Id.is_in(open.clone()))
        .exec(db)
        .await?;
    crate::runs::calls::settle_abandoned(db, &open).await
}

/// `runs/{run_id}/run-log.json` in the project store: the run, its jobs and
/// candidates and every event, for people and tools that read files.
async fn write_run_log(deps: &EngineDeps, run_id: Uuid) -> Result<(), ServiceError> {
    let Some(run) = runs::Entity::find_by_id(run_id).one(&deps.db).await? else {
        return Ok(());
    };
    let project = projects::Entity::find_by_id(run.project_id)
        .one(&deps.db)
        .await?
        .ok_or_else(|| ServiceError::missing("project", run.project_id))?;
    let store = crate::projects::project_files(&deps.db, deps.file_access(), &project).await?;
    let jobs = store::jobs_of(&deps.db, run_id).await?;
    let candidates = store::candidates_of_run(&deps.db, run_id).await?;
    let events = events::list_since(&deps.db, run_id, 0, 1_000_000).await?;
    let log = json!({ "run": run, "jobs": jobs, "candidates": candidates, "events": events });
    let key = format!("runs/{run_id}/run-log.json");
    let bytes = serde_json::to_vec_pretty(&log)?;
    let object_key = storage::ObjectKey::parse(&key)?;
    let size = bytes.len() as i64;
    let backend = store.put(&object_key, bytes.clone()).await?;
    let txn = crate::db::begin_write(&deps.db).await?;
    runs::Entity::update_many()
        .col_expr(runs::Column::RunLogKey, Expr::value(key.clone()))
        .filter(runs::Column::Id.eq(run_id))
        .exec(&txn)
        .await?;
    // A file like any other: registered as an asset (rewritten in place when
    // a retried run finishes again).
    let sha = crate::assets::sha256_hex(&bytes);
    let existing = assets::Entity::find()
        .filter(assets::Column::RunId.eq(run_id))
        .filter(assets::Column::Kind.eq("run_log"))
        .one(&txn)
        .await?;
    match existing {
        Some(row) => {
            assets::Entity::update_many()
                .col_expr(assets::Column::Sha256, Expr::value(sha))
                .col_expr(assets::Column::ByteSize, Expr::value(size))
                .col_expr(assets::Column::StorageBackend, Expr::value(backend))
                .filter(assets::Column::Id.eq(row.id))
                .exec(&txn)
                .await?;
        }
        None => {
            assets::Entity::insert(assets::ActiveModel::from(assets::Model {
                id: Uuid::now_v7(),
                project_id: run.project_id,
                kind: "run_log".into(),
                storage_backend: backend.to_string(),
                storage_key: key.clone(),
                storage_uri: key,
                mime_type: Some("application/json".into()),
                width: None,
                height: None,
                byte_size: Some(size),
                sha256: Some(sha),
                run_id: Some(run_id),
                job_id: None,
                candidate_id: None,
                metadata_json: json!({}),
                created_at: crate::time::now(),
            }))
            .exec_without_returning(&txn)
            .await?;
        }
    }
    crate::db::commit(txn).await?;
    Ok(())
}

/// Cancels a run that has not finished: the run and its waiting jobs become
/// `canceled`. The status guard means a completion racing with the cancel
/// cannot overwrite it, and a finished run is left as it is.
#[tracing::instrument(skip(deps, principal))]
pub async fn cancel(
    deps: &EngineDeps,
    run_id: Uuid,
    principal: &crate::Principal,
) -> Result<(), ServiceError> {
    // Each try is one transaction that commits whole or not at all, so a
    // try PostgreSQL aborted to break a deadlock is simply made again.
    let mut tries = 0;
    loop {
        tries += 1;
        match try_cancel(deps, run_id, principal).await {
            Err(ServiceError::Db(e)) if tries < 3 && crate::db::is_deadlock(&e) => {
                tracing::debug!(tries, "cancel met a deadlock; trying again");
            }
            outcome => return outcome,
        }
    }
}

async fn try_cancel(
    deps: &EngineDeps,
    run_id: Uuid,
    principal: &crate::Principal,
) -> Result<(), ServiceError> {
    let txn = crate::db::begin_write(&deps.db).await?;
    let now = Utc::now();
    // Jobs first, then the run's row: the order every job transition takes
    // (a job's change, then its event's number on the run's row), so a
    // cancel does not deadlock with a lease or an outcome on PostgreSQL.
    // A run that turns out not to be cancelable rolls the jobs back.
    run_jobs::Entity::update_many()
        .col_expr(run_jobs::Column::Status, Expr::value(JobStatus::Canceled))
        .col_expr(run_jobs::Column::UpdatedAt, Expr::value(now))
        .filter(run_jobs::Column::RunId.eq(run_id))
        .filter(run_jobs::Column::Status.is_in([JobStatus::Pending, JobStatus::Blocked]))
        .exec(&txn)
        .await?;
    let changed = runs::Entity::update_many()
        .col_expr(runs::Column::Status, Expr::value(RunStatus::Canceled))
        .col_expr(runs::Column::FinishedAt, Expr::value(now))
        .col_expr(runs::Column::UpdatedAt, Expr::value(now))
        .filter(runs::Column::Id.eq(run_id))
        .filter(runs::Column::Status.is_in([RunStatus::Queued, RunStatus::Running]))
        .exec(&txn)
        .await?
        .rows_affected;
    if changed == 0 {
        crate::db::rollback(txn).await?;
        return Ok(());
    }
    let run = runs::Entity::find_by_id(run_id).one(&txn).await?;
    let project_id = run.map(|r| r.project_id).unwrap_or_default();
    let event = events::append(&txn, run_id, project_id, "run.canceled", None, json!({})).await?;
    crate::audit::record(
        &txn,
        crate::audit::AuditEntry {
            principal,
            project_id: Some(project_id),
            event_code: "run.canceled",
            payload: json!({ "run_id": run_id }),
        },
    )
    .await?;
    crate::db::commit(txn).await?;
    deps.hub.publish(event);
    Ok(())
}

/// The project of a canceled run that still has a job open, which a RunActor
/// must drive to settle it (`None`: nothing left to settle). A run another
/// live node drives is left to it: that node sees the cancel.
pub async fn left_open_by_cancel(
    deps: &EngineDeps,
    run_id: Uuid,
) -> Result<Option<Uuid>, ServiceError> {
    let db = &deps.db;
    let run = runs::Entity::find_by_id(run_id).one(db).await?;
    let Some(run) = run.filter(|r| r.status == RunStatus::Canceled) else {
        return Ok(None);
    };
    if !store::has_open_jobs(db, run_id).await?
        || crate::cluster::driven_elsewhere(db, run_id, &deps.node_id, deps.config.node_timeout)
            .await?
    {
        return Ok(None);
    }
    Ok(Some(run.project_id))
}

/// What the ProjectActor follows: the control state every node follows
/// (paused processing, paused queues: `cluster::control`) and the
/// unfinished runs this node must drive — at its start, its own and those
/// nobody owns; at start and every tick, those of dead nodes, which it takes
/// over (see `cluster::runs_to_drive`).
pub async fn to_drive(
    deps: &EngineDeps,
    at_start: bool,
) -> Result<(crate::cluster::Control, Vec<runs::Model>), ServiceError> {
    let control = crate::cluster::control(&deps.db).await?;
    let runs = crate::cluster::runs_to_drive(
        &deps.db,
        &deps.node_id,
        deps.config.node_timeout,
        at_start,
        deps.observer(),
    )
    .await?;
    Ok((control, runs))
}
