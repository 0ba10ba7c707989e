//! RunActor: drives one run. Leases ready jobs (bounded by
//! `max_jobs_per_run`), spawns one WorkerActor per job, chains stages (a job's
//! winner becomes its child's input), retries jobs whose body failed, reclaims
//! expired leases, and finishes the run exactly once.

use std::collections::HashSet;
use std::sync::Arc;

use actix::prelude::*;
use tracing::{Instrument, Span};
use uuid::Uuid;

use super::Shared;
use super::project::RunFinished;
use super::worker::WorkerActor;
use domain::runs::job_outcome;
use domain::runs::lease::Fence;
use domain::runs::lifecycle::{self, Created, Leased, RunShared, Start, Step};
use domain::runs::pipeline::JobOutcome;

pub struct RunActor {
    deps: Arc<Shared>,
    run_id: Uuid,
    project_id: Uuid,
    /// Told once, when the run is finished.
    owner: Recipient<RunFinished>,
    running: HashSet<Uuid>,
    /// The run's span (a child of the submitting request's, when there was
    /// one): its scheduling, its workers and their job bodies run in it.
    span: Span,
    /// What its workers share, as its first lease read it.
    cached: Option<RunShared>,
    /// What the trigger that created the run handed over, if it did.
    created: Option<Created>,
    /// The jobs its trigger leased when it started the run, until their
    /// workers start.
    first: Option<Box<Leased>>,
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
        origin: &Span,
        owner: Recipient<RunFinished>,
    ) -> Self {
        Self {
            deps,
            run_id,
            project_id,
            owner,
            running: HashSet::new(),
            span: tracing::info_span!(parent: origin, "run", %run_id, %project_id),
            cached: None,
            created: None,
            first: None,
            scheduling: false,
            rescan: false,
            finished: false,
        }
    }

    /// A run its trigger just created, with what the trigger handed over.
    pub fn created(mut self, created: Option<Created>) -> Self {
        self.created = created;
        self
    }

    /// A run its trigger started, with the jobs it leased here: their
    /// workers start with the actor, without [`lifecycle::start`].
    pub fn started(mut self, first: Box<Leased>) -> Self {
        self.first = Some(first);
        self
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
        let (cached, created) = (self.cached.clone(), self.created.clone());
        async move { lifecycle::next_step(&deps, run_id, &mine, room, cached, created.as_ref()).await }
            .instrument(self.span.clone())
            .into_actor(self)
            .map(|result, act, ctx| {
                act.scheduling = false;
                match result {
                    Ok(Step::Start(leased)) => act.start_workers(*leased, ctx),
                    Ok(Step::Finish) if act.running.is_empty() => act.finish(ctx),
                    Ok(Step::Yield) if act.running.is_empty() => act.give_up(ctx),
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

    /// One WorkerActor per job leased to this node.
    fn start_workers(&mut self, leased: Leased, ctx: &mut Context<Self>) {
        let Leased {
            shared,
            provider_code,
            provider,
            jobs,
        } = leased;
        for job in jobs {
            self.running.insert(job.id);
            WorkerActor::new(
                self.deps.clone(),
                shared.clone(),
                job,
                (provider_code.clone(), provider.clone()),
                &self.span,
                ctx.address().recipient(),
            )
            .start();
        }
        self.cached = Some(shared);
    }

    /// Stops driving a run another node took over, without finishing it.
    fn give_up(&mut self, ctx: &mut Context<Self>) {
        if self.finished {
            return;
        }
        self.finished = true;
        tracing::warn!(run_id = %self.run_id, "another node drives this run now: stopped driving it here");
        self.owner.do_send(RunFinished {
            run_id: self.run_id,
            deferred: false,
        });
        ctx.stop();
    }

    fn finish(&mut self, ctx: &mut Context<Self>) {
        if self.finished {
            return;
        }
        self.finished = true;
        let deps = self.deps.clone();
        let (run_id, project_id) = (self.run_id, self.project_id);
        async move { lifecycle::finish(&deps, run_id, project_id).await }
            .instrument(self.span.clone())
            .into_actor(self)
            .map(|result, act, ctx| {
                if let Err(e) = result {
                    tracing::error!(run_id = %act.run_id, error = %e, "cannot finish run");
                }
                act.owner.do_send(RunFinished {
                    run_id: act.run_id,
                    deferred: false,
                });
                ctx.stop();
            })
            .spawn(ctx);
    }
}

impl Actor for RunActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(1024);
        // Picks up leases that expired (e.g. a worker of a crashed process).
        let every = self.deps.config.heartbeat;
        ctx.run_interval(every, |act, ctx| act.schedule(ctx));
        if let Some(first) = self.first.take() {
            // Started by its trigger: the next pass comes when one of these
            // jobs reports (or at the interval; at once if there were none).
            let none = first.jobs.is_empty();
            self.start_workers(*first, ctx);
            if none {
                self.schedule(ctx);
            }
            return;
        }
        let deps = self.deps.clone();
        let (run_id, project_id) = (self.run_id, self.project_id);
        let created = self.created.clone();
        async move { lifecycle::start(&deps, run_id, project_id, created.as_ref()).await }
            .instrument(self.span.clone())
            .into_actor(self)
            .map(|result, act, ctx| match result {
                Ok(start @ (Start::Nothing | Start::NoRoom)) => {
                    act.finished = true;
                    act.owner.do_send(RunFinished {
                        run_id: act.run_id,
                        deferred: matches!(start, Start::NoRoom),
                    });
                    ctx.stop();
                }
                // Started with its first jobs leased: the next pass comes
                // when one of them reports (or at the interval).
                Ok(Start::Drive(Some(leased))) => act.start_workers(*leased, ctx),
                Ok(Start::Drive(None)) => act.schedule(ctx),
                Err(e) => {
                    tracing::error!(run_id = %act.run_id, error = %e, "cannot start run");
                    act.schedule(ctx);
                }
            })
            .wait(ctx);
    }
}

/// A worker's report.
#[derive(Message)]
#[rtype(result = "()")]
pub struct JobFinished {
    /// The job and the lease epoch its worker held.
    pub fence: Fence,
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
        async move { job_outcome::settle_job(&deps, run_id, project_id, msg.fence, msg.outcome).await }
            .instrument(self.span.clone())
            .into_actor(self)
            .map(move |result, act, ctx| {
                if let Err(e) = result {
                    tracing::error!(run_id = %act.run_id, error = %e, "cannot settle job");
                }
                act.running.remove(&msg.fence.job_id);
                act.schedule(ctx);
            })
            .spawn(ctx);
    }
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
