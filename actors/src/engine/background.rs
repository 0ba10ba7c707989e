//! BackgroundActor: the service's work outside runs — export packages and S3
//! syncs — started through the API, and scheduled pushes of every project
//! whose storage names a bucket.
//!
//! Each piece of work runs in a task of its own that the actor watches: a
//! task that panics still ends its export `failed` (and its sync reported
//! failed on the feed and in the audit log) instead of leaving it `running`
//! forever. What is running is kept outside the actor ([`Work`]), so a
//! restart of the actor neither loses nor duplicates any of it.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use domain::ServiceError;
use domain::exports::{Cancellable, ExportRequest};
use domain::sync::{Direction, SyncOptions};
use entities::{project_exports, projects};
use uuid::Uuid;

use super::Shared;
use domain::background::Running;

const NAME: &str = "background";

/// Transfers in flight per sync.
const SYNC_CONCURRENCY: usize = 4;

/// What runs in the background, kept across the actor's restarts.
#[derive(Default)]
pub struct Work {
    /// Exports being built, by export id (to cancel them).
    pub exports: Running,
    /// Projects being synced, by project id (one sync per project).
    pub syncs: Running,
    /// Projects whose last scheduled push failed: the same failure again is
    /// not recorded again at every tick (the next success clears it).
    failing: std::sync::Mutex<std::collections::HashSet<Uuid>>,
}

impl Work {
    /// Whether a scheduled push's outcome is news: anything but a failure
    /// following a failure.
    fn scheduled_outcome_is_news(&self, project_id: Uuid, failed: bool) -> bool {
        let Ok(mut failing) = self.failing.lock() else {
            return true;
        };
        if failed {
            failing.insert(project_id)
        } else {
            failing.remove(&project_id);
            true
        }
    }
}

pub struct BackgroundActor {
    shared: Arc<Shared>,
    work: Arc<Work>,
    /// A scheduled pass is running: ticks meanwhile are skipped.
    busy: bool,
}

impl BackgroundActor {
    pub fn new(shared: Arc<Shared>, work: Arc<Work>) -> Self {
        Self {
            shared,
            work,
            busy: false,
        }
    }

    /// Pushes every project whose storage names a bucket (one at a time;
    /// a project already syncing is left to that sync).
    fn scheduled_push(&mut self, ctx: &mut Context<Self>) {
        if self.busy {
            return;
        }
        self.busy = true;
        let (shared, work) = (self.shared.clone(), self.work.clone());
        async move {
            let projects = domain::sync::projects_with_a_bucket(&shared.db).await?;
            for project in projects {
                // A bucket without credentials (or settings it cannot use)
                // is the project owner's to fix, not an error every tick.
                let files =
                    domain::projects::project_files(&shared.db, shared.file_access(), &project)
                        .await;
                if let Err(e) = files.as_ref().map(|f| f.bucket().map(|_| ())) {
                    tracing::debug!(project = %project.slug, error = %e, "no scheduled push");
                    continue;
                }
                let Some(flag) = work.syncs.try_track(project.id) else {
                    continue;
                };
                drop(flag);
                let options = SyncOptions {
                    direction: Direction::Push,
                    dry_run: false,
                    overwrite: false,
                    concurrency: SYNC_CONCURRENCY,
                    full: false,
                };
                let principal = domain::Principal::Scheduler;
                let sync = run_sync(
                    shared.clone(),
                    work.clone(),
                    project,
                    principal,
                    options,
                    Uuid::now_v7(),
                    Origin::Schedule,
                );
                // Its own task: a restart of this actor does not cut it off.
                let _ = actix::spawn(sync).await;
            }
            Ok::<_, ServiceError>(())
        }
        .into_actor(self)
        .map(|result, act, _| {
            act.busy = false;
            if let Err(e) = result {
                tracing::warn!(error = %e, "scheduled sync pass failed");
                act.registry().record_error(NAME, e.to_string());
            }
        })
        .spawn(ctx);
    }

    fn registry(&self) -> &super::SupervisionRegistry {
        &self.shared.registry
    }
}

