//! MNIST in its classic IDX files (`train-images-idx3-ubyte`, `train-labels-idx1-ubyte`,
//! `t10k-images-idx3-ubyte`, `t10k-labels-idx1-ubyte`), gzipped or not.
//!
//! The IDX format is a few lines of big-endian headers; hand-read here because the crates
//! that read it are unmaintained or bring a download client. Every defect gets an error
//! that names the file and what is wrong with it.

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

const IMAGES_MAGIC: u32 = 0x0000_0803;
const LABELS_MAGIC: u32 = 0x0000_0801;

/// One split: `count` images of `rows × cols` bytes (0–255, row-major) and their labels.
#[derive(Clone, Debug, PartialEq)]
pub struct Split {
    pub images: Vec<u8>,
    pub labels: Vec<u8>,
    pub count: usize,
    pub rows: usize,
    pub cols: usize,
}

impl Split {
    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.rows * self.cols;
        &self.images[i * n..(i + 1) * n]
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Mnist {
    pub train: Split,
    pub test: Split,
}

fn read_maybe_gz(path: &Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(path)
        .map_err(|e| Error::invalid(format!("cannot read {}: {e}", path.display())))?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(raw.as_slice())
            .read_to_end(&mut out)
            .map_err(|e| {
                Error::Corrupt(format!("{}: not a valid gzip stream ({e})", path.display()))
            })?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

fn header(bytes: &[u8], words: usize, path: &Path) -> Result<Vec<u32>> {
    if bytes.len() < 4 * words {
        return Err(Error::Corrupt(format!(
            "{}: truncated header ({} bytes, an IDX header here has {})",
            path.display(),
            bytes.len(),
            4 * words
        )));
    }
    Ok((0..words)
        .map(|i| u32::from_be_bytes(bytes[4 * i..4 * i + 4].try_into().unwrap()))
        .collect())
}

/// Reads an images file: (pixels, count, rows, cols).
pub fn read_images(path: &Path) -> Result<(Vec<u8>, usize, usize, usize)> {
    let bytes = read_maybe_gz(path)?;
    let h = header(&bytes, 4, path)?;
    if h[0] != IMAGES_MAGIC {
        return Err(Error::Corrupt(format!(
            "{}: bad magic number {:#010x}; an IDX image file starts with {IMAGES_MAGIC:#010x}",
            path.display(),
            h[0]
        )));
    }
    let (count, rows, cols) = (h[1] as usize, h[2] as usize, h[3] as usize);
    let want = count
        .checked_mul(rows)
        .and_then(|n| n.checked_mul(cols))
        .ok_or_else(|| {
            Error::Corrupt(format!(
                "{}: impossible dimensions {count}×{rows}×{cols}",
                path.display()
            ))
        })?;
    let body = &bytes[16..];
    if body.len() != want {
        return Err(Error::Corrupt(format!(
            "{}: {} bytes of pixels for {count} images of {rows}×{cols} (want {want}): {}",
            path.display(),
            body.len(),
            if body.len() < want {
                "truncated"
            } else {
                "trailing data"
            }
        )));
    }
    Ok((body.to_vec(), count, rows, cols))
}

/// Reads a labels file.
pub fn read_labels(path: &Path) -> Result<Vec<u8>> {
    let bytes = read_maybe_gz(path)?;
    let h = header(&bytes, 2, path)?;
    if h[0] != LABELS_MAGIC {
        return Err(Error::Corrupt(format!(
            "{}: bad magic number {:#010x}; an IDX label file starts with {LABELS_MAGIC:#010x}",
            path.display(),
            h[0]
        )));
    }
    let count = h[1] as usize;
    let body = &bytes[8..];
    if body.len() != count {
        return Err(Error::Corrupt(format!(
            "{}: {} labels for a declared count of {count}: {}",
            path.display(),
            body.len(),
            if body.len() < count {
                "truncated"
            } else {
                "trailing data"
            }
        )));
    }
    if let Some(bad) = body.iter().find(|&&l| l > 9) {
        return Err(Error::Corrupt(format!(
            "{}: label {bad} is not a digit",
            path.display()
        )));
    }
    Ok(body.to_vec())
}

/// `dir/name` or `dir/name.gz`, whichever exists.
fn find(dir: &Path, name: &str) -> Result<PathBuf> {
    [dir.join(name), dir.join(format!("{name}.gz"))]
        .into_iter()
        .find(|p| p.is_file())
        .ok_or_else(|| Error::invalid(format!("{} has no {name} (or {name}.gz)", dir.display())))
}

fn split(dir: &Path, prefix: &str) -> Result<Split> {
    let images_path = find(dir, &format!("{prefix}-images-idx3-ubyte"))?;
    let labels_path = find(dir, &format!("{prefix}-labels-idx1-ubyte"))?;
    let (images, count, rows, cols) = read_images(&images_path)?;
    let labels = read_labels(&labels_path)?;
    if labels.len() != count {
        return Err(Error::Corrupt(format!(
            "{} has {count} images but {} has {} labels",
            images_path.display(),
            labels_path.display(),
            labels.len()
        )));
    }
    Ok(Split {
        images,
        labels,
        count,
        rows,
        cols,
    })
}

/// Loads the four classic files from `dir`.
pub fn load_dir(dir: &Path) -> Result<Mnist> {
    Ok(Mnist {
        train: split(dir, "train")?,
        test: split(dir, "t10k")?,
    })
}

/// Writes a split in IDX format (used by tests and tools to make small data sets).
pub fn write_split(dir: &Path, prefix: &str, split: &Split) -> Result<()> {
    let mut images = Vec::with_capacity(16 + split.images.len());
    for w in [
        IMAGES_MAGIC,
        split.count as u32,
        split.rows as u32,
        split.cols as u32,
    ] {
        images.extend_from_slice(&w.to_be_bytes());
    }
    images.extend_from_slice(&split.images);
    let mut labels = Vec::with_capacity(8 + split.labels.len());
    for w in [LABELS_MAGIC, split.count as u32] {
        labels.extend_from_slice(&w.to_be_bytes());
    }
    labels.extend_from_slice(&split.labels);
    std::fs::write(dir.join(format!("{prefix}-images-idx3-ubyte")), images)?;
    std::fs::write(dir.join(format!("{prefix}-labels-idx1-ubyte")), labels)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn tiny(count: usize) -> Split {
        Split {
            images: (0..count * 4 * 4).map(|i| (i * 7 % 256) as u8).collect(),
            labels: (0..count).map(|i| (i % 10) as u8).collect(),
            count,
            rows: 4,
            cols: 4,
        }
    }

    #[test]
    fn plain_and_gzipped_files_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        write_split(dir.path(), "train", &tiny(5)).unwrap();
        write_split(dir.path(), "t10k", &tiny(3)).unwrap();
        // Gzip the test images, as the files usually come.
        let p = dir.path().join("t10k-images-idx3-ubyte");
        let raw = std::fs::read(&p).unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&raw).unwrap();
        std::fs::write(
            dir.path().join("t10k-images-idx3-ubyte.gz"),
            gz.finish().unwrap(),
        )
        .unwrap();
        std::fs::remove_file(&p).unwrap();
        let m = load_dir(dir.path()).unwrap();
        assert_eq!(m.train, tiny(5));
        assert_eq!(m.test, tiny(3));
        assert_eq!(m.test.image(1), &tiny(3).images[16..32]);
    }

