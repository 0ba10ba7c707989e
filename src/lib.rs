//! Atelier: the Rust backend core of a project-first AI image studio for comics
//! and graphic novels.
//!
//! Workspace map (see docs/architecture.md):
//! - `entities/` SeaORM entities, `migration/` versioned schema (SQLite + PostgreSQL);
//! - `storage/` project paths and opendal object storage;
//! - `actors/` domain services (and the supervised actor tree);
//! - `api/` the actix-web facade: routes, envelopes, auth, OpenAPI;
//! - this crate: settings, telemetry, startup ([`startup::Application`]) and the CLI.

pub mod agent_worker;
pub mod bench;
pub mod cli;
pub mod database;
pub mod demo;
pub mod moving_in;
pub mod packages;
pub mod settings;
pub mod startup;
pub mod syncing;
pub mod telemetry;
