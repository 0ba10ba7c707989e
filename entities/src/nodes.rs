//! `nodes` rows: the processes serving from this database and their heartbeats.

use sea_orm::entity::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, DeriveEntityModel, Serialize, Deserialize)]
#[sea_orm(table_name = "nodes")]
pub struct Model {
    /// The node's name in job leases (`engine.node_id`).
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    /// Where it serves HTTP (its bind address).
    pub address: String,
    pub version: String,
    pub database_backend: String,
    pub started_at: DateTimeUtc,
    pub heartbeat_at: DateTimeUtc,
    /// The identity of the project files it sees (`DIR/projects`); nodes of
    /// one cluster must all see the same.
    pub storage_id: Option<String>,
    /// The key of the PostgreSQL advisory lock the node's process holds
    /// while it lives (its death frees it at once); `None`: no such lock
    /// (SQLite, or a node from before liveness locks).
    pub liveness_lock: Option<i32>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
