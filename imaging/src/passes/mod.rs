//! Post-process passes, pure Rust, run per candidate in a fixed order:
//! background removal -> upscale -> colour. Each keeps alpha and is
//! deterministic; none downloads a model or runs an external binary.

pub mod bg_remove;
pub mod color;
pub mod thumbnail;
pub mod upscale;