    #[test]
    fn corrupt_files_are_named_with_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        write_split(dir.path(), "train", &tiny(5)).unwrap();
        let images = dir.path().join("train-images-idx3-ubyte");
        let labels = dir.path().join("train-labels-idx1-ubyte");
        let good = std::fs::read(&images).unwrap();

        let mut bad_magic = good.clone();
        bad_magic[3] = 0x01;
        std::fs::write(&images, &bad_magic).unwrap();
        let e = read_images(&images).unwrap_err().to_string();
        assert!(
            e.contains("bad magic number 0x00000801") && e.contains("train-images"),
            "{e}"
        );

        std::fs::write(&images, &good[..good.len() - 3]).unwrap();
        assert!(
            read_images(&images)
                .unwrap_err()
                .to_string()
                .contains("truncated")
        );
        std::fs::write(&images, &good[..10]).unwrap();
        assert!(
            read_images(&images)
                .unwrap_err()
                .to_string()
                .contains("truncated header")
        );
        std::fs::write(&images, [good.as_slice(), &[0u8; 2]].concat()).unwrap();
        assert!(
            read_images(&images)
                .unwrap_err()
                .to_string()
                .contains("trailing data")
        );

        std::fs::write(&images, &good).unwrap();
        let mut labels_bytes = std::fs::read(&labels).unwrap();
        labels_bytes.pop();
        std::fs::write(&labels, &labels_bytes).unwrap();
        assert!(
            read_labels(&labels)
                .unwrap_err()
                .to_string()
                .contains("4 labels for a declared count of 5")
        );
        labels_bytes.push(42);
        std::fs::write(&labels, &labels_bytes).unwrap();
        assert!(
            read_labels(&labels)
                .unwrap_err()
                .to_string()
                .contains("label 42 is not a digit")
        );

        // Count mismatch between the two files of a split.
        let mut three = tiny(3);
        three.images = tiny(5).images;
        three.count = 5;
        write_split(
            dir.path(),
            "train",
            &Split {
                labels: vec![1, 2, 3],
                ..three
            },
        )
        .unwrap();
        let mut fixed = std::fs::read(&labels).unwrap();
        fixed[7] = 3;
        std::fs::write(&labels, &fixed).unwrap();
        let e = split(dir.path(), "train").unwrap_err().to_string();
        assert!(e.contains("5 images") && e.contains("3 labels"), "{e}");

        std::fs::write(dir.path().join("bad.gz"), [0x1f, 0x8b, 0, 1, 2]).unwrap();
        assert!(
            read_labels(&dir.path().join("bad.gz"))
                .unwrap_err()
                .to_string()
                .contains("gzip")
        );
        let e = load_dir(&dir.path().join("nowhere"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("train-images-idx3-ubyte"), "{e}");
    }
}
