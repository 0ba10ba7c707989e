//! Runs: planning, persistence, events and the job pipeline. Plain functions;
//! the engine's actors (`crate::engine`) schedule them.

pub mod calls;
pub mod control;
mod delivery;
pub mod drain;
pub mod events;
pub mod lease;
pub mod manifest;
mod paid_pass;
pub mod passes;
pub mod pipeline;
pub mod plan;
mod record;
pub mod scenes;
pub mod store;
pub mod trigger;
mod verdict;
pub mod writer;
