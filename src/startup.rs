//! Building and running the service. [`Application::build`] is what `serve`,
//! the integration tests and a future desktop shell call.

use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Once};
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::{HttpServer, web};
use domain::auth::TokenVerifier;
use sea_orm::DatabaseConnection;
use storage::paths::StorageRoots;

use crate::database::{self, DatabaseError};
use crate::settings::{Settings, SettingsError};

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error(transparent)]
    Database(#[from] DatabaseError),
    #[error("cannot listen on {bind}: {source}")]
    Bind {
        bind: String,
        source: std::io::Error,
    },
    #[error(
        "auth.dev_bypass is on but the server would listen on {0}, which is not loopback; \
         dev bypass is only allowed on 127.0.0.1 or ::1"
    )]
    BypassOnPublicBind(SocketAddr),
    #[error("invalid provider settings: {0}")]
    Provider(#[from] providers::ProviderConfigError),
    #[error("invalid network settings: {0}")]
    Network(String),
    #[error("cannot create {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot read the cluster's settings: {0}")]
    Cluster(domain::ServiceError),
    #[error(
        "node {node} ({address}) serves from this database with other project files than this \
         node's {projects}: every node must see the same files. Keep each project on S3, or \
         {projects} on a file system every node mounts (set storage.allow_unshared_files only if \
         every project is on S3)"
    )]
    UnsharedFiles {
        node: String,
        address: String,
        projects: String,
    },
}

/// Process-wide defaults that TLS and object storage need: the rustls crypto
/// provider (ring) and opendal's HTTP transport (reqwest over rustls).
pub fn install_runtime_defaults() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
        match reqwest::Client::builder()
            .user_agent(concat!("atelier/", env!("CARGO_PKG_VERSION")))
            .build()
        {
            Ok(client) => opendal::HttpTransporter::install_default(
                opendal_http_transport_reqwest::ReqwestTransport::new(client),
            ),
            Err(err) => tracing::error!(%err, "cannot build the HTTP client for object storage"),
        }
    });
}

/// SIGINT and SIGTERM, listened for from the moment the server is built
/// (before it answers its first request), so no early signal is missed.
struct StopSignals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    int: Option<tokio::signal::unix::Signal>,
}

impl StopSignals {
    fn install() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Self {
                term: signal(SignalKind::terminate()).ok(),
                int: signal(SignalKind::interrupt()).ok(),
            }
        }
        #[cfg(not(unix))]
        Self {}
    }

    /// Resolves on the first of them, naming it.
    async fn recv(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            async fn next(s: &mut Option<tokio::signal::unix::Signal>) {
                match s {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending().await,
                }
            }
            tokio::select! {
                _ = next(&mut self.term) => "SIGTERM",
                _ = next(&mut self.int) => "SIGINT",
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            "SIGINT"
        }
    }
}

/// The engine with the built-in providers (the server, demo and bench use it).
pub async fn embedded_engine(
    settings: &Settings,
    db: &DatabaseConnection,
    config: actors::engine::EngineConfig,
) -> Result<(actors::engine::Engine, StorageRoots), StartupError> {
    embedded_engine_with(
        settings,
        db,
        config,
        Arc::new(providers::credentials::EnvCredentials),
    )
    .await
}

/// [`embedded_engine`] with the service's provider keys from `credentials`.
pub async fn embedded_engine_with(
    settings: &Settings,
    db: &DatabaseConnection,
    config: actors::engine::EngineConfig,
    credentials: Arc<dyn providers::credentials::Credentials>,
) -> Result<(actors::engine::Engine, StorageRoots), StartupError> {
    let roots = StorageRoots::new(&settings.data_dir, &settings.storage.allowed_roots);
    let mut providers: Vec<Arc<dyn providers::ImageProvider>> = vec![Arc::new(
        providers::local::LocalProvider::new(settings.providers.local.clone()),
    )];
    if settings.providers.openai.enabled {
        // Keys come through the credentials interface (the environment until
        // project secrets arrive); a missing key refuses runs, not startup.
        providers.push(Arc::new(providers::openai::OpenAiProvider::new(
            settings.providers.openai.clone(),
            credentials.clone(),
            config.limits,
        )?));
    }
    let limits = config.limits;
    let mut deps = actors::engine::EngineDeps::new(db.clone(), roots.clone(), providers, config);
    deps.secret_keys = Some(secret_keys(settings));
    use providers::bg_remote::{RemoteRemover, Service};
    for (service, s) in [
        (Service::RemoveBg, &settings.providers.removebg),
        (Service::PhotoRoom, &settings.providers.photoroom),
    ] {
        if s.enabled {
            deps.removers.insert(
                service.code().into(),
                Arc::new(RemoteRemover::new(
                    service,
                    s.clone(),
                    credentials.clone(),
                    limits,
                )?),
            );
        }
    }
    deps.voice = domain::voice::VoiceSetup {
        openai: match settings.providers.openai_voice.enabled {
            true => Some(Arc::new(providers::voice::OpenAiVoice::new(
                settings.providers.openai_voice.clone(),
                credentials.clone(),
            )?)),
            false => None,
        },
        espeak: settings.providers.espeak.enabled.then(|| {
            Arc::new(providers::voice::Espeak::new(
                settings.providers.espeak.clone(),
            ))
        }),
        limits: domain::voice::VoiceLimits {
            max_audio_bytes: settings.voice.max_audio_bytes,
            max_audio_secs: settings.voice.max_audio_secs,
            max_text_chars: settings.voice.max_text_chars,
        },
    };
    deps.writer_db = crate::database::writer_connection(settings).await?;
    deps.node_id = node_id(settings)?;
    deps.outbound = outbound_policy(settings)?;
    // An operator's pause holds from the first moment (nothing starts, and
    // the admin routes say so).
    let control = domain::cluster::control(db)
        .await
        .map_err(StartupError::Cluster)?;
    deps.paused_all = std::sync::atomic::AtomicBool::new(control.paused_all);
    let engine = actors::engine::Engine::start(deps);
    Ok((engine, roots))
}

