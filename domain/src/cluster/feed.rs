//! The feed across nodes (PostgreSQL). Every node announces the events it
//! committed with one `NOTIFY` per batch ([`announce`]); every node listens
//! ([`listen`]) and republishes the other nodes' events on its own hub,
//! read back from `run_events` — the table stays the truth, the notification
//! is only the wake-up. A WebSocket client skips what it already sent and
//! fills any hole from the table. Notifications are not lost for good: the
//! announcer keeps what it could not send and sends it with the next batch,
//! and a listener that lost its connection republishes, once it can read
//! again, every event created since shortly before the gap.
//!
//! The same notifications keep the other nodes' caches honest: `writes` (this
//! node committed something) makes their read caches revalidate, `tokens`
//! (it revoked tokens) makes their token caches read every token again.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use chrono::{DateTime, Utc};
use entities::run_events;
use sea_orm::sqlx::postgres::PgListener;
use sea_orm::{
    ColumnTrait, ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend,
    EntityTrait, QueryFilter, QueryOrder, QuerySelect, Statement,
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

/// A pool of the feed's own (two connections), so announcing and reading
/// back other nodes' events never queue behind the engine's work for one of
/// the node's connections (under load that queueing was most of the feed's
/// latency across nodes). `None` when it cannot connect: the node's pool
/// serves then.
pub async fn own_pool(url: &str) -> Option<DatabaseConnection> {
    let mut opts = ConnectOptions::new(url.to_string());
    opts.max_connections(2)
        .min_connections(1)
        .connect_timeout(Duration::from_secs(10))
        .sqlx_logging(false);
    match Database::connect(opts).await {
        Ok(db) => Some(db),
        Err(e) => {
            // The URL may carry a password: never in a log line.
            let error = e.to_string().replace(url, "<database url>");
            tracing::warn!(%error, "feed relay: no connections of its own; sharing the node's pool");
            None
        }
    }
}

/// Hooks the announcer into `hub` and returns what [`announce`] drains.
pub fn outbox(hub: &EventHub) -> mpsc::Receiver<Committed> {
    let (tx, rx) = mpsc::channel(QUEUE);
    hub.announce_to(tx);
    rx
}

/// How often the announcer looks for writes this node committed without
/// events (settings, tokens, assets…), so other nodes' read caches follow.
const WRITES_EVERY: Duration = Duration::from_millis(25);

/// Sends what this node committed, one `NOTIFY` per batch: `node` on the
/// first line, then `project run first last` per run with new events,
/// `writes` when it committed anything since the last notification, and
/// `tokens` when it revoked tokens.
pub async fn announce(db: DatabaseConnection, node: String, mut rx: mpsc::Receiver<Committed>) {
    let mut batch = Vec::with_capacity(512);
    let mut ticks = tokio::time::interval(WRITES_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut writes, mut revocations) = (
        crate::db::local_write_generation(),
        crate::auth::local_revocations(),
    );
    // What could not be sent yet (the database was away): sent with the next.
    let mut news = News::default();
    loop {
        tokio::select! {
            n = rx.recv_many(&mut batch, 512) => if n == 0 { return },
            _ = ticks.tick() => {}
        }
        for c in batch.drain(..) {
            let e = news
                .runs
                .entry(c.run_id)
                .or_insert((c.project_id, c.seq, c.seq));
            e.1 = e.1.min(c.seq);
            e.2 = e.2.max(c.seq);
        }
        let (w, r) = (
            crate::db::local_write_generation(),
            crate::auth::local_revocations(),
        );
        news.writes |= std::mem::replace(&mut writes, w) != w;
        news.tokens |= std::mem::replace(&mut revocations, r) != r;
        if news.runs.is_empty() && !news.writes && !news.tokens {
            continue;
        }
        let mut sent = true;
        for payload in payloads(&node, &news) {
            let notify = Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT pg_notify($1, $2)",
                [CHANNEL.into(), payload.into()],
            );
            if let Err(e) = db.execute_raw(notify).await {
                tracing::warn!(error = %e, "cannot announce to the other nodes; trying again");
                sent = false;
                break;
            }
        }
        if sent {
            news = News::default();
        }
    }
}

/// What one notification (or several, when too long for one) tells.
#[derive(Debug, Default, PartialEq)]
struct News {
    /// Per run: its project, the first and last new sequence numbers.
    runs: BTreeMap<Uuid, (Uuid, i64, i64)>,
    writes: bool,
    tokens: bool,
}

fn payloads(node: &str, news: &News) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::from(node);
    if news.writes {
        current.push_str("\nwrites");
    }
    if news.tokens {
        current.push_str("\ntokens");
    }
    for (run, (project, first, last)) in &news.runs {
        if current.len() > MAX_PAYLOAD {
            out.push(std::mem::replace(&mut current, String::from(node)));
        }
        let _ = write!(current, "\n{project} {run} {first} {last}");
    }
    out.push(current);
    out
}

