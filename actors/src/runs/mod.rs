//! Runs: planning, persistence, events and the job pipeline. Plain functions;
//! the engine's actors (`crate::engine`) schedule them.

pub mod control;
pub mod events;
pub mod manifest;
pub mod passes;
pub mod pipeline;
pub mod plan;
pub mod scenes;
pub mod store;
pub mod trigger;
pub mod writer;
