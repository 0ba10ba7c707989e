//! The supervised actor tree that executes runs (see [`engine`]): actors,
//! their messages and supervision, and the [`engine::Engine`] handle that
//! implements the domain's ports. The work itself is the `domain` crate's.

pub mod engine;
