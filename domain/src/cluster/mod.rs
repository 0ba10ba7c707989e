//! Cluster membership: every node serving from this database records itself
//! and beats its heart there; a node whose heartbeat is older than the
//! timeout is dead, and on PostgreSQL so is one whose liveness lock went with
//! its session (`liveness`). Each run has an owner, the node that drives it; a live
//! node adopts the runs of a dead one (and reclaims its job leases at once,
//! see `runs::lifecycle::next_step`), so a node's death costs about one
//! timeout, not a lease's length.

pub mod feed;
pub mod liveness;
pub mod reachability;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use entities::{cluster_settings, nodes, projects, run_owners, runs};
use sea_orm::sea_query::{Expr, LockBehavior, LockType, OnConflict};
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder, QuerySelect};
use uuid::Uuid;

use crate::ServiceError;

/// What a node says about itself.
#[derive(Clone, Debug)]
pub struct NodeInfo {
    pub id: String,
    pub address: String,
    pub version: String,
    pub database_backend: String,
    pub started_at: DateTime<Utc>,
    /// See [`storage_identity`].
    pub storage_id: Option<String>,
    /// The key of its liveness lock, when it holds one ([`liveness`]).
    pub liveness_lock: Option<i32>,
}

/// Records the node (first beat) or refreshes its heartbeat.
pub async fn heartbeat(db: &DatabaseConnection, node: &NodeInfo) -> Result<(), ServiceError> {
    let row = nodes::Model {
        id: node.id.clone(),
        address: node.address.clone(),
        version: node.version.clone(),
        database_backend: node.database_backend.clone(),
        started_at: node.started_at,
        heartbeat_at: crate::time::now(),
        storage_id: node.storage_id.clone(),
        liveness_lock: node.liveness_lock,
    };
    let txn = crate::db::begin_write(db).await?;
    nodes::Entity::insert(nodes::ActiveModel::from(row))
        .on_conflict(
            OnConflict::column(nodes::Column::Id)
                .update_columns([
                    nodes::Column::Address,
                    nodes::Column::Version,
                    nodes::Column::DatabaseBackend,
                    nodes::Column::StartedAt,
                    nodes::Column::HeartbeatAt,
                    nodes::Column::StorageId,
                    nodes::Column::LivenessLock,
                ])
                .to_owned(),
        )
        .exec_without_returning(&txn)
        .await?;
    // Every few seconds on every node: not a change any cached read shows.
    crate::db::commit_unseen(txn).await?;
    Ok(())
}

/// A node as the cluster sees it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Member {
    #[serde(flatten)]
    pub node: nodes::Model,
    /// Its last heartbeat is within the timeout.
    pub alive: bool,
}

/// How this node judges the others: by their liveness locks and, when
/// its own connection allows it, by their heartbeats.
#[derive(Clone, Copy)]
pub struct Observer<'a> {
    pub liveness: &'a liveness::Liveness,
    pub reachability: &'a reachability::Reachability,
}

impl Observer<'static> {
    /// An observer outside the engine (at start): no lock of its own,
    /// heartbeats taken as they are.
    pub fn outside() -> Self {
        static LIVENESS: std::sync::LazyLock<liveness::Liveness> =
            std::sync::LazyLock::new(liveness::Liveness::none);
        static REACHABILITY: std::sync::LazyLock<reachability::Reachability> =
            std::sync::LazyLock::new(reachability::Reachability::default);
        Observer {
            liveness: &LIVENESS,
            reachability: &REACHABILITY,
        }
    }
}

/// Whether a heartbeat sent `at` is within the timeout.
fn recent(at: DateTime<Utc>, timeout: Duration) -> bool {
    let limit = chrono::Duration::from_std(timeout).unwrap_or(chrono::Duration::MAX);
    crate::time::now().signed_duration_since(at) <= limit
}

