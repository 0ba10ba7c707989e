//! Cluster membership: every node serving from this database records itself
//! and beats its heart there; a node whose heartbeat is older than the
//! timeout is dead. What the others do about a dead node's work (adopting
//! its runs, reclaiming its leases) builds on this.

use std::time::Duration;

use chrono::{DateTime, Utc};
use entities::nodes;
use sea_orm::sea_query::OnConflict;
use sea_orm::{DatabaseConnection, EntityTrait, QueryOrder};

use crate::ServiceError;

/// What a node says about itself.
#[derive(Clone, Debug)]
pub struct NodeInfo {
    pub id: String,
    pub address: String,
    pub version: String,
    pub database_backend: String,
    pub started_at: DateTime<Utc>,
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
                ])
                .to_owned(),
        )
        .exec_without_returning(&txn)
        .await?;
    crate::db::commit(txn).await?;
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

/// Every node that ever served from this database, the live ones first.
pub async fn members(
    db: &DatabaseConnection,
    timeout: Duration,
) -> Result<Vec<Member>, ServiceError> {
    let now = crate::time::now();
    let limit = chrono::Duration::from_std(timeout).unwrap_or(chrono::Duration::MAX);
    let mut out: Vec<Member> = nodes::Entity::find()
        .order_by_asc(nodes::Column::Id)
        .all(db)
        .await?
        .into_iter()
        .map(|node| Member {
            alive: now.signed_duration_since(node.heartbeat_at) <= limit,
            node,
        })
        .collect();
    out.sort_by_key(|m| !m.alive);
    Ok(out)
}
