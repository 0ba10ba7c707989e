//! The service inside the shell: `atelier serve` on a loopback port chosen at
//! start, in a thread of its own (the service runs on actix's single-threaded
//! runtimes, the shell on Tauri's), with its data under the platform's
//! app-data directory.
//!
//! Why the real HTTP server rather than calls into the handlers: every IPC
//! call then goes through exactly what an HTTP client meets — routing,
//! authentication, validation order, the frozen envelope, the read caches,
//! the WebSocket feed's replay — so the contract the frontend sees through
//! the shell cannot drift from the one the HTTP tests prove. A loopback hop
//! costs tens of microseconds; the window's console uses the same server.
//!
//! The shell authenticates with a token minted in-process at start (no HTTP
//! bootstrap; it is never written anywhere) and revoked when the shell stops.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::thread::JoinHandle;

use atelier::settings::{Overrides, Settings};
use atelier::startup::Application;
use tokio::sync::oneshot;

/// The label of the shell's own tokens: one per start, revoked at a clean
/// stop; any left by a shell that crashed are revoked at the next start.
pub const SHELL_TOKEN_LABEL: &str = "atelier-desktop-shell";

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("the service could not start: {0}")]
    Start(String),
    #[error("the service thread could not be started: {0}")]
    Thread(#[from] std::io::Error),
}

/// A running embedded service.
pub struct EmbeddedService {
    addr: SocketAddr,
    token: String,
    data_dir: PathBuf,
    stop: Mutex<Option<oneshot::Sender<()>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for EmbeddedService {
    // The token stays out of every log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedService")
            .field("addr", &self.addr)
            .field("data_dir", &self.data_dir)
            .finish_non_exhaustive()
    }
}

/// The service's data directory inside the app's: the `var/` layout of a
/// checkout (`var/backend/app.db`, `var/projects/…`).
pub fn data_dir_in(app_data: &Path) -> PathBuf {
    app_data.join("var")
}

impl EmbeddedService {
    /// Builds the service on `data_dir` (SQLite and local files: the embedded
    /// default, whatever the environment says; one HTTP worker), mints the
    /// shell's token and starts serving; returns once it answers.
    pub fn start(data_dir: PathBuf) -> Result<Self, ServiceError> {
        Self::start_with(data_dir, || {})
    }

    /// Like [`Self::start`]; `on_own_stop` runs (on the service's thread)
    /// when the service stops without the shell asking — SIGTERM or SIGINT,
    /// which the service handles by draining — so the shell can exit too.
    pub fn start_with(
        data_dir: PathBuf,
        on_own_stop: impl FnOnce() + Send + 'static,
    ) -> Result<Self, ServiceError> {
        atelier::startup::install_runtime_defaults();
        let mut settings = Settings::load(&Overrides {
            data_dir: Some(data_dir.clone()),
            bind: Some("127.0.0.1:0".into()),
            ..Overrides::default()
        })
        .map_err(|e| ServiceError::Start(e.to_string()))?;
        settings.database_url = None;
        // One person, one window: one HTTP worker answers the shell's calls
        // and the console, and an idle second one would cost ~6 MiB
        // (docs/performance.md, "Idle footprint").
        settings.http.workers = 1;
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("atelier-service".into())
            .spawn(move || {
                let asked =
                    actix_web::rt::System::new().block_on(serve(settings, ready_tx, stop_rx));
                if !asked {
                    on_own_stop();
                }
            })?;
        let (addr, token) = ready_rx
            .recv()
            .map_err(|_| {
                ServiceError::Start("the service thread ended before it was ready".into())
            })?
            .map_err(ServiceError::Start)?;
        tracing::info!(%addr, data_dir = %data_dir.display(), "embedded service ready");
        Ok(Self {
            addr,
            token,
            data_dir,
            stop: Mutex::new(Some(stop_tx)),
            thread: Mutex::new(Some(thread)),
        })
    }

    /// `http://127.0.0.1:<port>`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The shell's bearer token (for the IPC commands and the window's
    /// console; never logged or stored).
    pub(crate) fn token(&self) -> &str {
        &self.token
    }

    /// Drains the engine (calls in flight finish and are stored; unfinished
    /// runs resume at the next start), stops the server, revokes the shell's
    /// token; returns when all that is done. Idempotent.
    pub fn stop(&self) {
        if let Some(stop) = self.stop.lock().ok().and_then(|mut s| s.take()) {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.lock().ok().and_then(|mut t| t.take())
            && thread.join().is_err()
        {
            tracing::error!("the service thread panicked while stopping");
        }
    }
}

impl Drop for EmbeddedService {
    fn drop(&mut self) {
        self.stop();
    }
}

type Ready = std::sync::mpsc::Sender<Result<(SocketAddr, String), String>>;

/// The service thread's life: build, mint, serve until told to stop (or a
/// signal), drain, revoke; returns whether the shell asked for the stop.
async fn serve(settings: Settings, ready: Ready, stop: oneshot::Receiver<()>) -> bool {
    let app = match Application::build(settings).await {
        Ok(app) => app,
        Err(e) => {
            let _ = ready.send(Err(e.to_string()));
            return true;
        }
    };
    let db = app.db().clone();
    let minted = match mint_shell_token(&db).await {
        Ok(minted) => minted,
        Err(e) => {
            let _ = ready.send(Err(format!("cannot mint the shell's token: {e}")));
            return true;
        }
    };
    let _ = ready.send(Ok((app.addr(), minted.token)));
    let asked = std::cell::Cell::new(false);
    let stopped = app
        .run_until(async {
            // A dropped sender (the shell gone) is a request too.
            let _ = stop.await;
            asked.set(true);
        })
        .await;
    if let Err(e) = stopped {
        tracing::error!(error = %e, "the embedded service stopped with an error");
    }
    if let Err(e) = revoke(&db, minted.row.id).await {
        tracing::warn!(error = %e, "cannot revoke the shell's token");
    }
    asked.get()
}

/// Revokes the tokens earlier shells left (a crash skips the revocation),
/// then mints this start's.
async fn mint_shell_token(
    db: &domain::DatabaseConnection,
) -> Result<domain::auth::CreatedToken, domain::ServiceError> {
    let verifier = domain::auth::TokenVerifier::new(std::time::Duration::ZERO);
    let operator = domain::Principal::DevBypass;
    for left in domain::auth::list_tokens(db, &operator).await? {
        if left.label == SHELL_TOKEN_LABEL && left.revoked_at.is_none() {
            domain::auth::revoke_token(db, &verifier, &operator, &left.id.to_string()).await?;
        }
    }
    domain::auth::create_token(
        db,
        &verifier,
        &operator,
        domain::auth::CreateToken {
            label: Some(SHELL_TOKEN_LABEL.into()),
            project_slug: None,
            expires_at: None,
        },
    )
    .await
}

async fn revoke(
    db: &domain::DatabaseConnection,
    id: uuid::Uuid,
) -> Result<(), domain::ServiceError> {
    let verifier = domain::auth::TokenVerifier::new(std::time::Duration::ZERO);
    domain::auth::revoke_token(
        db,
        &verifier,
        &domain::Principal::DevBypass,
        &id.to_string(),
    )
    .await
    .map(|_| ())
}
