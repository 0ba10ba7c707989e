//! WebhookActor: sends due webhook deliveries (`domain::webhooks`) on a timer.
//! Deliveries live in the database, so a restart loses nothing: the next
//! tick picks up whatever is due, including attempts a crash interrupted
//! (their claim expires).

use std::sync::Arc;

use actix::prelude::*;

use super::SupervisionRegistry;
use domain::webhooks::{self, WebhookConfig};

const NAME: &str = "webhooks";

pub struct WebhookActor {
    db: domain::DatabaseConnection,
    http: reqwest::Client,
    outbound: domain::netpolicy::OutboundPolicy,
    config: WebhookConfig,
    /// To decrypt signing secrets.
    keys: Option<domain::secrets::cipher::KeySource>,
    registry: Arc<SupervisionRegistry>,
    /// A pass is running: ticks meanwhile are skipped, not queued.
    busy: bool,
}

impl WebhookActor {
    pub fn new(
        db: domain::DatabaseConnection,
        config: WebhookConfig,
        keys: Option<domain::secrets::cipher::KeySource>,
        outbound: domain::netpolicy::OutboundPolicy,
        registry: Arc<SupervisionRegistry>,
    ) -> Self {
        // Connects only where the outbound policy permits, at every
        // connection (a receiver's name that later resolves inward is
        // refused), and follows no redirect.
        let http = outbound.client(config.timeout);
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
        if self.busy {
            return;
        }
        self.busy = true;
        let (db, http, config) = (self.db.clone(), self.http.clone(), self.config);
        let (keys, outbound) = (self.keys.clone(), self.outbound.clone());
        async move { webhooks::deliver_due(&db, &http, &outbound, &config, keys.as_ref()).await }
            .into_actor(self)
            .map(|result, act, _| {
                act.busy = false;
                if let Err(e) = result {
                    tracing::warn!(error = %e, "webhook delivery pass failed");
                    act.registry.record_error(NAME, e.to_string());
                }
            })
            .spawn(ctx);
    }
}

impl Actor for WebhookActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.busy = false;
        self.registry.started(NAME);
        ctx.run_interval(self.config.poll, |act, ctx| act.tick(ctx));
    }
}

impl Supervised for WebhookActor {
    fn restarting(&mut self, _: &mut Context<Self>) {
        self.registry.restarting(NAME, None);
    }
}

impl Handler<super::project::Restart> for WebhookActor {
    type Result = ();

    fn handle(&mut self, _: super::project::Restart, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}
