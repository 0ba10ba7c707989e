//! Layered configuration: built-in defaults < config file < environment < CLI flags.
//!
//! The config file is TOML, read from `--config`/`ATELIER_CONFIG`, or from
//! `{data_dir}/backend/atelier.toml` when that file exists. Environment variables
//! use the `ATELIER_` prefix with `__` between nested keys
//! (`ATELIER_HTTP__JSON_LIMIT_BYTES=4194304`); `DATABASE_URL` selects PostgreSQL.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

pub const DEFAULT_BIND: &str = "127.0.0.1:8788";

#[derive(Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Root of everything Atelier writes: app state in `backend/`, project files in `projects/`.
    pub data_dir: PathBuf,
    pub bind: String,
    /// PostgreSQL URL; when unset, SQLite at `{data_dir}/backend/app.db`.
    pub database_url: Option<String>,
    pub database: DatabaseSettings,
    pub auth: AuthSettings,
    pub http: HttpSettings,
    pub storage: StorageSettings,
    pub engine: EngineSettings,
    pub providers: ProvidersSettings,
    pub webhooks: WebhookSettings,
    pub secrets: SecretsSettings,
    pub network: NetworkSettings,
    pub agent: AgentSettings,
    pub voice: VoiceSettings,
}

/// Limits of voice requests (the providers are under `providers`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VoiceSettings {
    /// Audio to transcribe: at most this many bytes (OpenAI takes 25 MB).
    pub max_audio_bytes: usize,
    /// ... and at most this long, when its container says.
    pub max_audio_secs: f64,
    /// Text to speak (OpenAI takes 4,096 characters).
    pub max_text_chars: usize,
}

impl Default for VoiceSettings {
    fn default() -> Self {
        let d = domain::voice::VoiceLimits::default();
        Self {
            max_audio_bytes: d.max_audio_bytes,
            max_audio_secs: d.max_audio_secs,
            max_text_chars: d.max_text_chars,
        }
    }
}

/// Where the service may send requests on a user's behalf (webhooks, S3
/// endpoints): internal addresses (loopback, private, link-local, …) only
/// within these ranges, e.g. `["10.0.0.0/8", "127.0.0.1"]`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NetworkSettings {
    pub outbound_allow: Vec<String>,
}

/// Where the master key for project secrets comes from. Only names and a
/// path live here: key material is read when needed and never printed.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SecretsSettings {
    /// Environment variable holding the key (base64url of 32 bytes).
    pub master_key_env: String,
    /// Key file used when the variable is unset; generated (mode 0600) on the
    /// first secret written. Default `{data_dir}/backend/master.key`.
    pub master_key_file: Option<PathBuf>,
    /// Label stored with each encrypted value (`key_ref`).
    pub key_ref: String,
    /// Environment variable with older keys, comma-separated, tried when decrypting.
    pub previous_keys_env: String,
}

impl Default for SecretsSettings {
    fn default() -> Self {
        Self {
            master_key_env: "ATELIER_MASTER_KEY".into(),
            master_key_file: None,
            key_ref: "local-master".into(),
            previous_keys_env: "ATELIER_MASTER_KEY_PREVIOUS".into(),
        }
    }
}

/// The agent worker: where confirmed agent instructions go when a project
/// names no endpoint in its secrets (`agent_api/url`, `agent_api/token`),
/// and how they are retried. The token is read from the environment
/// variable named here, never from the file.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentSettings {
    /// `serve` runs the worker (the AgentActor).
    pub enabled: bool,
    pub url: Option<String>,
    pub token_env: String,
    pub poll_ms: u64,
    /// An instruction locked longer than this is taken over (its worker
    /// died); at least twice `timeout_ms`.
    pub lease_seconds: u64,
    /// Attempts before an instruction fails (at least its own `max_attempts`).
    pub max_attempts: i32,
    /// The n-th retry waits n times this.
    pub retry_backoff_ms: u64,
    pub timeout_ms: u64,
}

impl Default for AgentSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            url: None,
            token_env: "ATELIER_AGENT_TOKEN".into(),
            poll_ms: 2_000,
            lease_seconds: 120,
            max_attempts: 3,
            retry_backoff_ms: 10_000,
            timeout_ms: 20_000,
        }
    }
}

