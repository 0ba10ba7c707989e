use std::process::ExitCode;

use clap::Parser;

// Many small, short-lived allocations per request (rows, JSON): mimalloc keeps
// them off glibc's contended arenas.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    atelier::telemetry::init();
    // mimalloc asks for transparent huge pages; under the engine's churn it
    // purges them and faults them back, and zeroing 2 MiB pages took 19-27 %
    // of the engine's CPU samples (perf, docs/performance.md). Without them
    // that cost is gone from the profile.
    #[cfg(target_os = "linux")]
    if let Err(err) = rustix::thread::disable_transparent_huge_pages(true) {
        tracing::debug!(%err, "cannot turn transparent huge pages off");
    }
    // Every command may reach S3 or a provider (TLS needs its crypto
    // provider installed first).
    atelier::startup::install_runtime_defaults();
    let cli = atelier::cli::Cli::parse();
    // Actors live on the system thread (a LocalSet); job pipelines and the
    // row writer are `tokio::spawn`ed onto this multi-threaded runtime, so
    // per-candidate work never queues behind actor messages.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let system = actix_web::rt::System::with_tokio_rt(move || runtime);
    match system.block_on(atelier::cli::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(%err, "atelier failed");
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}
