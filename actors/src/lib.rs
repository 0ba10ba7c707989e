//! Atelier's domain layer: the services every request and every actor goes through.
//!
//! Business logic lives in plain async functions over a [`sea_orm::ConnectionTrait`],
//! so HTTP handlers, CLI commands and (later) the supervised actors call the same
//! code. Each mutation writes its audit event in the same transaction, so a change
//! and its audit record commit or fail together.
//!
//! - [`auth`]: API tokens (minting, hashing, verification cache, bootstrap).
//! - [`projects`]: project lifecycle, slugs, storage policy.
//! - [`audit`]: the append-only audit log.

pub mod asset_links;
pub mod assets;
pub mod audit;
pub mod auth;
pub mod bootstrap;
pub mod catalog;
pub mod copilot;
pub mod cursor;
pub mod db;
pub mod engine;
mod error;
pub mod ledger;
pub mod lookup;
pub mod metrics;
pub mod netpolicy;
mod principal;
pub mod projects;
pub mod provider_accounts;
pub mod reference_items;
pub mod runs;
pub mod secrets;
pub mod time;
pub mod webhooks;

pub use error::ServiceError;
pub use principal::{Principal, TokenPrincipal};