/// Webhook delivery: retries with exponential backoff, per-attempt timeout.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookSettings {
    /// First retry after this long; doubles per attempt, at most an hour.
    pub retry_base_ms: u64,
    /// Attempts before a delivery is marked failed.
    pub max_attempts: i32,
    pub timeout_ms: u64,
    /// How often due deliveries are looked for.
    pub poll_ms: u64,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        Self {
            retry_base_ms: 2_000,
            max_attempts: 8,
            timeout_ms: 10_000,
            poll_ms: 500,
        }
    }
}

/// The execution engine's bounds and timings.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineSettings {
    pub max_jobs_per_run: usize,
    pub max_runs_per_project: usize,
    /// Calls in flight per provider across all runs.
    pub provider_concurrency: usize,
    /// Queued + running runs accepted before `429 queue_full`.
    pub max_queued_runs: usize,
    pub lease_seconds: u64,
    pub heartbeat_ms: u64,
    /// A node whose heartbeat (every `heartbeat_ms`) is older than this is
    /// dead to the others (`GET /admin/nodes`).
    pub node_timeout_ms: u64,
    /// Provider attempts per candidate (retryable errors only).
    pub provider_max_attempts: u32,
    pub retry_base_ms: u64,
    pub retry_max_ms: u64,
    /// Attempts per job after unexpected failures (panics, internal errors).
    pub job_max_attempts: i32,
    /// Calls in flight per provider follow the provider's rate-limit signals
    /// (halved on 429, paused for Retry-After, grown back on success);
    /// `false`: always `provider_concurrency`.
    pub adaptive_rate_limits: bool,
    /// This node's name in job leases. Unset: kept in
    /// `{data_dir}/backend/node-id` (made on first start), so a restarted
    /// process recognises the leases its previous process held.
    pub node_id: Option<String>,
    /// Live events buffered for WebSocket feed readers (at least 16); a
    /// reader further behind catches up from the database (run feeds) or is
    /// closed with 4001 (project feeds).
    pub event_buffer: usize,
    /// Memory (MiB) the post-process passes of all candidates may hold at
    /// once; a candidate's passes wait until their estimated peak fits.
    pub pass_memory_mb: u32,
}

