use std::process::ExitCode;

use clap::Parser;

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
