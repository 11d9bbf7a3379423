//! Colour image sets for the GAN: CIFAR-10 from the hub's parquet copy (`uoft-cs/cifar10`,
//! PNG-encoded) or its classic binary batches, one class selected; or a folder of the
//! user's own images of any size, resized to the model's resolution.
//!
//! Images are kept as `u8` in channel-major order (C, H, W), the layout of both the binary
//! batches and candle's tensors. The hub's PNGs decode with height and width in their
//! right places (candle-datasets' hub loader transposes them; this one does not, and a
//! test pins it).

use std::path::{Path, PathBuf};

use crate::hub::{self, HubOptions};
use crate::{Error, Result, imageio, parquet_images};

pub const HUB_REPO: &str = "uoft-cs/cifar10";
pub const HUB_TRAIN: &str = "plain_text/train-00000-of-00001.parquet";
/// CIFAR-10's class 6, the book's choice.
pub const FROG: u8 = 6;
pub const SIDE: usize = 32;
const PLANE: usize = SIDE * SIDE;
const RECORD: usize = 1 + 3 * PLANE;

/// `count` RGB images of `side`×`side`, channel-major, one after another.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageSet {
    pub pixels: Vec<u8>,
    pub count: usize,
    pub side: usize,
}

impl ImageSet {
    pub fn image(&self, i: usize) -> &[u8] {
        let n = 3 * self.side * self.side;
        &self.pixels[i * n..(i + 1) * n]
    }

    /// Image `i` as interleaved RGB in [0, 1] (for PNG output).
    pub fn interleaved(&self, i: usize) -> Vec<f32> {
        chw_to_hwc(self.image(i), self.side)
    }
}

/// Channel-major bytes to interleaved RGB floats in [0, 1].
pub fn chw_to_hwc(chw: &[u8], side: usize) -> Vec<f32> {
    let plane = side * side;
    (0..plane)
        .flat_map(|p| (0..3).map(move |c| chw[c * plane + p] as f32 / 255.0))
        .collect()
}

fn from_interleaved(rgb: &[f32], side: usize, out: &mut Vec<u8>) {
    let plane = side * side;
    for c in 0..3 {
        out.extend((0..plane).map(|p| (rgb[p * 3 + c] * 255.0).round() as u8));
    }
}

/// Where a GAN's images come from; saved with a job so a resume reads the same data.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ImageSource {
    /// A hub dataset with CIFAR-10's parquet layout, one class.
    Hub {
        repo: String,
        class: u8,
        options: HubOptions,
    },
    /// A CIFAR-10 parquet file in the hub's layout, one class.
    Parquet { path: PathBuf, class: u8 },
    /// A directory with CIFAR-10's binary batches (`data_batch_1.bin` ...), one class.
    Batches { dir: PathBuf, class: u8 },
    /// Every image file of a directory (not recursive), resized to `side`.
    Folder { dir: PathBuf, side: usize },
}

impl ImageSource {
    pub fn load(&self) -> Result<ImageSet> {
        match self {
            Self::Hub {
                repo,
                class,
                options,
            } => {
                let files = hub::dataset_files(repo, &[HUB_TRAIN], options)?;
                load_parquet(&files[0], *class)
            }
            Self::Parquet { path, class } => load_parquet(path, *class),
            Self::Batches { dir, class } => load_batches(dir, *class),
            Self::Folder { dir, side } => load_folder(dir, *side),
        }
    }
}

fn check_class(class: u8) -> Result<()> {
    if class > 9 {
        return Err(Error::invalid(format!(
            "CIFAR-10 classes are 0 to 9, got {class}"
        )));
    }
    Ok(())
}

fn nonempty(set: ImageSet, what: &str) -> Result<ImageSet> {
    if set.count == 0 {
        return Err(Error::invalid(format!("{what} has no images")));
    }
    Ok(set)
}