impl Actor for BackgroundActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.busy = false;
        self.registry().started(NAME);
        if let Some(every) = self.shared.config.sync_push_every {
            ctx.run_interval(every.max(Duration::from_secs(1)), |act, ctx| {
                act.scheduled_push(ctx)
            });
        }
    }
}

impl Supervised for BackgroundActor {
    fn restarting(&mut self, _: &mut Context<Self>) {
        self.registry().restarting(NAME, None);
    }
}

impl Handler<super::project::Restart> for BackgroundActor {
    type Result = ();

    fn handle(&mut self, _: super::project::Restart, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

/// Build the package of an export already recorded `running`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct StartExport {
    pub project: projects::Model,
    pub export: project_exports::Model,
    pub request: ExportRequest,
}

impl Handler<StartExport> for BackgroundActor {
    type Result = ();

    fn handle(&mut self, msg: StartExport, _: &mut Context<Self>) {
        let (shared, work) = (self.shared.clone(), self.work.clone());
        let id = msg.export.id;
        let flag = work.exports.track(id);
        let (project_id, hub) = (msg.project.id, shared.hub.clone());
        let task = tokio::spawn(build_export(shared.clone(), msg, flag));
        actix::spawn(async move {
            if let Err(e) = task.await {
                // The build panicked: its export ends failed, not running.
                tracing::error!(export = %id, error = %e, "an export's task failed");
                shared
                    .registry
                    .record_error(NAME, format!("export {id}: {e}"));
                if let Ok(row) = domain::exports::fail(&shared.db, id, "internal error").await {
                    domain::exports::FeedProgress::new(hub, project_id, id).finished(&row);
                }
            }
            work.exports.done(id);
        });
    }
}

/// Run a queued voice request (speech to text or text to speech).
#[derive(Message)]
#[rtype(result = "()")]
pub struct RunVoice(pub Uuid);

impl Handler<RunVoice> for BackgroundActor {
    type Result = ();

    fn handle(&mut self, msg: RunVoice, _: &mut Context<Self>) {
        let shared = self.shared.clone();
        let id = msg.0;
        let task = tokio::spawn({
            let shared = shared.clone();
            async move { domain::voice::execute(&shared, id).await }
        });
        actix::spawn(async move {
            let failure = match task.await {
                Ok(Ok(())) => return,
                Ok(Err(e)) => e.to_string(),
                Err(e) => e.to_string(),
            };
            // An error of our own or a panic: the request ends failed, not
            // running (its call's record says whether anything was sent).
            tracing::error!(voice_request = %id, error = %failure, "a voice request's task failed");
            shared
                .registry
                .record_error(NAME, format!("voice request {id}: {failure}"));
            if let Err(e) = domain::voice::abandon(&shared.db, id).await {
                tracing::error!(voice_request = %id, error = %e, "cannot settle a failed voice request");
            }
        });
    }
}

async fn build_export(
    shared: Arc<Shared>,
    msg: StartExport,
    flag: Arc<std::sync::atomic::AtomicBool>,
) {
    let StartExport {
        project,
        export,
        request,
    } = msg;
    let id = export.id;
    let feed = domain::exports::FeedProgress::new(shared.hub.clone(), project.id, id);
    let outcome =
        match domain::projects::project_files(&shared.db, shared.file_access(), &project).await {
            Ok(files) => {
                let progress = Cancellable { flag, inner: &feed };
                domain::exports::run(
                    &shared.db,
                    &files,
                    &project,
                    export,
                    &request,
                    domain::CONTRACT_VERSION,
                    &progress,
                )
                .await
                .map(|_| ())
            }
            Err(e) => domain::exports::fail(&shared.db, id, &e.public_message())
                .await
                .and(Err(e)),
        };
    if let Err(e) = outcome {
        tracing::info!(export = %id, error = %e, "export ended without a package");
    }
    // Completed, failed or canceled: the row says which.
    if let Ok(row) = domain::ledger::export(&shared.db, project.id, &id.to_string()).await {
        feed.finished(&row);
    }
}

/// Raise an export's cancel flag; `false`: it is not being built here.
#[derive(Message)]
#[rtype(result = "bool")]
pub struct CancelExport(pub Uuid);

impl Handler<CancelExport> for BackgroundActor {
    type Result = bool;

