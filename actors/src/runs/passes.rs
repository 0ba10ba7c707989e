//! A candidate's post-process passes (last stage of the chain only, so later
//! stages never receive an enlarged or recoloured input): background removal
//! -> upscale -> colour, each optional. Every produced file is an asset with
//! a `derived_from` link to the file it was made from.

use entities::{asset_links, assets, run_jobs, runs};
use image::RgbaImage;
use imaging::passes::{bg_remove, color, upscale};
use serde_json::{Value, json};
use storage::ObjectStore;
use uuid::Uuid;

use super::manifest::Postprocess;
use crate::assets::NewAsset;
use crate::{ServiceError, time};

/// What the passes produced for one candidate.
pub struct Applied {
    /// The last file produced (the candidate's output if no pass ran).
    pub final_asset_id: Uuid,
    pub assets: Vec<assets::Model>,
    pub links: Vec<asset_links::Model>,
    /// Per pass: what it did, for the candidate's record.
    pub notes: Vec<Value>,
}

pub fn any_enabled(pp: &Postprocess) -> bool {
    pp.bg_remove || pp.upscale || pp.color
}

enum Pass {
    BgRemove,
    Upscale,
    Color,
}

impl Pass {
    fn kind(&self) -> &'static str {
        match self {
            Pass::BgRemove => "bg_removed",
            Pass::Upscale => "upscaled",
            Pass::Color => "color",
        }
    }
}

#[allow(clippy::too_many_arguments)]
pub async fn apply(
    store: &ObjectStore,
    pp: &Postprocess,
    run: &runs::Model,
    job: &run_jobs::Model,
    index: i32,
    image: RgbaImage,
    output: Uuid,
) -> Result<Applied, ServiceError> {
    let mut applied = Applied {
        final_asset_id: output,
        assets: Vec::new(),
        links: Vec::new(),
        notes: Vec::new(),
    };
    let profile =
        color::ColorProfile::find(&pp.color_profile, &pp.color_profiles).ok_or_else(|| {
            ServiceError::Internal(format!("colour profile {} vanished", pp.color_profile))
        })?;
    let passes = [
        (pp.bg_remove, Pass::BgRemove),
        (pp.upscale, Pass::Upscale),
        (pp.color, Pass::Color),
    ];
    let mut current = image;
    for (_, pass) in passes.into_iter().filter(|(on, _)| *on) {
        let (bg, factor, profile) = (pp.bg_remove_settings, pp.upscale_factor, profile.clone());
        let kind = pass.kind();
        let input = current.clone();
        let produced = imaging::cpu::run(move || {
            let (out, note) = match pass {
                Pass::BgRemove => match bg_remove::remove_background(&input, &bg) {
                    Some(r) => (
                        Some(r.image),
                        json!({ "pass": kind, "background": r.background, "removed_fraction": r.removed_fraction }),
                    ),
                    // Nothing border-connected to remove: the image goes on
                    // unchanged (remote removal providers are not wired yet).
                    None => (None, json!({ "pass": kind, "skipped": "no_background_found" })),
                },
                Pass::Upscale => (
                    Some(upscale::upscale(&input, factor)),
                    json!({ "pass": kind, "factor": factor }),
                ),
                Pass::Color => (
                    Some(color::apply(&input, &profile)),
                    json!({ "pass": kind, "profile": profile.name }),
                ),
            };
            let encoded = out.map(|img| {
                imaging::encode_png(&img).map(|png| {
                    let sha = crate::assets::sha256_hex(&png);
                    (img, png, sha)
                })
            });
            (encoded, note)
        })
        .await
        .map_err(|e| ServiceError::Internal(e.to_string()))?;
        let (encoded, note) = produced;
        applied.notes.push(note);
        let Some(encoded) = encoded else { continue };
        let (img, png, sha) = encoded.map_err(|e| ServiceError::Internal(e.to_string()))?;
        let asset = crate::assets::put(
            store,
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
                dedup: false,
            },
            Some(sha),
        )
        .await?;
        let now = time::now();
        applied.links.push(asset_links::Model {
            id: Uuid::now_v7(),
            project_id: run.project_id,
            parent_asset_id: applied.final_asset_id,
            child_asset_id: asset.id,
            link_type: "derived_from".into(),
            created_at: now,
            updated_at: now,
        });
        applied.final_asset_id = asset.id;
        applied.assets.push(asset);
        current = img;
    }
    Ok(applied)
}