/// The images of `class` in a hub-layout parquet file (`img` + `label` columns).
pub fn load_parquet(path: &Path, class: u8) -> Result<ImageSet> {
    check_class(class)?;
    let rows = parquet_images::read_rows(path, "img", "label")?;
    let mut pixels = Vec::new();
    let mut count = 0;
    for (i, (bytes, label)) in rows.iter().enumerate() {
        if *label != class as i64 {
            continue;
        }
        let what = format!("{} row {i}", path.display());
        let img = imageio::decode(bytes, &what).map_err(|e| Error::Corrupt(e.to_string()))?;
        if (img.width(), img.height()) != (SIDE as u32, SIDE as u32) {
            return Err(Error::Corrupt(format!(
                "{what}: a {}×{} image in a 32×32 data set",
                img.width(),
                img.height()
            )));
        }
        from_interleaved(
            &imageio::to_rgb(&img, SIDE as u32, SIDE as u32),
            SIDE,
            &mut pixels,
        );
        count += 1;
    }
    nonempty(
        ImageSet {
            pixels,
            count,
            side: SIDE,
        },
        &format!("{} (class {class})", path.display()),
    )
}

/// The images of `class` in CIFAR-10's binary training batches under `dir`.
pub fn load_batches(dir: &Path, class: u8) -> Result<ImageSet> {
    check_class(class)?;
    let files: Vec<PathBuf> = (1..=5)
        .map(|i| dir.join(format!("data_batch_{i}.bin")))
        .filter(|p| p.is_file())
        .collect();
    if files.is_empty() {
        return Err(Error::invalid(format!(
            "{} has no CIFAR-10 binary batches (data_batch_1.bin ... data_batch_5.bin)",
            dir.display()
        )));
    }
    let mut pixels = Vec::new();
    let mut count = 0;
    for f in &files {
        let bytes = std::fs::read(f)
            .map_err(|e| Error::invalid(format!("cannot read {}: {e}", f.display())))?;
        if bytes.is_empty() || bytes.len() % RECORD != 0 {
            return Err(Error::Corrupt(format!(
                "{}: {} bytes is not a whole number of {RECORD}-byte records (truncated?)",
                f.display(),
                bytes.len()
            )));
        }
        for (r, rec) in bytes.chunks(RECORD).enumerate() {
            if rec[0] > 9 {
                return Err(Error::Corrupt(format!(
                    "{}: record {r} has label {}, not 0-9",
                    f.display(),
                    rec[0]
                )));
            }
            if rec[0] == class {
                pixels.extend_from_slice(&rec[1..]);
                count += 1;
            }
        }
    }
    nonempty(
        ImageSet {
            pixels,
            count,
            side: SIDE,
        },
        &format!("{} (class {class})", dir.display()),
    )
}

/// Every readable image file in `dir`, sorted by name, resized to `side`×`side` RGB. A file
/// with an image extension that does not decode is an error naming it.
pub fn load_folder(dir: &Path, side: usize) -> Result<ImageSet> {
    if !(8..=256).contains(&side) {
        return Err(Error::invalid(format!(
            "image side must be 8 to 256, got {side}"
        )));
    }
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::invalid(format!("cannot read {}: {e}", dir.display())))?
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
    let mut pixels = Vec::with_capacity(paths.len() * 3 * side * side);
    for p in &paths {
        let bytes = std::fs::read(p)
            .map_err(|e| Error::invalid(format!("cannot read {}: {e}", p.display())))?;
        let img = imageio::decode(&bytes, &p.display().to_string())?;
        from_interleaved(
            &imageio::to_rgb(&img, side as u32, side as u32),
            side,
            &mut pixels,
        );
    }
    nonempty(
        ImageSet {
            count: paths.len(),
            pixels,
            side,
        },
        &format!("{} (PNG, JPEG or GIF files)", dir.display()),
    )
}

/// Coloured blobs on a dark background, 32×32: a tiny data set for tests, where "looking
/// like the data" is measurable (the colour statistics).
pub fn synthetic_blobs(count: usize, seed: u64) -> ImageSet {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut pixels = Vec::with_capacity(count * 3 * PLANE);
    for _ in 0..count {
        let (cx, cy) = (
            rng.random_range(8.0..24.0f32),
            rng.random_range(8.0..24.0f32),
        );
        let r = rng.random_range(4.0..9.0f32);
        // Mostly red-orange blobs: a clear colour bias for the generator to learn.
        let colour = [
            rng.random_range(180..=255u8),
            rng.random_range(60..=140u8),
            rng.random_range(0..=40u8),
        ];
        for value in colour {
            for y in 0..SIDE {
                for x in 0..SIDE {
                    let d = ((x as f32 - cx).powi(2) + (y as f32 - cy).powi(2)).sqrt();
                    pixels.push(if d < r { value } else { 10 });
                }
            }
        }
    }
    ImageSet {
        pixels,
        count,
        side: SIDE,
    }
}

