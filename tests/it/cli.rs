//! The `atelier` binary itself: help, migrate and token commands.

use std::process::Command;

fn atelier(data_dir: &std::path::Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_atelier"));
    cmd.arg("--data-dir").arg(data_dir).env("RUST_LOG", "warn");
    if crate::helpers::on_postgres() {
        cmd.env_remove("DATABASE_URL");
    }
    cmd
}

#[test]
fn help_explains_every_command() {
    let dir = tempfile::tempdir().unwrap();
    let out = atelier(dir.path()).arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for word in ["serve", "migrate", "token", "--data-dir", "DATABASE_URL"] {
        assert!(text.contains(word), "--help lacks {word}: {text}");
    }
    let out = atelier(dir.path())
        .args(["serve", "--help"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("--bind"));
}

#[test]
fn migrate_status_and_token_create_on_a_fresh_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let out = atelier(dir.path())
        .args(["migrate", "status"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("pending  m20261126_000001_identity"));

    let out = atelier(dir.path())
        .args(["migrate", "up"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dir.path().join("backend/app.db").exists());

    let out = atelier(dir.path())
        .args(["token", "create", "--label", "ops"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(token.starts_with("kroma_") && token.len() == 70, "{token}");
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains(&token),
        "token echoed to the log stream"
    );

    let out = atelier(dir.path())
        .args(["token", "create", "--project", "missing"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Project not found"));

    let out = atelier(dir.path())
        .args(["serve", "--bind", "nonsense"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not IP:PORT"));
}

#[test]
fn config_layers_file_then_environment_then_flags() {
    let dir = tempfile::tempdir().unwrap();
    let from_file = dir.path().join("from-file");
    let from_env = dir.path().join("from-env");
    let from_flag = dir.path().join("from-flag");
    let config = dir.path().join("atelier.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\n[database]\nmax_connections = 2\n",
            from_file.display().to_string()
        ),
    )
    .unwrap();

    let run = |env_dir: Option<&std::path::Path>, flag_dir: Option<&std::path::Path>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_atelier"));
        cmd.env_remove("ATELIER_DATA_DIR")
            .env_remove("DATABASE_URL")
            .arg("--config")
            .arg(&config);
        if let Some(d) = env_dir {
            cmd.env("ATELIER_DATA_DIR", d);
        }
        if let Some(d) = flag_dir {
            cmd.arg("--data-dir").arg(d);
        }
        let out = cmd.args(["migrate", "up"]).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(None, None);
    assert!(
        from_file.join("backend/app.db").exists(),
        "config file layer ignored"
    );
    run(Some(&from_env), None);
    assert!(
        from_env.join("backend/app.db").exists(),
        "environment did not override the file"
    );
    run(Some(&from_env), Some(&from_flag));
    assert!(
        from_flag.join("backend/app.db").exists(),
        "flag did not override the environment"
    );

    // Nested keys come from the environment too (`__` between levels).
    let out = Command::new(env!("CARGO_BIN_EXE_atelier"))
        .arg("--config")
        .arg(&config)
        .env("ATELIER_DATABASE__MAX_CONNECTIONS", "0")
        .args(["migrate", "status"])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "ATELIER_DATABASE__MAX_CONNECTIONS was ignored"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("max_connections"));

    std::fs::write(&config, "bogus_key = 1\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_atelier"))
        .arg("--config")
        .arg(&config)
        .args(["migrate", "status"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("bogus_key"));
}

#[test]
fn serve_shuts_down_gracefully_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = atelier(dir.path())
        .args(["serve", "--bind", &format!("127.0.0.1:{port}")])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut up = false;
    for _ in 0..100 {
        // Up means answering HTTP (signal handlers are installed by then).
        use std::io::{Read, Write};
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            let _ = s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            let mut buf = String::new();
            let _ = s.read_to_string(&mut buf);
            if buf.starts_with("HTTP/1.1 200") {
                up = true;
                break;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(up, "server did not start");
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = child.wait().unwrap();
    assert!(exit.success(), "serve exited with {exit} after SIGTERM");
}

#[test]
fn demo_runs_the_whole_chain_and_reports_where_things_are() {
    let dir = tempfile::tempdir().unwrap();
    let out = atelier(dir.path())
        .args(["demo", "--scenes", "2", "--candidates", "2"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("finished: done"), "{stdout}");
    assert!(stdout.contains("jobs        6 (6 done)"), "{stdout}");
    assert!(stdout.contains("candidates  12"), "{stdout}");
    let log_line = stdout
        .lines()
        .find(|l| l.contains("run log"))
        .expect("run log line");
    let log_path = log_line.split_whitespace().last().unwrap();
    let log: serde_json::Value = serde_json::from_slice(&std::fs::read(log_path).unwrap()).unwrap();
    assert_eq!(log["run"]["status"], "done");
    assert_eq!(log["jobs"].as_array().unwrap().len(), 6);
    let finals: Vec<&str> = stdout
        .lines()
        .filter(|l| l.trim_start().starts_with("final"))
        .map(|l| l.split_whitespace().last().unwrap())
        .collect();
    assert_eq!(finals.len(), 2);
    for f in finals {
        assert!(std::path::Path::new(f).exists(), "{f}");
    }
    // A second demo reuses the project and adds a run.
    let again = atelier(dir.path())
        .args(["demo", "--scenes", "1", "--candidates", "1"])
        .output()
        .unwrap();
    assert!(again.status.success());
}