impl Default for EngineSettings {
    fn default() -> Self {
        Self {
            max_jobs_per_run: 4,
            max_runs_per_project: 1,
            provider_concurrency: 8,
            max_queued_runs: 256,
            lease_seconds: 30,
            heartbeat_ms: 5_000,
            node_timeout_ms: 15_000,
            provider_max_attempts: 3,
            retry_base_ms: 200,
            retry_max_ms: 5_000,
            job_max_attempts: 3,
            adaptive_rate_limits: true,
            node_id: None,
            event_buffer: 4096,
            pass_memory_mb: 768,
        }
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProvidersSettings {
    pub local: providers::local::LocalProviderSettings,
    pub openai: providers::openai::OpenAiSettings,
    /// remove.bg background removal (a `postprocess.bg_remove_backends` entry).
    pub removebg: providers::bg_remote::RemoteRemoverSettings,
    /// PhotoRoom background removal (a `postprocess.bg_remove_backends` entry).
    pub photoroom: providers::bg_remote::RemoteRemoverSettings,
    /// OpenAI (or an OpenAI-compatible server) for speech to text and text to speech.
    pub openai_voice: providers::voice::OpenAiVoiceSettings,
    /// Offline text to speech through espeak-ng.
    pub espeak: providers::voice::EspeakSettings,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseSettings {
    /// Pool size. Unset: one per CPU core (at least 2) on SQLite, where extra
    /// connections only add worker threads contending for the same cores; 8 on
    /// PostgreSQL.
    pub max_connections: Option<u32>,
    pub busy_timeout_ms: u64,
    /// Copy the SQLite file aside before applying pending migrations.
    pub backup_before_migrate: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    /// Accept every request without a token. Refused on a non-loopback bind.
    pub dev_bypass: bool,
    /// Allow `POST /auth/token` without a token while no active token exists
    /// (loopback bind and loopback client only).
    pub bootstrap_first_token: bool,
    /// How long a verified token stays cached in memory (revocations on this node
    /// evict at once; other nodes see them within this window).
    pub token_cache_seconds: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSettings {
    pub json_limit_bytes: usize,
    /// Largest image accepted by `POST /api/projects/{slug}/assets`.
    pub upload_limit_bytes: usize,
    pub workers: usize,
    pub shutdown_timeout_seconds: u64,
    /// How long an idle keep-alive connection is held open. Longer than
    /// common clients' idle pools (reqwest 90 s, Go 90 s), so the client
    /// closes it first: a request sent just as the server closes the
    /// connection is lost to the client (and a POST is not retried).
    pub keep_alive_seconds: u64,
    /// How long a rendered list may be reused without checking the database
    /// (this node's own writes always show at once).
    pub read_cache_ms: u64,
    /// The WebSocket feed pings this often…
    pub ws_heartbeat_ms: u64,
    /// …and closes (1001) when nothing was heard for this long.
    pub ws_idle_timeout_ms: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageSettings {
    /// Extra directories project storage may live under, besides `{data_dir}/projects`.
    pub allowed_roots: Vec<PathBuf>,
    /// Push every project whose storage policy names a bucket to it this
    /// often, in the background (incremental: unchanged files do not move).
    /// 0: only when asked (`POST /api/projects/{slug}/sync`, `atelier sync`).
    pub sync_push_every_seconds: u64,
    /// Start even when another live node on the database sees other files
    /// under its `DIR/projects` than this one (only safe when every project
    /// keeps its files on S3). Off: such a node is refused at start.
    pub allow_unshared_files: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("var"),
            bind: DEFAULT_BIND.to_string(),
            database_url: None,
            database: DatabaseSettings::default(),
            auth: AuthSettings::default(),
            http: HttpSettings::default(),
            storage: StorageSettings::default(),
            engine: EngineSettings::default(),
            providers: ProvidersSettings::default(),
            webhooks: WebhookSettings::default(),
            secrets: SecretsSettings::default(),
            network: NetworkSettings::default(),
            agent: AgentSettings::default(),
            voice: VoiceSettings::default(),
        }
    }
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            max_connections: None,
            busy_timeout_ms: 5_000,
            backup_before_migrate: true,
        }
    }
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            dev_bypass: false,
            bootstrap_first_token: true,
            token_cache_seconds: 30,
        }
    }
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            json_limit_bytes: 2 * 1024 * 1024,
            upload_limit_bytes: 32 * 1024 * 1024,
            workers: 2,
            shutdown_timeout_seconds: 10,
            keep_alive_seconds: 120,
            read_cache_ms: 100,
            ws_heartbeat_ms: 10_000,
            ws_idle_timeout_ms: 30_000,
        }
    }
}

/// The database URL never reaches a log: `Debug` redacts it.
impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("data_dir", &self.data_dir)
            .field("bind", &self.bind)
            .field(
                "database_url",
                &self.database_url.as_deref().map(redact_url),
            )
            .field("database", &self.database)
            .field("auth", &self.auth)
            .field("http", &self.http)
            .field("storage", &self.storage)
            .field("engine", &self.engine)
            .field("providers", &self.providers)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Values given on the command line; they win over every other layer.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub config_file: Option<PathBuf>,
    pub data_dir: Option<PathBuf>,
    pub bind: Option<String>,
    pub database_url: Option<String>,
}

