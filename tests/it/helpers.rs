//! `TestApp`: a running service on a free port with its own data directory and
//! its own database (a fresh SQLite file, or a unique PostgreSQL database that
//! is dropped afterwards).

use std::path::{Path, PathBuf};

use atelier::settings::Settings;
use atelier::startup::Application;
use reqwest::{Method, StatusCode};
use sea_orm::{ConnectionTrait, Database, DatabaseConnection};
use serde_json::{Value, json};

pub fn on_postgres() -> bool {
    std::env::var("ATELIER_TEST_DATABASE").is_ok_and(|v| v == "postgres")
}

fn pg_admin_url() -> String {
    std::env::var("ATELIER_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string())
}

/// A database for one test: created on demand, dropped on `Drop`.
pub struct TestDb {
    pub url: Option<String>,
    pg_name: Option<String>,
}

impl TestDb {
    /// A database the test does not own (nothing is dropped afterwards).
    pub fn at(url: String) -> Self {
        Self {
            url: Some(url),
            pg_name: None,
        }
    }

    pub async fn create() -> Self {
        if !on_postgres() {
            return Self {
                url: None,
                pg_name: None,
            };
        }
        let name = format!("atelier_test_{}", uuid::Uuid::new_v4().simple());
        let admin = Database::connect(pg_admin_url())
            .await
            .expect("connect to PostgreSQL admin db");
        admin
            .execute_unprepared(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create test database");
        admin.close().await.ok();
        let base = pg_admin_url();
        let root = base
            .rsplit_once('/')
            .map(|(r, _)| r)
            .unwrap_or(&base)
            .to_string();
        Self {
            url: Some(format!("{root}/{name}")),
            pg_name: Some(name),
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some(name) = self.pg_name.take() else {
            return;
        };
        // Drop runs outside any async context we may block on: use a private runtime.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                let admin = Database::connect(pg_admin_url()).await.ok()?;
                admin
                    .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await
                    .ok()?;
                admin.close().await.ok()
            })
        })
        .join();
    }
}

pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    pub data_dir: tempfile::TempDir,
    pub db: DatabaseConnection,
    /// The engine's event hub, to inject live events the way the engine
    /// publishes them.
    pub hub: domain::runs::events::EventHub,
    _db_guard: TestDb,
}

pub fn base_settings(data_dir: &Path, url: Option<String>) -> Settings {
    let mut settings = Settings {
        data_dir: data_dir.to_path_buf(),
        bind: "127.0.0.1:0".into(),
        database_url: url,
        ..Settings::default()
    };
    settings.http.workers = 2;
    settings.database.max_connections = Some(4);
    // Receivers, S3 servers and providers of the tests live on loopback,
    // which the outbound policy refuses unless allowed.
    settings.network.outbound_allow = vec!["127.0.0.0/8".into(), "::1".into()];
    settings
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_with(|_| {}).await
    }

    pub async fn spawn_with(tweak: impl FnOnce(&mut Settings)) -> Self {
        atelier::telemetry::init();
        let data_dir = tempfile::tempdir().unwrap();
        let db_guard = TestDb::create().await;
        let mut settings = base_settings(data_dir.path(), db_guard.url.clone());
        tweak(&mut settings);
        let app = Application::build(settings).await.expect("build app");
        let base = format!("http://{}", app.addr());
        let db = app.db().clone();
        let hub = app.engine().hub().clone();
        actix_web::rt::spawn(app.run_until_stopped());
        Self {
            base,
            client: reqwest::Client::new(),
            data_dir,
            db,
            hub,
            _db_guard: db_guard,
        }
    }

    /// The PostgreSQL URL of this app's database (`None`: SQLite in its data dir).
    pub fn database_url(&self) -> Option<String> {
        self._db_guard.url.clone()
    }

    pub fn data_path(&self) -> PathBuf {
        self.data_dir.path().to_path_buf()
    }

    /// Sends JSON (or nothing) with an optional bearer token; returns status and parsed body.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self
            .client
            .request(method, format!("{}{}", self.base, path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await.expect("request");
        let status = res.status();
        let text = res.text().await.expect("body");
        let value = serde_json::from_str(&text)
            .unwrap_or_else(|_| panic!("non-JSON body ({status}): {text}"));
        (status, value)
    }

    pub async fn get(&self, path: &str, token: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, Some(token), None).await
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, Some(token), Some(body)).await
    }

    pub async fn put(&self, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::PUT, path, Some(token), Some(body)).await
    }

    /// The first token, through the unauthenticated bootstrap.
    pub async fn bootstrap_token(&self) -> String {
        let (status, body) = self
            .call(
                Method::POST,
                "/auth/token",
                None,
                Some(json!({"label": "first"})),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["auth_token"]["token"].as_str().unwrap().to_string()
    }

    pub async fn create_project(&self, token: &str, name: &str, slug: &str) -> Value {
        let (status, body) = self
            .post("/api/projects", token, json!({"name": name, "slug": slug}))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }

    pub async fn scoped_token(&self, token: &str, slug: &str) -> String {
        let (status, body) = self
            .post("/auth/token", token, json!({"project_slug": slug}))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(body["auth_token"]["project_id"].is_string());
        body["auth_token"]["token"].as_str().unwrap().to_string()
    }

    pub async fn audit_codes(&self) -> Vec<String> {
        use sea_orm::{EntityTrait, QueryOrder};
        entities::audit_events::Entity::find()
            .order_by_asc(entities::audit_events::Column::Id)
            .all(&self.db)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.event_code)
            .collect()
    }
}