    fn handle(&mut self, msg: CancelExport, _: &mut Context<Self>) -> bool {
        self.work.exports.cancel(msg.0)
    }
}

/// Sync a project's files with its bucket; answers the sync's id, or
/// `sync_running` when one is already under way for the project.
#[derive(Message)]
#[rtype(result = "Result<Uuid, ServiceError>")]
pub struct StartSync {
    pub project: projects::Model,
    pub principal: domain::Principal,
    pub options: SyncOptions,
}

impl Handler<StartSync> for BackgroundActor {
    type Result = Result<Uuid, ServiceError>;

    fn handle(&mut self, msg: StartSync, _: &mut Context<Self>) -> Self::Result {
        let Some(flag) = self.work.syncs.try_track(msg.project.id) else {
            return Err(ServiceError::Conflict {
                code: "sync_running",
                message: "A sync of this project is already running".into(),
            });
        };
        drop(flag);
        let sync_id = Uuid::now_v7();
        let (shared, work) = (self.shared.clone(), self.work.clone());
        actix::spawn(run_sync(
            shared,
            work,
            msg.project,
            msg.principal,
            msg.options,
            sync_id,
            Origin::Request,
        ));
        Ok(sync_id)
    }
}

/// Who asked for a sync.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Origin {
    Request,
    /// A scheduled push: one that found nothing to do leaves no trace (no
    /// audit row, no feed event), or every tick would write one; nor does
    /// a failure that repeats the last one (a bucket down for a day).
    Schedule,
}

/// Runs one sync already tracked in `work.syncs` in a task of its own,
/// reports how it ended (feed, audit) even if that task panics, and
/// untracks it.
async fn run_sync(
    shared: Arc<Shared>,
    work: Arc<Work>,
    project: projects::Model,
    principal: domain::Principal,
    options: SyncOptions,
    sync_id: Uuid,
    origin: Origin,
) {
    let feed = Arc::new(domain::sync::FeedProgress::new(
        shared.hub.clone(),
        project.id,
        sync_id,
    ));
    let task = {
        let (shared, project, feed) = (shared.clone(), project.clone(), feed.clone());
        tokio::spawn(async move {
            let files =
                domain::projects::project_files(&shared.db, shared.file_access(), &project).await?;
            domain::sync::sync(&shared.db, &files, &project, &options, feed.as_ref()).await
        })
    };
    let outcome = task.await.unwrap_or_else(|e| {
        tracing::error!(sync = %sync_id, error = %e, "a sync's task failed");
        shared
            .registry
            .record_error(NAME, format!("sync {sync_id}: {e}"));
        Err(ServiceError::Internal(
            "the sync stopped unexpectedly".into(),
        ))
    });
    let quiet = match origin {
        Origin::Request => false,
        Origin::Schedule => {
            let news = work.scheduled_outcome_is_news(project.id, outcome.is_err());
            let idle = outcome
                .as_ref()
                .is_ok_and(|r| r.transferred.is_empty() && r.conflicts.is_empty());
            idle || !news
        }
    };
    if !quiet {
        let recorded =
            domain::sync::record_finished(&shared.db, &principal, &project, &outcome).await;
        if let Err(e) = recorded {
            tracing::warn!(error = %e, "cannot record the sync's end");
        }
        feed.finished(&outcome);
    } else if let Err(e) = &outcome {
        tracing::debug!(project = %project.slug, error = %e, "a scheduled push failed again");
    }
    work.syncs.done(project.id);
}

/// Whether a sync of the project is running on this node.
#[derive(Message)]
#[rtype(result = "bool")]
pub struct IsSyncing(pub Uuid);

impl Handler<IsSyncing> for BackgroundActor {
    type Result = bool;

    fn handle(&mut self, msg: IsSyncing, _: &mut Context<Self>) -> bool {
        self.work.syncs.is_running(msg.0)
    }
}
