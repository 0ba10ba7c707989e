//! WorkerActor: one per job. Runs the job body (`runs::pipeline::run_job`) in
//! its own task, so a panic or an error is contained and reported to the
//! RunActor as an unexpected failure (which retries it while attempts
//! remain); heartbeats the job's lease meanwhile.

use std::sync::Arc;

use actix::prelude::*;
use chrono::Utc;
use entities::run_jobs;
use providers::ImageProvider;
use tracing::{Instrument, Span};

use super::Shared;
use super::run::JobFinished;
use domain::runs::lease::Fence;
use domain::runs::lifecycle::RunShared;
use domain::runs::pipeline::{self, JobEnv};

pub struct WorkerActor {
    deps: Arc<Shared>,
    run: RunShared,
    job: run_jobs::Model,
    /// The run's provider code and provider, resolved once by the RunActor
    /// (`None`: not configured here).
    provider: (String, Option<Arc<dyn ImageProvider>>),
    /// Told once, when the job body ends.
    owner: Recipient<JobFinished>,
    /// A child of the run's span.
    span: Span,
}

impl WorkerActor {
    pub fn new(
        deps: Arc<Shared>,
        run: RunShared,
        job: run_jobs::Model,
        provider: (String, Option<Arc<dyn ImageProvider>>),
        run_span: &Span,
        owner: Recipient<JobFinished>,
    ) -> Self {
        let span = tracing::info_span!(
            parent: run_span,
            "job",
            job_id = %job.id,
            job_key = %job.job_key,
            stage = %job.stage
        );
        Self {
            span,
            deps,
            run,
            job,
            provider,
            owner,
        }
    }

    fn heartbeat(&self, ctx: &mut Context<Self>) {
        let db = self.deps.db.clone();
        let fence = Fence::of(&self.job);
        let owner = self.deps.node_id.clone();
        let until =
            Utc::now() + chrono::Duration::from_std(self.deps.config.lease).unwrap_or_default();
        ctx.spawn(
            async move {
                match domain::runs::lease::renew(&db, &fence, &owner, until).await {
                    Ok(true) => {}
                    // Reclaimed (this node was unreachable for too long) or
                    // ended: the job body's writes are fenced off from here.
                    Ok(false) => {
                        tracing::debug!(job_id = %fence.job_id, "lease not renewed: no longer held")
                    }
                    Err(e) => {
                        tracing::warn!(job_id = %fence.job_id, error = %e, "lease heartbeat failed")
                    }
                }
            }
            .instrument(self.span.clone())
            .into_actor(self),
        );
    }
}

impl Actor for WorkerActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.deps.registry.worker_started();
        ctx.run_interval(self.deps.config.heartbeat, |act, ctx| act.heartbeat(ctx));
        let (provider_code, provider) = self.provider.clone();
        let env = provider.map(|p| JobEnv::new(&self.deps, p, &self.run, &self.job));
        let (run, job) = (self.run.run.clone(), self.job.clone());
        // The job body runs in its own task, off the actor thread (on the
        // multi-threaded runtime when there is one): a panic there ends that
        // task only.
        let task = tokio::spawn(
            async move {
                let Some(env) = env else {
                    return Err(format!("provider '{provider_code}' is not configured"));
                };
                let outcome = pipeline::run_job(&env, &run, &job).await;
                tracing::debug!(?outcome, "job body ended");
                outcome.map_err(|e| e.to_string())
            }
            .instrument(self.span.clone()),
        );
        async move {
            match task.await {
                Ok(result) => result,
                Err(join) if join.is_panic() => Err("job body panicked".to_string()),
                Err(join) => Err(format!("job body aborted: {join}")),
            }
        }
        .into_actor(self)
        .map(|outcome, act, ctx| {
            if let Err(e) = &outcome {
                tracing::warn!(job_id = %act.job.id, error = %e, "job failed unexpectedly");
                act.deps.registry.record_error("worker", e.clone());
            }
            act.owner.do_send(JobFinished {
                fence: Fence::of(&act.job),
                outcome,
            });
            ctx.stop();
        })
        .spawn(ctx);
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.deps.registry.worker_stopped();
    }
}
