//! Indexes for the engine's lookups of jobs, each of which walked more jobs
//! than it needed:
//! - the jobs of one run in one status, in plan order: what every
//!   scheduling pass asks (the ready jobs to lease, the running ones to
//!   check) and what every progress figure counts — indexed by run alone,
//!   so a pass cost more the longer the run;
//! - a job's children: a verdict unblocks the next stage and a failure skips
//!   the rest of the chain by `parent_job_id`, which had no index at all (a
//!   scan of every job of every run in the database).

use sea_orm_migration::prelude::*;

use crate::columns::index;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// (name, columns) of each index on `run_jobs`.
const INDEXES: [(&str, &[&str]); 2] = [
    ("run_status", &["run_id", "status", "created_at"]),
    ("parent", &["parent_job_id"]),
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for (name, cols) in INDEXES {
            manager.create_index(index("run_jobs", name, cols)).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for (name, _) in INDEXES {
            manager
                .drop_index(
                    Index::drop()
                        .name(format!("idx_run_jobs_{name}"))
                        .table("run_jobs")
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }
}
