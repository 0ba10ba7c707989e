//! Candidates are numbered from 1, as in v1 (`candidate_index` 1..=N and
//! `selected_candidate_index` with it); earlier builds stored them from 0.
//! Shifted in two steps through negative numbers, so the unique
//! (job_id, candidate_index) index never sees two equal values.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

async fn run(manager: &SchemaManager<'_>, statements: &[&str]) -> Result<(), DbErr> {
    let db = manager.get_connection();
    for sql in statements {
        db.execute_unprepared(sql).await?;
    }
    Ok(())
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        run(
            manager,
            &[
                "UPDATE run_candidates SET candidate_index = -candidate_index - 1",
                "UPDATE run_candidates SET candidate_index = -candidate_index",
                "UPDATE run_jobs SET selected_candidate_index = selected_candidate_index + 1 \
                 WHERE selected_candidate_index IS NOT NULL",
            ],
        )
        .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        run(
            manager,
            &[
                "UPDATE run_candidates SET candidate_index = -candidate_index + 1",
                "UPDATE run_candidates SET candidate_index = -candidate_index",
                "UPDATE run_jobs SET selected_candidate_index = selected_candidate_index - 1 \
                 WHERE selected_candidate_index IS NOT NULL",
            ],
        )
        .await
    }
}
