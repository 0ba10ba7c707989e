//! `export verify`: a package read entry by entry (nothing is extracted),
//! every file's SHA-256 and size compared with its manifest, and any entry
//! that could escape a target directory on extraction (`..`, an absolute
//! path, a link) refused.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::ServiceError;

#[derive(Debug, Default, Serialize)]
pub struct VerifyReport {
    /// `zip` (also CBZ) or `tar.gz`.
    pub container: &'static str,
    pub files_checked: u64,
    /// Empty: the package is whole.
    pub problems: Vec<String>,
    /// The package's manifest (for a restore).
    #[serde(skip)]
    pub manifest: serde_json::Value,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// A name that stays inside whatever directory it is extracted to.
pub fn safe_entry_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('/')
        && !name.contains('\\')
        && !name.contains('\0')
        && !name
            .split('/')
            .any(|part| part == ".." || part.ends_with(':'))
}

/// One entry as read: its hash and size.
struct Seen {
    sha256: String,
    size: u64,
}

fn hash(mut r: impl Read) -> std::io::Result<Seen> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut size = 0u64;
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        size += n as u64;
    }
    Ok(Seen {
        sha256: hex::encode(h.finalize()),
        size,
    })
}

fn bad_package(message: impl Into<String>) -> ServiceError {
    ServiceError::validation("invalid_package", message)
}

/// Checks the package at `path` (blocking: call off the async threads).
pub fn verify(path: &Path) -> Result<VerifyReport, ServiceError> {
    let mut magic = [0u8; 4];
    std::fs::File::open(path)?
        .read_exact(&mut magic)
        .map_err(|_| bad_package("The file is too short to be a package"))?;
    let mut report = VerifyReport::default();
    let mut seen: BTreeMap<String, Seen> = BTreeMap::new();
    let mut manifest: Option<Vec<u8>> = None;
    let mut keep = |name: String,
                    bytes_or_seen: Result<(Seen, Option<Vec<u8>>), String>,
                    report: &mut VerifyReport| {
        match bytes_or_seen {
            Ok((s, content)) => {
                if name == "manifest.json" {
                    manifest = content;
                }
                if seen.insert(name.clone(), s).is_some() {
                    report.problems.push(format!("{name}: appears twice"));
                }
            }
            Err(problem) => report.problems.push(format!("{name}: {problem}")),
        }
    };
    if &magic == b"PK\x03\x04" {
        report.container = "zip";
        let mut zip = zip::ZipArchive::new(std::fs::File::open(path)?)
            .map_err(|e| bad_package(format!("Not a readable zip: {e}")))?;
        for i in 0..zip.len() {
            let mut entry = zip
                .by_index(i)
                .map_err(|e| bad_package(format!("Entry {i}: {e}")))?;
            let name = match entry.name() {
                Ok(n) => n.to_string(),
                Err(e) => {
                    report
                        .problems
                        .push(format!("entry {i}: an unreadable name ({e})"));
                    continue;
                }
            };
            if !safe_entry_name(&name) {
                report
                    .problems
                    .push(format!("{name}: a name that leaves the package's folder"));
                continue;
            }
            if entry.is_symlink() {
                report.problems.push(format!("{name}: a symbolic link"));
                continue;
            }
            if entry.is_dir() {
                continue;
            }
            let result = if name == "manifest.json" {
                let mut bytes = Vec::new();
                entry
                    .read_to_end(&mut bytes)
                    .map(|_| (hash(bytes.as_slice()), bytes))
                    .and_then(|(s, b)| s.map(|s| (s, Some(b))))
            } else {
                hash(&mut entry).map(|s| (s, None))
            };
            keep(
                name,
                result.map_err(|e| format!("unreadable ({e})")),
                &mut report,
            );
        }
    } else if magic[..2] == [0x1f, 0x8b] {
        report.container = "tar.gz";
        let gz = flate2::read::GzDecoder::new(std::fs::File::open(path)?);
        let mut tar = tar::Archive::new(gz);
        let entries = tar
            .entries()
            .map_err(|e| bad_package(format!("Not a readable tar.gz: {e}")))?;
        for entry in entries {
            let mut entry =
                entry.map_err(|e| bad_package(format!("Not a readable tar.gz: {e}")))?;
            let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            if !safe_entry_name(&name) {
                report
                    .problems
                    .push(format!("{name}: a name that leaves the package's folder"));
                continue;
            }
            match entry.header().entry_type() {
                tar::EntryType::Regular => {}
                tar::EntryType::Directory => continue,
                other => {
                    report
                        .problems
                        .push(format!("{name}: not a regular file ({other:?})"));
                    continue;
                }
            }
            let result = if name == "manifest.json" {
                let mut bytes = Vec::new();
                entry
                    .read_to_end(&mut bytes)
                    .and_then(|_| hash(bytes.as_slice()).map(|s| (s, Some(bytes))))
            } else {
                hash(&mut entry).map(|s| (s, None))
            };
            keep(
                name,
                result.map_err(|e| format!("unreadable ({e})")),
                &mut report,
            );
        }
    } else {
        return Err(bad_package("Not a package: neither zip/CBZ nor tar.gz"));
    }
    let manifest: serde_json::Value = match manifest {
        Some(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| bad_package(format!("manifest.json is not JSON: {e}")))?,
        None => return Err(bad_package("The package has no manifest.json")),
    };
    if manifest["format"] != "atelier-export" {
        return Err(bad_package(
            "manifest.json is not an Atelier export manifest",
        ));
    }
    report.manifest = manifest.clone();
    let listed = manifest["files"].as_array().cloned().unwrap_or_default();
    let mut expected: BTreeMap<String, (String, u64)> = BTreeMap::new();
    for f in &listed {
        let (Some(path), Some(sha), Some(size)) =
            (f["path"].as_str(), f["sha256"].as_str(), f["size"].as_u64())
        else {
            report
                .problems
                .push(format!("manifest.json: an unreadable file entry {f}"));
            continue;
        };
        expected.insert(path.to_string(), (sha.to_string(), size));
    }
    for (path, (sha, size)) in &expected {
        match seen.get(path) {
            None => report.problems.push(format!(
                "{path}: listed in the manifest, absent from the package"
            )),
            Some(s) if &s.sha256 != sha || s.size != *size => report.problems.push(format!(
                "{path}: checksum or size differs from the manifest (sha256 {}, {} bytes)",
                s.sha256, s.size
            )),
            Some(_) => report.files_checked += 1,
        }
    }
    for name in seen.keys() {
        if name != "manifest.json" && name != "ComicInfo.xml" && !expected.contains_key(name) {
            report.problems.push(format!("{name}: not in the manifest"));
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_could_escape_are_unsafe() {
        for bad in [
            "../x",
            "a/../../x",
            "/etc/passwd",
            "C:/x",
            "a\\..\\b",
            "",
            "a/\0",
        ] {
            assert!(!safe_entry_name(bad), "{bad:?}");
        }
        for good in [
            "manifest.json",
            "files/runs/r/j/c1.png",
            "0001.png",
            "a..b/c",
        ] {
            assert!(safe_entry_name(good), "{good:?}");
        }
    }
}
