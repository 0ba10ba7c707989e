//! The key of the advisory lock a node holds while its process lives, so
//! the other nodes see its death at once (`domain::cluster::liveness`).

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table("nodes")
                    .add_column(integer_null("liveness_lock"))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table("nodes")
                    .drop_column("liveness_lock")
                    .to_owned(),
            )
            .await
    }
}
