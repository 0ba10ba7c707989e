//! Fencing for job leases: every claim of a job raises its epoch, and every
//! write a lease holder makes is conditional on the epoch it claimed, so a
//! node that wakes after losing its lease cannot overwrite the new holder's
//! work.

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
                    .table("run_jobs")
                    .add_column(big_integer("lease_epoch").default(0).to_owned())
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table("run_jobs")
                    .drop_column("lease_epoch")
                    .to_owned(),
            )
            .await
    }
}
