//! Scene references: resolved and checked before anything is persisted or paid.
//!
//! - `sample:<n>`: a procedural sample scene (no files needed), 256x192, or
//!   `sample:<n>@<w>x<h>` at another size (16 to 2048 pixels a side);
//! - an asset id of this project;
//! - a path relative to the project root (`scenes/street.png`);
//! - `dir:<path>` (from the request's `input`): every image directly in that folder;
//! - `prompt:<description>`: no image; the first stage generates the scene
//!   from its description (later stages work from that stage's winner).

use entities::assets;
use imaging::DecodeLimits;
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter};
use storage::{ObjectKey, ProjectFiles};
use uuid::Uuid;

use crate::ServiceError;

pub const SAMPLE_WIDTH: u32 = 256;
pub const SAMPLE_HEIGHT: u32 = 192;

pub struct ResolvedScene {
    pub reference: String,
    pub content: SceneContent,
}

pub enum SceneContent {
    Image(SceneImage),
    /// A prompt-only scene's description.
    Prompt(String),
}

pub struct SceneImage {
    /// PNG bytes.
    pub png: Vec<u8>,
    pub width: u32,
    pub height: u32,
}

impl ResolvedScene {
    fn image(reference: String, png: Vec<u8>, width: u32, height: u32) -> Self {
        Self {
            reference,
            content: SceneContent::Image(SceneImage { png, width, height }),
        }
    }
}

/// Longest description of a prompt-only scene, in characters.
pub const PROMPT_MAX: usize = 500;

/// Whether `prompt:` scenes are accepted (not for style references, which
/// must be images).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Prompts {
    Allowed,
    Refused,
}

fn not_found(r: &str) -> ServiceError {
    ServiceError::validation(
        "scene_not_found",
        format!("Scene '{r}' was not found in this project"),
    )
}

fn corrupt(r: &str, e: impl std::fmt::Display) -> ServiceError {
    ServiceError::validation(
        "invalid_scene",
        format!("Scene '{r}' is not a usable image: {e}"),
    )
}

fn checked(
    reference: String,
    bytes: &[u8],
    limits: DecodeLimits,
) -> Result<ResolvedScene, ServiceError> {
    let img = imaging::decode(bytes, limits).map_err(|e| corrupt(&reference, e))?;
    let png = imaging::encode_png(&img)?;
    Ok(ResolvedScene::image(
        reference,
        png,
        img.width(),
        img.height(),
    ))
}

const SAMPLE_SIDE: std::ops::RangeInclusive<u32> = 16..=2048;

/// `<seed>` or `<seed>@<w>x<h>`.
fn parse_sample(s: &str) -> Option<(u64, u32, u32)> {
    let (seed, size) = match s.trim().split_once('@') {
        Some((seed, size)) => (seed, Some(size)),
        None => (s.trim(), None),
    };
    let seed = seed.parse().ok()?;
    let (w, h) = match size {
        None => (SAMPLE_WIDTH, SAMPLE_HEIGHT),
        Some(size) => {
            let (w, h) = size.split_once('x')?;
            (w.parse().ok()?, h.parse().ok()?)
        }
    };
    (SAMPLE_SIDE.contains(&w) && SAMPLE_SIDE.contains(&h)).then_some((seed, w, h))
}

const IMAGE_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "webp"];

pub async fn resolve<C: ConnectionTrait>(
    db: &C,
    project_id: Uuid,
    store: &ProjectFiles,
    refs: &[String],
    limits: DecodeLimits,
    prompts: Prompts,
) -> Result<Vec<ResolvedScene>, ServiceError> {
    let mut out = Vec::new();
    for r in refs {
        if let Some(description) = r.strip_prefix("prompt:") {
            let description = description.trim();
            if prompts == Prompts::Refused {
                return Err(ServiceError::validation(
                    "invalid_scene",
                    format!("'{r}' is not an image (style references must be images)"),
                ));
            }
            if description.is_empty() || description.chars().count() > PROMPT_MAX {
                return Err(ServiceError::validation(
                    "invalid_scene",
                    format!("A prompt scene needs a description of 1 to {PROMPT_MAX} characters"),
                ));
            }
            out.push(ResolvedScene {
                reference: format!("prompt:{description}"),
                content: SceneContent::Prompt(description.to_string()),
            });
        } else if let Some(sample) = r.strip_prefix("sample:") {
            let (seed, width, height) = parse_sample(sample).ok_or_else(|| not_found(r))?;
            let img = imaging::scene::sample_scene(seed, width, height);
            let png = imaging::encode_png(&img)?;
            out.push(ResolvedScene::image(
                r.clone(),
                png,
                img.width(),
                img.height(),
            ));
        } else if let Some(dir) = r.strip_prefix("dir:") {
            let dir = dir.trim_matches('/');
            ObjectKey::parse(dir).map_err(|_| not_found(dir))?;
            let mut files: Vec<String> = store
                .list(&format!("{dir}/"))
                .await
                .map_err(|_| not_found(dir))?
                .into_iter()
                .filter(|f| {
                    f.rsplit_once('.').is_some_and(|(_, ext)| {
                        IMAGE_EXTENSIONS.contains(&ext.to_ascii_lowercase().as_str())
                    })
                })
                .collect();
            files.sort();
            if files.is_empty() {
                return Err(ServiceError::validation(
                    "scene_not_found",
                    format!("Folder '{dir}' has no images"),
                ));
            }
            for f in files {
                let key = ObjectKey::parse(&f).map_err(|_| not_found(&f))?;
                let bytes = store.get(&key).await.map_err(|_| not_found(&f))?;
                out.push(checked(f, &bytes, limits)?);
            }
        } else if let Ok(asset_id) = Uuid::parse_str(r) {
            let asset = assets::Entity::find_by_id(asset_id)
                .filter(assets::Column::ProjectId.eq(project_id))
                .one(db)
                .await?
                .ok_or_else(|| not_found(r))?;
            let key = ObjectKey::parse(&asset.storage_key).map_err(|_| not_found(r))?;
            let bytes = store
                .get_in(&asset.storage_backend, &key)
                .await
                .map_err(|_| not_found(r))?;
            out.push(checked(r.clone(), &bytes, limits)?);
        } else {
            let key = ObjectKey::parse(r.trim_start_matches("./")).map_err(|_| {
                ServiceError::validation(
                    "invalid_scene",
                    format!("Scene '{r}' is not a valid project path"),
                )
            })?;
            let bytes = store.get(&key).await.map_err(|_| not_found(r))?;
            out.push(checked(r.clone(), &bytes, limits)?);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::parse_sample;

    #[test]
    fn sample_references_carry_an_optional_bounded_size() {
        assert_eq!(parse_sample("7"), Some((7, 256, 192)));
        assert_eq!(parse_sample("7@64x48"), Some((7, 64, 48)));
        assert_eq!(parse_sample("7@8x48"), None);
        assert_eq!(parse_sample("7@64x9999"), None);
        assert_eq!(parse_sample("7@64"), None);
        assert_eq!(parse_sample("x@64x48"), None);
    }
}
