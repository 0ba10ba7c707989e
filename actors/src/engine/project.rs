//! ProjectActor: one sharded owner for every project's run queue. Admits runs
//! (at most `max_runs_per_project` executing per project — here, and across
//! every node on the database, checked when a run starts — FIFO on this
//! node, fair across projects), pauses and resumes queues, cancels, and on
//! (re)start resumes the unfinished runs recorded in the database.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use actix::prelude::*;
use tracing::{Instrument, Span};
use uuid::Uuid;

use super::Shared;
use super::run::{CancelActiveRun, RunActor};
use domain::ServiceError;
use domain::cluster::Control;
use domain::runs::lifecycle::{self, Created, Leased};

const NAME: &str = "project";

/// A run waiting for admission, with the span of the request that submitted
/// it (none for a run resumed at start), so the run's trace continues it.
struct Queued {
    run_id: Uuid,
    project_id: Uuid,
    origin: Span,
    /// What its trigger handed over (a run created by this process).
    created: Option<Created>,
}

pub struct ProjectActor {
    deps: Arc<Shared>,
    queue: VecDeque<Queued>,
    active: HashMap<Uuid, (Uuid, Addr<RunActor>)>,
    paused: HashSet<Uuid>,
    /// An adoption pass is running (ticks meanwhile are skipped).
    adopting: bool,
    /// A pause or resume was given here while that pass was reading: the
    /// control state it read is older, and is not applied.
    control_stale: bool,
    /// Runs whose project had no room across the cluster: left in the queue
    /// until the next tick (not retried at every pump).
    held_back: HashSet<Uuid>,
}

impl ProjectActor {
    pub fn new(deps: Arc<Shared>) -> Self {
        Self {
            deps,
            queue: VecDeque::new(),
            active: HashMap::new(),
            paused: HashSet::new(),
            adopting: false,
            control_stale: false,
            held_back: HashSet::new(),
        }
    }

    /// Follows the control state every node follows (read at start and at
    /// every tick): a pause given to any node holds here too.
    fn apply(&mut self, control: Control) {
        if std::mem::take(&mut self.control_stale) {
            return;
        }
        self.deps
            .paused_all
            .store(control.paused_all, std::sync::atomic::Ordering::SeqCst);
        self.paused = control.paused_projects;
    }

    fn active_in(&self, project_id: Uuid) -> usize {
        self.active
            .values()
            .filter(|(p, _)| *p == project_id)
            .count()
    }

    /// A tick: follows the cluster's control state and queues the runs of
    /// dead nodes that this node took over.
    fn adopt(&mut self, ctx: &mut Context<Self>) {
        if self.adopting {
            return;
        }
        self.adopting = true;
        let deps = self.deps.clone();
        async move { lifecycle::to_drive(&deps, false).await }
            .into_actor(self)
            .map(|result, act, ctx| {
                act.adopting = false;
                match result {
                    Ok((control, runs)) => {
                        act.apply(control);
                        act.held_back.clear();
                        for r in runs {
                            if !act.queue.iter().any(|q| q.run_id == r.id)
                                && !act.active.contains_key(&r.id)
                            {
                                act.queue.push_back(Queued {
                                    run_id: r.id,
                                    project_id: r.project_id,
                                    origin: Span::none(),
                                    created: None,
                                });
                            }
                        }
                        act.pump(ctx);
                    }
                    Err(e) => act.deps.registry.record_error(NAME, e.to_string()),
                }
            })
            .spawn(ctx);
    }

    /// Starts queued runs while their project has room, oldest first.
    fn pump(&mut self, ctx: &mut Context<Self>) {
        if self
            .deps
            .paused_all
            .load(std::sync::atomic::Ordering::SeqCst)
            || self.deps.drain.is_draining()
        {
            return;
        }
        let mut waiting = VecDeque::new();
        while let Some(queued) = self.queue.pop_front() {
            let (run_id, project_id) = (queued.run_id, queued.project_id);
            if self.active.contains_key(&run_id) {
                // Resubmitted (e.g. retried) while its previous RunActor is
                // still winding down: start it again once that one reports.
                waiting.push_back(queued);
                continue;
            }
            if self.paused.contains(&project_id)
                || self.held_back.contains(&run_id)
                || self.active_in(project_id) >= self.deps.config.max_runs_per_project
            {
                waiting.push_back(queued);
                continue;
            }
            let addr = RunActor::new(
                self.deps.clone(),
                run_id,
                project_id,
                &queued.origin,
                ctx.address().recipient(),
            )
            .created(queued.created)
            .start();
            self.active.insert(run_id, (project_id, addr));
        }
        self.queue = waiting;
    }
}

