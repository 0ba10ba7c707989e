//! Writing a package: `manifest.json` first, then every file, to a local
//! file — a few stored files in memory at a time. Reproducible: the same
//! content gives the same bytes (entries sorted, timestamps fixed at the
//! format's epoch, modes 0644, owner 0, no export id or date inside).

use std::io::Write;
use std::path::Path;

use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::gzip::{self, LeveledGz};
use super::snapshot::{PackageFile, Snapshot};
use crate::ServiceError;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PackageFormat {
    Zip,
    #[serde(rename = "tar.gz")]
    TarGz,
    /// A comic book archive: the winners in scene order, `ComicInfo.xml`.
    Cbz,
}

impl PackageFormat {
    pub fn parse(raw: &str) -> Result<Self, ServiceError> {
        match raw.trim().to_ascii_lowercase().as_str() {
            "zip" => Ok(Self::Zip),
            "tar.gz" | "tgz" => Ok(Self::TarGz),
            "cbz" => Ok(Self::Cbz),
            _ => Err(ServiceError::validation(
                "invalid_export_format",
                "Field 'format' must be one of: zip, tar.gz, cbz",
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Zip => "zip",
            Self::TarGz => "tar.gz",
            Self::Cbz => "cbz",
        }
    }
}

/// Told after each file written (a progress bar, events).
pub trait PackageProgress: Send + Sync {
    fn file_written(&self, done: u64, total: u64);
    /// Checked before each file: `true` stops the export.
    fn canceled(&self) -> bool {
        false
    }
}

impl PackageProgress for () {
    fn file_written(&self, _: u64, _: u64) {}
}

/// What was written.
pub struct Written {
    pub size: u64,
    pub sha256: String,
    pub files: u64,
}

/// A writer that hashes and counts what passes through it.
struct Hashing<W> {
    inner: W,
    hash: Sha256,
    size: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// An archive being written, entry by entry.
enum Archive {
    Zip(Box<zip::ZipWriter<zip::write::StreamWriter<Hashing<std::fs::File>>>>),
    Tar(Box<tar::Builder<LeveledGz<Hashing<std::fs::File>>>>),
}

fn io(e: impl std::fmt::Display) -> ServiceError {
    ServiceError::Io(std::io::Error::other(e.to_string()))
}

impl Archive {
    fn create(path: &Path, format: PackageFormat) -> Result<Self, ServiceError> {
        let out = Hashing {
            inner: std::fs::File::create(path)?,
            hash: Sha256::new(),
            size: 0,
        };
        Ok(match format {
            PackageFormat::Zip | PackageFormat::Cbz => {
                Self::Zip(Box::new(zip::ZipWriter::new_stream(out)))
            }
            PackageFormat::TarGz => {
                let gz = LeveledGz::new(out, gzip::COMPRESS)?;
                let mut tar = tar::Builder::new(gz);
                tar.mode(tar::HeaderMode::Deterministic);
                Self::Tar(Box::new(tar))
            }
        })
    }

    /// `compress`: worth deflating (JSON, XML); images are stored as they are.
    fn add(&mut self, name: &str, bytes: &[u8], compress: bool) -> Result<(), ServiceError> {
        match self {
            Self::Zip(z) => {
                let method = if compress {
                    zip::CompressionMethod::Deflated
                } else {
                    zip::CompressionMethod::Stored
                };
                let options = zip::write::SimpleFileOptions::default()
                    .compression_method(method)
                    .last_modified_time(zip::DateTime::default())
                    .unix_permissions(0o644)
                    .large_file(bytes.len() as u64 >= u64::from(u32::MAX));
                z.start_file(name, options).map_err(io)?;
                z.write_all(bytes)?;
            }
            Self::Tar(t) => {
                t.get_mut().set_level(if compress {
                    gzip::COMPRESS
                } else {
                    gzip::STORE
                })?;
                let mut header = tar::Header::new_ustar();
                header.set_size(bytes.len() as u64);
                header.set_mode(0o644);
                header.set_mtime(0);
                header.set_uid(0);
                header.set_gid(0);
                header.set_entry_type(tar::EntryType::Regular);
                t.append_data(&mut header, name, bytes)?;
            }
        }
        Ok(())
    }

    fn finish(self) -> Result<(u64, String), ServiceError> {
        let out = match self {
            Self::Zip(z) => z.finish().map_err(io)?.into_inner(),
            Self::Tar(t) => t.into_inner()?.finish()?,
        };
        let mut out = out;
        out.flush()?;
        out.inner.sync_data()?;
        Ok((out.size, hex::encode(out.hash.finalize())))
    }
}

/// `ComicInfo.xml` for a CBZ (the ComicRack schema's common fields).
fn comic_info(title: &str, pages: usize) -> String {
    let esc = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;")
    };
    let mut xml = String::from("<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<ComicInfo>\n");
    xml.push_str(&format!(
        "  <Title>{}</Title>\n  <Series>{}</Series>\n  <PageCount>{pages}</PageCount>\n  <Pages>\n",
        esc(title),
        esc(title)
    ));
    for i in 0..pages {
        let kind = if i == 0 { " Type=\"FrontCover\"" } else { "" };
        xml.push_str(&format!("    <Page Image=\"{i}\"{kind}/>\n"));
    }
    xml.push_str("  </Pages>\n</ComicInfo>\n");
    xml
}

/// Files read ahead of the package writer, at most.
const QUEUED_FILES: usize = 2;

/// Reads every entry's file, checks it against its recorded hash, and
/// queues it for the package writer; stops at a cancel or a mismatch.
async fn feed<R, RF>(
    entries: Vec<(String, &PackageFile)>,
    read: &mut R,
    queue: &tokio::sync::mpsc::Sender<(String, Vec<u8>)>,
    progress: &dyn PackageProgress,
    total: u64,
) -> Result<(), ServiceError>
where
    R: FnMut(&PackageFile) -> RF,
    RF: std::future::Future<Output = Result<Vec<u8>, ServiceError>>,
{
    for (done, (name, file)) in entries.into_iter().enumerate() {
        if progress.canceled() {
            return Err(ServiceError::Conflict {
                code: "export_canceled",
                message: "The export was canceled".into(),
            });
        }
        let bytes = read(file).await?;
        let (bytes, sha256) = tokio::task::spawn_blocking(move || {
            let sha256 = crate::assets::sha256_hex(&bytes);
            (bytes, sha256)
        })
        .await
        .map_err(io)?;
        if sha256 != file.sha256 {
            return Err(ServiceError::Conflict {
                code: "export_file_changed",
                message: format!(
                    "The file of asset {} does not match its recorded hash; nothing was exported",
                    file.asset_id
                ),
            });
        }
        if queue.send((name, bytes)).await.is_err() {
            // The writer stopped: its error is reported.
            return Ok(());
        }
        progress.file_written(done as u64 + 1, total);
    }
    Ok(())
}

/// Writes the package of `snapshot` to `path`; `read` gives a file's bytes.
/// A file whose bytes no longer match its recorded hash stops the export.
pub async fn write<R, RF>(
    path: &Path,
    format: PackageFormat,
    snapshot: &Snapshot,
    manifest: &Value,
    mut read: R,
    progress: &dyn PackageProgress,
) -> Result<Written, ServiceError>
where
    R: FnMut(&PackageFile) -> RF,
    RF: std::future::Future<Output = Result<Vec<u8>, ServiceError>>,
{
    let mut archive = Archive::create(path, format)?;
    archive.add("manifest.json", &serde_json::to_vec_pretty(manifest)?, true)?;
    if format == PackageFormat::Cbz {
        let pages = snapshot.pages().count();
        let info = comic_info(&snapshot.project.name, pages);
        archive.add("ComicInfo.xml", info.as_bytes(), true)?;
    }
    let entries = snapshot.entries(format);
    let total = entries.len() as u64;
    // Two stages on two threads: this task reads each file and checks its
    // hash while a blocking thread writes (and hashes) the package; a
    // short queue between them keeps memory to a few files.
    let (queue, mut next) = tokio::sync::mpsc::channel::<(String, Vec<u8>)>(QUEUED_FILES);
    let writer = tokio::task::spawn_blocking(move || {
        while let Some((name, bytes)) = next.blocking_recv() {
            archive.add(&name, &bytes, false)?;
        }
        Ok::<_, ServiceError>(archive)
    });
    let fed = feed(entries, &mut read, &queue, progress, total).await;
    drop(queue);
    // The writer's own failure (a full disk) is the one to report.
    let archive = writer.await.map_err(io)??;
    fed?;
    let (size, sha256) = tokio::task::spawn_blocking(move || archive.finish())
        .await
        .map_err(io)??;
    Ok(Written {
        size,
        sha256,
        files: total,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_parse_and_name_themselves() {
        for f in ["zip", "tar.gz", "cbz"] {
            assert_eq!(PackageFormat::parse(f).unwrap().as_str(), f);
        }
        assert!(PackageFormat::parse("rar").is_err());
    }

    #[test]
    fn comic_info_escapes_the_title() {
        let xml = comic_info("Tom & <Jerry>", 2);
        assert!(xml.contains("<Title>Tom &amp; &lt;Jerry&gt;</Title>"));
        assert!(xml.contains("<PageCount>2</PageCount>"));
        assert!(xml.contains("<Page Image=\"1\"/>"));
    }
}