/// This node's project files' identity (`cluster::storage_identity`), after
/// checking that no other live node on the database sees other files: a
/// file one node wrote would be missing on the others.
async fn refuse_unshared_files(
    settings: &Settings,
    db: &sea_orm::DatabaseConnection,
    node: &str,
) -> Result<String, StartupError> {
    let projects = settings.data_dir.join("projects");
    let storage_id =
        domain::cluster::storage_identity(&projects).map_err(|source| StartupError::Io {
            path: projects.display().to_string(),
            source,
        })?;
    if settings.storage.allow_unshared_files {
        return Ok(storage_id);
    }
    let other = domain::cluster::unshared_files(
        db,
        node,
        &storage_id,
        engine_config(settings).node_timeout,
    )
    .await
    .map_err(StartupError::Cluster)?;
    match other {
        Some(node) => Err(StartupError::UnsharedFiles {
            node: node.id,
            address: node.address,
            projects: projects.display().to_string(),
        }),
        None => Ok(storage_id),
    }
}

/// Exports this node was building when it last stopped are built again
/// (see `domain::exports::take_back_interrupted`).
async fn resume_interrupted_exports(
    db: &sea_orm::DatabaseConnection,
    engine: &actors::engine::Engine,
    node: &str,
) -> Result<(), StartupError> {
    let interrupted = domain::exports::take_back_interrupted(db, node)
        .await
        .map_err(|e| StartupError::Io {
            path: "project_exports".into(),
            source: std::io::Error::other(e.to_string()),
        })?;
    for again in interrupted {
        let id = again.export.id;
        tracing::warn!(export = %id, "an export interrupted by the last stop is built again");
        if let Err(e) = engine
            .start_export(again.project, again.export, again.request)
            .await
        {
            tracing::error!(export = %id, error = %e, "cannot build an interrupted export again");
            let _ = domain::exports::fail(db, id, &e.public_message()).await;
        }
    }
    Ok(())
}

/// The operator's allow-list for outbound requests to internal addresses.
pub fn outbound_policy(
    settings: &Settings,
) -> Result<domain::netpolicy::OutboundPolicy, StartupError> {
    domain::netpolicy::OutboundPolicy::new(&settings.network.outbound_allow)
        .map_err(StartupError::Network)
}

/// This node's name in job leases: configured, or kept in
/// `{data_dir}/backend/node-id` so a restart recognises its old leases.
pub fn node_id(settings: &Settings) -> Result<String, StartupError> {
    if let Some(id) = settings.engine.node_id.as_deref().map(str::trim)
        && !id.is_empty()
    {
        return Ok(id.to_string());
    }
    let path = settings.data_dir.join("backend").join("node-id");
    let io = |source| StartupError::Io {
        path: path.display().to_string(),
        source,
    };
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => Ok(id.trim().to_string()),
        Ok(_) => Err(io(std::io::Error::other("the file is empty"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = format!("node-{}", uuid::Uuid::new_v4().simple());
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(io)?;
            }
            std::fs::write(&path, &id).map_err(io)?;
            Ok(id)
        }
        Err(e) => Err(io(e)),
    }
}

pub struct Application {
    addr: SocketAddr,
    server: Server,
    db: DatabaseConnection,
    engine: actors::engine::Engine,
    shutdown_window: Duration,
    signals: StopSignals,
}