/// Every node that ever served from this database, the live ones first, as
/// `me` sees them. A node is dead when its heartbeat is older than
/// `timeout` (unless `me` cannot tell: see [`reachability`]), or as soon as
/// its liveness lock is gone.
pub async fn members(
    db: &DatabaseConnection,
    timeout: Duration,
    me: Observer<'_>,
) -> Result<Vec<Member>, ServiceError> {
    let rows = nodes::Entity::find()
        .order_by_asc(nodes::Column::Id)
        .all(db)
        .await?;
    let now = crate::time::now();
    let beating: HashSet<&str> = rows
        .iter()
        .filter(|n| {
            !me.reachability
                .dead_by_heartbeat(n.heartbeat_at, now, timeout)
        })
        .map(|n| n.id.as_str())
        .collect();
    let watched: Vec<(String, i32)> = rows
        .iter()
        .filter(|n| beating.contains(n.id.as_str()) && n.liveness_lock != me.liveness.key())
        .filter_map(|n| Some((n.id.clone(), n.liveness_lock?)))
        .collect();
    let gone = liveness::lock_gone(db, me.liveness, &watched).await?;
    let alive: HashSet<String> = beating
        .into_iter()
        .filter(|id| !gone.contains(*id))
        .map(str::to_string)
        .collect();
    let mut out: Vec<Member> = rows
        .into_iter()
        .map(|node| Member {
            alive: alive.contains(&node.id),
            node,
        })
        .collect();
    out.sort_by_key(|m| !m.alive);
    Ok(out)
}

