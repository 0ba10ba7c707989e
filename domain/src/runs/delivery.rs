//! A paid result is made durable the moment it arrives: the provider's
//! bytes stored unchanged and its call marked succeeded (with the file's
//! hash, actual cost and usage) in one commit, before any decoding, guard,
//! ranking or pass. What could be lost in a crash is therefore only what is
//! between the answer's arrival and that commit (measured as
//! `atelier_delivery_durable_seconds`).

use crate::runs::lease::Fence;
use entities::{assets, provider_calls, run_jobs, runs};
use image::RgbaImage;
use providers::bg_remote::Removed;
use providers::{Cost, GeneratedImage, RateSignal};
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use serde_json::{Value, json};
use uuid::Uuid;

use super::calls;
use super::passes::{LinkType, link};
use super::pipeline::JobEnv;
use super::writer::Rows;
use crate::ServiceError;
use crate::assets::{self as registry, NewAsset};

/// What a provider delivered, whichever kind of call it was.
pub(super) struct Delivery {
    pub bytes: Vec<u8>,
    pub mime: &'static str,
    /// The pixels, when the provider had them anyway (the local provider).
    pub decoded: Option<RgbaImage>,
    pub cost: Cost,
    pub model: Option<String>,
    pub provider_request_id: Option<String>,
    pub rate: RateSignal,
}

impl From<GeneratedImage> for Delivery {
    fn from(g: GeneratedImage) -> Self {
        Self {
            bytes: g.bytes,
            mime: g.mime,
            decoded: g.decoded,
            cost: g.cost,
            model: Some(g.model),
            provider_request_id: g.provider_request_id,
            rate: g.rate,
        }
    }
}

impl From<Removed> for Delivery {
    fn from(r: Removed) -> Self {
        Self {
            bytes: r.bytes,
            mime: r.mime,
            decoded: None,
            cost: r.cost,
            model: None,
            provider_request_id: r.provider_request_id,
            rate: r.rate,
        }
    }
}

/// The file name extension of a delivered image.
pub(super) fn extension(mime: &str) -> &'static str {
    match mime {
        "image/jpeg" => "jpg",
        "image/webp" => "webp",
        _ => "png",
    }
}

/// Where and as what a delivered file is kept.
pub(super) struct Placement<'a> {
    pub kind: &'static str,
    /// The storage key without its extension, e.g. `runs/{run}/{job}/c0`.
    pub key_stem: String,
    /// The file it was made from (a `derived_from` link), if any.
    pub parent: Option<Uuid>,
    pub metadata: Value,
    pub call: &'a provider_calls::Model,
    pub attempt: u32,
    pub arrived: std::time::Instant,
}

/// Stores the delivered file and commits it with its call's completion and
/// cost event; returns the asset and the bytes (for what comes next).
pub(super) async fn keep(
    env: &JobEnv,
    run: &runs::Model,
    job: &run_jobs::Model,
    place: Placement<'_>,
    delivery: Delivery,
) -> Result<(assets::Model, Vec<u8>, Option<RgbaImage>), ServiceError> {
    let Delivery {
        bytes,
        mime,
        decoded,
        cost,
        model,
        provider_request_id,
        ..
    } = delivery;
    let limits = env.limits;
    let (bytes, sha, dims) = imaging::cpu::run(move || {
        let sha = registry::sha256_hex(&bytes);
        // Dimensions from the header only: no decoding before it is durable.
        let dims = imaging::dimensions(&bytes, limits).unwrap_or((0, 0));
        (bytes, sha, dims)
    })
    .await?;
    let key = format!("{}.{}", place.key_stem, extension(mime));
    // Made durable by the row writer (with its batch's other files) before
    // the call is marked succeeded. The lookup before the write is tried
    // again while the database is away, like the write: the paid result in
    // hand is not dropped for a dropped connection.
    let stored = crate::db::retrying("storing a paid result", || {
        registry::put_unsynced(
            &env.db,
            &env.store,
            NewAsset {
                project_id: run.project_id,
                kind: place.kind,
                key: &key,
                width: dims.0,
                height: dims.1,
                bytes: bytes.clone(),
                mime,
                run_id: Some(run.id),
                job_id: Some(job.id),
                candidate_id: None,
                metadata: place.metadata.clone(),
            },
            Some(sha.clone()),
        )
    })
    .await?;
    let asset = stored.row.clone();
    let (done, cost_event) = calls::completion(
        place.call,
        calls::Delivered {
            result_asset_id: asset.id,
            sha256: &sha,
            cost: &cost,
            model,
            provider_request_id,
            attempt: place.attempt,
        },
    );
    let mut rows = Rows {
        provider_calls: vec![done],
        cost_events: cost_event.into_iter().collect(),
        assets: stored.fresh.then_some(stored.row).into_iter().collect(),
        files: stored.unsynced.into_iter().collect(),
        ..Rows::default()
    };
    if let Some(parent) = place.parent {
        rows.links
            .push(link(run, parent, asset.id, LinkType::DerivedFrom));
    }
    env.writer()?.write(Some(Fence::of(job)), rows).await?;
    crate::metrics::observe_durable_window(&place.call.provider_code, place.arrived.elapsed());
    super::pipeline::audit_paid(env, place.call, cost.usd).await;
    Ok((asset, bytes, decoded))
}

