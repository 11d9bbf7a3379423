//! Reading the user's files and writing results, with the path in every error.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use oneiro_proto::v1 as pb;

pub fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

/// Writes `bytes`, creating missing parent directories so that `-o out/x.png` and the
/// per-epoch picture folders work without a `mkdir` first.
pub fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        create_dir(dir)?;
    }
    std::fs::write(path, bytes).with_context(|| format!("cannot write {}", path.display()))
}

pub fn create_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))
}

/// A text corpus, rejected with the offset of its first bad byte when it is not UTF-8
/// (the daemon would refuse it anyway, after the upload).
pub fn read_corpus(path: &Path) -> Result<String> {
    let bytes =
        std::fs::read(path).with_context(|| format!("cannot read corpus {}", path.display()))?;
    String::from_utf8(bytes).map_err(|e| {
        anyhow::anyhow!(
            "corpus {} is not UTF-8 text (invalid byte at offset {})",
            path.display(),
            e.utf8_error().valid_up_to()
        )
    })
}

/// The PNG, JPEG and GIF files of a folder, in name order so a seeded training sees the
/// same data order on every run.
/// The PNG, JPEG and GIF files of `dir` (sorted by name) as the daemon takes them inline,
/// each with its file name for the daemon's errors.
pub fn folder_images(dir: &Path) -> Result<pb::InlineImages> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension().and_then(|e| e.to_str()).is_some_and(|e| {
                matches!(
                    e.to_ascii_lowercase().as_str(),
                    "png" | "jpg" | "jpeg" | "gif"
                )
            })
        })
        .collect();
    paths.sort();
    if paths.is_empty() {
        bail!("{} has no PNG, JPEG or GIF files", dir.display());
    }
    Ok(pb::InlineImages {
        images: paths.iter().map(|p| read(p)).collect::<Result<_>>()?,
        names: paths
            .iter()
            .map(|p| {
                p.file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect(),
    })
}
