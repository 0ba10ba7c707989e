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