/// A delivered candidate that failed the output guard goes to the archive
/// (never deleted or overwritten): its own row moves to `archive/` as an
/// `archived` asset; a file shared with another asset (same content) gets an
/// archived copy instead. Returns the archived asset and, for a copy, its
/// row to insert.
pub(super) async fn archive(
    env: &JobEnv,
    run: &runs::Model,
    job: &run_jobs::Model,
    index: i32,
    asset: &assets::Model,
    bytes: &[u8],
) -> Result<(Uuid, Option<assets::Model>), ServiceError> {
    if asset.kind == "archived" {
        return Ok((asset.id, None));
    }
    let ext = extension(asset.mime_type.as_deref().unwrap_or("image/png"));
    let key = format!("archive/{}/{}/c{index}.{ext}", run.id, job.job_key);
    let own = asset.kind == "generated"
        && asset.run_id == Some(run.id)
        && asset.job_id == Some(job.id)
        && asset.metadata_json.get("candidate_index") == Some(&json!(index));
    if !own {
        let stored = registry::put(
            &env.db,
            &env.store,
            NewAsset {
                project_id: run.project_id,
                kind: "archived",
                key: &key,
                width: asset.width.unwrap_or(0).max(0) as u32,
                height: asset.height.unwrap_or(0).max(0) as u32,
                bytes: bytes.to_vec(),
                mime: mime_of(asset),
                run_id: Some(run.id),
                job_id: Some(job.id),
                candidate_id: None,
                metadata: json!({ "candidate_index": index, "stage": job.stage, "archived_from": asset.id }),
            },
            None,
        )
        .await?;
        return Ok((stored.row.id, stored.fresh.then_some(stored.row)));
    }
    // Copy, repoint the row, then drop the old file: a crash in between
    // leaves the row pointing at a file that exists.
    let object = storage::ObjectKey::parse(&key)?;
    let backend = env.store.put(&object, bytes.to_vec()).await?;
    let txn = crate::db::begin_write(&env.db).await?;
    entities::assets::Entity::update_many()
        .col_expr(entities::assets::Column::Kind, Expr::value("archived"))
        .col_expr(
            entities::assets::Column::StorageBackend,
            Expr::value(backend),
        )
        .col_expr(
            entities::assets::Column::StorageKey,
            Expr::value(key.clone()),
        )
        .col_expr(
            entities::assets::Column::StorageUri,
            Expr::value(key.clone()),
        )
        .filter(entities::assets::Column::Id.eq(asset.id))
        .exec(&txn)
        .await?;
    crate::db::commit(txn).await?;
    if (asset.storage_key != key || asset.storage_backend != backend)
        && let Ok(old) = storage::ObjectKey::parse(&asset.storage_key)
        && let Err(e) = env.store.delete_in(&asset.storage_backend, &old).await
    {
        tracing::warn!(asset_id = %asset.id, error = %e, "cannot remove the unarchived copy");
    }
    Ok((asset.id, None))
}

fn mime_of(asset: &assets::Model) -> &'static str {
    match asset.mime_type.as_deref() {
        Some("image/jpeg") => "image/jpeg",
        Some("image/webp") => "image/webp",
        _ => "image/png",
    }
}
