//! `atelier bench sync --endpoint URL`: a first push of a project's files to
//! an S3-compatible server, then a second push of the unchanged project, in
//! the same run (the second should cost a listing, not a transfer).

use std::time::Instant;

use domain::sync::{Direction, SyncOptions};
use storage::{ObjectStore, ProjectFiles, S3Config, S3Location};

use super::err;
use crate::cli::CliError;
use crate::settings::Settings;

pub async fn run(
    settings: Settings,
    endpoint: String,
    files: u32,
    size_kib: usize,
) -> Result<(), CliError> {
    std::fs::create_dir_all(&settings.data_dir)?;
    let work = tempfile::tempdir_in(&settings.data_dir)?;
    let (_, db, roots) = super::sqlite_installation(&settings, work.path().join("atelier")).await?;
    let (project, local, _) =
        super::export::project(&db, &roots, "bench-sync", files, size_kib * 1024).await?;
    let bucket = format!("atelier-bench-{}", uuid::Uuid::new_v4().simple());
    let created = reqwest::Client::new()
        .put(format!("{}/{bucket}", endpoint.trim_end_matches('/')))
        .send()
        .await
        .map_err(err)?;
    if !created.status().is_success() {
        return Err(err(format!(
            "cannot create bucket {bucket}: {}",
            created.status()
        )));
    }
    let remote = ObjectStore::s3(
        &S3Config {
            endpoint: Some(endpoint.clone()),
            bucket,
            region: "us-east-1".into(),
            access_key_id: "testing".into(),
            secret_access_key: "testing".into(),
            root: format!("/bench/{}/", project.id),
        },
        None,
    )
    .map_err(err)?;
    let files_of = ProjectFiles::new(
        local,
        S3Location::Ready {
            store: remote,
            primary: false,
        },
    );
    let mut options = SyncOptions {
        direction: Direction::Push,
        dry_run: false,
        overwrite: false,
        concurrency: 8,
        full: false,
    };
    let began = Instant::now();
    let first = domain::sync::sync(&db.conn, &files_of, &project, &options, &())
        .await
        .map_err(err)?;
    let first_s = began.elapsed().as_secs_f64();
    let began = Instant::now();
    let second = domain::sync::sync(&db.conn, &files_of, &project, &options, &())
        .await
        .map_err(err)?;
    let second_s = began.elapsed().as_secs_f64();
    // The same with the bucket listed (`--full`, and every push whose
    // record is older than an hour).
    options.full = true;
    let began = Instant::now();
    let listed = domain::sync::sync(&db.conn, &files_of, &project, &options, &())
        .await
        .map_err(err)?;
    let listed_s = began.elapsed().as_secs_f64();
    println!("project: {files} files of {size_kib} KiB; S3 at {endpoint}; 8 transfers in flight");
    println!(
        "first push:  {} objects moved in {first_s:.2} s",
        first.transferred.len()
    );
    println!(
        "second push: {} moved, {} unchanged in {second_s:.3} s = {:.2} % of the first",
        second.transferred.len(),
        second.unchanged,
        100.0 * second_s / first_s
    );
    println!(
        "second push, bucket listed (--full): {} moved, {} unchanged in {listed_s:.3} s = {:.2} % of the first",
        listed.transferred.len(),
        listed.unchanged,
        100.0 * listed_s / first_s
    );
    Ok(())
}
