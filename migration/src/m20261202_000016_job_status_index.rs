//! The jobs of one run in one status, in plan order: what every scheduling
//! pass asks (the ready jobs to lease, the running ones to check) and what
//! every progress figure counts. Indexed by run alone, each of those reads
//! walked every job of the run, so a pass cost more the longer the run.

use sea_orm_migration::prelude::*;

use crate::columns::index;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_index(index(
                "run_jobs",
                "run_status",
                &["run_id", "status", "created_at"],
            ))
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(
                Index::drop()
                    .name("idx_run_jobs_run_status")
                    .table("run_jobs")
                    .to_owned(),
            )
            .await
    }
}
