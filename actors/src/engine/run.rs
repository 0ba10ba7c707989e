//! RunActor: drives one run. Leases ready jobs (bounded by
//! `max_jobs_per_run`), spawns one WorkerActor per job, chains stages (a job's
//! winner becomes its child's input), retries jobs whose body failed, reclaims
//! expired leases, and finishes the run exactly once.

use std::collections::HashSet;
use std::sync::Arc;

use actix::prelude::*;
use chrono::Utc;
use entities::{assets, projects, run_jobs, runs};
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect};
use serde_json::json;
use uuid::Uuid;

use super::project::{ProjectActor, RunFinished};
use super::worker::WorkerActor;
use super::{EngineDeps, Shared};
use domain::ServiceError;
use domain::runs::events;
use domain::runs::pipeline::JobOutcome;
use domain::runs::store::{self, status};

pub struct RunActor {
    deps: Arc<Shared>,
    run_id: Uuid,
    project_id: Uuid,
    owner: Addr<ProjectActor>,
    running: HashSet<Uuid>,
    /// The project's object store, resolved on the first lease.
    store: Option<storage::ProjectFiles>,
    scheduling: bool,
    /// A pass was requested while one was in flight: run another after it.
    rescan: bool,
    finished: bool,
}

impl RunActor {
    pub fn new(
        deps: Arc<Shared>,
        run_id: Uuid,
        project_id: Uuid,
        owner: Addr<ProjectActor>,
    ) -> Self {
        Self {
            deps,
            run_id,
            project_id,
            owner,
            running: HashSet::new(),
            store: None,
            scheduling: false,
            rescan: false,
            finished: false,
        }
    }

    /// One scheduling pass: reclaim expired leases, lease ready jobs up to the
    /// bound, start their workers, or finish the run when nothing is left.
    fn schedule(&mut self, ctx: &mut Context<Self>) {
        if self.finished {
            return;
        }
        if self.scheduling {
            self.rescan = true;
            return;
        }
        self.scheduling = true;
        self.rescan = false;
        let deps = self.deps.clone();
        let run_id = self.run_id;
        let mine: Vec<Uuid> = self.running.iter().copied().collect();
        let room = self
            .deps
            .config
            .max_jobs_per_run
            .saturating_sub(self.running.len());
        let cached_store = self.store.clone();
        async move { plan_step(&deps, run_id, &mine, room, cached_store).await }
            .into_actor(self)
            .map(|result, act, ctx| {
                act.scheduling = false;
                match result {
                    Ok(Step::Start { run, store, jobs }) => {
                        act.store = Some((*store).clone());
                        for job in jobs {
                            act.running.insert(job.id);
                            WorkerActor::new(
                                act.deps.clone(),
                                (*run).clone(),
                                job,
                                (*store).clone(),
                                ctx.address(),
                            )
                            .start();
                        }
                    }
                    Ok(Step::Finish) if act.running.is_empty() => act.finish(ctx),
                    Ok(_) => {}
                    Err(e) => {
                        tracing::error!(run_id = %act.run_id, error = %e, "run scheduling failed");
                        act.deps.registry.record_error("run", e.to_string());
                    }
                }
                if act.rescan {
                    act.schedule(ctx);
                }
            })
            .spawn(ctx);
    }

    fn finish(&mut self, ctx: &mut Context<Self>) {
        if self.finished {
            return;
        }
        self.finished = true;
        let deps = self.deps.clone();
        let (run_id, project_id) = (self.run_id, self.project_id);
        async move { finish_run(&deps, run_id, project_id).await }
            .into_actor(self)
            .map(|result, act, ctx| {
                if let Err(e) = result {
                    tracing::error!(run_id = %act.run_id, error = %e, "cannot finish run");
                }
                act.owner.do_send(RunFinished { run_id: act.run_id });
                ctx.stop();
            })
            .spawn(ctx);
    }
}

