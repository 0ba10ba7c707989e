//! Integration tests: the whole service over real HTTP on port 0, against a real
//! database. The same binary runs on SQLite (default) and on PostgreSQL
//! (`ATELIER_TEST_DATABASE=postgres`, see scripts/test.sh).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod binary;
mod bootstrap;
mod browser;
mod helpers;

// The paid providers' stand-ins (see the `stubs` crate).
use stubs::openai as openai_stub;
use stubs::removal as bg_stub;

mod admin;
mod agent;
mod assets;
mod auth;
mod catalog;
mod cli;
mod cluster;
mod cluster_pg;
mod console;
mod contract;
mod copilot;
mod durability;
mod exports;
mod feed;
mod guarantees;
mod hostile;
mod isolation;
pub mod journey;
mod ledger;
mod legacy;
mod migrations;
mod projects;
mod provider_accounts;
mod providers;
mod read_cache;
pub mod recovery;
mod runs;
mod secrets;
mod spend;
mod storage;
mod sync;
mod traces;
mod v1;
mod voice;
mod webhooks;
