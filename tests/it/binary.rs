//! The real `atelier serve` binary in a child process, on the test's
//! database (a SQLite file in its data directory, or the test's own
//! PostgreSQL database), with its log captured at debug level so a test can
//! search it (for secrets that must never appear, for instance).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use sea_orm::DatabaseConnection;
use serde_json::{Value, json};

use crate::helpers::TestDb;

pub struct Server {
    pub child: Child,
    pub base: String,
    pub log: PathBuf,
}

/// One data directory and database, and the servers started on them.
pub struct Deployment {
    pub dir: tempfile::TempDir,
    pub db: TestDb,
    pub env: Vec<(String, String)>,
    pub client: reqwest::Client,
    starts: usize,
}

impl Deployment {
    /// `env`: settings for every server of this deployment.
    pub async fn new(env: &[(&str, &str)]) -> Self {
        Self::on(TestDb::create().await, env)
    }

    /// A deployment on `db` (e.g. a PostgreSQL server of the test's own).
    pub fn on(db: TestDb, env: &[(&str, &str)]) -> Self {
        atelier::startup::install_runtime_defaults();
        let mut all: Vec<(String, String)> = vec![
            // Receivers and providers of the tests live on loopback.
            (
                "ATELIER_NETWORK__OUTBOUND_ALLOW".into(),
                "[\"127.0.0.0/8\"]".into(),
            ),
        ];
        all.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        Self {
            dir: tempfile::tempdir().unwrap(),
            db,
            env: all,
            client: reqwest::Client::new(),
            starts: 0,
        }
    }

    /// Starts another node of this deployment under its own
    /// `engine.node_id` (same data directory and database).
    pub async fn start_node(&mut self, node_id: &str) -> Server {
        self.env.retain(|(k, _)| k != "ATELIER_ENGINE__NODE_ID");
        self.env
            .push(("ATELIER_ENGINE__NODE_ID".into(), node_id.into()));
        self.start().await
    }

