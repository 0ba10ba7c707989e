//! Which project files a node sees: the identity of its `DIR/projects`, so
//! a node whose files are not the other nodes' is refused at start.

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
                    .add_column(string_null("storage_id"))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table("nodes")
                    .drop_column("storage_id")
                    .to_owned(),
            )
            .await
    }
}
