//! `atelier bench export`: package throughput against a baseline measured
//! in the same round — the same files read from the same storage and
//! written into a plain tar (no manifest, no compression) on the same disk —
//! and the process's peak memory after a small and then a 4x larger
//! project (bounded memory: the peak should not follow the size).

use std::io::Write;
use std::time::Instant;

use domain::exports::{ExportRequest, PackageFormat};
use domain::projects::{self, UpsertProject};
use entities::assets;
use sea_orm::EntityTrait;
use storage::{ObjectKey, ObjectStore};
use uuid::Uuid;

use super::err;
use crate::cli::CliError;
use crate::database;
use crate::settings::Settings;

/// Incompressible bytes (like the PNGs a project holds), distinct per file.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A project of `files` files of `size` bytes each, registered as assets.
pub(crate) async fn project(
    db: &database::Db,
    roots: &domain::StorageRoots,
    slug: &str,
    files: u32,
    size: usize,
) -> Result<(entities::projects::Model, ObjectStore, Vec<String>), CliError> {
    let project = projects::upsert(
        &db.conn,
        roots,
        &domain::Principal::DevBypass,
        UpsertProject {
            name: Some(slug.into()),
            slug: Some(slug.into()),
            ..UpsertProject::default()
        },
    )
    .await
    .map_err(err)?
    .project;
    let root = roots
        .project_root(storage::paths::DEFAULT_BASE_DIR, None, slug)
        .map_err(err)?;
    let store = ObjectStore::local(&root).map_err(err)?;
    let mut keys = Vec::new();
    let mut rows = Vec::new();
    for i in 0..files {
        let bytes = noise(u64::from(i) + 1, size);
        let key = format!("runs/bench/{i:05}.png");
        store
            .put(&ObjectKey::parse(&key).map_err(err)?, bytes.clone())
            .await
            .map_err(err)?;
        rows.push(assets::ActiveModel::from(assets::Model {
            id: Uuid::now_v7(),
            project_id: project.id,
            kind: "candidate_output".into(),
            storage_backend: "local".into(),
            storage_key: key.clone(),
            storage_uri: key.clone(),
            mime_type: Some("image/png".into()),
            width: None,
            height: None,
            byte_size: Some(size as i64),
            sha256: Some(domain::assets::sha256_hex(&bytes)),
            run_id: None,
            job_id: None,
            candidate_id: None,
            metadata_json: serde_json::json!({}),
            created_at: domain::time::now(),
        }));
        keys.push(key);
    }
    for chunk in rows.chunks(400) {
        assets::Entity::insert_many(chunk.to_vec())
            .exec_without_returning(&db.conn)
            .await
            .map_err(err)?;
    }
    Ok((project, store, keys))
}

/// The baseline: the same files from the same store into a plain tar.
async fn plain_tar(
    store: &ObjectStore,
    keys: &[String],
    out: &std::path::Path,
) -> Result<u64, CliError> {
    let mut tar = tar::Builder::new(std::io::BufWriter::new(std::fs::File::create(out)?));
    for key in keys {
        let bytes = store
            .get(&ObjectKey::parse(key).map_err(err)?)
            .await
            .map_err(err)?;
        let mut header = tar::Header::new_ustar();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        tar.append_data(&mut header, key, bytes.as_slice())?;
    }
    let mut file = tar.into_inner()?.into_inner().map_err(|e| err(e.error()))?;
    file.flush()?;
    file.sync_data()?;
    Ok(std::fs::metadata(out)?.len())
}

async fn export_once(
    db: &database::Db,
    files: &storage::ProjectFiles,
    project: &entities::projects::Model,
    format: PackageFormat,
) -> Result<u64, CliError> {
    let request = ExportRequest {
        format,
        run_ids: Vec::new(),
    };
    let started = domain::exports::start(
        &db.conn,
        &domain::Principal::DevBypass,
        project,
        &request,
        "bench",
    )
    .await
    .map_err(err)?;
    let done = domain::exports::run(
        &db.conn,
        files,
        project,
        started,
        &request,
        api::CONTRACT_VERSION,
        &(),
    )
    .await
    .map_err(err)?;
    Ok(done.file_size_bytes.unwrap_or(0) as u64)
}

pub async fn run(
    settings: Settings,
    files: u32,
    size_kib: usize,
    rounds: u32,
) -> Result<(), CliError> {
    // Under --data-dir, so the disk measured is the one asked for.
    std::fs::create_dir_all(&settings.data_dir)?;
    let work = tempfile::tempdir_in(&settings.data_dir)?;
    let (_, db, roots) = super::sqlite_installation(&settings, work.path().join("atelier")).await?;
    let size = size_kib * 1024;
    let mb = |n: u64| n as f64 / (1 << 20) as f64;
    let small_files = (files / 4).max(1);
    let (small, small_store, _) =
        project(&db, &roots, "bench-export-small", small_files, size).await?;
    let (large, store, keys) = project(&db, &roots, "bench-export", files, size).await?;
    let large_files = storage::ProjectFiles::local(store.clone());
    // Memory first (the peak only grows): a project, then one 4x larger.
    export_once(
        &db,
        &storage::ProjectFiles::local(small_store),
        &small,
        PackageFormat::Zip,
    )
    .await?;
    let after_small = super::passes::peak_rss_bytes().unwrap_or(0);
    export_once(&db, &large_files, &large, PackageFormat::Zip).await?;
    let after_large = super::passes::peak_rss_bytes().unwrap_or(0);
    println!(
        "peak RSS of the process after exporting {:.0} MB: {:.0} MB; after exporting {:.0} MB: {:.0} MB",
        mb(u64::from(small_files) * size as u64),
        mb(after_small),
        mb(u64::from(files) * size as u64),
        mb(after_large)
    );
    println!("project: {files} files of {size_kib} KiB (incompressible), SQLite, local storage");
    println!("round | format | package MB/s | plain tar MB/s | ratio");
    for round in 1..=rounds.max(1) {
        for format in [PackageFormat::Zip, PackageFormat::TarGz] {
            let began = Instant::now();
            let bytes = export_once(&db, &large_files, &large, format).await?;
            let package_rate = mb(bytes) / began.elapsed().as_secs_f64();
            let out = work.path().join(format!("plain-{round}.tar"));
            let began = Instant::now();
            let bytes = plain_tar(&store, &keys, &out).await?;
            let plain_rate = mb(bytes) / began.elapsed().as_secs_f64();
            std::fs::remove_file(&out)?;
            println!(
                "{round:>5} | {:>6} | {package_rate:>12.0} | {plain_rate:>14.0} | {:.2}",
                format.as_str(),
                package_rate / plain_rate
            );
        }
    }
    Ok(())
}
