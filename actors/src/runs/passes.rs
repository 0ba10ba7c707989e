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
use super::pipeline::{JobEnv, remote_bg_remove};
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

#[allow(clippy::too_many_arguments)]
pub async fn apply(
    env: &JobEnv,
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
    let mut current = image;
    if pp.bg_remove {
        // Each backend in order until one removes a background.
        let mut done = false;
        for backend in &pp.bg_remove_backends {
            if backend == "local" {
                let (input, bg) = (current.clone(), pp.bg_remove_settings);
                let local = imaging::cpu::run(move || bg_remove::remove_background(&input, &bg))
                    .await
                    .map_err(|e| ServiceError::Internal(e.to_string()))?;
                if let Some(r) = local {
                    let asset = store_pass(env, run, job, index, "bg_removed", &r.image).await?;
                    applied.notes.push(json!({ "pass": "bg_removed", "backend": "local", "removed_fraction": r.removed_fraction }));
                    link(&mut applied, run, asset);
                    current = r.image;
                    done = true;
                    break;
                }
            } else if let Some((img, asset)) =
                remote_bg_remove(env, run, job, index, &current, backend).await?
            {
                applied
                    .notes
                    .push(json!({ "pass": "bg_removed", "backend": backend }));
                // Already stored and committed with its paid call.
                let id = asset.id;
                applied.links.push(derived(run, applied.final_asset_id, id));
                applied.final_asset_id = id;
                current = img;
                done = true;
                break;
            }
        }
        if !done {
            applied.notes.push(
                json!({ "pass": "bg_removed", "skipped": "no_backend_removed_a_background" }),
            );
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
        .await
        .map_err(|e| ServiceError::Internal(e.to_string()))?;
        let (img, note) = produced;
        applied.notes.push(note);
        let asset = store_pass(env, run, job, index, kind, &img).await?;
        link(&mut applied, run, asset);
        current = img;
    }
    Ok(applied)
}

fn derived(run: &runs::Model, parent: Uuid, child: Uuid) -> asset_links::Model {
    let now = time::now();
    asset_links::Model {
        id: Uuid::now_v7(),
        project_id: run.project_id,
        parent_asset_id: parent,
        child_asset_id: child,
        link_type: "derived_from".into(),
        created_at: now,
        updated_at: now,
    }
}

/// Records a pass output (its row goes in with the candidate's rows).
fn link(applied: &mut Applied, run: &runs::Model, asset: assets::Model) {
    applied
        .links
        .push(derived(run, applied.final_asset_id, asset.id));
    applied.final_asset_id = asset.id;
    applied.assets.push(asset);
}

/// Encodes and writes a pass output file; returns its asset row (not yet inserted).
async fn store_pass(
    env: &JobEnv,
    run: &runs::Model,
    job: &run_jobs::Model,
    index: i32,
    kind: &'static str,
    img: &RgbaImage,
) -> Result<assets::Model, ServiceError> {
    let owned = img.clone();
    let (png, sha) = imaging::cpu::run(move || {
        imaging::encode_png(&owned).map(|png| {
            let sha = crate::assets::sha256_hex(&png);
            (png, sha)
        })
    })
    .await
    .map_err(|e| ServiceError::Internal(e.to_string()))?
    .map_err(|e| ServiceError::Internal(e.to_string()))?;
    crate::assets::put(
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
            dedup: false,
        },
        Some(sha),
    )
    .await
}