impl Settings {
    pub fn load(overrides: &Overrides) -> Result<Self, SettingsError> {
        let data_dir_hint = overrides
            .data_dir
            .clone()
            .or_else(|| std::env::var_os("ATELIER_DATA_DIR").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from("var"));
        let config_file = overrides
            .config_file
            .clone()
            .or_else(|| std::env::var_os("ATELIER_CONFIG").map(PathBuf::from));
        let mut figment = Figment::from(Serialized::defaults(Settings::default()));
        match config_file {
            Some(path) => {
                if !path.is_file() {
                    return Err(SettingsError::Invalid(format!(
                        "config file {} does not exist",
                        path.display()
                    )));
                }
                figment = figment.merge(Toml::file(path));
            }
            None => {
                let default_file = data_dir_hint.join("backend").join("atelier.toml");
                if default_file.is_file() {
                    figment = figment.merge(Toml::file(default_file));
                }
            }
        }
        // Every field of `Settings` can come from `ATELIER_<SECTION>__<KEY>`;
        // other ATELIER_ variables (ATELIER_LOG_FORMAT, ATELIER_CONFIG, …) are
        // not settings and are left out, since unknown keys are refused.
        let sections = settings_keys();
        figment = figment
            .merge(
                Env::prefixed("ATELIER_")
                    .filter(move |key| {
                        let key = key.as_str().to_ascii_lowercase();
                        let top = key.split("__").next().unwrap_or_default();
                        sections.iter().any(|s| s == top)
                    })
                    .split("__"),
            )
            .merge(
                Env::raw()
                    .only(&["DATABASE_URL"])
                    .map(|_| "database_url".into()),
            );
        let mut settings: Settings = figment
            .extract()
            .map_err(|e| SettingsError::Invalid(e.to_string()))?;
        if let Some(dir) = &overrides.data_dir {
            settings.data_dir = dir.clone();
        }
        if let Some(bind) = &overrides.bind {
            settings.bind = bind.clone();
        }
        if let Some(url) = &overrides.database_url {
            settings.database_url = Some(url.clone());
        }
        if settings
            .database_url
            .as_deref()
            .is_some_and(|u| u.trim().is_empty())
        {
            settings.database_url = None;
        }
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> Result<(), SettingsError> {
        if self.http.json_limit_bytes == 0 || self.http.workers == 0 {
            return Err(SettingsError::Invalid(
                "http.json_limit_bytes and http.workers must be positive".into(),
            ));
        }
        if self.database.max_connections == Some(0) {
            return Err(SettingsError::Invalid(
                "database.max_connections must be positive".into(),
            ));
        }
        Ok(())
    }

    pub fn pool_size(&self) -> u32 {
        self.database.max_connections.unwrap_or_else(|| {
            if self.database_url.is_some() {
                8
            } else {
                std::thread::available_parallelism()
                    .map_or(2, |n| n.get() as u32)
                    .max(2)
            }
        })
    }

    pub fn backend_dir(&self) -> PathBuf {
        self.data_dir.join("backend")
    }

    pub fn projects_dir(&self) -> PathBuf {
        self.data_dir.join("projects")
    }

    pub fn sqlite_path(&self) -> PathBuf {
        self.backend_dir().join("app.db")
    }

    pub fn bind_addr(&self) -> Result<SocketAddr, SettingsError> {
        parse_bind(&self.bind)
    }
}

pub fn parse_bind(bind: &str) -> Result<SocketAddr, SettingsError> {
    let normalized = bind.trim().replacen("localhost:", "127.0.0.1:", 1);
    normalized.parse().map_err(|_| {
        SettingsError::Invalid(format!(
            "bind address '{bind}' is not IP:PORT (e.g. 127.0.0.1:8788)"
        ))
    })
}

/// `postgres://user:secret@host/db` -> `postgres://user:***@host/db`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "***".to_string();
    };
    let (authority, tail) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let tail = tail.split('?').next().unwrap_or("");
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{scheme}://{user}:***@{host}{tail}")
        }
        None => format!("{scheme}://{authority}{tail}"),
    }
}

/// Absolute form of `path`, relative paths taken against the current directory.
pub fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// The top-level keys of `Settings` (`data_dir`, `engine`, `network`, …).
fn settings_keys() -> Vec<String> {
    match serde_json::to_value(Settings::default()) {
        Ok(serde_json::Value::Object(map)) => map.keys().cloned().collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_password_and_query() {
        assert_eq!(
            redact_url("postgres://bob:hunter2@db:5432/app?sslmode=require&password=x"),
            "postgres://bob:***@db:5432/app"
        );
        assert_eq!(redact_url("postgres://db/app"), "postgres://db/app");
        assert!(
            !format!(
                "{:?}",
                Settings {
                    database_url: Some("postgres://u:topsecret@h/d".into()),
                    ..Settings::default()
                }
            )
            .contains("topsecret")
        );
    }

    #[test]
    fn bind_parsing() {
        assert!(parse_bind("127.0.0.1:0").is_ok());
        assert!(parse_bind("localhost:8788").is_ok());
        assert!(parse_bind("nonsense").is_err());
    }
}
