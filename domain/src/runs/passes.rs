//! A candidate's post-process passes (last stage of the chain only, so later
//! stages never receive an enlarged or recoloured input): background removal
//! -> upscale -> colour, each optional. Every produced file is an asset with
//! a `derived_from` link to the file it was made from.

use entities::{asset_links, assets, run_jobs, runs};
use image::RgbaImage;
use imaging::passes::{bg_remove, color, upscale};
use serde_json::{Value, json};
use uuid::Uuid;

use super::manifest::Postprocess;
use super::paid_pass::{PaidPass, PassEnd, paid_pass};
use super::pipeline::JobEnv;
use crate::assets::{NewAsset, Stored};
use crate::{ServiceError, time};

/// What the passes produced for one candidate.
pub struct Applied {
    /// The last file produced (the candidate's output if no pass ran).
    pub final_asset_id: Uuid,
    pub assets: Vec<assets::Model>,
    pub links: Vec<asset_links::Model>,
    /// Per pass: what it did, for the candidate's record.
    pub notes: Vec<Value>,
    /// The image of `final_asset_id`.
    pub final_image: RgbaImage,
    /// The local passes' files, not durable yet: synced by the row writer
    /// with the rest of the batch, before the rows pointing at them commit
    /// (they are free to make again if a crash loses them).
    pub files: Vec<storage::Unsynced>,
}

pub fn any_enabled(pp: &Postprocess) -> bool {
    pp.bg_remove || pp.upscale || pp.color
}

/// The passes after background removal, which always produce an image.
enum Pass {
    Upscale,
    Color,
}

impl Pass {
    fn kind(&self) -> &'static str {
        match self {
            Pass::Upscale => "upscaled",
            Pass::Color => "color",
        }
    }
}

/// Runs the enabled passes on one candidate. `None`: the service is shutting
/// down (a paid step's result is stored and reused when the candidate is
/// decided again).
#[allow(clippy::too_many_arguments)]
pub async fn apply(
    env: &JobEnv,
    pp: &Postprocess,
    run: &runs::Model,
    job: &run_jobs::Model,
    index: i32,
    image: RgbaImage,
    output: Uuid,
) -> Result<Option<Applied>, ServiceError> {
    let mut applied = Applied {
        final_asset_id: output,
        assets: Vec::new(),
        links: Vec::new(),
        notes: Vec::new(),
        final_image: RgbaImage::new(0, 0),
        files: Vec::new(),
    };
    let profile = color::ColorProfile::find(&pp.color_profile, &pp.color_profiles)
        .ok_or_else(|| ServiceError::missing("colour profile", &pp.color_profile))?;
    let mut current = image;
    if pp.bg_remove {
        // Each backend in order until one removes a background.
        let mut done = false;
        for backend in &pp.bg_remove_backends {
            if backend == "local" {
                let (input, bg) = (current.clone(), pp.bg_remove_settings);
                let local =
                    imaging::cpu::run(move || bg_remove::remove_background(&input, &bg)).await?;
                if let Some(r) = local {
                    let stored = store_pass(env, run, job, index, "bg_removed", &r.image).await?;
                    applied.notes.push(json!({ "pass": "bg_removed", "backend": "local", "removed_fraction": r.removed_fraction }));
                    chain(&mut applied, run, stored);
                    current = r.image;
                    done = true;
                    break;
                }
            } else {
                match paid_pass(env, run, job, index, &current, PaidPass::Remove(backend)).await? {
                    PassEnd::Done { image, asset, cost } => {
                        applied.notes.push(
                            json!({ "pass": "bg_removed", "backend": backend, "cost": cost }),
                        );
                        // Already stored and committed with its paid call.
                        applied.links.push(link(
                            run,
                            applied.final_asset_id,
                            asset.id,
                            LinkType::DerivedFrom,
                        ));
                        applied.final_asset_id = asset.id;
                        current = image;
                        done = true;
                        break;
                    }
                    PassEnd::Interrupted => return Ok(None),
                    PassEnd::Skipped => {}
                }
            }
        }
        if !done {
            applied.notes.push(
                json!({ "pass": "bg_removed", "skipped": "no_backend_removed_a_background" }),
            );
        } else if let Some(code) = pp.bg_remove_refine.as_deref() {
            // The cut-out, refined by an image provider; without a result
            // the unrefined cut-out goes on.
            match paid_pass(env, run, job, index, &current, PaidPass::Refine(code)).await? {
                PassEnd::Done { image, asset, cost } => {
                    applied
                        .notes
                        .push(json!({ "pass": "bg_refined", "provider": code, "cost": cost }));
                    applied.links.push(link(
                        run,
                        applied.final_asset_id,
                        asset.id,
                        LinkType::DerivedFrom,
                    ));
                    applied.final_asset_id = asset.id;
                    current = image;
                }
                PassEnd::Interrupted => return Ok(None),
                PassEnd::Skipped => applied.notes.push(
                    json!({ "pass": "bg_refined", "skipped": "refine_failed", "provider": code }),
                ),
            }
        }
    }
    let passes = [(pp.upscale, Pass::Upscale), (pp.color, Pass::Color)];
    for (_, pass) in passes.into_iter().filter(|(on, _)| *on) {
        let (factor, profile) = (pp.upscale_factor, profile.clone());
        let kind = pass.kind();
        let input = current.clone();
        let produced = imaging::cpu::run(move || {
            let (out, note) = match pass {
                Pass::Upscale => (
                    upscale::upscale(&input, factor),
                    json!({ "pass": kind, "factor": factor }),
                ),
                Pass::Color => (
                    color::apply(&input, &profile),
                    json!({ "pass": kind, "profile": profile.name }),
                ),
            };
            (out, note)
        })
        .await?;
        let (img, note) = produced;
        applied.notes.push(note);
        let stored = store_pass(env, run, job, index, kind, &img).await?;
        chain(&mut applied, run, stored);
        current = img;
    }
    applied.final_image = current;
    Ok(Some(applied))
}

