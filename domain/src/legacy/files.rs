//! The earlier system's files: paths stored in its rows, resolved under the
//! directory the user names as its files root (never outside it, symbolic
//! links included), copied into the project's storage under the same
//! relative key, and registered as assets (content hash, size, dimensions),
//! one asset per distinct content.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

use storage::{ObjectKey, ObjectStore};
use uuid::Uuid;

use super::{stable_id, unreadable};
use crate::ServiceError;

/// Where a stored path leads.
#[derive(Debug)]
pub enum Resolved {
    /// An existing file under the files root, and its key in the project.
    Found { path: PathBuf, key: String },
    /// Inside the files root, but no file is there.
    Missing(String),
    /// Outside the files root (or through a link leading out): never read.
    Outside(String),
}

/// A file registered as an asset of the project being imported.
#[derive(Clone, Debug)]
pub struct FileAsset {
    pub id: Uuid,
    pub key: String,
    pub sha256: String,
    pub size: i64,
    pub mime: &'static str,
    pub width: Option<i32>,
    pub height: Option<i32>,
    /// `false`: an asset of this content was registered before.
    pub fresh: bool,
}

pub struct LegacyFiles {
    /// Canonical: every file read must be under it.
    files_root: PathBuf,
    /// The project's root in the earlier system (relative paths start here).
    project_root: PathBuf,
    target: ObjectStore,
    project_id: Uuid,
    by_path: HashMap<PathBuf, FileAsset>,
    by_sha: HashMap<String, FileAsset>,
}

impl LegacyFiles {
    pub fn new(
        files_root: &Path,
        project_root: PathBuf,
        target: ObjectStore,
        project_id: Uuid,
    ) -> Result<Self, ServiceError> {
        let files_root = files_root
            .canonicalize()
            .map_err(|e| unreadable(format_args!("files root {}: {e}", files_root.display())))?;
        Ok(Self {
            files_root,
            project_root,
            target,
            project_id,
            by_path: HashMap::new(),
            by_sha: HashMap::new(),
        })
    }

    /// A stored path: relative to the project root (or, as older requests
    /// wrote them, to the earlier system's root), occasionally absolute.
    pub fn resolve(&self, raw: &str) -> Resolved {
        let raw = raw.trim();
        let given = Path::new(raw);
        let candidates: Vec<PathBuf> = if given.is_absolute() {
            vec![given.to_path_buf()]
        } else {
            vec![self.project_root.join(given), self.files_root.join(given)]
        };
        let mut inside = false;
        for candidate in candidates {
            let Some(normal) = lexical(&candidate) else {
                continue;
            };
            if !normal.starts_with(&self.files_root) && !self.project_root_contains(&normal) {
                continue;
            }
            inside = true;
            let Ok(real) = normal.canonicalize() else {
                continue;
            };
            // A link may point anywhere: only what really lies inside counts.
            if !real.starts_with(&self.files_root) || !real.is_file() {
                if real.starts_with(&self.files_root) {
                    continue;
                }
                return Resolved::Outside(raw.to_string());
            }
            if let Some(key) = self.key_for(&real) {
                return Resolved::Found { path: real, key };
            }
        }
        if inside {
            Resolved::Missing(raw.to_string())
        } else {
            Resolved::Outside(raw.to_string())
        }
    }

    fn project_root_contains(&self, normal: &Path) -> bool {
        self.project_root
            .canonicalize()
            .is_ok_and(|root| root.starts_with(&self.files_root) && normal.starts_with(root))
    }

    /// The key: the path below the project root, else below the files root
    /// under `imported/`.
    fn key_for(&self, real: &Path) -> Option<String> {
        let root = self.project_root.canonicalize().ok();
        let key = match root.as_ref().and_then(|r| real.strip_prefix(r).ok()) {
            Some(rel) => slashed(rel)?,
            None => format!(
                "imported/{}",
                slashed(real.strip_prefix(&self.files_root).ok()?)?
            ),
        };
        ObjectKey::parse(&key).ok().map(|k| k.as_str().to_string())
    }

