//! Settings every node of a cluster follows, persisted so that they hold
//! across nodes and restarts (e.g. an operator's pause of all processing).

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

use crate::columns::{create_all, drop_all};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let mut settings = Table::create();
        settings
            .table("cluster_settings")
            .col(string("name").primary_key())
            .col(json_binary("value_json"))
            .col(timestamp_with_time_zone("updated_at"));
        create_all(manager, vec![settings], vec![]).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        drop_all(manager, &["cluster_settings"]).await
    }
}
