//! Atelier's domain: the services every request and every actor goes through.
//!
//! Business logic lives in plain async functions over a
//! [`sea_orm::ConnectionTrait`], so HTTP handlers, CLI commands and the
//! supervised actors (the `actors` crate) call the same code. Each mutation
//! writes its audit event in the same transaction, so a change and its audit
//! record commit or fail together. What the domain needs from the running
//! engine it asks through the traits in [`ports`]; it never names an actor.
//!
//! - [`auth`]: API tokens (minting, hashing, verification cache, bootstrap).
//! - [`projects`]: project lifecycle, slugs, storage policy and files.
//! - [`runs`]: planning, persistence, leasing, the job pipeline, events.
//! - [`audit`]: the append-only audit log.

pub mod agent;
pub mod asset_links;
pub mod assets;
pub mod audit;
pub mod auth;
pub mod background;
pub mod bootstrap;
pub mod catalog;
pub mod cluster;
pub mod copilot;
pub mod cursor;
pub mod db;
mod error;
pub mod exports;
pub mod ledger;
pub mod legacy;
pub mod lookup;
pub mod metrics;
pub mod netpolicy;
pub mod ports;
mod principal;
pub mod projects;
pub mod provider_accounts;
pub mod reference_items;
pub mod runs;
pub mod secrets;
pub mod status;
pub mod sync;
pub mod time;
pub mod voice;
pub mod webhooks;

pub use error::{ErrorClass, ServiceError};

/// Version of the HTTP contract (paths, fields, envelopes): sent on every
/// response, reported by `/health`, written into export manifests.
pub const CONTRACT_VERSION: &str = "v1";
// Handles the domain's callers hold, re-exported so the HTTP layer needs no
// direct dependency on the database, storage or imaging crates.
pub use imaging::DecodeLimits;
pub use principal::{Principal, TokenPrincipal};
pub use sea_orm::DatabaseConnection;
pub use storage::paths::StorageRoots;
