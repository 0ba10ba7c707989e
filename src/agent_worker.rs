//! `atelier agent-worker [--once]`: the agent worker outside `serve`, for
//! scripts and for nodes that serve no HTTP (see `domain::agent`). Leases
//! make it safe next to a serving node's own worker.

use serde_json::json;

use crate::cli::CliError;
use crate::database;
use crate::settings::Settings;
use crate::startup::{self, StartupError};

/// Runs until interrupted (`once`: handles at most one due instruction),
/// then prints `{ok, worker_id, processed}`.
pub async fn run(
    settings: Settings,
    once: bool,
    worker_id: Option<String>,
) -> Result<(), CliError> {
    let db = database::open(&settings)
        .await
        .map_err(StartupError::from)?;
    let mut config = startup::agent_config(&settings);
    if let Some(id) = worker_id.filter(|id| !id.trim().is_empty()) {
        config.worker_id = id;
    }
    let outbound = startup::outbound_policy(&settings)?;
    let http = outbound.client(config.timeout);
    let keys = startup::secret_keys(&settings);
    let mut processed = 0;
    loop {
        let limit = if once { 1 } else { 8 };
        let handled =
            domain::agent::dispatch_due(&db.conn, &http, &outbound, &config, Some(&keys), limit)
                .await
                .map_err(|e| CliError::Service(e.to_string()))?;
        for (id, outcome) in &handled {
            tracing::info!(instruction_id = %id, ?outcome, "agent instruction handled");
        }
        processed += handled.len();
        if once {
            break;
        }
        if handled.is_empty() {
            tokio::select! {
                _ = tokio::time::sleep(config.poll) => {}
                _ = tokio::signal::ctrl_c() => break,
            }
        }
    }
    println!(
        "{}",
        json!({"ok": true, "worker_id": config.worker_id, "processed": processed})
    );
    Ok(())
}