impl Actor for RunActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(1024);
        let deps = self.deps.clone();
        let (run_id, project_id) = (self.run_id, self.project_id);
        async move {
            let txn = domain::db::begin_write(&deps.db).await?;
            let current: Option<String> = runs::Entity::find_by_id(run_id)
                .select_only()
                .column(runs::Column::Status)
                .into_tuple()
                .one(&txn)
                .await?;
            // Already finished (a duplicate submission that raced with
            // recovery, or a cancel that came first): nothing to drive.
            if current.is_none_or(|s| status::run_is_terminal(&s)) {
                return Ok::<_, ServiceError>(false);
            }
            let changed = runs::Entity::update_many()
                .col_expr(runs::Column::Status, Expr::value(status::RUNNING))
                .col_expr(runs::Column::StartedAt, Expr::value(Utc::now()))
                .col_expr(runs::Column::UpdatedAt, Expr::value(Utc::now()))
                .filter(runs::Column::Id.eq(run_id))
                .filter(runs::Column::Status.eq(status::QUEUED))
                .exec(&txn)
                .await?
                .rows_affected;
            let event = if changed > 0 {
                Some(
                    events::append(&txn, run_id, project_id, "run.started", None, json!({}))
                        .await?,
                )
            } else {
                None
            };
            domain::db::commit(txn).await?;
            if let Some(e) = event {
                deps.hub.publish(e);
            }
            Ok(true)
        }
        .into_actor(self)
        .map(|result, act, ctx| match result {
            Ok(false) => {
                act.finished = true;
                act.owner.do_send(RunFinished { run_id: act.run_id });
                ctx.stop();
            }
            Ok(true) => act.schedule(ctx),
            Err(e) => {
                tracing::error!(run_id = %act.run_id, error = %e, "cannot start run");
                act.schedule(ctx);
            }
        })
        .wait(ctx);
        // Picks up leases that expired (e.g. a worker of a crashed process).
        let every = self.deps.config.heartbeat;
        ctx.run_interval(every, |act, ctx| act.schedule(ctx));
    }
}

enum Step {
    Start {
        run: Box<runs::Model>,
        store: Box<storage::ProjectFiles>,
        jobs: Vec<run_jobs::Model>,
    },
    Finish,
    Wait,
}