/// The sender and what it tells; lines this build does not know are left
/// out (a newer node may tell more).
fn parse(payload: &str) -> Option<(&str, News)> {
    let mut lines = payload.lines();
    let node = lines.next()?;
    let mut news = News::default();
    for line in lines {
        match line {
            "writes" => news.writes = true,
            "tokens" => news.tokens = true,
            _ => {
                let mut parts = line.split(' ');
                let mut next = || parts.next();
                let parsed = (|| {
                    let project: Uuid = next()?.parse().ok()?;
                    let run: Uuid = next()?.parse().ok()?;
                    Some((run, (project, next()?.parse().ok()?, next()?.parse().ok()?)))
                })();
                match parsed {
                    Some((run, range)) => {
                        news.runs.insert(run, range);
                    }
                    None => tracing::debug!(line, "feed relay: a line this build does not read"),
                }
            }
        }
    }
    Some((node, news))
}

/// Listens on its own connection (not one of the pool's) and republishes
/// other nodes' events on `hub`; reconnects after a lost connection.
/// `listening` is told once it first listens.
pub async fn listen(
    url: String,
    db: DatabaseConnection,
    hub: EventHub,
    node: String,
    listening: tokio::sync::oneshot::Sender<()>,
) {
    let mut listening = Some(listening);
    // The URL may carry a password: never in a log line.
    let scrub = |e: &dyn std::fmt::Display| e.to_string().replace(&url, "<database url>");
    // Since when this node may have missed notifications (a lost connection).
    let mut gap: Option<DateTime<Utc>> = None;
    loop {
        let mut listener = match PgListener::connect(&url).await {
            Ok(l) => Listening(Some(l)),
            Err(e) => {
                gap.get_or_insert_with(crate::time::now);
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
        if let Some(tell) = listening.take() {
            let _ = tell.send(());
        }
        loop {
            // Wakes at least every second, so a gap is caught up even when
            // no notification follows it.
            match tokio::time::timeout(Duration::from_secs(1), listener.try_recv()).await {
                Ok(Ok(Some(n))) => relay(&db, &hub, &node, n.payload()).await,
                Ok(Ok(None)) => {
                    // Lost, and reconnected at the next receive.
                    tracing::warn!("feed relay: connection lost; reconnecting");
                    gap.get_or_insert_with(crate::time::now);
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %scrub(&e), "feed relay: receive failed; reconnecting");
                    gap.get_or_insert_with(crate::time::now);
                    break;
                }
                Err(_) => {}
            }
            if let Some(since) = gap
                && catch_up(&db, &hub, since).await
            {
                gap = None;
            }
        }
    }
}

/// What a disconnected listener may have missed: it waits a little (a
/// commit stamped just before the gap may land just after it) and then
/// republishes every event created since shortly before the gap began —
/// clients skip what they already have. `false`: the database is not back.
async fn catch_up(db: &DatabaseConnection, hub: &EventHub, since: DateTime<Utc>) -> bool {
    const MARGIN: chrono::Duration = chrono::Duration::seconds(5);
    const MOST: u64 = 10_000;
    let events = run_events::Entity::find()
        .filter(run_events::Column::CreatedAt.gte(since - MARGIN))
        .order_by_asc(run_events::Column::CreatedAt)
        .order_by_asc(run_events::Column::Seq)
        .limit(MOST)
        .all(db)
        .await;
    match events {
        Ok(events) => {
            tracing::debug!(events = events.len(), "feed relay: caught up after a gap");
            for e in events {
                hub.publish_relayed(RunEvent::from(e));
            }
            true
        }
        Err(_) => false,
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
    let Some((node, news)) = parse(payload) else {
        return;
    };
    if node == me {
        return;
    }
    // Caches first: a client woken by an event below must read fresh data.
    if news.writes || !news.runs.is_empty() {
        crate::db::note_writes_elsewhere();
    }
    if news.tokens {
        crate::auth::note_revoked_elsewhere();
    }
    for (run_id, (_, first, last)) in news.runs {
        let events = run_events::Entity::find()
            .filter(run_events::Column::RunId.eq(run_id))
            .filter(run_events::Column::Seq.gte(first))
            .filter(run_events::Column::Seq.lte(last))
            .order_by_asc(run_events::Column::Seq)
            .all(db)
            .await;
        match events {
            Ok(events) => {
                for e in events {
                    hub.publish_relayed(RunEvent::from(e));
                }
            }
            Err(e) => tracing::warn!(error = %e, %run_id, "feed relay: cannot read events"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_round_trip_and_stay_under_the_limit() {
        let news = News {
            runs: (0..200)
                .map(|i| (Uuid::now_v7(), (Uuid::now_v7(), i, i + 3)))
                .collect(),
            writes: true,
            tokens: true,
        };
        let out = payloads("node-a", &news);
        assert!(out.len() > 1);
        let mut seen = News::default();
        for p in &out {
            assert!(p.len() < 8000, "{}", p.len());
            let (node, part) = parse(p).unwrap();
            assert_eq!(node, "node-a");
            seen.runs.extend(part.runs);
            seen.writes |= part.writes;
            seen.tokens |= part.tokens;
        }
        assert_eq!(seen, news);
        let (_, odd) = parse("node-a\nsomething newer\nwrites").unwrap();
        assert!(odd.writes && odd.runs.is_empty());
    }
}