    /// Starts `atelier serve` and waits until it answers `/health`.
    pub async fn start(&mut self) -> Server {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        self.starts += 1;
        let log = self.dir.path().join(format!("serve-{}.log", self.starts));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_atelier"));
        cmd.arg("--data-dir")
            .arg(self.dir.path())
            .args(["serve", "--bind", &format!("127.0.0.1:{port}")])
            .env("RUST_LOG", "debug")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        match &self.db.url {
            Some(url) => cmd.env("DATABASE_URL", url),
            None => cmd.env_remove("DATABASE_URL"),
        };
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let server = Server {
            child: cmd.spawn().unwrap(),
            base: format!("http://127.0.0.1:{port}"),
            log,
        };
        let start = Instant::now();
        loop {
            if let Ok(r) = self
                .client
                .get(format!("{}/health", server.base))
                .send()
                .await
                && r.status() == StatusCode::OK
            {
                return server;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "server did not come up: {}",
                std::fs::read_to_string(&server.log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Runs an `atelier` command (e.g. `migrate status`) on this
    /// deployment's data directory and database; returns (success, stdout,
    /// stderr).
    pub fn cli(&self, args: &[&str]) -> (bool, String, String) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_atelier"));
        cmd.arg("--data-dir")
            .arg(self.dir.path())
            .args(args)
            .env("RUST_LOG", "warn");
        match &self.db.url {
            Some(url) => cmd.env("DATABASE_URL", url),
            None => cmd.env_remove("DATABASE_URL"),
        };
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Starts an `atelier` command like [`Self::cli`], without waiting.
    pub fn cli_child(&self, args: &[&str]) -> Child {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_atelier"));
        cmd.arg("--data-dir")
            .arg(self.dir.path())
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        match &self.db.url {
            Some(url) => cmd.env("DATABASE_URL", url),
            None => cmd.env_remove("DATABASE_URL"),
        };
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd.spawn().unwrap()
    }

    /// Waits until the run answered in `trigger` (a `wait: true` trigger's
    /// body) has its run log registered: it lands just after the run is
    /// marked done, so an export or a listing right after could miss it.
    pub async fn wait_for_run_log(&self, trigger: &Value) {
        let run_id: uuid::Uuid = trigger["run_id"].as_str().unwrap().parse().unwrap();
        let db = self.connect().await;
        eventually(
            "the run log registered",
            Duration::from_secs(20),
            || async {
                <entities::assets::Entity as sea_orm::EntityTrait>::find()
                    .all(&db)
                    .await
                    .unwrap()
                    .iter()
                    .any(|a| a.run_id == Some(run_id) && a.kind == "run_log")
                    .then_some(())
            },
        )
        .await;
    }

    /// A connection to the deployment's database, for inspecting it.
    pub async fn connect(&self) -> DatabaseConnection {
        let url = match &self.db.url {
            Some(url) => url.clone(),
            None => format!(
                "sqlite://{}?mode=rw",
                self.dir.path().join("backend/app.db").display()
            ),
        };
        sea_orm::Database::connect(url).await.unwrap()
    }

    /// Every server log of this deployment, concatenated.
    pub fn logs(&self) -> String {
        self.each_log().concat()
    }

    /// Each server's log, in the order they were started.
    pub fn each_log(&self) -> Vec<String> {
        (1..=self.starts)
            .map(|i| {
                std::fs::read_to_string(self.dir.path().join(format!("serve-{i}.log")))
                    .unwrap_or_default()
            })
            .collect()
    }
}

impl Server {
    /// SIGKILL: no chance to clean up.
    pub fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Sends `signal` (`STOP`, `CONT`, `TERM`, …) to the process.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal}");
    }

    /// SIGTERM, then waits for the exit; returns whether it exited cleanly
    /// and how long it took.
    pub fn terminate(&mut self, within: Duration) -> (bool, Duration) {
        let began = Instant::now();
        self.signal("TERM");
        loop {
            if let Some(exit) = self.child.try_wait().unwrap() {
                return (exit.success(), began.elapsed());
            }
            if began.elapsed() > within {
                self.kill9();
                return (false, began.elapsed());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub async fn call(
        &self,
        client: &reqwest::Client,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = client.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await.unwrap();
        let status = res.status();
        let text = res.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or_else(|_| json!({ "raw": text })),
        )
    }

    /// Creates a project (`POST /api/projects`), asserting it worked.
    pub async fn create_project(
        &self,
        client: &reqwest::Client,
        token: &str,
        name: &str,
        slug: &str,
    ) {
        let (s, body) = self
            .call(
                client,
                reqwest::Method::POST,
                "/api/projects",
                Some(token),
                Some(json!({"name": name, "slug": slug})),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{body}");
    }

    /// The first token, through the bootstrap.
    pub async fn bootstrap(&self, client: &reqwest::Client) -> String {
        let (s, b) = self
            .call(
                client,
                reqwest::Method::POST,
                "/auth/token",
                None,
                Some(json!({})),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{b}");
        b["auth_token"]["token"].as_str().unwrap().to_string()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let exited = self.child.try_wait().ok().flatten();
        let _ = self.child.kill();
        let _ = self.child.wait();
        // A failing test shows what the server said went wrong (the debug
        // log itself is too long to read in a CI report).
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let worrying: Vec<&str> = log
                .lines()
                .filter(|l| l.contains("WARN") || l.contains("ERROR") || l.contains("panicked"))
                .collect();
            eprintln!(
                "--- the server at {} (exited before the end: {exited:?}): {} warnings and errors ---",
                self.base,
                worrying.len(),
            );
            for line in worrying.iter().rev().take(40).rev() {
                eprintln!("{line}");
            }
        }
    }
}

/// Polls `check` every 20 ms until it returns `Some`, or fails after `limit`.
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
