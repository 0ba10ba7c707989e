//! Versioned, additive schema migrations for Atelier (SQLite and PostgreSQL).
//!
//! One migration per file: `DeriveMigrationName` names a migration after its module,
//! and that name is what `seaql_migrations` records. Never edit a released migration;
//! add a new file instead.

pub use sea_orm_migration::prelude::*;

mod columns;
mod m20261126_000001_identity;
mod m20261126_000002_catalog;
mod m20261126_000003_assets;
mod m20261126_000004_runs;
mod m20261126_000005_conversation;
mod m20261126_000006_webhooks;
mod m20261130_000007_call_outcomes;
mod m20261130_000008_token_lineage;
mod m20261201_000009_candidates_from_one;
mod m20261201_000010_nodes;
mod m20261201_000011_run_owners;
mod m20261201_000012_lease_epochs;
mod m20261201_000013_cluster_settings;
mod m20261201_000014_node_storage;
mod m20261201_000015_node_liveness;
mod m20261202_000016_job_indexes;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261126_000001_identity::Migration),
            Box::new(m20261126_000002_catalog::Migration),
            Box::new(m20261126_000003_assets::Migration),
            Box::new(m20261126_000004_runs::Migration),
            Box::new(m20261126_000005_conversation::Migration),
            Box::new(m20261126_000006_webhooks::Migration),
            Box::new(m20261130_000007_call_outcomes::Migration),
            Box::new(m20261130_000008_token_lineage::Migration),
            Box::new(m20261201_000009_candidates_from_one::Migration),
            Box::new(m20261201_000010_nodes::Migration),
            Box::new(m20261201_000011_run_owners::Migration),
            Box::new(m20261201_000012_lease_epochs::Migration),
            Box::new(m20261201_000013_cluster_settings::Migration),
            Box::new(m20261201_000014_node_storage::Migration),
            Box::new(m20261201_000015_node_liveness::Migration),
            Box::new(m20261202_000016_job_indexes::Migration),
        ]
    }
}

/// Names of every migration this build knows, oldest first.
pub fn known_migration_names() -> Vec<String> {
    Migrator::migrations()
        .iter()
        .map(|m| m.name().to_string())
        .collect()
}