impl Actor for ProjectActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(1024);
        self.deps.registry.started(NAME);
        // Recovery: resume what was queued or running when we last stopped.
        // Runs created from now on arrive with their SubmitRun (and the span
        // of the request that made them), so recovery leaves them to it.
        let deps = self.deps.clone();
        let started = chrono::Utc::now();
        ctx.wait(
            async move { lifecycle::to_drive(&deps, true).await }
                .into_actor(self)
                .map(move |result, act, ctx| {
                    match result {
                        Ok((control, runs)) => {
                            act.apply(control);
                            for r in runs.into_iter().filter(|r| r.created_at < started) {
                                if !act.queue.iter().any(|q| q.run_id == r.id) {
                                    act.queue.push_back(Queued {
                                        run_id: r.id,
                                        project_id: r.project_id,
                                        origin: Span::none(),
                                        created: None,
                                    });
                                }
                            }
                        }
                        Err(e) => act.deps.registry.record_error(NAME, e.to_string()),
                    }
                    act.pump(ctx);
                }),
        );
        // A dead node's runs are taken over by a live one.
        let every = self.deps.config.heartbeat;
        ctx.run_interval(every, |act, ctx| act.adopt(ctx));
    }
}

impl Supervised for ProjectActor {
    fn restarting(&mut self, _: &mut Context<Self>) {
        self.deps.registry.restarting(NAME, None);
        // The queue is a cache of the database: rebuilt in `started`. Running
        // RunActors keep going (this actor's address survives the restart) and
        // stay in `active`, so they are not started twice.
        self.queue.clear();
    }
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct SubmitRun {
    pub run_id: Uuid,
    pub project_id: Uuid,
    /// The submitting request's span: the run's trace continues it.
    pub span: Span,
    pub created: Option<Created>,
    /// Its trigger started it and leased its first jobs here: it is
    /// running, and is driven at once, outside the queue.
    pub started: Option<Box<Leased>>,
}

impl Handler<SubmitRun> for ProjectActor {
    type Result = ();

    fn handle(&mut self, msg: SubmitRun, ctx: &mut Context<Self>) {
        if let Some(first) = msg.started {
            // (An adoption pass that read it before this message queued it.)
            self.queue.retain(|q| q.run_id != msg.run_id);
            if !self.active.contains_key(&msg.run_id) {
                let addr = RunActor::new(
                    self.deps.clone(),
                    msg.run_id,
                    msg.project_id,
                    &msg.span,
                    ctx.address().recipient(),
                )
                .created(msg.created)
                .started(first)
                .start();
                self.active.insert(msg.run_id, (msg.project_id, addr));
            }
            return;
        }
        if !self.queue.iter().any(|q| q.run_id == msg.run_id) {
            self.queue.push_back(Queued {
                run_id: msg.run_id,
                project_id: msg.project_id,
                origin: msg.span,
                created: msg.created,
            });
        }
        self.pump(ctx);
    }
}

/// Whether a run of the project submitted now would start at once here:
/// processing not paused or draining, the project not paused, none of its
/// runs waiting in this node's queue (FIFO), and room on this node.
#[derive(Message)]
#[rtype(result = "bool")]
pub struct WouldAdmit {
    pub project_id: Uuid,
}

impl Handler<WouldAdmit> for ProjectActor {
    type Result = bool;

    fn handle(&mut self, msg: WouldAdmit, _: &mut Context<Self>) -> bool {
        let p = msg.project_id;
        !self
            .deps
            .paused_all
            .load(std::sync::atomic::Ordering::SeqCst)
            && !self.deps.drain.is_draining()
            && !self.paused.contains(&p)
            && !self.queue.iter().any(|q| q.project_id == p)
            && self.active_in(p) < self.deps.config.max_runs_per_project
    }
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct RunFinished {
    pub run_id: Uuid,
    /// Not started: its project has no room across the cluster. It goes
    /// back to the queue's front and is tried again at the next tick.
    pub deferred: bool,
}

impl Handler<RunFinished> for ProjectActor {
    type Result = ();