/// The identity of the project files under `projects` (a node's
/// `DIR/projects`): a random id kept in a file there, made by whichever node
/// gets there first — so nodes sharing the directory (a shared file system)
/// read the same id, and nodes with their own directories different ones.
pub fn storage_identity(projects: &std::path::Path) -> std::io::Result<String> {
    use std::io::Write;
    let path = projects.join(".atelier-storage-id");
    std::fs::create_dir_all(projects)?;
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
    {
        Ok(mut file) => {
            let id = Uuid::new_v4().to_string();
            file.write_all(id.as_bytes())?;
            file.sync_all()?;
            Ok(id)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            // Another node may be writing it this instant.
            for _ in 0..50 {
                let id = std::fs::read_to_string(&path)?;
                if Uuid::parse_str(id.trim()).is_ok() {
                    return Ok(id.trim().to_string());
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(std::io::Error::other(format!(
                "{} does not hold a storage id",
                path.display()
            )))
        }
        Err(e) => Err(e),
    }
}

/// A live node other than `me` that sees other project files than
/// `storage_id` (its own `DIR/projects`, not a shared one), if any.
pub async fn unshared_files(
    db: &DatabaseConnection,
    me: &str,
    storage_id: &str,
    timeout: Duration,
) -> Result<Option<nodes::Model>, ServiceError> {
    // At start, before this node holds its own liveness lock: heartbeats.
    Ok(members(db, timeout, Observer::outside())
        .await?
        .into_iter()
        .find_map(|m| {
            (m.alive
                && m.node.id != me
                && m.node
                    .storage_id
                    .as_deref()
                    .is_some_and(|s| s != storage_id))
            .then_some(m.node)
        }))
}

/// Nodes other than `me` that are dead (see [`members`]).
pub async fn dead_nodes(
    db: &DatabaseConnection,
    me: &str,
    timeout: Duration,
    observer: Observer<'_>,
) -> Result<HashSet<String>, ServiceError> {
    Ok(members(db, timeout, observer)
        .await?
        .into_iter()
        .filter(|m| !m.alive && m.node.id != me)
        .map(|m| m.node.id)
        .collect())
}

/// `node` drives the run (it took the submission).
pub async fn claim_run(
    db: &DatabaseConnection,
    run_id: Uuid,
    node: &str,
) -> Result<(), ServiceError> {
    let txn = crate::db::begin_write(db).await?;
    record_owner(&txn, run_id, node).await?;
    crate::db::commit(txn).await?;
    Ok(())
}

/// Records `node` as the run's owner within the caller's transaction (a
/// trigger writes it with the run itself: no transaction of its own on the
/// way from submission to start).
pub async fn record_owner<C: sea_orm::ConnectionTrait>(
    db: &C,
    run_id: Uuid,
    node: &str,
) -> Result<(), ServiceError> {
    run_owners::Entity::insert(run_owners::ActiveModel::from(run_owners::Model {
        run_id,
        node_id: node.to_string(),
        claimed_at: crate::time::now(),
    }))
    .on_conflict(
        OnConflict::column(run_owners::Column::RunId)
            .update_columns([run_owners::Column::NodeId, run_owners::Column::ClaimedAt])
            .to_owned(),
    )
    .exec_without_returning(db)
    .await?;
    Ok(())
}

/// The unfinished runs `me` must start driving: at its start, its own (from
/// its previous process); at start and on every tick after, its share of
/// those whose owner is dead, which it adopts (see [`adopt`]). A run with
/// no owner (submitted by a node that died before claiming it, or before
/// ownership was recorded) is taken at start, and on a tick once it is
/// older than the timeout.
pub async fn runs_to_drive(
    db: &DatabaseConnection,
    me: &str,
    timeout: Duration,
    at_start: bool,
    observer: Observer<'_>,
) -> Result<Vec<runs::Model>, ServiceError> {
    let unowned_after = if at_start { Duration::ZERO } else { timeout };
    let unfinished = crate::runs::store::unfinished_runs(db).await?;
    if unfinished.is_empty() {
        return Ok(Vec::new());
    }
    let owners: HashMap<Uuid, String> = run_owners::Entity::find()
        .filter(run_owners::Column::RunId.is_in(unfinished.iter().map(|r| r.id)))
        .all(db)
        .await?
        .into_iter()
        .map(|o| (o.run_id, o.node_id))
        .collect();
    let cluster = members(db, timeout, observer).await?;
    let dead: HashSet<String> = cluster
        .iter()
        .filter(|m| !m.alive && m.node.id != me)
        .map(|m| m.node.id.clone())
        .collect();
    let orphaned: Vec<Uuid> = unfinished
        .iter()
        .filter(|r| owners.get(&r.id).is_some_and(|o| dead.contains(o)))
        .map(|r| r.id)
        .collect();
    let alive = cluster.iter().filter(|m| m.alive).count().max(1);
    let adopted = adopt(db, me, &orphaned, &dead, orphaned.len().div_ceil(alive)).await?;
    let now = crate::time::now();
    let old_enough = chrono::Duration::from_std(unowned_after).unwrap_or(chrono::Duration::MAX);
    let mut mine = Vec::new();
    for run in unfinished {
        let taken = match owners.get(&run.id) {
            Some(owner) if owner == me => at_start,
            Some(_) => adopted.contains(&run.id),
            None if now.signed_duration_since(run.created_at) >= old_enough => {
                let txn = crate::db::begin_write(db).await?;
                let inserted =
                    run_owners::Entity::insert(run_owners::ActiveModel::from(run_owners::Model {
                        run_id: run.id,
                        node_id: me.to_string(),
                        claimed_at: now,
                    }))
                    .on_conflict(
                        OnConflict::column(run_owners::Column::RunId)
                            .do_nothing()
                            .to_owned(),
                    )
                    .exec_without_returning(&txn)
                    .await?;
                crate::db::commit(txn).await?;
                inserted > 0
            }
            None => false,
        };
        if taken {
            mine.push(run);
        }
    }
    Ok(mine)
}

/// Moves to `me` up to `share` of the runs in `orphaned` still owned by a
/// node of `dead`, oldest claim first; returns those it moved. On
/// PostgreSQL the owner rows are locked `FOR UPDATE SKIP LOCKED`: nodes
/// adopting at the same moment take disjoint runs without waiting for each
/// other, and with `share` about 1/N of the orphans each, a dead node's
/// work spreads over the survivors. SQLite's write transaction excludes
/// other writers; the update is guarded on the old owner either way.
async fn adopt(
    db: &DatabaseConnection,
    me: &str,
    orphaned: &[Uuid],
    dead: &HashSet<String>,
    share: usize,
) -> Result<HashSet<Uuid>, ServiceError> {
    if orphaned.is_empty() || share == 0 {
        return Ok(HashSet::new());
    }
    let txn = crate::db::begin_write(db).await?;
    let rows: Vec<(Uuid, String)> = run_owners::Entity::find()
        .select_only()
        .column(run_owners::Column::RunId)
        .column(run_owners::Column::NodeId)
        .filter(run_owners::Column::RunId.is_in(orphaned.iter().copied()))
        .filter(run_owners::Column::NodeId.is_in(dead.iter().cloned()))
        .order_by_asc(run_owners::Column::ClaimedAt)
        .order_by_asc(run_owners::Column::RunId)
        .limit(share as u64)
        .lock_with_behavior(LockType::Update, LockBehavior::SkipLocked)
        .into_tuple()
        .all(&txn)
        .await?;
    if rows.is_empty() {
        crate::db::rollback(txn).await?;
        return Ok(HashSet::new());
    }
    let moved = run_owners::Entity::update_many()
        .col_expr(run_owners::Column::NodeId, Expr::value(me))
        .col_expr(
            run_owners::Column::ClaimedAt,
            Expr::value(crate::time::now()),
        )
        .filter(run_owners::Column::RunId.is_in(rows.iter().map(|(id, _)| *id)))
        .filter(run_owners::Column::NodeId.is_in(dead.iter().cloned()))
        .exec_with_returning(&txn)
        .await?;
    crate::db::commit(txn).await?;
    for row in &moved {
        let dead_node = rows
            .iter()
            .find(|(id, _)| *id == row.run_id)
            .map_or("", |(_, node)| node.as_str());
        tracing::warn!(run_id = %row.run_id, dead_node, "adopted the run of a dead node");
    }
    Ok(moved.into_iter().map(|row| row.run_id).collect())
}

/// Whether a live node other than `me` owns the run (and drives it).
pub async fn driven_elsewhere(
    db: &DatabaseConnection,
    run_id: Uuid,
    me: &str,
    timeout: Duration,
) -> Result<bool, ServiceError> {
    // The owner and its heartbeat in one read: this runs at every
    // scheduling pass of every run.
    let owner: Option<(String, Option<DateTime<Utc>>)> = run_owners::Entity::find_by_id(run_id)
        .select_only()
        .column(run_owners::Column::NodeId)
        .column(nodes::Column::HeartbeatAt)
        .join(
            sea_orm::JoinType::LeftJoin,
            run_owners::Entity::belongs_to(nodes::Entity)
                .from(run_owners::Column::NodeId)
                .to(nodes::Column::Id)
                .into(),
        )
        .into_tuple()
        .one(db)
        .await?;
    Ok(owner.is_some_and(|(node, heartbeat)| {
        node != me && heartbeat.is_some_and(|at| recent(at, timeout))
    }))
}

/// The `cluster_settings` name of the operator's pause of all processing.
const PAUSED_ALL: &str = "paused_all";

/// What every node follows: the operator's pause of all processing and the
/// projects whose queue is paused. Read by each node at start and every
/// heartbeat, so a pause given to one node holds on all of them and across
/// restarts.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Control {
    pub paused_all: bool,
    pub paused_projects: HashSet<Uuid>,
}

/// Persists the operator's pause (or resume) of all processing.
pub async fn set_paused_all(db: &DatabaseConnection, paused: bool) -> Result<(), ServiceError> {
    let txn = crate::db::begin_write(db).await?;
    cluster_settings::Entity::insert(cluster_settings::ActiveModel::from(
        cluster_settings::Model {
            name: PAUSED_ALL.into(),
            value_json: serde_json::Value::Bool(paused),
            updated_at: crate::time::now(),
        },
    ))
    .on_conflict(
        OnConflict::column(cluster_settings::Column::Name)
            .update_columns([
                cluster_settings::Column::ValueJson,
                cluster_settings::Column::UpdatedAt,
            ])
            .to_owned(),
    )
    .exec_without_returning(&txn)
    .await?;
    crate::db::commit(txn).await?;
    Ok(())
}

/// The control state as persisted.
pub async fn control(db: &DatabaseConnection) -> Result<Control, ServiceError> {
    use sea_orm::QuerySelect;
    let paused_all = cluster_settings::Entity::find_by_id(PAUSED_ALL)
        .one(db)
        .await?
        .and_then(|s| s.value_json.as_bool())
        .unwrap_or(false);
    let projects: Vec<(Uuid, serde_json::Value)> = projects::Entity::find()
        .select_only()
        .column(projects::Column::Id)
        .column(projects::Column::SettingsJson)
        .into_tuple()
        .all(db)
        .await?;
    Ok(Control {
        paused_all,
        paused_projects: projects
            .into_iter()
            .filter(|(_, settings)| crate::runs::control::paused_in(settings))
            .map(|(id, _)| id)
            .collect(),
    })
}