async fn plan_step(
    deps: &EngineDeps,
    run_id: Uuid,
    mine: &[Uuid],
    room: usize,
    cached_store: Option<storage::ProjectFiles>,
) -> Result<Step, ServiceError> {
    let Some(run) = runs::Entity::find_by_id(run_id).one(&deps.db).await? else {
        return Ok(Step::Finish);
    };
    let now = Utc::now();
    // Each pass reads only what it needs (running leases, up to `room` ready
    // jobs), never the whole run: the cost of a pass must not grow with the
    // run's size.
    let running: Vec<(Uuid, Option<chrono::DateTime<Utc>>)> = run_jobs::Entity::find()
        .select_only()
        .column(run_jobs::Column::Id)
        .column(run_jobs::Column::LeaseExpiresAt)
        .filter(run_jobs::Column::RunId.eq(run_id))
        .filter(run_jobs::Column::Status.eq(status::RUNNING))
        .into_tuple()
        .all(&deps.db)
        .await?;
    // Reclaim jobs leased by a worker that is gone (its lease ran out); the
    // write happens only when there is something to reclaim.
    let (expired, others_live): (Vec<_>, Vec<_>) = running
        .into_iter()
        .filter(|(id, _)| !mine.contains(id))
        .partition(|(_, until)| until.is_none_or(|t| t < now));
    if !expired.is_empty() {
        let ids: Vec<Uuid> = expired.into_iter().map(|(id, _)| id).collect();
        let txn = domain::db::begin_write(&deps.db).await?;
        let reclaimed = run_jobs::Entity::update_many()
            .col_expr(run_jobs::Column::Status, Expr::value(status::PENDING))
            .col_expr(
                run_jobs::Column::LeaseOwner,
                Expr::value(Option::<String>::None),
            )
            .filter(run_jobs::Column::Id.is_in(ids.clone()))
            .filter(run_jobs::Column::Status.eq(status::RUNNING))
            .filter(
                sea_orm::Condition::any()
                    .add(run_jobs::Column::LeaseExpiresAt.is_null())
                    .add(run_jobs::Column::LeaseExpiresAt.lt(now)),
            )
            .exec_with_returning(&txn)
            .await?;
        // Their calls' workers are gone: settle what they left in flight.
        let reclaimed: Vec<Uuid> = reclaimed.into_iter().map(|j| j.id).collect();
        domain::runs::calls::settle_abandoned(&txn, &reclaimed).await?;
        domain::db::commit(txn).await?;
    }
    if run.status == status::CANCELED {
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
    let ready = run_jobs::Entity::find()
        .filter(run_jobs::Column::RunId.eq(run_id))
        .filter(run_jobs::Column::Status.eq(status::PENDING))
        .order_by_asc(run_jobs::Column::CreatedAt)
        .order_by_asc(run_jobs::Column::Id)
        .limit(room as u64)
        .all(&deps.db)
        .await?;
    if ready.is_empty() {
        let undecided = run_jobs::Entity::find()
            .filter(run_jobs::Column::RunId.eq(run_id))
            .filter(run_jobs::Column::Status.is_in([
                status::BLOCKED,
                status::PENDING,
                status::RUNNING,
            ]))
            .count(&deps.db)
            .await?;
        return Ok(if undecided == 0 {
            Step::Finish
        } else {
            Step::Wait
        });
    }
    // One guarded statement leases them all; RETURNING gives the rows as leased.
    let lease_until = now + chrono::Duration::from_std(deps.config.lease).unwrap_or_default();
    let txn = domain::db::begin_write(&deps.db).await?;
    let mut leased = run_jobs::Entity::update_many()
        .col_expr(run_jobs::Column::Status, Expr::value(status::RUNNING))
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
        .col_expr(run_jobs::Column::StartedAt, Expr::value(now))
        .col_expr(run_jobs::Column::UpdatedAt, Expr::value(now))
        .filter(run_jobs::Column::Id.is_in(ready.iter().map(|j| j.id)))
        .filter(run_jobs::Column::Status.eq(status::PENDING))
        .exec_with_returning(&txn)
        .await?;
    // Plan order, as they were ready.
    leased.sort_by_key(|j| ready.iter().position(|r| r.id == j.id));
    let started = events::append_many(
        &txn,
        run_id,
        run.project_id,
        leased
            .iter()
            .map(|j| {
                (
                    "job.started",
                    Some(j.id),
                    json!({ "job_key": j.job_key, "stage": j.stage, "attempt": j.attempt }),
                )
            })
            .collect(),
    )
    .await?;
    domain::db::commit(txn).await?;
    for e in started {
        deps.hub.publish(e);
    }
    if leased.is_empty() {
        return Ok(Step::Wait);
    }
    let store = match cached_store {
        Some(store) => store,
        None => {
            let project = projects::Entity::find_by_id(run.project_id)
                .one(&deps.db)
                .await?
                .ok_or_else(|| ServiceError::Internal("project of run vanished".into()))?;
            domain::projects::project_files(&deps.db, deps.file_access(), &project).await?
        }
    };
    Ok(Step::Start {
        run: Box::new(run),
        store: Box::new(store),
        jobs: leased,
    })
}

/// Final status from the jobs; guarded so a cancel is never overwritten.
async fn finish_run(deps: &EngineDeps, run_id: Uuid, project_id: Uuid) -> Result<(), ServiceError> {
    let jobs = store::jobs_of(&deps.db, run_id).await?;
    let done = jobs.iter().filter(|j| j.status == status::DONE).count();
    let final_status = if done == jobs.len() {
        status::DONE
    } else if done == 0 {
        status::FAILED
    } else {
        status::PARTIAL
    };
    let txn = domain::db::begin_write(&deps.db).await?;
    let now = Utc::now();
    let changed = runs::Entity::update_many()
        .col_expr(runs::Column::Status, Expr::value(final_status))
        .col_expr(runs::Column::FinishedAt, Expr::value(now))
        .col_expr(runs::Column::UpdatedAt, Expr::value(now))
        .filter(runs::Column::Id.eq(run_id))
        .filter(runs::Column::Status.eq(status::RUNNING))
        .exec(&txn)
        .await?
        .rows_affected;
    let run = runs::Entity::find_by_id(run_id).one(&txn).await?;
    if run.as_ref().is_some_and(|r| r.status == status::CANCELED) {
        settle_canceled(&txn, run_id, now).await?;
    }
    // Webhooks are told in the same transaction, so a crash cannot lose them.
    if changed > 0
        && let Some(run) = &run
    {
        domain::webhooks::enqueue_run_outcome(&txn, run, jobs.len(), done).await?;
    }
    let status_now = run.map(|r| r.status).unwrap_or_default();
    let event = events::append(
        &txn,
        run_id,
        project_id,
        "run.finished",
        None,
        json!({
            "status": if changed > 0 { final_status } else { status_now.as_str() },
            "jobs": jobs.len(), "jobs_done": done,
        }),
    )
    .await?;
    domain::db::commit(txn).await?;
    deps.hub.publish(event);
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
        .filter(run_jobs::Column::Status.is_in([status::PENDING, status::BLOCKED, status::RUNNING]))
        .into_tuple()
        .all(db)
        .await?;
    if open.is_empty() {
        return Ok(());
    }
    run_jobs::Entity::update_many()
        .col_expr(run_jobs::Column::Status, Expr::value(status::CANCELED))
        .col_expr(
            run_jobs::Column::LeaseOwner,
            Expr::value(Option::<String>::None),
        )
        .col_expr(run_jobs::Column::UpdatedAt, Expr::value(now))
        .filter(run_jobs::Column::Id.is_in(open.clone()))
        .exec(db)
        .await?;
    domain::runs::calls::settle_abandoned(db, &open).await
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
        .ok_or_else(|| ServiceError::Internal("project of run vanished".into()))?;
    let store = domain::projects::project_files(&deps.db, deps.file_access(), &project).await?;
    let jobs = store::jobs_of(&deps.db, run_id).await?;
    let candidates = store::candidates_of_run(&deps.db, run_id).await?;
    let events = events::list_since(&deps.db, run_id, 0, 1_000_000).await?;
    let log = json!({ "run": run, "jobs": jobs, "candidates": candidates, "events": events });
    let key = format!("runs/{run_id}/run-log.json");
    let bytes =
        serde_json::to_vec_pretty(&log).map_err(|e| ServiceError::Internal(e.to_string()))?;
    let object_key =
        storage::ObjectKey::parse(&key).map_err(|e| ServiceError::Internal(e.to_string()))?;
    let size = bytes.len() as i64;
    let backend = store.put(&object_key, bytes.clone()).await?;
    let txn = domain::db::begin_write(&deps.db).await?;
    runs::Entity::update_many()
        .col_expr(runs::Column::RunLogKey, Expr::value(key.clone()))
        .filter(runs::Column::Id.eq(run_id))
        .exec(&txn)
        .await?;
    // A file like any other: registered as an asset (rewritten in place when
    // a retried run finishes again).
    let sha = domain::assets::sha256_hex(&bytes);
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
                created_at: domain::time::now(),
            }))
            .exec_without_returning(&txn)
            .await?;
        }
    }
    domain::db::commit(txn).await?;
    Ok(())
}