    /// Copies the file into the project's storage (unless the same bytes
    /// are there) and returns its asset: the same for the same content,
    /// unless `id` names the asset (a row of the earlier system's `assets`
    /// table keeps its own id and key).
    pub async fn register(
        &mut self,
        path: &Path,
        key: &str,
        id: Option<Uuid>,
    ) -> Result<FileAsset, ServiceError> {
        if let Some(known) = self.by_path.get(path) {
            return Ok(FileAsset {
                fresh: false,
                ..known.clone()
            });
        }
        let bytes = tokio::fs::read(path).await?;
        let sha = crate::assets::sha256_hex(&bytes);
        if id.is_none()
            && let Some(known) = self.by_sha.get(&sha)
        {
            let same = FileAsset {
                fresh: false,
                ..known.clone()
            };
            self.by_path.insert(path.to_path_buf(), same.clone());
            return Ok(same);
        }
        let (mime, dims) = describe(&bytes);
        let object = ObjectKey::parse(key).map_err(|e| unreadable(e.to_string()))?;
        let already = match self.target.get(&object).await {
            Ok(existing) => crate::assets::sha256_hex(&existing) == sha,
            Err(_) => false,
        };
        if !already {
            self.target.put(&object, bytes.clone()).await?;
        }
        let asset = FileAsset {
            id: id.unwrap_or_else(|| stable_id(self.project_id, "file", &sha)),
            key: key.to_string(),
            size: bytes.len() as i64,
            sha256: sha.clone(),
            mime,
            width: dims.map(|d| d.0 as i32),
            height: dims.map(|d| d.1 as i32),
            fresh: true,
        };
        self.by_path.insert(path.to_path_buf(), asset.clone());
        self.by_sha.entry(sha).or_insert(asset.clone());
        Ok(asset)
    }
}

/// The media type and dimensions read from the header (nothing decoded).
fn describe(bytes: &[u8]) -> (&'static str, Option<(u32, u32)>) {
    let Ok(reader) = image::ImageReader::new(std::io::Cursor::new(bytes)).with_guessed_format()
    else {
        return ("application/octet-stream", None);
    };
    let mime = match reader.format() {
        Some(image::ImageFormat::Png) => "image/png",
        Some(image::ImageFormat::Jpeg) => "image/jpeg",
        Some(image::ImageFormat::WebP) => "image/webp",
        _ if bytes.starts_with(b"{") || bytes.starts_with(b"[") => "application/json",
        _ => "application/octet-stream",
    };
    (mime, reader.into_dimensions().ok())
}

/// `path` with `.` and `..` applied, without touching the filesystem;
/// `None` if `..` climbs above the root.
fn lexical(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    Some(out)
}

fn slashed(rel: &Path) -> Option<String> {
    let parts: Option<Vec<&str>> = rel
        .components()
        .map(|c| match c {
            Component::Normal(s) => s.to_str(),
            _ => None,
        })
        .collect();
    let parts = parts?;
    (!parts.is_empty()).then(|| parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(root: &Path) -> LegacyFiles {
        let project = root.join("var/projects/demo");
        std::fs::create_dir_all(project.join("outputs")).unwrap();
        let target = tempfile::tempdir().unwrap();
        LegacyFiles::new(
            root,
            project,
            ObjectStore::local(&target.keep()).unwrap(),
            Uuid::nil(),
        )
        .unwrap()
    }

    #[test]
    fn paths_resolve_inside_the_root_only() {
        let root = tempfile::tempdir().unwrap();
        let f = files(root.path());
        let out = root.path().join("var/projects/demo/outputs/a.png");
        std::fs::write(&out, b"x").unwrap();
        for raw in [
            "outputs/a.png",
            "var/projects/demo/outputs/a.png",
            out.to_str().unwrap(),
        ] {
            match f.resolve(raw) {
                Resolved::Found { key, .. } => assert_eq!(key, "outputs/a.png", "{raw}"),
                other => panic!("{raw}: {other:?}"),
            }
        }
        assert!(matches!(
            f.resolve("outputs/gone.png"),
            Resolved::Missing(_)
        ));
        assert!(matches!(f.resolve("/etc/passwd"), Resolved::Outside(_)));
        assert!(matches!(
            f.resolve("../../../../../../etc/passwd"),
            Resolved::Outside(_)
        ));
        // A link inside the root leading out of it is not followed.
        std::os::unix::fs::symlink(
            "/etc/passwd",
            root.path().join("var/projects/demo/outputs/l.png"),
        )
        .unwrap();
        assert!(matches!(f.resolve("outputs/l.png"), Resolved::Outside(_)));
    }
}
