//! The feed across nodes (PostgreSQL). Every node announces the events it
//! committed with one `NOTIFY` per batch ([`announce`]); every node listens
//! ([`listen`]) and republishes the other nodes' events on its own hub,
//! read back from `run_events` — the table stays the truth, the notification
//! is only the wake-up. A WebSocket client skips what it already sent and
//! fills any hole from the table, so a lost notification delays an event
//! until the run's next one, never loses it from a replay.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use entities::run_events;
use sea_orm::sqlx::postgres::PgListener;
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, DbBackend, EntityTrait, QueryFilter,
    QueryOrder, Statement,
};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::runs::events::{Committed, EventHub, RunEvent};

/// The notification channel.
pub const CHANNEL: &str = "atelier_events";
/// A notification's payload must stay under PostgreSQL's 8000 bytes.
const MAX_PAYLOAD: usize = 7000;
/// Announcements waiting to be sent at most (beyond, the oldest are not
/// announced: the runs' next events and the clients' hole filling cover
/// them).
const QUEUE: usize = 8192;

/// Whether the feed is relayed between nodes on this database (only
/// PostgreSQL has `LISTEN`/`NOTIFY`).
pub fn relays(db: &DatabaseConnection) -> bool {
    db.get_database_backend() == DbBackend::Postgres
}

/// Hooks the announcer into `hub` and returns what [`announce`] drains.
pub fn outbox(hub: &EventHub) -> mpsc::Receiver<Committed> {
    let (tx, rx) = mpsc::channel(QUEUE);
    hub.announce_to(tx);
    rx
}

/// Sends what this node committed, coalesced per run, one `NOTIFY` per
/// batch: `node` on the first line, then `project run first last` per run.
pub async fn announce(db: DatabaseConnection, node: String, mut rx: mpsc::Receiver<Committed>) {
    let mut batch = Vec::with_capacity(512);
    while rx.recv_many(&mut batch, 512).await > 0 {
        let mut runs: BTreeMap<Uuid, (Uuid, i64, i64)> = BTreeMap::new();
        for c in batch.drain(..) {
            let e = runs.entry(c.run_id).or_insert((c.project_id, c.seq, c.seq));
            e.1 = e.1.min(c.seq);
            e.2 = e.2.max(c.seq);
        }
        for payload in payloads(&node, &runs) {
            let notify = Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT pg_notify($1, $2)",
                [CHANNEL.into(), payload.into()],
            );
            if let Err(e) = db.execute_raw(notify).await {
                tracing::warn!(error = %e, "cannot announce events to the other nodes");
            }
        }
    }
}

fn payloads(node: &str, runs: &BTreeMap<Uuid, (Uuid, i64, i64)>) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::from(node);
    for (run, (project, first, last)) in runs {
        if current.len() > MAX_PAYLOAD {
            out.push(std::mem::replace(&mut current, String::from(node)));
        }
        let _ = write!(current, "\n{project} {run} {first} {last}");
    }
    out.push(current);
    out
}

/// One run's range in a notification.
#[derive(Debug, PartialEq)]
struct Range {
    run_id: Uuid,
    first: i64,
    last: i64,
}

/// The sender and the ranges of a payload; `None` for what this build did
/// not write.
fn parse(payload: &str) -> Option<(&str, Vec<Range>)> {
    let mut lines = payload.lines();
    let node = lines.next()?;
    let ranges = lines
        .map(|line| {
            let mut parts = line.split(' ');
            let _project: Uuid = parts.next()?.parse().ok()?;
            Some(Range {
                run_id: parts.next()?.parse().ok()?,
                first: parts.next()?.parse().ok()?,
                last: parts.next()?.parse().ok()?,
            })
        })
        .collect::<Option<Vec<_>>>()?;
    Some((node, ranges))
}

/// Listens on its own connection (not one of the pool's) and republishes
/// other nodes' events on `hub`; reconnects after a lost connection.
pub async fn listen(url: String, db: DatabaseConnection, hub: EventHub, node: String) {
    // The URL may carry a password: never in a log line.
    let scrub = |e: &dyn std::fmt::Display| e.to_string().replace(&url, "<database url>");
    loop {
        let mut listener = match PgListener::connect(&url).await {
            Ok(l) => Listening(Some(l)),
            Err(e) => {
                tracing::warn!(error = %scrub(&e), "feed relay: cannot connect to listen; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let Listening(Some(listener)) = &mut listener else {
            continue;
        };
        if let Err(e) = listener.listen(CHANNEL).await {
            tracing::warn!(error = %scrub(&e), "feed relay: cannot listen; retrying");
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        tracing::debug!("feed relay: listening for other nodes' events");
        loop {
            match listener.try_recv().await {
                Ok(Some(n)) => relay(&db, &hub, &node, n.payload()).await,
                // The connection was lost (and is reconnected at the next
                // receive): what was announced meanwhile is read at the
                // runs' next notifications.
                Ok(None) => tracing::warn!("feed relay: connection lost; reconnecting"),
                Err(e) => {
                    tracing::warn!(error = %scrub(&e), "feed relay: receive failed; reconnecting");
                    break;
                }
            }
        }
    }
}

/// Owns the listener so that it is dropped where it can be: its drop spawns
/// the close of its connection on the runtime, and when the runtime itself
/// is torn down (the end of an actix system) there is none to spawn on —
/// then the connection is left to the process's end.
struct Listening(Option<PgListener>);

impl Drop for Listening {
    fn drop(&mut self) {
        if let Some(listener) = self.0.take()
            && tokio::runtime::Handle::try_current().is_err()
        {
            std::mem::forget(listener);
        }
    }
}

async fn relay(db: &DatabaseConnection, hub: &EventHub, me: &str, payload: &str) {
    let Some((node, ranges)) = parse(payload) else {
        tracing::debug!("feed relay: a notification this build does not read");
        return;
    };
    if node == me {
        return;
    }
    for r in ranges {
        let events = run_events::Entity::find()
            .filter(run_events::Column::RunId.eq(r.run_id))
            .filter(run_events::Column::Seq.gte(r.first))
            .filter(run_events::Column::Seq.lte(r.last))
            .order_by_asc(run_events::Column::Seq)
            .all(db)
            .await;
        match events {
            Ok(events) => {
                for e in events {
                    hub.publish_relayed(RunEvent::from(e));
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, run_id = %r.run_id, "feed relay: cannot read events")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_round_trip_and_stay_under_the_limit() {
        let runs: BTreeMap<Uuid, (Uuid, i64, i64)> = (0..200)
            .map(|i| (Uuid::now_v7(), (Uuid::now_v7(), i, i + 3)))
            .collect();
        let out = payloads("node-a", &runs);
        assert!(out.len() > 1);
        let mut seen = Vec::new();
        for p in &out {
            assert!(p.len() < 8000, "{}", p.len());
            let (node, ranges) = parse(p).unwrap();
            assert_eq!(node, "node-a");
            seen.extend(ranges);
        }
        assert_eq!(seen.len(), 200);
        for r in seen {
            let (_, first, last) = runs[&r.run_id];
            assert_eq!((r.first, r.last), (first, last));
        }
        assert!(parse("node-a\nnot a range").is_none());
    }
}
