//! WorkerActor: one per job. Runs the job body (`runs::pipeline::run_job`) in
//! its own task, so a panic or an error is contained and reported to the
//! RunActor as an unexpected failure (which retries it while attempts
//! remain); heartbeats the job's lease meanwhile.

use std::sync::Arc;

use actix::prelude::*;
use chrono::Utc;
use entities::{run_jobs, runs};
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use storage::ProjectFiles;

use super::Shared;
use super::run::{JobFinished, RunActor};
use domain::runs::pipeline::{self, JobEnv};

pub struct WorkerActor {
    deps: Arc<Shared>,
    run: runs::Model,
    job: run_jobs::Model,
    store: ProjectFiles,
    owner: Addr<RunActor>,
}

impl WorkerActor {
    pub fn new(
        deps: Arc<Shared>,
        run: runs::Model,
        job: run_jobs::Model,
        store: ProjectFiles,
        owner: Addr<RunActor>,
    ) -> Self {
        Self {
            deps,
            run,
            job,
            store,
            owner,
        }
    }

    fn heartbeat(&self, ctx: &mut Context<Self>) {
        let db = self.deps.db.clone();
        let job_id = self.job.id;
        let owner = self.deps.node_id.clone();
        let until =
            Utc::now() + chrono::Duration::from_std(self.deps.config.lease).unwrap_or_default();
        ctx.spawn(
            async move {
                let result = async {
                    let txn = domain::db::begin_write(&db).await?;
                    run_jobs::Entity::update_many()
                        .col_expr(run_jobs::Column::LeaseExpiresAt, Expr::value(until))
                        .col_expr(run_jobs::Column::HeartbeatAt, Expr::value(Utc::now()))
                        .filter(run_jobs::Column::Id.eq(job_id))
                        .filter(run_jobs::Column::LeaseOwner.eq(owner))
                        .exec(&txn)
                        .await?;
                    domain::db::commit(txn).await
                }
                .await;
                if let Err(e) = result {
                    tracing::warn!(%job_id, error = %e, "lease heartbeat failed");
                }
            }
            .into_actor(self),
        );
    }
}

impl Actor for WorkerActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.deps.registry.worker_started();
        ctx.run_interval(self.deps.config.heartbeat, |act, ctx| act.heartbeat(ctx));
        let provider_code = self
            .run
            .provider_code
            .clone()
            .unwrap_or_else(|| "local".into());
        let env = match self.deps.provider(&provider_code) {
            Some(provider) => Some(JobEnv {
                db: self.deps.db.clone(),
                hub: self.deps.hub.clone(),
                provider,
                governors: self.deps.governors.clone(),
                store: self.store.clone(),
                retry: self.deps.config.retry,
                limits: self.deps.config.limits,
                spend: self.deps.spend.clone(),
                audit: self.deps.audit.clone(),
                writer: self.deps.writer.clone(),
                removers: self.deps.removers.clone(),
                refiners: self.deps.providers.clone(),
                secret_keys: self.deps.secret_keys.clone(),
                drain: self.deps.drain.clone(),
                project_budget_usd: serde_json::from_value::<domain::runs::manifest::Manifest>(
                    self.run.settings_snapshot_json.clone(),
                )
                .ok()
                .and_then(|m| m.policy.project_budget_usd),
            }),
            None => None,
        };
        let (run, job) = (self.run.clone(), self.job.clone());
        // The job body runs in its own task, off the actor thread (on the
        // multi-threaded runtime when there is one): a panic there ends that
        // task only.
        let task = tokio::spawn(async move {
            let Some(env) = env else {
                return Err(format!("provider '{provider_code}' is not configured"));
            };
            pipeline::run_job(&env, &run, &job)
                .await
                .map_err(|e| e.to_string())
        });
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
                job_id: act.job.id,
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
