//! A PostgreSQL server of the test's own (`initdb` into a temporary
//! directory, a free loopback port), so a scenario can stop and start the
//! whole server without taking down the one every other test uses.
//! Run as root (CI), the server runs as the `postgres` user, which
//! PostgreSQL requires.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::helpers::TestDb;

pub struct PrivatePg {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
}

impl PrivatePg {
    pub fn start() -> Self {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL's server binaries under /usr/lib/postgresql")
            .filter_map(|e| e.ok())
            .map(|e| e.path().join("bin"))
            .filter(|p| p.join("initdb").exists())
            .max_by_key(|p| {
                p.parent()
                    .and_then(|v| v.file_name()?.to_str()?.parse::<u32>().ok())
            })
            .expect("initdb under /usr/lib/postgresql/*/bin");
        let dir = tempfile::tempdir().unwrap();
        if as_root() {
            let uid = id(&["-u", "postgres"]);
            let gid = id(&["-g", "postgres"]);
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap();
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let pg = Self { dir, bin, port };
        pg.run(
            "initdb",
            &[
                "-D",
                &pg.data(),
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        pg.up();
        pg
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    /// The server's only database, for a deployment (nothing to drop: the
    /// whole server goes with the test).
    pub fn database(&self) -> TestDb {
        TestDb::at(format!(
            "postgres://postgres@127.0.0.1:{}/postgres",
            self.port
        ))
    }

    /// Starts the server (after [`Self::down`]).
    pub fn up(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("server.log").display().to_string();
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data(),
                "-o",
                &options,
                "-l",
                &log,
                "-w",
                "start",
            ],
        );
    }

    /// Stops the server as `pg_ctlcluster stop` does (fast: every session
    /// is terminated, transactions in progress roll back).
    pub fn down(&self) {
        self.run("pg_ctl", &["-D", &self.data(), "-m", "fast", "-w", "stop"]);
    }

    /// One of the server's tools, as the user the server runs as.
    fn command(&self, tool: &str) -> Command {
        let exe = self.bin.join(tool);
        if as_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe);
            c
        } else {
            Command::new(exe)
        }
    }

    /// Runs a tool to its end. Its output goes to a file, not a pipe: the
    /// server `pg_ctl start` leaves behind would hold a pipe open.
    fn run(&self, tool: &str, args: &[&str]) {
        let log = self.dir.path().join("tools.log");
        let out = std::fs::File::create(&log).unwrap();
        let status = self
            .command(tool)
            .args(args)
            .current_dir(Path::new("/"))
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .status()
            .unwrap();
        assert!(
            status.success(),
            "{tool} {args:?}: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }
}

impl Drop for PrivatePg {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .args(["-D", &self.data(), "-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn as_root() -> bool {
    id(&["-u"]) == 0
}

/// `id FLAG [USER]`: a user or group id.
fn id(args: &[&str]) -> u32 {
    let out = Command::new("id").args(args).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("id {args:?}"))
}