/// A worker's report.
#[derive(Message)]
#[rtype(result = "()")]
pub struct JobFinished {
    pub job_id: Uuid,
    /// `Err`: the job body failed unexpectedly (panic or internal error).
    pub outcome: Result<JobOutcome, String>,
}

impl Handler<JobFinished> for RunActor {
    type Result = ();

    // Spawned, not `ctx.wait`ed: waiting would pause this actor's other
    // futures, one of which may hold the write gate the settle needs.
    fn handle(&mut self, msg: JobFinished, ctx: &mut Context<Self>) {
        let deps = self.deps.clone();
        let (run_id, project_id) = (self.run_id, self.project_id);
        async move { settle_job(&deps, run_id, project_id, msg.job_id, msg.outcome).await }
            .into_actor(self)
            .map(move |result, act, ctx| {
                if let Err(e) = result {
                    tracing::error!(run_id = %act.run_id, error = %e, "cannot settle job");
                }
                act.running.remove(&msg.job_id);
                act.schedule(ctx);
            })
            .spawn(ctx);
    }
}

/// Applies a job's outcome to the chain: unblocks its child with the winner
/// as input, skips the rest of the chain after a failure, or schedules a
/// retry after an unexpected failure while attempts remain.
async fn settle_job(
    deps: &EngineDeps,
    run_id: Uuid,
    project_id: Uuid,
    job_id: Uuid,
    outcome: Result<JobOutcome, String>,
) -> Result<(), ServiceError> {
    // A winner was recorded with the job's verdict and already unblocked the
    // next stage (runs::writer): nothing left to write.
    if matches!(outcome, Ok(JobOutcome::Done { .. })) {
        return Ok(());
    }
    let now = Utc::now();
    let txn = domain::db::begin_write(&deps.db).await?;
    let job = run_jobs::Entity::find_by_id(job_id).one(&txn).await?;
    let Some(job) = job else { return Ok(()) };
    let mut published = Vec::new();
    // A job canceled while it ran keeps its cancel; its chain stops there.
    let outcome = if job.status == status::CANCELED {
        Ok(JobOutcome::Canceled)
    } else {
        outcome
    };
    match outcome {
        Ok(JobOutcome::Done { .. }) => {}
        Ok(JobOutcome::Interrupted) => {
            // Back to the queue without using up an attempt: it stopped
            // because the service is shutting down, not because it failed.
            run_jobs::Entity::update_many()
                .col_expr(run_jobs::Column::Status, Expr::value(status::PENDING))
                .col_expr(
                    run_jobs::Column::LeaseOwner,
                    Expr::value(Option::<String>::None),
                )
                .col_expr(
                    run_jobs::Column::Attempt,
                    Expr::col(run_jobs::Column::Attempt).sub(1),
                )
                .col_expr(run_jobs::Column::UpdatedAt, Expr::value(now))
                .filter(run_jobs::Column::Id.eq(job_id))
                .filter(run_jobs::Column::Status.eq(status::RUNNING))
                .exec(&txn)
                .await?;
        }
        Ok(JobOutcome::Failed { .. }) => skip_descendants(&txn, job_id, now).await?,
        Ok(JobOutcome::Canceled) => {
            skip_descendants(&txn, job_id, now).await?;
            run_jobs::Entity::update_many()
                .col_expr(run_jobs::Column::Status, Expr::value(status::CANCELED))
                .filter(run_jobs::Column::Id.eq(job_id))
                .filter(run_jobs::Column::Status.eq(status::RUNNING))
                .exec(&txn)
                .await?;
        }
        Err(error) => {
            let retry = job.attempt < job.max_attempts;
            run_jobs::Entity::update_many()
                .col_expr(
                    run_jobs::Column::Status,
                    Expr::value(if retry {
                        status::PENDING
                    } else {
                        status::FAILED
                    }),
                )
                .col_expr(run_jobs::Column::LastError, Expr::value(error.clone()))
                .col_expr(
                    run_jobs::Column::LeaseOwner,
                    Expr::value(Option::<String>::None),
                )
                .col_expr(run_jobs::Column::UpdatedAt, Expr::value(now))
                .filter(run_jobs::Column::Id.eq(job_id))
                .filter(run_jobs::Column::Status.eq(status::RUNNING))
                .exec(&txn)
                .await?;
            if !retry {
                skip_descendants(&txn, job_id, now).await?;
            }
            published.push(
                events::append(
                    &txn,
                    run_id,
                    project_id,
                    if retry {
                        "job.retry_scheduled"
                    } else {
                        "job.failed"
                    },
                    Some(job_id),
                    json!({ "job_key": job.job_key, "attempt": job.attempt, "error": error }),
                )
                .await?,
            );
        }
    }
    domain::db::commit(txn).await?;
    for e in published {
        deps.hub.publish(e);
    }
    Ok(())
}