/// Asserts the frozen error envelope with Atelier's specific code
/// `want_code` in `error_detail.code`, and v1's code in `error_code`: the
/// same, or `validation_error` for a 400 validation failure v1 had no code
/// of its own for.
/// A provider call record before its first attempt (status `pending`,
/// nothing reserved), for tests that write records themselves.
pub fn pending_call(
    project_id: uuid::Uuid,
    idempotency_key: String,
    provider_code: &str,
    operation: &str,
) -> entities::provider_calls::Model {
    let now = chrono::Utc::now();
    entities::provider_calls::Model {
        id: uuid::Uuid::now_v7(),
        project_id,
        idempotency_key,
        run_id: None,
        job_id: None,
        candidate_id: None,
        provider_code: provider_code.into(),
        operation: operation.into(),
        model_name: None,
        status: "pending".into(),
        attempt: 0,
        reserved_cost_usd: 0.0,
        actual_cost_usd: None,
        request_json: serde_json::json!({}),
        response_json: serde_json::json!({}),
        result_asset_id: None,
        provider_request_id: None,
        error_code: None,
        error_message: None,
        started_at: None,
        sent_at: None,
        sent_attempts: 0,
        possibly_billed_usd: 0.0,
        finished_at: None,
        created_at: now,
        updated_at: now,
    }
}

pub fn assert_error(status: StatusCode, body: &Value, want_status: u16, want_code: &str) {
    assert_eq!(status.as_u16(), want_status, "{body}");
    assert_eq!(body["ok"], json!(false), "{body}");
    assert!(
        body["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{body}"
    );
    assert!(
        ["validation", "provider", "infra", "policy", "unknown"]
            .contains(&body["error_kind"].as_str().unwrap_or("")),
        "{body}"
    );
    assert_eq!(body["error_detail"]["code"], json!(want_code), "{body}");
    let v1 = if want_status == 400
        && body["error_kind"] == "validation"
        && !api::error::V1_CODES.contains(&want_code)
    {
        "validation_error"
    } else {
        want_code
    };
    assert_eq!(body["error_code"], json!(v1), "{body}");
}

/// Starts an HTTP server on a free loopback port (the stand-ins for paid
/// providers and webhook receivers) and returns the port.
pub use stubs::serve_loopback;

/// The files under `dir`, recursively (sorted).
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}
