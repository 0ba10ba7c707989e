//! Runs: planning, persistence, events and the job pipeline. Plain functions;
//! the engine's actors (the `actors` crate) schedule them.

pub mod budget;
pub mod calls;
pub mod control;
mod delivery;
pub mod deps;
pub mod drain;
pub mod events;
pub mod job_outcome;
pub mod lease;
pub mod lifecycle;
pub mod manifest;
pub mod memory;
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
