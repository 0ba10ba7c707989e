//! What the supervision tree looks like right now: per actor its status,
//! restarts, last error and start time, plus live worker and lease counts.
//! Shared by the actors (who write) and the admin endpoint (which reads).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use actix::{MailboxError, Message, Recipient};

use chrono::{DateTime, Utc};
use serde::Serialize;

#[derive(Clone, Debug, Serialize)]
pub struct ActorInfo {
    pub name: String,
    pub status: &'static str,
    pub restarts: u32,
    pub last_error: Option<String>,
    pub last_restart_at: Option<DateTime<Utc>>,
    pub started_at: DateTime<Utc>,
    /// Requests sent to the actor and not answered yet (queued plus the one
    /// being handled); fire-and-forget notifications are not counted.
    pub mailbox_depth: i64,
}

#[derive(Default)]
pub struct SupervisionRegistry {
    actors: Mutex<BTreeMap<String, ActorInfo>>,
    live_workers: AtomicUsize,
    depths: Mutex<BTreeMap<String, Arc<AtomicI64>>>,
}

/// An actor's inbox that counts requests in flight for the registry (actix
/// does not expose a mailbox's length).
pub struct Counted<M: Message + Send>
where
    M::Result: Send,
{
    to: Recipient<M>,
    depth: Arc<AtomicI64>,
}

impl<M: Message + Send> Clone for Counted<M>
where
    M::Result: Send,
{
    fn clone(&self) -> Self {
        Self {
            to: self.to.clone(),
            depth: self.depth.clone(),
        }
    }
}

/// Decrements on drop, so an abandoned request (timeout, cancel) is uncounted too.
struct InFlight(Arc<AtomicI64>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl<M: Message + Send + 'static> Counted<M>
where
    M::Result: Send,
{
    pub async fn send(&self, msg: M) -> Result<M::Result, MailboxError> {
        self.depth.fetch_add(1, Ordering::Relaxed);
        let _in_flight = InFlight(self.depth.clone());
        self.to.send(msg).await
    }
}

impl SupervisionRegistry {
    pub fn started(&self, name: &str) {
        if let Ok(mut map) = self.actors.lock() {
            let entry = map.entry(name.to_string()).or_insert_with(|| ActorInfo {
                name: name.to_string(),
                status: "running",
                restarts: 0,
                last_error: None,
                last_restart_at: None,
                started_at: Utc::now(),
                mailbox_depth: 0,
            });
            entry.status = "running";
            entry.started_at = Utc::now();
        }
    }

    pub fn restarting(&self, name: &str, error: Option<String>) {
        if let Ok(mut map) = self.actors.lock()
            && let Some(entry) = map.get_mut(name)
        {
            entry.status = "restarting";
            entry.restarts += 1;
            entry.last_restart_at = Some(Utc::now());
            if error.is_some() {
                entry.last_error = error;
            }
        }
    }

    pub fn record_error(&self, name: &str, error: String) {
        if let Ok(mut map) = self.actors.lock()
            && let Some(entry) = map.get_mut(name)
        {
            entry.last_error = Some(error);
        }
    }

    pub fn worker_started(&self) {
        self.live_workers.fetch_add(1, Ordering::Relaxed);
    }

    pub fn worker_stopped(&self) {
        self.live_workers.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn live_workers(&self) -> usize {
        self.live_workers.load(Ordering::Relaxed)
    }

    /// `to`, counted under `name`.
    pub fn counted<M: Message + Send>(&self, name: &str, to: Recipient<M>) -> Counted<M>
    where
        M::Result: Send,
    {
        Counted {
            to,
            depth: self.depth_of(name),
        }
    }

    fn depth_of(&self, name: &str) -> Arc<AtomicI64> {
        self.depths
            .lock()
            .map(|mut m| m.entry(name.to_string()).or_default().clone())
            .unwrap_or_default()
    }

    pub fn snapshot(&self) -> Vec<ActorInfo> {
        let mut actors: Vec<ActorInfo> = self
            .actors
            .lock()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default();
        for a in &mut actors {
            a.mailbox_depth = self.depth_of(&a.name).load(Ordering::Relaxed).max(0);
        }
        actors
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use actix::prelude::*;

    use super::*;

    struct Slow;

    impl Actor for Slow {
        type Context = Context<Self>;
    }

    #[derive(Message)]
    #[rtype(result = "()")]
    struct Nap(u64);

    impl Handler<Nap> for Slow {
        type Result = ResponseActFuture<Self, ()>;

        fn handle(&mut self, msg: Nap, _: &mut Context<Self>) -> Self::Result {
            Box::pin(tokio::time::sleep(Duration::from_millis(msg.0)).into_actor(self))
        }
    }

    fn depth(r: &SupervisionRegistry) -> i64 {
        r.snapshot()
            .into_iter()
            .find(|a| a.name == "slow")
            .map_or(-1, |a| a.mailbox_depth)
    }

    #[actix::test]
    async fn mailbox_depth_counts_requests_until_answered_or_abandoned() {
        let registry = SupervisionRegistry::default();
        registry.started("slow");
        let inbox = registry.counted("slow", Slow.start().recipient());
        let pending: Vec<_> = (0..3).map(|_| inbox.send(Nap(100))).collect();
        let all = futures_util::future::join_all(pending);
        tokio::pin!(all);
        // Polled once: all three are sent and waiting.
        assert!(
            tokio::time::timeout(Duration::from_millis(20), &mut all)
                .await
                .is_err()
        );
        assert_eq!(depth(&registry), 3);
        all.await;
        assert_eq!(depth(&registry), 0);
        // A request abandoned by its sender is not counted forever.
        let abandoned = tokio::time::timeout(Duration::from_millis(10), inbox.send(Nap(200))).await;
        assert!(abandoned.is_err());
        assert_eq!(depth(&registry), 0);
    }
}
