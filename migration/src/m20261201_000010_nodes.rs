//! Cluster membership: every node that serves from this database records
//! itself and its heartbeat, so the others (and operators) know who is alive.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

use crate::columns::{create_all, drop_all, index};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let mut nodes = Table::create();
        nodes
            .table("nodes")
            .col(string("id").primary_key())
            .col(string("address"))
            .col(string("version"))
            .col(string("database_backend"))
            .col(timestamp_with_time_zone("started_at"))
            .col(timestamp_with_time_zone("heartbeat_at"));
        create_all(
            manager,
            vec![nodes],
            vec![index("nodes", "heartbeat", &["heartbeat_at"])],
        )
        .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        drop_all(manager, &["nodes"]).await
    }
}