/// Where project secrets' master key comes from.
pub fn secret_keys(settings: &Settings) -> domain::secrets::cipher::KeySource {
    let s = &settings.secrets;
    domain::secrets::cipher::KeySource {
        key_env: s.master_key_env.clone(),
        key_file: s
            .master_key_file
            .clone()
            .unwrap_or_else(|| settings.data_dir.join("backend").join("master.key")),
        key_ref: s.key_ref.clone(),
        previous_env: s.previous_keys_env.clone(),
    }
}

pub fn engine_config(settings: &Settings) -> actors::engine::EngineConfig {
    let e = &settings.engine;
    actors::engine::EngineConfig {
        max_jobs_per_run: e.max_jobs_per_run.max(1),
        max_runs_per_project: e.max_runs_per_project.max(1),
        provider_concurrency: e.provider_concurrency.max(1),
        max_queued_runs: e.max_queued_runs.max(1),
        lease: Duration::from_secs(e.lease_seconds.max(1)),
        heartbeat: Duration::from_millis(e.heartbeat_ms.max(50)),
        node_timeout: Duration::from_millis(e.node_timeout_ms.max(e.heartbeat_ms.max(50) * 2)),
        retry: domain::runs::pipeline::RetryPolicy {
            max_attempts: e.provider_max_attempts.max(1),
            base_delay: Duration::from_millis(e.retry_base_ms),
            max_delay: Duration::from_millis(e.retry_max_ms.max(e.retry_base_ms)),
        },
        job_max_attempts: e.job_max_attempts.max(1),
        limits: imaging::DecodeLimits::default(),
        webhooks: domain::webhooks::WebhookConfig {
            retry_base: Duration::from_millis(settings.webhooks.retry_base_ms.max(10)),
            max_attempts: settings.webhooks.max_attempts.max(1),
            timeout: Duration::from_millis(settings.webhooks.timeout_ms.max(100)),
            poll: Duration::from_millis(settings.webhooks.poll_ms.max(10)),
        },
        adaptive_governors: e.adaptive_rate_limits,
        event_buffer: e.event_buffer.max(16),
        pass_memory_mib: e.pass_memory_mb.max(64),
        sync_push_every: (settings.storage.sync_push_every_seconds > 0)
            .then(|| Duration::from_secs(settings.storage.sync_push_every_seconds)),
        agent: settings.agent.enabled.then(|| agent_config(settings)),
    }
}

/// The agent worker's settings (for `serve` and `agent-worker`).
pub fn agent_config(settings: &Settings) -> domain::agent::AgentConfig {
    let a = &settings.agent;
    let timeout = Duration::from_millis(a.timeout_ms.max(100));
    domain::agent::AgentConfig {
        url: a.url.clone().filter(|u| !u.trim().is_empty()),
        token: std::env::var(&a.token_env).ok().filter(|t| !t.is_empty()),
        poll: Duration::from_millis(a.poll_ms.max(10)),
        // A lease outlives any one attempt, so no second worker takes an
        // instruction over while its answer may still come.
        lease: Duration::from_secs(a.lease_seconds.max(1)).max(2 * timeout),
        default_max_attempts: a.max_attempts.max(1),
        retry_backoff: Duration::from_millis(a.retry_backoff_ms.max(10)),
        timeout,
        ..domain::agent::AgentConfig::default()
    }
}