/// Writes images in the hub's parquet layout (`img`, `label`), for tests and tools.
pub fn write_parquet(path: &Path, set: &ImageSet, labels: &[u8]) -> Result<()> {
    let rows = (0..set.count)
        .map(|i| {
            let png =
                imageio::encode_png(&set.interleaved(i), set.side as u32, set.side as u32, 3)?;
            Ok((png, labels[i] as i64))
        })
        .collect::<Result<Vec<_>>>()?;
    parquet_images::write_rows(path, "img", "label", &rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An image whose every pixel says where it is: no transposition goes unnoticed.
    fn asymmetric() -> ImageSet {
        let mut pixels = Vec::new();
        for c in 0..3u32 {
            for y in 0..SIDE as u32 {
                for x in 0..SIDE as u32 {
                    pixels.push(((y * 7 + x * 3 + c * 50) % 256) as u8);
                }
            }
        }
        ImageSet {
            pixels,
            count: 1,
            side: SIDE,
        }
    }

    #[test]
    fn hub_parquet_keeps_rows_and_columns_and_selects_the_class() {
        let dir = tempfile::tempdir().unwrap();
        let a = asymmetric();
        let mut two = a.clone();
        two.pixels.extend(synthetic_blobs(1, 0).pixels);
        two.count = 2;
        let path = dir.path().join("train.parquet");
        write_parquet(&path, &two, &[FROG, 3]).unwrap();
        let cache = dir.path().join("hub");
        hub::seed_cache(
            &cache,
            HUB_REPO,
            &[(HUB_TRAIN, &std::fs::read(&path).unwrap())],
        )
        .unwrap();
        let source = ImageSource::Hub {
            repo: HUB_REPO.into(),
            class: FROG,
            options: HubOptions {
                offline: true,
                cache_dir: Some(cache),
                revision: None,
            },
        };
        assert_eq!(source.load().unwrap(), a);
        let e = load_parquet(&path, 9).unwrap_err().to_string();
        assert!(e.contains("class 9") && e.contains("no images"), "{e}");
    }

    #[test]
    fn binary_batches_read_and_damage_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let a = asymmetric();
        let mut bytes = vec![FROG];
        bytes.extend_from_slice(a.image(0));
        bytes.push(2);
        bytes.extend_from_slice(&synthetic_blobs(1, 1).pixels);
        std::fs::write(dir.path().join("data_batch_1.bin"), &bytes).unwrap();
        assert_eq!(load_batches(dir.path(), FROG).unwrap(), a);
        assert_eq!(load_batches(dir.path(), 2).unwrap().count, 1);
        std::fs::write(dir.path().join("data_batch_2.bin"), &bytes[..100]).unwrap();
        let e = load_batches(dir.path(), FROG).unwrap_err().to_string();
        assert!(
            e.contains("data_batch_2.bin") && e.contains("truncated"),
            "{e}"
        );
        assert!(load_batches(&dir.path().join("none"), FROG).is_err());
        assert!(load_batches(dir.path(), 12).is_err());
    }

    #[test]
    fn folders_of_any_size_are_resized_and_bad_files_named() {
        let dir = tempfile::tempdir().unwrap();
        let px: Vec<f32> = (0..60 * 45 * 3).map(|i| (i % 5) as f32 / 4.0).collect();
        std::fs::write(
            dir.path().join("a.png"),
            imageio::encode_png(&px, 60, 45, 3).unwrap(),
        )
        .unwrap();
        std::fs::write(dir.path().join("notes.txt"), "ignored").unwrap();
        let set = load_folder(dir.path(), 32).unwrap();
        assert_eq!(
            (set.count, set.side, set.pixels.len()),
            (1, 32, 3 * 32 * 32)
        );
        std::fs::write(dir.path().join("b.jpg"), "not a jpeg").unwrap();
        let e = load_folder(dir.path(), 32).unwrap_err().to_string();
        assert!(e.contains("b.jpg"), "{e}");
        let empty = tempfile::tempdir().unwrap();
        assert!(
            load_folder(empty.path(), 32)
                .unwrap_err()
                .to_string()
                .contains("no images")
        );
    }
}
