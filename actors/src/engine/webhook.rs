//! WebhookActor: sends due webhook deliveries (`crate::webhooks`) on a timer.
//! Deliveries live in the database, so a restart loses nothing: the next
//! tick picks up whatever is due, including attempts a crash interrupted
//! (their claim expires).

use std::sync::Arc;

use actix::prelude::*;

use super::SupervisionRegistry;
use crate::webhooks::{self, WebhookConfig};

const NAME: &str = "webhooks";

pub struct WebhookActor {
    db: sea_orm::DatabaseConnection,
    http: reqwest::Client,
    config: WebhookConfig,
    /// To decrypt signing secrets.
    keys: Option<crate::secrets::cipher::KeySource>,
    registry: Arc<SupervisionRegistry>,
    /// A pass is running: ticks meanwhile are skipped, not queued.
    busy: bool,
}

impl WebhookActor {
    pub fn new(
        db: sea_orm::DatabaseConnection,
        config: WebhookConfig,
        keys: Option<crate::secrets::cipher::KeySource>,
        registry: Arc<SupervisionRegistry>,
    ) -> Self {
        let http = providers::http_client(config.timeout, config.timeout).unwrap_or_default();
        Self {
            db,
            http,
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
        let keys = self.keys.clone();
        async move { webhooks::deliver_due(&db, &http, &config, keys.as_ref()).await }
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
