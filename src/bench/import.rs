//! `atelier bench import`: legacy rows imported per second into SQLite,
//! against a baseline measured in the same round: the same rows read the
//! same way and bulk-inserted, unmapped, into a copy of the legacy tables
//! (multi-row inserts, one transaction) — the floor of moving those rows.
//! The fixture is written first, outside the measured part; its rows carry
//! no file paths (files cost a copy each, whatever the importer does).

use std::time::Instant;

use domain::legacy::{ImportOptions, ImportTarget, LegacySource, Quiet, fixture};
use sea_orm::{ConnectionTrait, Database, DatabaseConnection, DbBackend, Statement};

use super::err;
use crate::cli::CliError;
use crate::settings::Settings;

const T: &str = "2026-03-01T10:00:00Z";

/// A legacy database of one project: `runs` runs of `jobs` jobs of
/// `candidates` candidates, each candidate with its quality report, each
/// job with a cost event.
async fn write_fixture(
    path: &std::path::Path,
    runs: u32,
    jobs: u32,
    candidates: u32,
) -> Result<u64, CliError> {
    let conn = Database::connect(format!("sqlite://{}?mode=rwc", path.display()))
        .await
        .map_err(err)?;
    for sql in fixture::schema(false) {
        conn.execute_unprepared(&sql).await.map_err(err)?;
    }
    let mut rows: u64 = 2;
    let mut sql = vec![
        format!("INSERT INTO app_users VALUES ('u1', 'artist', 'Artist', NULL, 1, '{T}', '{T}')"),
        format!(
            "INSERT INTO projects VALUES ('p1', 'u1', 'bench', 'Bench', '', 'active', '{{}}', '{T}', '{T}', 'u1')"
        ),
    ];
    for r in 0..runs {
        sql.push(format!("INSERT INTO runs (id, project_id, status, stage, created_at, mode, model, meta_json) VALUES ('r{r}', 'p1', 'ok', 'style', '{T}', 'run', 'gpt-image-1', '{{}}')"));
        rows += 1;
        for j in 0..jobs {
            sql.push(format!("INSERT INTO run_jobs (id, run_id, job_key, status, created_at, prompt_text, selected_candidate, meta_json) VALUES ('r{r}j{j}', 'r{r}', 'style_{j}', 'done', '{T}', 'a prompt', 1, '{{\"id\":\"style_{j}\"}}')"));
            sql.push(format!("INSERT INTO cost_events VALUES ('r{r}j{j}ce', 'p1', 'r{r}', 'style_{j}', 'openai', 'gpt-image-1', 'image_generation', {candidates}, 0.04, 0.16, 'USD', '{{}}', '{T}')"));
            rows += 2;
            for c in 0..candidates {
                sql.push(format!("INSERT INTO run_job_candidates VALUES ('r{r}j{j}c{c}', 'r{r}j{j}', {}, 'done', NULL, NULL, '{T}', 0, 1, 0.5, '{{}}')", c + 1));
                sql.push(format!("INSERT INTO quality_reports VALUES ('r{r}j{j}c{c}q', 'p1', 'r{r}', NULL, 'output_guard', '', 0, 1, 0.5, '{{}}', '{T}', NULL)"));
                rows += 2;
            }
        }
    }
    conn.execute_unprepared("BEGIN").await.map_err(err)?;
    for s in sql {
        conn.execute_unprepared(&s).await.map_err(err)?;
    }
    conn.execute_unprepared("COMMIT").await.map_err(err)?;
    conn.close().await.map_err(err)?;
    Ok(rows)
}

/// The baseline: every row of the legacy file read as the importer reads
/// it and bulk-inserted as it is into an empty copy of its tables.
async fn plain_copy(source: &LegacySource, into: &DatabaseConnection) -> Result<u64, CliError> {
    for sql in fixture::schema(false) {
        into.execute_unprepared(&sql).await.map_err(err)?;
    }
    into.execute_unprepared("BEGIN").await.map_err(err)?;
    let mut copied = 0;
    for table in fixture::TABLES {
        let rows = source.rows(table).await.map_err(err)?;
        for chunk in rows.chunks(400) {
            let Some(first) = chunk.first() else { continue };
            let columns: Vec<&String> = first.0.keys().collect();
            let mut values = Vec::new();
            let mut params = Vec::new();
            for row in chunk {
                values.push(format!("({})", vec!["?"; columns.len()].join(", ")));
                for c in &columns {
                    params.push(match &row.0[*c] {
                        serde_json::Value::Null => sea_orm::Value::String(None),
                        serde_json::Value::String(s) => s.clone().into(),
                        serde_json::Value::Number(n) if n.is_i64() => n.as_i64().into(),
                        other => other.as_f64().into(),
                    });
                }
            }
            let names: Vec<String> = columns.iter().map(|c| format!("\"{c}\"")).collect();
            let sql = format!(
                "INSERT INTO {table} ({}) VALUES {}",
                names.join(", "),
                values.join(", ")
            );
            into.execute_raw(Statement::from_sql_and_values(
                DbBackend::Sqlite,
                sql,
                params,
            ))
            .await
            .map_err(err)?;
            copied += chunk.len() as u64;
        }
    }
    into.execute_unprepared("COMMIT").await.map_err(err)?;
    Ok(copied)
}

pub async fn run(
    settings: Settings,
    runs: u32,
    jobs: u32,
    candidates: u32,
    rounds: u32,
) -> Result<(), CliError> {
    let work = tempfile::tempdir()?;
    let legacy_path = work.path().join("app.db");
    let rows = write_fixture(&legacy_path, runs, jobs, candidates).await?;
    println!("legacy fixture: {rows} rows ({runs} runs x {jobs} jobs x {candidates} candidates)");
    println!("round | import rows/s | plain bulk insert rows/s | ratio");
    for round in 1..=rounds.max(1) {
        let source = LegacySource::open(&legacy_path).await.map_err(err)?;
        // The importer, into a fresh installation.
        let (s, db, roots) =
            super::sqlite_installation(&settings, work.path().join(format!("atelier-{round}")))
                .await?;
        let keys = crate::startup::secret_keys(&s).load(true).map_err(err)?;
        let began = Instant::now();
        let report = domain::legacy::import(
            &source,
            ImportTarget {
                db: &db.conn,
                roots: &roots,
                keys: &keys,
                legacy_keys: None,
            },
            &ImportOptions {
                projects: Vec::new(),
                files_root: work.path().to_path_buf(),
                dry_run: false,
                skip_undecryptable_secrets: false,
            },
            &Quiet,
        )
        .await
        .map_err(err)?;
        let import_rate = report.rows_read() as f64 / began.elapsed().as_secs_f64();
        if report.projects.iter().any(|p| p.outcome != "imported") {
            return Err(err("the benchmark's import did not go through"));
        }
        // The baseline, into an empty file on the same disk.
        let copy_path = work.path().join(format!("copy-{round}.db"));
        let copy = Database::connect(format!("sqlite://{}?mode=rwc", copy_path.display()))
            .await
            .map_err(err)?;
        let began = Instant::now();
        let copied = plain_copy(&source, &copy).await?;
        let plain_rate = copied as f64 / began.elapsed().as_secs_f64();
        println!(
            "{round:>5} | {import_rate:>13.0} | {plain_rate:>24.0} | {:.2}",
            import_rate / plain_rate
        );
        source.close().await;
        copy.close().await.map_err(err)?;
    }
    Ok(())
}
