//! Run events: every state change gets the next per-run sequence number, is
//! persisted in `run_events`, and is then broadcast on the in-process hub that
//! the WebSocket feed consumes. Replay is `seq > since` from the table.

use chrono::{DateTime, Utc};
use entities::{run_events, runs};
use sea_orm::sea_query::{Expr, ExprTrait, Query};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, IdenStatic, QueryFilter,
    QueryOrder, QuerySelect,
};
use serde::Serialize;
use serde_json::Value;
use tokio::sync::broadcast;
use uuid::Uuid;

use crate::{ServiceError, time};

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct RunEvent {
    pub run_id: Uuid,
    pub project_id: Uuid,
    pub seq: i64,
    pub event_type: String,
    pub job_id: Option<Uuid>,
    pub payload: Value,
    pub created_at: DateTime<Utc>,
}

impl From<run_events::Model> for RunEvent {
    fn from(m: run_events::Model) -> Self {
        Self {
            run_id: m.run_id,
            project_id: m.project_id,
            seq: m.seq,
            event_type: m.event_type,
            job_id: m.job_id,
            payload: m.payload_json,
            created_at: m.created_at,
        }
    }
}

/// A persisted event as the hub hands it out: one allocation shared by every
/// subscriber (a receive clones an `Arc`, not the payload), with its wire
/// form encoded once, by the first subscriber that needs it.
#[derive(Debug)]
pub struct LiveEvent {
    pub event: RunEvent,
    wire: std::sync::OnceLock<bytestring::ByteString>,
}

impl LiveEvent {
    /// The event's wire text; `encode` runs for the first caller only, so
    /// every caller must pass the same encoding.
    pub fn wire(&self, encode: impl FnOnce(&RunEvent) -> String) -> bytestring::ByteString {
        self.wire.get_or_init(|| encode(&self.event).into()).clone()
    }
}

impl std::ops::Deref for LiveEvent {
    type Target = RunEvent;
    fn deref(&self) -> &RunEvent {
        &self.event
    }
}

/// An event this node committed, as announced to the other nodes.
#[derive(Clone, Copy, Debug)]
pub struct Committed {
    pub project_id: Uuid,
    pub run_id: Uuid,
    pub seq: i64,
}

/// Bounded fan-out of persisted events; a lagging subscriber loses messages
/// (and is told so by the channel) instead of growing server memory.
#[derive(Clone)]
pub struct EventHub {
    tx: broadcast::Sender<std::sync::Arc<LiveEvent>>,
    /// Where this node's committed events are announced to the other nodes
    /// (`cluster::feed`; PostgreSQL only).
    announce: std::sync::Arc<std::sync::OnceLock<tokio::sync::mpsc::Sender<Committed>>>,
}

