//! MNIST from the hub's parquet copy (`ylecun/mnist`, PNG-encoded digits) or from its
//! classic IDX files (`train-images-idx3-ubyte`, `train-labels-idx1-ubyte`,
//! `t10k-images-idx3-ubyte`, `t10k-labels-idx1-ubyte`), gzipped or not.
//!
//! The IDX format is a few lines of big-endian headers; hand-read here because the crates
//! that read it are unmaintained or bring a download client. Every defect gets an error
//! that names the file and what is wrong with it.

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::hub::{self, HubOptions};
use crate::{Error, Result, imageio, parquet_images};

/// The hub's copy of MNIST, and its two files.
pub const HUB_REPO: &str = "ylecun/mnist";
pub const HUB_FILES: [&str; 2] = [
    "mnist/train-00000-of-00001.parquet",
    "mnist/test-00000-of-00001.parquet",
];
const SIDE: usize = 28;

/// Where a training's digits come from; saved with a job so a resume reads the same data.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MnistSource {
    /// A hub dataset repository with MNIST's parquet layout.
    Hub { repo: String, options: HubOptions },
    /// A directory with the four IDX files.
    Dir(PathBuf),
    /// Two parquet files in the hub's layout.
    Parquet { train: PathBuf, test: PathBuf },
}

impl MnistSource {
    pub fn load(&self) -> Result<Mnist> {
        match self {
            Self::Hub { repo, options } => {
                let files = hub::dataset_files(repo, &HUB_FILES, options)?;
                load_parquet(&files[0], &files[1])
            }
            Self::Dir(dir) => load_dir(dir),
            Self::Parquet { train, test } => load_parquet(train, test),
        }
    }
}

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

/// A split from hub-layout parquet rows: each image decoded and brought to 28×28 grey.
fn split_from_parquet(path: &Path) -> Result<Split> {
    let rows = parquet_images::read_rows(path, "image", "label")?;
    let mut images = Vec::with_capacity(rows.len() * SIDE * SIDE);
    let mut labels = Vec::with_capacity(rows.len());
    for (i, (bytes, label)) in rows.iter().enumerate() {
        let what = format!("{} row {i}", path.display());
        if !(0..=9).contains(label) {
            return Err(Error::Corrupt(format!(
                "{what}: label {label} is not a digit"
            )));
        }
        let img = imageio::decode(bytes, &what).map_err(|e| Error::Corrupt(e.to_string()))?;
        images.extend(
            imageio::to_grey_square(&img, SIDE as u32)
                .into_iter()
                .map(|v| (v * 255.0).round() as u8),
        );
        labels.push(*label as u8);
    }
    Ok(Split {
        count: labels.len(),
        images,
        labels,
        rows: SIDE,
        cols: SIDE,
    })
}

/// Loads the hub's two parquet files.
pub fn load_parquet(train: &Path, test: &Path) -> Result<Mnist> {
    Ok(Mnist {
        train: split_from_parquet(train)?,
        test: split_from_parquet(test)?,
    })
}

/// Writes a split as a hub-layout parquet file of PNGs (tests and tools).
pub fn write_parquet(path: &Path, split: &Split) -> Result<()> {
    let rows = (0..split.count)
        .map(|i| {
            let px: Vec<f32> = split.image(i).iter().map(|&p| p as f32 / 255.0).collect();
            let png = imageio::encode_png(&px, split.cols as u32, split.rows as u32, 1)?;
            Ok((png, split.labels[i] as i64))
        })
        .collect::<Result<Vec<_>>>()?;
    parquet_images::write_rows(path, "image", "label", &rows)
}

/// A small digit-like data set: each of ten classes is a different stroke figure (ring,
/// bar, cross, box...) drawn with random position, size and thickness. For tests and
/// demonstrations where the real MNIST is not at hand; never a substitute for it.
pub fn synthetic(count: usize, seed: u64) -> Split {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut images = vec![0u8; count * SIDE * SIDE];
    let mut labels = Vec::with_capacity(count);
    for i in 0..count {
        let class = (i % 10) as u8;
        let (cx, cy) = (
            rng.random_range(11.0..17.0f32),
            rng.random_range(11.0..17.0f32),
        );
        let r = rng.random_range(5.0..8.0f32);
        let t = rng.random_range(1.0..2.2f32);
        let img = &mut images[i * SIDE * SIDE..(i + 1) * SIDE * SIDE];
        for y in 0..SIDE {
            for x in 0..SIDE {
                let (dx, dy) = (x as f32 - cx, y as f32 - cy);
                let d = (dx * dx + dy * dy).sqrt();
                let on = match class {
                    0 => (d - r).abs() < t,
                    1 => dx.abs() < t && dy.abs() < r,
                    2 => dy.abs() < t && dx.abs() < r,
                    3 => (dx - dy).abs() < t * 1.4 && d < r,
                    4 => (dx + dy).abs() < t * 1.4 && d < r,
                    5 => ((dx - dy).abs() < t * 1.4 || (dx + dy).abs() < t * 1.4) && d < r,
                    6 => (dx.abs() < t || dy.abs() < t) && dx.abs() < r && dy.abs() < r,
                    7 => dx.abs().max(dy.abs()) < r && dx.abs().max(dy.abs()) > r - 2.0 * t,
                    8 => d < r * 0.6,
                    _ => (d - r).abs() < t && dy < 0.0 || dx.abs() < t && dy >= 0.0 && dy < r,
                };
                if on {
                    img[y * SIDE + x] = rng.random_range(200..=255);
                }
            }
        }
        labels.push(class);
    }
    Split {
        images,
        labels,
        count,
        rows: SIDE,
        cols: SIDE,
    }
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

    fn digits(count: usize) -> Split {
        Split {
            images: (0..count * 784).map(|i| (i * 13 % 256) as u8).collect(),
            labels: (0..count).map(|i| (i % 10) as u8).collect(),
            count,
            rows: 28,
            cols: 28,
        }
    }

    #[test]
    fn the_hub_layout_loads_through_the_cache_offline() {
        let dir = tempfile::tempdir().unwrap();
        let (train, test) = (dir.path().join("a.parquet"), dir.path().join("b.parquet"));
        write_parquet(&train, &digits(7)).unwrap();
        write_parquet(&test, &digits(3)).unwrap();
        let cache = dir.path().join("hub");
        crate::hub::seed_cache(
            &cache,
            HUB_REPO,
            &[
                (HUB_FILES[0], &std::fs::read(&train).unwrap()),
                (HUB_FILES[1], &std::fs::read(&test).unwrap()),
            ],
        )
        .unwrap();
        let source = MnistSource::Hub {
            repo: HUB_REPO.into(),
            options: HubOptions {
                offline: true,
                cache_dir: Some(cache),
                revision: None,
            },
        };
        let m = source.load().unwrap();
        // PNG is lossless: the pixels come back exactly.
        assert_eq!(m.train, digits(7));
        assert_eq!(m.test, digits(3));
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