async fn skip_descendants<C: sea_orm::ConnectionTrait>(
    db: &C,
    job_id: Uuid,
    now: chrono::DateTime<Utc>,
) -> Result<(), ServiceError> {
    let mut frontier = vec![job_id];
    while let Some(parent) = frontier.pop() {
        let children: Vec<Uuid> = run_jobs::Entity::find()
            .filter(run_jobs::Column::ParentJobId.eq(parent))
            .all(db)
            .await?
            .into_iter()
            .map(|j| j.id)
            .collect();
        if children.is_empty() {
            continue;
        }
        run_jobs::Entity::update_many()
            .col_expr(run_jobs::Column::Status, Expr::value(status::SKIPPED))
            .col_expr(run_jobs::Column::UpdatedAt, Expr::value(now))
            .filter(run_jobs::Column::Id.is_in(children.clone()))
            .filter(run_jobs::Column::Status.eq(status::BLOCKED))
            .exec(db)
            .await?;
        frontier.extend(children);
    }
    Ok(())
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct CancelActiveRun;

impl Handler<CancelActiveRun> for RunActor {
    type Result = ();

    fn handle(&mut self, _: CancelActiveRun, ctx: &mut Context<Self>) {
        // Workers see the canceled run before their next provider call; the
        // run finishes once they have all reported back.
        self.schedule(ctx);
    }
}