impl Application {
    /// Connects and migrates the database, binds the listener (port 0 picks a
    /// free port) and prepares the HTTP server. Nothing is served until
    /// [`Application::run_until_stopped`].
    pub async fn build(settings: Settings) -> Result<Self, StartupError> {
        install_runtime_defaults();
        let addr = settings.bind_addr()?;
        if settings.auth.dev_bypass && !addr.ip().is_loopback() {
            return Err(StartupError::BypassOnPublicBind(addr));
        }
        let projects_dir = settings.projects_dir();
        std::fs::create_dir_all(&projects_dir).map_err(|source| StartupError::Io {
            path: projects_dir.display().to_string(),
            source,
        })?;

        let db = database::connect(&settings).await?;
        let status = database::migrate_up(&db, &settings).await?;
        tracing::info!(
            database = %db.target,
            schema = status.current_version().unwrap_or("none"),
            "database ready"
        );

        let listener = TcpListener::bind(addr).map_err(|source| StartupError::Bind {
            bind: settings.bind.clone(),
            source,
        })?;
        let local = listener.local_addr().map_err(|source| StartupError::Bind {
            bind: settings.bind.clone(),
            source,
        })?;
        if settings.auth.dev_bypass {
            tracing::warn!("auth dev bypass is ON: every request is accepted without a token");
        }

        let config = api::ApiConfig {
            dev_bypass: settings.auth.dev_bypass,
            bootstrap_allowed: settings.auth.bootstrap_first_token && local.ip().is_loopback(),
            json_limit_bytes: settings.http.json_limit_bytes,
            database_backend: database::backend_name(&db.conn),
            schema_version: status.current_version().unwrap_or_default().to_string(),
            read_cache_ms: settings.http.read_cache_ms,
            ws_heartbeat: Duration::from_millis(settings.http.ws_heartbeat_ms.max(50)),
            ws_idle_timeout: Duration::from_millis(
                settings
                    .http
                    .ws_idle_timeout_ms
                    .max(settings.http.ws_heartbeat_ms),
            ),
            secret_keys: secret_keys(&settings),
            upload_limit_bytes: settings.http.upload_limit_bytes.max(1),
            image_limits: engine_config(&settings).limits,
            outbound: outbound_policy(&settings)?,
        };
        let tokens = Arc::new(TokenVerifier::new(Duration::from_secs(
            settings.auth.token_cache_seconds,
        )));
        let node = node_id(&settings)?;
        let storage_id = refuse_unshared_files(&settings, &db.conn, &node).await?;
        let (engine, roots) =
            embedded_engine(&settings, &db.conn, engine_config(&settings)).await?;
        resume_interrupted_exports(&db.conn, &engine, &node).await?;
        let liveness_lock = engine.keep_alive(settings.database_url.clone()).await;
        engine
            .announce(domain::cluster::NodeInfo {
                id: node.clone(),
                address: local.to_string(),
                version: env!("CARGO_PKG_VERSION").into(),
                database_backend: database::backend_name(&db.conn).into(),
                started_at: chrono::Utc::now(),
                storage_id: Some(storage_id),
                liveness_lock,
            })
            .await;
        engine.relay_feed(settings.database_url.clone(), node).await;
        let state = web::Data::new(api::AppState::new(
            db.conn.clone(),
            tokens,
            roots,
            config,
            engine.clone(),
        ));

        let signals = StopSignals::install();
        let server = HttpServer::new(move || api::app(state.clone()))
            .workers(settings.http.workers)
            // Signals are ours: the engine drains before the server stops
            // (see `run_until_stopped`).
            .disable_signals()
            // Without it, small writes (feed events) wait for the client's
            // delayed ACK: up to 40 ms on Linux.
            .tcp_nodelay(true)
            .keep_alive(Duration::from_secs(settings.http.keep_alive_seconds))
            .shutdown_timeout(settings.http.shutdown_timeout_seconds)
            .listen(listener)
            .map_err(|source| StartupError::Bind {
                bind: settings.bind.clone(),
                source,
            })?
            .run();
        tracing::info!(addr = %local, "listening");
        Ok(Self {
            addr: local,
            server,
            db: db.conn,
            engine,
            shutdown_window: Duration::from_secs(settings.http.shutdown_timeout_seconds),
            signals,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn db(&self) -> &DatabaseConnection {
        &self.db
    }

    pub fn engine(&self) -> &actors::engine::Engine {
        &self.engine
    }

    /// A handle that can stop the server gracefully.
    pub fn handle(&self) -> actix_web::dev::ServerHandle {
        self.server.handle()
    }

    /// Serves until SIGINT/SIGTERM, then shuts down gracefully within
    /// `http.shutdown_timeout_seconds`: the engine stops leasing and sending
    /// at once, lets calls in flight finish and stores their results,
    /// releases this node's leases; HTTP requests in flight finish.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        self.run_until(std::future::pending()).await
    }

    /// Like [`Self::run_until_stopped`], and also drains and stops when
    /// `stop` resolves (an embedding shell closing its window).
    pub async fn run_until(
        self,
        stop: impl std::future::Future<Output = ()>,
    ) -> std::io::Result<()> {
        let handle = self.server.handle();
        let mut signals = self.signals;
        let mut server = std::pin::pin!(self.server);
        tokio::select! {
            result = &mut server => return result,
            signal = signals.recv() => tracing::info!(signal, "shutdown requested: draining"),
            () = stop => tracing::info!("shutdown requested by the embedding shell: draining"),
        }
        // The server keeps being polled while the engine drains (reads are
        // still answered), then stops gracefully.
        let engine = self.engine.clone();
        let window = self.shutdown_window;
        let stop = async move {
            let report = engine.shutdown(window).await;
            tracing::info!(
                waited_ms = report.waited.as_millis() as u64,
                calls_cut_off = report.calls_cut_off,
                leases_released = report.leases_released,
                "engine drained"
            );
            handle.stop(true).await;
        };
        let ((), result) = tokio::join!(stop, server);
        result
    }
}