/// The lineage relations the pipeline records.
#[derive(Clone, Copy)]
pub enum LinkType {
    /// The child was made from the parent (a generation, a pass).
    DerivedFrom,
    /// The child is the parent in another form (a thumbnail).
    VariantOf,
}

pub fn link(run: &runs::Model, parent: Uuid, child: Uuid, kind: LinkType) -> asset_links::Model {
    let now = time::now();
    asset_links::Model {
        id: Uuid::now_v7(),
        project_id: run.project_id,
        parent_asset_id: parent,
        child_asset_id: child,
        link_type: match kind {
            LinkType::DerivedFrom => "derived_from",
            LinkType::VariantOf => "variant_of",
        }
        .into(),
        created_at: now,
        updated_at: now,
    }
}

/// Records a pass output (a fresh row goes in with the candidate's rows).
fn chain(applied: &mut Applied, run: &runs::Model, stored: Stored) {
    let id = stored.row.id;
    applied
        .links
        .push(link(run, applied.final_asset_id, id, LinkType::DerivedFrom));
    applied.final_asset_id = id;
    applied.files.extend(stored.unsynced);
    if stored.fresh {
        applied.assets.push(stored.row);
    }
}

/// Longest side of a thumbnail; smaller images are their own thumbnail.
pub const THUMBNAIL_SIDE: u32 = 256;

/// A candidate's thumbnail: its asset, and what to record with the
/// candidate's rows.
pub struct Thumbnail {
    pub id: Uuid,
    /// Its row, when it is new.
    pub assets: Vec<assets::Model>,
    pub links: Vec<asset_links::Model>,
    /// Its file, not durable yet (synced with the batch, like a pass's).
    pub files: Vec<storage::Unsynced>,
}

/// The candidate's thumbnail for the feed and the console (WebP, a
/// `variant_of` its final file). An image no larger than a thumbnail is
/// its own.
pub async fn thumbnail(
    env: &JobEnv,
    run: &runs::Model,
    job: &run_jobs::Model,
    index: i32,
    (final_id, img): (Uuid, &RgbaImage),
) -> Result<Thumbnail, ServiceError> {
    if img.width().max(img.height()) <= THUMBNAIL_SIDE {
        return Ok(Thumbnail {
            id: final_id,
            assets: Vec::new(),
            links: Vec::new(),
            files: Vec::new(),
        });
    }
    let owned = img.clone();
    let (webp, sha, (w, h)) = imaging::cpu::run(move || {
        imaging::passes::thumbnail::thumbnail_webp(&owned, THUMBNAIL_SIDE).map(|(webp, dims)| {
            let sha = crate::assets::sha256_hex(&webp);
            (webp, sha, dims)
        })
    })
    .await??;
    let stored = crate::assets::put_unsynced(
        &env.db,
        &env.store,
        NewAsset {
            project_id: run.project_id,
            kind: "thumbnail",
            key: &format!("thumbnails/{}/{}/c{index}.webp", run.id, job.job_key),
            width: w,
            height: h,
            bytes: webp,
            mime: "image/webp",
            run_id: Some(run.id),
            job_id: Some(job.id),
            candidate_id: None,
            metadata: json!({ "candidate_index": index, "stage": job.stage, "thumbnail_of": final_id }),
        },
        Some(sha),
    )
    .await?;
    let id = stored.row.id;
    Ok(Thumbnail {
        id,
        links: vec![link(run, final_id, id, LinkType::VariantOf)],
        files: stored.unsynced.into_iter().collect(),
        assets: stored.fresh.then_some(stored.row).into_iter().collect(),
    })
}

/// Encodes and writes a pass output file (or finds the project's identical one).
async fn store_pass(
    env: &JobEnv,
    run: &runs::Model,
    job: &run_jobs::Model,
    index: i32,
    kind: &'static str,
    img: &RgbaImage,
) -> Result<Stored, ServiceError> {
    let owned = img.clone();
    let (png, sha) = imaging::cpu::run(move || {
        imaging::encode_png(&owned).map(|png| {
            let sha = crate::assets::sha256_hex(&png);
            (png, sha)
        })
    })
    .await??;
    crate::assets::put_unsynced(
        &env.db,
        &env.store,
        NewAsset {
            project_id: run.project_id,
            kind,
            key: &format!("runs/{}/{}/c{index}.{kind}.png", run.id, job.job_key),
            width: img.width(),
            height: img.height(),
            bytes: png,
            mime: "image/png",
            run_id: Some(run.id),
            job_id: Some(job.id),
            candidate_id: None,
            metadata: json!({ "candidate_index": index, "stage": job.stage, "pass": kind }),
        },
        Some(sha),
    )
    .await
}