impl EventHub {
    pub fn new(capacity: usize) -> Self {
        let (tx, _) = broadcast::channel(capacity.max(16));
        Self {
            tx,
            announce: Default::default(),
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<std::sync::Arc<LiveEvent>> {
        self.tx.subscribe()
    }

    /// From now on, every event published here is also handed to `to`.
    pub fn announce_to(&self, to: tokio::sync::mpsc::Sender<Committed>) {
        let _ = self.announce.set(to);
    }

    /// An event this node committed: to its subscribers and, in a cluster,
    /// announced to the other nodes.
    pub fn publish(&self, event: RunEvent) {
        if let Some(announce) = self.announce.get() {
            // Full: the run's next events and the feeds' hole filling cover it.
            let _ = announce.try_send(Committed {
                project_id: event.project_id,
                run_id: event.run_id,
                seq: event.seq,
            });
        }
        self.publish_relayed(event);
    }

    /// An event another node committed: to this node's subscribers only.
    pub fn publish_relayed(&self, event: RunEvent) {
        // No subscriber is fine: the event is already persisted.
        let _ = self.tx.send(std::sync::Arc::new(LiveEvent {
            event,
            wire: std::sync::OnceLock::new(),
        }));
    }
}

/// Reserves `n` consecutive sequence numbers of the run in one statement
/// (call within a write transaction); returns the first.
pub async fn reserve_seqs<C: ConnectionTrait>(
    db: &C,
    run_id: Uuid,
    n: i64,
) -> Result<i64, ServiceError> {
    let stmt = Query::update()
        .table(runs::Entity)
        .value(
            runs::Column::LastEventSeq,
            Expr::col(runs::Column::LastEventSeq).add(n),
        )
        .and_where(runs::Column::Id.eq(run_id))
        .returning_col(runs::Column::LastEventSeq)
        .to_owned();
    let last: i64 = db
        .query_one(&stmt)
        .await?
        .ok_or_else(|| ServiceError::missing("run", run_id))?
        .try_get("", runs::Column::LastEventSeq.as_str())?;
    Ok(last - n + 1)
}

/// Appends events of one run inside `db` (call within the transaction that
/// made the change, so the change and its events commit together); returns
/// them for publishing after commit.
pub async fn append_many<C: ConnectionTrait>(
    db: &C,
    run_id: Uuid,
    project_id: Uuid,
    events: Vec<(&str, Option<Uuid>, Value)>,
) -> Result<Vec<RunEvent>, ServiceError> {
    if events.is_empty() {
        return Ok(Vec::new());
    }
    let first = reserve_seqs(db, run_id, events.len() as i64).await?;
    append_numbered(db, run_id, project_id, first, events).await
}

/// Like [`append_many`], numbered from `first`: sequence numbers the caller
/// reserved in the same transaction (e.g. with the change they describe).
pub async fn append_numbered<C: ConnectionTrait>(
    db: &C,
    run_id: Uuid,
    project_id: Uuid,
    first: i64,
    events: Vec<(&str, Option<Uuid>, Value)>,
) -> Result<Vec<RunEvent>, ServiceError> {
    let now = time::now();
    let rows: Vec<run_events::Model> = events
        .into_iter()
        .zip(first..)
        .map(|((event_type, job_id, payload), seq)| run_events::Model {
            id: Uuid::now_v7(),
            project_id,
            run_id,
            seq,
            event_type: event_type.to_string(),
            job_id,
            payload_json: payload,
            created_at: now,
        })
        .collect();
    run_events::Entity::insert_many(rows.iter().cloned().map(run_events::ActiveModel::from))
        .exec_without_returning(db)
        .await?;
    Ok(rows.into_iter().map(RunEvent::from).collect())
}

/// Appends one event inside `db`; see [`append_many`].
pub async fn append<C: ConnectionTrait>(
    db: &C,
    run_id: Uuid,
    project_id: Uuid,
    event_type: &str,
    job_id: Option<Uuid>,
    payload: Value,
) -> Result<RunEvent, ServiceError> {
    append_many(db, run_id, project_id, vec![(event_type, job_id, payload)])
        .await?
        .pop()
        .ok_or_else(|| ServiceError::Internal("event not appended".into()))
}

/// Appends and commits one event of a job's worker on its own — if its
/// lease (`fence`) still holds the job — then publishes it.
pub async fn emit(
    db: &DatabaseConnection,
    hub: &EventHub,
    fence: &super::lease::Fence,
    run_id: Uuid,
    project_id: Uuid,
    event_type: &str,
    payload: Value,
) -> Result<(), ServiceError> {
    let txn = crate::db::begin_write(db).await?;
    super::lease::hold(&txn, Some(fence)).await?;
    let event = append(
        &txn,
        run_id,
        project_id,
        event_type,
        Some(fence.job_id),
        payload,
    )
    .await?;
    crate::db::commit(txn).await?;
    hub.publish(event);
    Ok(())
}

/// Persisted events of a run after `since`, in order.
pub async fn list_since<C: ConnectionTrait>(
    db: &C,
    run_id: Uuid,
    since: i64,
    limit: u64,
) -> Result<Vec<RunEvent>, ServiceError> {
    Ok(run_events::Entity::find()
        .filter(run_events::Column::RunId.eq(run_id))
        .filter(run_events::Column::Seq.gt(since))
        .order_by_asc(run_events::Column::Seq)
        .limit(limit)
        .all(db)
        .await?
        .into_iter()
        .map(RunEvent::from)
        .collect())
}
