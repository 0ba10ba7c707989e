//! Resolution of project storage directories against the allowed bases.

use std::path::{Component, Path, PathBuf};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PathError {
    #[error("Path must not be empty")]
    Empty,
    #[error("Path must not contain '..' segments")]
    Traversal,
    #[error("Path contains a NUL byte or control character")]
    InvalidCharacter,
    #[error("Path {0} is outside the allowed storage roots")]
    OutsideRoots(String),
    #[error("Path {0} leaves the allowed storage roots through a symbolic link")]
    SymlinkEscape(String),
}

impl PathError {
    /// Stable `error_code` for the API envelope.
    pub fn code(&self) -> &'static str {
        match self {
            PathError::Empty => "path_empty",
            PathError::Traversal => "path_traversal",
            PathError::InvalidCharacter => "path_invalid",
            PathError::OutsideRoots(_) => "path_outside_allowed_roots",
            PathError::SymlinkEscape(_) => "path_symlink_escape",
        }
    }
}

/// The directories project files may live under on this server.
#[derive(Clone, Debug)]
pub struct StorageRoots {
    /// Absolute data directory; relative `base_dir` values resolve against it.
    data_dir: PathBuf,
    /// Absolute allowed bases: `{data_dir}/projects` plus configured extras.
    allowed: Vec<PathBuf>,
}

/// Default `local_base_dir` of a new project (relative to the data directory).
pub const DEFAULT_BASE_DIR: &str = "projects";

impl StorageRoots {
    pub fn new(data_dir: &Path, extra_roots: &[PathBuf]) -> Self {
        let data_dir = absolute(data_dir);
        let mut allowed = vec![data_dir.join(DEFAULT_BASE_DIR)];
        allowed.extend(extra_roots.iter().map(|p| absolute(p)));
        Self { data_dir, allowed }
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Checks a user-supplied directory (absolute, or relative to the data
    /// directory) and returns its absolute, lexically normal form.
    pub fn resolve_dir(&self, raw: &str) -> Result<PathBuf, PathError> {
        let raw = raw.trim();
        if raw.is_empty() {
            return Err(PathError::Empty);
        }
        // Control and bidirectional-override characters hide what a path is.
        if raw.chars().any(|c| {
            c == '\0'
                || c.is_control()
                || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}')
        }) {
            return Err(PathError::InvalidCharacter);
        }
        let candidate = Path::new(raw);
        if candidate
            .components()
            .any(|c| matches!(c, Component::ParentDir))
        {
            return Err(PathError::Traversal);
        }
        let joined = if candidate.is_absolute() {
            candidate.to_path_buf()
        } else {
            self.data_dir.join(candidate)
        };
        let normal = lexical_normal(&joined);
        let Some(root) = self.allowed.iter().find(|r| normal.starts_with(r)) else {
            return Err(PathError::OutsideRoots(normal.display().to_string()));
        };
        check_symlinks(root, &normal)?;
        Ok(normal)
    }

    /// A project's root: the explicit `project_root`, else `{base_dir}/{slug}`.
    pub fn project_root(
        &self,
        base_dir: &str,
        project_root: Option<&str>,
        slug: &str,
    ) -> Result<PathBuf, PathError> {
        match project_root.filter(|p| !p.trim().is_empty()) {
            Some(root) => self.resolve_dir(root),
            None => {
                let base = self.resolve_dir(base_dir)?;
                let root = base.join(slug);
                check_symlinks(&base, &root)?;
                Ok(root)
            }
        }
    }
}

/// `path` with every symbolic link resolved: the deepest existing ancestor
/// canonicalised, the rest (not created yet) appended.
pub fn real_path(path: &Path) -> PathBuf {
    let mut existing = path.to_path_buf();
    let mut rest = Vec::new();
    loop {
        if let Ok(real) = std::fs::canonicalize(&existing) {
            let mut out = real;
            out.extend(rest.iter().rev());
            return out;
        }
        match (
            existing.file_name().map(|n| n.to_os_string()),
            existing.pop(),
        ) {
            (Some(name), true) => rest.push(name),
            _ => return path.to_path_buf(),
        }
    }
}

fn absolute(p: &Path) -> PathBuf {
    lexical_normal(&std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf()))
}

fn lexical_normal(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// The deepest existing ancestor of `path` must still be inside `root` once
/// symbolic links are resolved.
fn check_symlinks(root: &Path, path: &Path) -> Result<(), PathError> {
    let real_root = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
    let mut probe = path.to_path_buf();
    loop {
        if std::fs::symlink_metadata(&probe).is_ok() {
            let real = std::fs::canonicalize(&probe)
                .map_err(|_| PathError::SymlinkEscape(path.display().to_string()))?;
            // An ancestor above the root itself (root not created yet) proves nothing.
            if probe.starts_with(root) && !real.starts_with(&real_root) {
                return Err(PathError::SymlinkEscape(path.display().to_string()));
            }
            return Ok(());
        }
        if !probe.pop() {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roots() -> (tempfile::TempDir, StorageRoots) {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let roots = StorageRoots::new(dir.path(), &[]);
        (dir, roots)
    }

    #[test]
    fn default_root_is_under_projects() {
        let (dir, roots) = roots();
        let root = roots
            .project_root("projects", None, "demo")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(root, absolute(dir.path()).join("projects").join("demo"));
    }

    #[test]
    fn rejects_traversal_outside_and_empty() {
        let (_dir, roots) = roots();
        assert_eq!(
            roots.resolve_dir("projects/../../etc"),
            Err(PathError::Traversal)
        );
        assert!(matches!(
            roots.resolve_dir("/etc"),
            Err(PathError::OutsideRoots(_))
        ));
        assert!(matches!(
            roots.resolve_dir("backend"),
            Err(PathError::OutsideRoots(_))
        ));
        assert_eq!(roots.resolve_dir("  "), Err(PathError::Empty));
        assert_eq!(
            roots.resolve_dir("projects/a\0b"),
            Err(PathError::InvalidCharacter)
        );
    }

    #[cfg(unix)]
    #[test]
    fn rejects_symlink_escape() {
        let (dir, roots) = roots();
        let outside = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        std::fs::create_dir_all(dir.path().join("projects")).unwrap_or_else(|e| panic!("{e}"));
        std::os::unix::fs::symlink(outside.path(), dir.path().join("projects/escape"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(
            roots.resolve_dir("projects/escape/inner"),
            Err(PathError::SymlinkEscape(_))
        ));
        assert!(matches!(
            roots.project_root("projects", None, "escape"),
            Err(PathError::SymlinkEscape(_))
        ));
    }
}
