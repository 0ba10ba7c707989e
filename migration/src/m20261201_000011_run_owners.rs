//! Which node drives each run: the node that took the submission, or one
//! that adopted the run after its owner died.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

use crate::columns::{create_all, drop_all, fk, index};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let mut owners = Table::create();
        owners
            .table("run_owners")
            .col(uuid("run_id").primary_key())
            .col(string("node_id"))
            .col(timestamp_with_time_zone("claimed_at"));
        fk(
            &mut owners,
            "run_owners",
            "run_id",
            "runs",
            ForeignKeyAction::Cascade,
        );
        create_all(
            manager,
            vec![owners],
            vec![index("run_owners", "node", &["node_id"])],
        )
        .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        drop_all(manager, &["run_owners"]).await
    }
}
