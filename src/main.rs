use std::process::ExitCode;

use clap::Parser;

// Many small, short-lived allocations per request (rows, JSON): mimalloc keeps
// them off glibc's contended arenas.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    atelier::telemetry::init();
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
