//! Where CPU-bound image work runs: on tokio's blocking pool (never on the
//! async threads), at most one task per core at a time. Unbounded, a burst of
//! candidates would start a blocking thread each; they would fight over the
//! same cores, and every new thread would touch fresh allocator memory.

use std::sync::{Arc, OnceLock};

use tokio::sync::Semaphore;

fn slots() -> Arc<Semaphore> {
    static SLOTS: OnceLock<Arc<Semaphore>> = OnceLock::new();
    SLOTS
        .get_or_init(|| {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            Arc::new(Semaphore::new(cores))
        })
        .clone()
}

/// The work panicked (the panic is contained to the work itself).
#[derive(Debug, thiserror::Error)]
#[error("image work failed: {0}")]
pub struct CpuError(String);

/// Runs `work` on the blocking pool once a core is free.
pub async fn run<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, CpuError> {
    run_then(work, |out| out).await
}

/// Like [`run`], then `io` on the same blocking thread once the core is
/// released: file work that follows image work costs no second hop, and
/// does not hold a core while it waits for the disk.
pub async fn run_then<T: Send + 'static, U: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
    io: impl FnOnce(T) -> U + Send + 'static,
) -> Result<U, CpuError> {
    let permit = slots()
        .acquire_owned()
        .await
        .map_err(|e| CpuError(e.to_string()))?;
    tokio::task::spawn_blocking(move || {
        let out = work();
        drop(permit);
        io(out)
    })
    .await
    .map_err(|e| CpuError(e.to_string()))
}
