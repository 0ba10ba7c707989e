use std::process::ExitCode;

use clap::Parser;

// Many small, short-lived allocations per request (rows, JSON): mimalloc keeps
// them off glibc's contended arenas.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[actix_web::main]
async fn main() -> ExitCode {
    atelier::telemetry::init();
    let cli = atelier::cli::Cli::parse();
    match atelier::cli::run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(%err, "atelier failed");
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}