    fn handle(&mut self, msg: RunFinished, ctx: &mut Context<Self>) {
        if let Some((project_id, _)) = self.active.remove(&msg.run_id)
            && msg.deferred
        {
            self.held_back.insert(msg.run_id);
            self.queue.push_front(Queued {
                run_id: msg.run_id,
                project_id,
                origin: Span::none(),
                created: None,
            });
        }
        self.pump(ctx);
    }
}

#[derive(Message)]
#[rtype(result = "Result<(), ServiceError>")]
pub struct CancelRun {
    pub run_id: Uuid,
    /// Who asked (audited with the cancel).
    pub principal: domain::Principal,
    pub span: Span,
}

impl Handler<CancelRun> for ProjectActor {
    type Result = ResponseFuture<Result<(), ServiceError>>;

    fn handle(&mut self, msg: CancelRun, ctx: &mut Context<Self>) -> Self::Result {
        self.queue.retain(|q| q.run_id != msg.run_id);
        let active = self.active.get(&msg.run_id).map(|(_, a)| a.clone());
        let (deps, me) = (self.deps.clone(), ctx.address());
        Box::pin(
            async move {
                lifecycle::cancel(&deps, msg.run_id, &msg.principal).await?;
                if let Some(addr) = active {
                    addr.do_send(CancelActiveRun);
                } else if let Some(project_id) =
                    lifecycle::left_open_by_cancel(&deps, msg.run_id).await?
                {
                    // Not driven here (e.g. queued behind its project's
                    // limit after a restart), yet a job is still open, held
                    // by a worker that may be gone: settle what it left.
                    me.do_send(SettleCanceled {
                        run_id: msg.run_id,
                        project_id,
                    });
                }
                Ok(())
            }
            .instrument(msg.span),
        )
    }
}

/// Drives a canceled run that is not driven on this node until what its
/// jobs left is settled. Outside the queue's limits: such a run leases
/// nothing and calls no provider.
#[derive(Message)]
#[rtype(result = "()")]
struct SettleCanceled {
    run_id: Uuid,
    project_id: Uuid,
}

impl Handler<SettleCanceled> for ProjectActor {
    type Result = ();

    fn handle(&mut self, msg: SettleCanceled, ctx: &mut Context<Self>) {
        if self.active.contains_key(&msg.run_id) {
            return;
        }
        let addr = RunActor::new(
            self.deps.clone(),
            msg.run_id,
            msg.project_id,
            &Span::none(),
            ctx.address().recipient(),
        )
        .start();
        self.active.insert(msg.run_id, (msg.project_id, addr));
    }
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct SetPaused {
    pub project_id: Uuid,
    pub paused: bool,
}

impl Handler<SetPaused> for ProjectActor {
    type Result = ();

    fn handle(&mut self, msg: SetPaused, ctx: &mut Context<Self>) {
        self.control_stale = self.adopting;
        if msg.paused {
            self.paused.insert(msg.project_id);
        } else {
            self.paused.remove(&msg.project_id);
            self.pump(ctx);
        }
    }
}

/// All processing paused or resumed here (already persisted for the other
/// nodes): applied at once, and after a resume whatever the queue allows
/// starts.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SetAllPaused(pub bool);

impl Handler<SetAllPaused> for ProjectActor {
    type Result = ();

    fn handle(&mut self, msg: SetAllPaused, ctx: &mut Context<Self>) {
        self.control_stale = self.adopting;
        self.deps
            .paused_all
            .store(msg.0, std::sync::atomic::Ordering::SeqCst);
        self.pump(ctx);
    }
}

#[derive(Message)]
#[rtype(result = "bool")]
pub struct IsPaused {
    pub project_id: Uuid,
}

impl Handler<IsPaused> for ProjectActor {
    type Result = bool;

    fn handle(&mut self, msg: IsPaused, _: &mut Context<Self>) -> bool {
        self.paused.contains(&msg.project_id)
    }
}

/// Stops the actor so its Supervisor restarts it (admin restart, tests).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Restart;

impl Handler<Restart> for ProjectActor {
    type Result = ();

    fn handle(&mut self, _: Restart, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}
