//! AgentActor: sends confirmed agent instructions to their agent endpoint
//! (`domain::agent`) on a timer. Instructions are leased in the database,
//! so a restart loses nothing and runs nothing twice at once: the next tick
//! takes up whatever is due, including an instruction whose worker died
//! (its lease expires).

use std::sync::Arc;

use actix::prelude::*;

use super::SupervisionRegistry;
use domain::agent::{self, AgentConfig};

const NAME: &str = "agent";
/// Instructions handled per tick at most (one after another).
const PER_TICK: usize = 8;

pub struct AgentActor {
    db: domain::DatabaseConnection,
    http: reqwest::Client,
    outbound: domain::netpolicy::OutboundPolicy,
    /// `None`: the worker is off (`agent.enabled = false`); the actor idles.
    config: Option<AgentConfig>,
    /// To decrypt the projects' `agent_api` secrets.
    keys: Option<domain::secrets::cipher::KeySource>,
    registry: Arc<SupervisionRegistry>,
    /// A pass is running: ticks meanwhile are skipped, not queued.
    busy: bool,
}

impl AgentActor {
    pub fn new(
        db: domain::DatabaseConnection,
        config: Option<AgentConfig>,
        keys: Option<domain::secrets::cipher::KeySource>,
        outbound: domain::netpolicy::OutboundPolicy,
        registry: Arc<SupervisionRegistry>,
    ) -> Self {
        // Connects only where the outbound policy permits (checked at every
        // connection) and follows no redirect.
        let timeout = config
            .as_ref()
            .map_or(std::time::Duration::from_secs(20), |c| c.timeout);
        let http = outbound.client(timeout);
        Self {
            db,
            http,
            outbound,
            config,
            keys,
            registry,
            busy: false,
        }
    }

    fn tick(&mut self, ctx: &mut Context<Self>) {
        let Some(config) = self.config.clone() else {
            return;
        };
        if self.busy {
            return;
        }
        self.busy = true;
        let (db, http, outbound, keys) = (
            self.db.clone(),
            self.http.clone(),
            self.outbound.clone(),
            self.keys.clone(),
        );
        async move {
            agent::dispatch_due(&db, &http, &outbound, &config, keys.as_ref(), PER_TICK).await
        }
        .into_actor(self)
        .map(|result, act, _| {
            act.busy = false;
            if let Err(e) = result {
                tracing::warn!(error = %e, "agent worker pass failed");
                act.registry.record_error(NAME, e.to_string());
            }
        })
        .spawn(ctx);
    }
}

impl Actor for AgentActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.busy = false;
        self.registry.started(NAME);
        if let Some(poll) = self.config.as_ref().map(|c| c.poll) {
            ctx.run_interval(poll, |act, ctx| act.tick(ctx));
        }
    }
}

impl Supervised for AgentActor {
    fn restarting(&mut self, _: &mut Context<Self>) {
        self.registry.restarting(NAME, None);
    }
}

impl Handler<super::project::Restart> for AgentActor {
    type Result = ();

    fn handle(&mut self, _: super::project::Restart, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}
