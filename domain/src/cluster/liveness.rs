//! Death noticed at once (PostgreSQL): while its process lives, a node holds
//! a session advisory lock on a connection of its own, under a key recorded
//! in its `nodes` row. PostgreSQL releases the lock the moment that session
//! ends — the process killed, crashed or stopped — so the other nodes need
//! not wait for its heartbeat to go stale: a node whose lock is gone and
//! stays gone is dead ([`lock_gone`]). A node that is frozen or cut off
//! keeps its session (and its lock) for a while; the heartbeat timeout
//! still covers those.
//!
//! Not dead by mistake: a lock missing because its connection alone
//! dropped is taken again within [`KEEPALIVE`]; an observer looks twice,
//! [`RECHECK`] apart, and only once its own lock has been held for
//! [`SETTLED`] (after a database restart every node's lock is gone until
//! each reconnects).

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sea_orm::sqlx::Connection;
use sea_orm::sqlx::postgres::PgConnection;
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement};

use crate::ServiceError;

/// The first half of every liveness lock's key (`pg_advisory_lock(int, int)`),
/// so they are told apart from the other advisory locks (`db::serialize`).
const SPACE: i32 = 0x4174_6c76;
/// How often the holder uses its connection: a dropped one is noticed and
/// the lock taken again within this.
const KEEPALIVE: Duration = Duration::from_millis(100);
/// Longest wait for the lock's connection.
const CONNECT_WITHIN: Duration = Duration::from_secs(5);
/// An observer's second look at a lock found missing.
const RECHECK: Duration = Duration::from_millis(500);
/// How long an observer's own lock must have been held before it trusts
/// another's absence.
const SETTLED: Duration = Duration::from_secs(2);

/// This node's liveness lock: its key, and since when it is held.
#[derive(Debug)]
pub struct Liveness {
    key: i32,
    held_since: Mutex<Option<Instant>>,
    /// Other nodes' keys seen gone twice: a later look need not wait for a
    /// second one (keys belong to one process and are not reused).
    gone: Mutex<HashSet<i32>>,
}

impl Liveness {
    /// A liveness that holds nothing (SQLite, or before it is taken):
    /// other nodes' deaths are told by their heartbeats alone.
    pub fn none() -> Self {
        Self {
            key: 0,
            held_since: Mutex::new(None),
            gone: Mutex::new(HashSet::new()),
        }
    }

    /// The key recorded in this node's row, once the lock was held.
    pub fn key(&self) -> Option<i32> {
        (self.key != 0).then_some(self.key)
    }

    fn settled(&self) -> bool {
        self.held_since
            .lock()
            .ok()
            .and_then(|since| *since)
            .is_some_and(|since| since.elapsed() >= SETTLED)
    }

    fn set_held(&self, held: bool) {
        if let Ok(mut since) = self.held_since.lock() {
            match (held, since.is_some()) {
                (true, false) => *since = Some(Instant::now()),
                (false, _) => *since = None,
                _ => {}
            }
        }
    }
}

/// Takes this node's lock on a connection of its own (`url`, the database
/// of `db`), and keeps it for the life of the process in the background,
/// taking it again after a lost connection. `None` on SQLite, or when the
/// first attempt fails: the node then records no key and others go by its
/// heartbeat.
pub async fn hold(db: &DatabaseConnection, url: String) -> Option<std::sync::Arc<Liveness>> {
    if db.get_database_backend() != DbBackend::Postgres {
        return None;
    }
    let key = (uuid::Uuid::new_v4().as_u128() & 0x7fff_ffff) as i32;
    let key = key.max(1);
    let conn = match lock(&url, key).await {
        Ok(conn) => conn,
        Err(e) => {
            tracing::warn!(error = %e, "cannot take this node's liveness lock; others will tell its death by its heartbeat alone");
            return None;
        }
    };
    let liveness = std::sync::Arc::new(Liveness {
        key,
        held_since: Mutex::new(Some(Instant::now())),
        gone: Mutex::new(HashSet::new()),
    });
    let keeper = liveness.clone();
    tokio::spawn(async move {
        let mut conn = Some(conn);
        loop {
            tokio::time::sleep(KEEPALIVE).await;
            let alive = match conn.as_mut() {
                Some(c) => c.ping().await.is_ok(),
                None => false,
            };
            if alive {
                continue;
            }
            keeper.set_held(false);
            conn = lock(&url, key).await.ok();
            if conn.is_some() {
                keeper.set_held(true);
            }
        }
    });
    Some(liveness)
}

/// Connects and takes the lock, within [`CONNECT_WITHIN`] (a database
/// behind a dead network would otherwise hold the attempt for minutes).
async fn lock(url: &str, key: i32) -> Result<PgConnection, sea_orm::sqlx::Error> {
    tokio::time::timeout(CONNECT_WITHIN, connect_and_lock(url, key))
        .await
        .unwrap_or(Err(sea_orm::sqlx::Error::PoolTimedOut))
}

async fn connect_and_lock(url: &str, key: i32) -> Result<PgConnection, sea_orm::sqlx::Error> {
    let mut conn = PgConnection::connect(url).await?;
    let taken: bool = sea_orm::sqlx::query_scalar("SELECT pg_try_advisory_lock($1, $2)")
        .bind(SPACE)
        .bind(key)
        .fetch_one(&mut conn)
        .await?;
    if !taken {
        return Err(sea_orm::sqlx::Error::Protocol(
            "the liveness lock is held by another session".into(),
        ));
    }
    Ok(conn)
}

/// The liveness keys held by a live session right now.
async fn held(db: &DatabaseConnection) -> Result<HashSet<i32>, ServiceError> {
    let rows = db
        .query_all_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT objid::int8 AS key FROM pg_locks \
             WHERE locktype = 'advisory' AND granted AND objsubid = 2 AND classid = $1::int8::oid \
             AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            [SPACE.into()],
        ))
        .await?;
    Ok(rows
        .iter()
        .filter_map(|r| r.try_get::<i64>("", "key").ok())
        .map(|k| k as i32)
        .collect())
}

/// Of `candidates` (node ids and the keys their rows record), those whose
/// lock is gone: missing at a first look and still at a second, by an
/// observer (`me`) whose own lock has been held long enough to trust it.
/// Empty on SQLite, or when `me` holds no lock.
pub async fn lock_gone(
    db: &DatabaseConnection,
    me: &Liveness,
    candidates: &[(String, i32)],
) -> Result<HashSet<String>, ServiceError> {
    if candidates.is_empty()
        || db.get_database_backend() != DbBackend::Postgres
        || me.key().is_none()
        || !me.settled()
    {
        return Ok(HashSet::new());
    }
    let first = held(db).await?;
    let missing: Vec<&(String, i32)> = candidates
        .iter()
        .filter(|(_, key)| !first.contains(key))
        .collect();
    let known = me.gone.lock().map(|g| g.clone()).unwrap_or_default();
    if missing.iter().all(|(_, key)| known.contains(key)) {
        return Ok(missing.into_iter().map(|(node, _)| node.clone()).collect());
    }
    tokio::time::sleep(RECHECK).await;
    let again = held(db).await?;
    if !me.settled() {
        return Ok(HashSet::new());
    }
    let gone: Vec<&(String, i32)> = missing
        .into_iter()
        .filter(|(_, key)| !again.contains(key))
        .collect();
    if let Ok(mut known) = me.gone.lock() {
        known.extend(gone.iter().map(|(_, key)| *key));
    }
    Ok(gone.into_iter().map(|(node, _)| node.clone()).collect())
}
