//! Where a request's inputs come from: corpora and data directories under the daemon's
//! `--corpus-root`, weights files under `--weights-root`, hub datasets and weights,
//! and uploaded images (checked against the size limit). Everything here is blocking
//! (file reads, hub downloads) and runs off the async threads.

use std::path::{Path, PathBuf};

use oneiro_models::Preprocessing;
use oneiro_models::vae::SIDE as DIGIT_SIDE;
use oneiro_proto::v1 as pb;
use oneiro_trainer::cifar::{self, ImageSet, ImageSource};
use oneiro_trainer::hub::{self, HubOptions};
use oneiro_trainer::imageio;
use oneiro_trainer::mnist::{self, Mnist, MnistSource, Split};
use oneiro_trainer::vision::backbones::{self, Network, ResolvedWeights, WeightsSpec};

use crate::config::DaemonConfig;
use crate::error::ServiceError;

fn invalid(msg: String) -> ServiceError {
    ServiceError::InvalidArgument(msg)
}

/// The corpus a text training sends or names, at most `--max-corpus-mib`.
pub fn read_corpus(req: &pb::TrainRequest, config: &DaemonConfig) -> Result<String, ServiceError> {
    let source = match &req.data {
        Some(pb::train_request::Data::Text(c)) => c.source.as_ref(),
        Some(pb::train_request::Data::Digits(_) | pb::train_request::Data::Images(_)) | None => {
            None
        }
    };
    let max = config.max_corpus_bytes;
    let text = match source {
        Some(pb::text_corpus::Source::Text(t)) => t.clone(),
        Some(pb::text_corpus::Source::ServerPath(p)) => {
            let Some(root) = &config.corpus_root else {
                return Err(invalid(
                    "reading corpora from the daemon's disk is off; start oneirod with --corpus-root DIR".into(),
                ));
            };
            read_server_corpus(root, p, max)?
        }
        None => {
            return Err(invalid(
                "the request has no corpus: send text or a server path".into(),
            ));
        }
    };
    if text.len() > max {
        return Err(invalid(format!(
            "the corpus has {} bytes, over the limit of {max}",
            text.len()
        )));
    }
    Ok(text)
}

/// A corpus from the daemon's disk: only a regular file under `root` (after resolving
/// links and `..`), at most `max` bytes, UTF-8. Paths are relative to `root`.
fn read_server_corpus(root: &Path, p: &str, max: usize) -> Result<String, ServiceError> {
    use std::io::Read;
    let invalid = ServiceError::InvalidArgument;
    let path = server_path(root, p, "corpus")?;
    if !path.is_file() {
        return Err(invalid(format!("corpus {p:?} is not a regular file")));
    }
    let mut bytes = Vec::new();
    std::fs::File::open(&path)
        .and_then(|f| f.take(max as u64 + 1).read_to_end(&mut bytes))
        .map_err(|e| invalid(format!("cannot read corpus {p:?}: {e}")))?;
    if bytes.len() > max {
        return Err(invalid(format!(
            "corpus {p:?} is over the limit of {max} bytes"
        )));
    }
    String::from_utf8(bytes).map_err(|e| {
        invalid(format!(
            "corpus {p:?} is not UTF-8 text (invalid byte at offset {})",
            e.utf8_error().valid_up_to()
        ))
    })
}

/// A path on the daemon's disk named by a request: only under `root` (after resolving
/// links and `..`). `what` names it in errors ("corpus", "data directory").
pub fn server_path(root: &Path, p: &str, what: &str) -> Result<PathBuf, ServiceError> {
    let invalid = ServiceError::InvalidArgument;
    let root = root.canonicalize().map_err(|e| {
        invalid(format!(
            "the corpus root {} is unusable: {e}",
            root.display()
        ))
    })?;
    let path = root
        .join(p)
        .canonicalize()
        .map_err(|e| invalid(format!("cannot read {what} {p:?}: {e}")))?;
    if !path.starts_with(&root) {
        return Err(invalid(format!(
            "{what} {p:?} is outside the directory the daemon serves such files from"
        )));
    }
    Ok(path)
}

/// Decodes an uploaded image and checks it against the size limit.
pub fn decode_image(
    bytes: &[u8],
    what: &str,
    config: &DaemonConfig,
) -> Result<image::DynamicImage, ServiceError> {
    if bytes.is_empty() {
        return Err(invalid(format!("{what}: no image was sent")));
    }
    let img = imageio::decode(bytes, what)?;
    let (w, h) = (img.width(), img.height());
    let max = config.max_image_pixels;
    if w as u64 * h as u64 > max {
        return Err(invalid(format!(
            "{what}: {w}x{h} is {} pixels, more than this daemon's limit of {max} (--max-image-pixels); downscale it first",
            w as u64 * h as u64
        )));
    }
    Ok(img)
}

/// The weights a request names, resolved (blocking: may download from the hub).
pub fn resolve_weights(
    network: Network,
    w: Option<pb::BackboneWeights>,
    config: &DaemonConfig,
) -> Result<ResolvedWeights, ServiceError> {
    use pb::backbone_weights::Source;
    let w = w.unwrap_or_default();
    let preprocessing = match w.preprocessing.trim() {
        "" => None,
        p => Some(Preprocessing::parse(p).ok_or_else(|| {
            invalid(format!(
                "unknown preprocessing {p:?}: inception, imagenet or caffe"
            ))
        })?),
    };
    let spec = match w.source {
        None => WeightsSpec::Hub(None),
        Some(Source::HubRepo(r)) if r.trim().is_empty() => WeightsSpec::Hub(None),
        Some(Source::HubRepo(r)) => WeightsSpec::Hub(Some(r.trim().to_string())),
        Some(Source::ServerFile(p)) => {
            let Some(root) = &config.weights_root else {
                return Err(invalid(
                    "this daemon reads no weights files (start it with --weights-root DIR)".into(),
                ));
            };
            WeightsSpec::File(server_path(root, &p, "weights file")?)
        }
        Some(Source::RandomSeed(s)) => WeightsSpec::Random(s),
    };
    Ok(backbones::resolve(
        network,
        &spec,
        preprocessing,
        &config.hub,
    )?)
}

/// The digits a VAE training asks for, loaded (so that bad data fails the request, not
/// the job), and the source a resumed job reloads them from (`None`: they came inline and
/// are saved with the job). Blocking: may download from the hub.
pub fn resolve_digits(
    source: Option<pb::digit_data::Source>,
    config: &DaemonConfig,
) -> Result<(Option<MnistSource>, Mnist), ServiceError> {
    use pb::digit_data::Source;
    let hub_source = |h: pb::HubDataset| -> Result<MnistSource, ServiceError> {
        let repo = if h.repo.is_empty() {
            mnist::HUB_REPO.to_string()
        } else {
            h.repo
        };
        let options = HubOptions {
            offline: config.hub.offline || h.offline,
            cache_dir: config.hub.cache_dir.clone(),
            revision: (!h.revision.is_empty()).then_some(h.revision),
        };
        // Fetched now; the job keeps the cached files' paths.
        let files = hub::dataset_files(&repo, &mnist::HUB_FILES, &options)?;
        Ok(MnistSource::Parquet {
            train: files[0].clone(),
            test: files[1].clone(),
        })
    };
    match source {
        None => {
            let s = hub_source(pb::HubDataset::default())?;
            let data = s.load()?;
            Ok((Some(s), data))
        }
        Some(Source::Hub(h)) => {
            let s = hub_source(h)?;
            let data = s.load()?;
            Ok((Some(s), data))
        }
        Some(Source::ServerDir(p)) => {
            let Some(root) = &config.corpus_root else {
                return Err(invalid(
                    "reading data from the daemon's disk is off; start oneirod with --corpus-root DIR"
                        .into(),
                ));
            };
            let dir = server_path(root, &p, "data directory")?;
            let s = MnistSource::Dir(dir);
            let data = s.load()?;
            Ok((Some(s), data))
        }
        Some(Source::Inline(d)) => {
            let split = |images: &[u8], labels: &[u8], what: &str| -> Result<Split, ServiceError> {
                let px = DIGIT_SIDE * DIGIT_SIDE;
                if !images.len().is_multiple_of(px) || images.len() / px != labels.len() {
                    return Err(invalid(format!(
                        "{what}: {} image bytes and {} labels do not make 28×28 images with one label each",
                        images.len(),
                        labels.len()
                    )));
                }
                if let Some(bad) = labels.iter().find(|&&l| l > 9) {
                    return Err(invalid(format!("{what}: label {bad} is not a digit")));
                }
                Ok(Split {
                    images: images.to_vec(),
                    labels: labels.to_vec(),
                    count: labels.len(),
                    rows: DIGIT_SIDE,
                    cols: DIGIT_SIDE,
                })
            };
            let data = Mnist {
                train: split(&d.train_images, &d.train_labels, "training digits")?,
                test: split(&d.test_images, &d.test_labels, "test digits")?,
            };
            if data.train.count == 0 {
                return Err(invalid("the training digits are empty".into()));
            }
            Ok((None, data))
        }
    }
}

/// The images a GAN training asks for, loaded and checked; the source a resumed job
/// reloads them from (`None`: they came inline, and the encoded files are returned to be
/// saved with the job). Blocking: may download from the hub.
#[allow(clippy::type_complexity)]
pub fn resolve_images(
    data: Option<pb::ImageData>,
    config: &DaemonConfig,
) -> Result<(Option<ImageSource>, ImageSet, Option<Vec<Vec<u8>>>), ServiceError> {
    use pb::image_data::Source;
    let data = data.unwrap_or_default();
    let class = data.class_label.unwrap_or(cifar::FROG as u32);
    if class > 9 {
        return Err(invalid(format!("CIFAR-10 classes are 0 to 9, got {class}")));
    }
    let class = class as u8;
    let loaded = |s: ImageSource| -> Result<_, ServiceError> {
        let set = s.load()?;
        Ok((Some(s), set, None))
    };
    match data.source {
        None => loaded(ImageSource::Hub {
            repo: cifar::HUB_REPO.into(),
            class,
            options: config.hub.clone(),
        }),
        Some(Source::Hub(h)) => loaded(ImageSource::Hub {
            repo: if h.repo.is_empty() {
                cifar::HUB_REPO.into()
            } else {
                h.repo
            },
            class,
            options: HubOptions {
                offline: config.hub.offline || h.offline,
                cache_dir: config.hub.cache_dir.clone(),
                revision: (!h.revision.is_empty()).then_some(h.revision),
            },
        }),
        Some(Source::ServerDir(p)) => {
            let Some(root) = &config.corpus_root else {
                return Err(invalid(
                    "reading data from the daemon's disk is off; start oneirod with --corpus-root DIR"
                        .into(),
                ));
            };
            let dir = server_path(root, &p, "data directory")?;
            if dir.join("data_batch_1.bin").is_file() {
                loaded(ImageSource::Batches { dir, class })
            } else {
                loaded(ImageSource::Folder {
                    dir,
                    side: cifar::SIDE,
                })
            }
        }
        Some(Source::Inline(i)) => {
            if i.images.is_empty() {
                return Err(invalid("the request's image list is empty".into()));
            }
            let mut pixels = Vec::with_capacity(i.images.len() * 3 * cifar::SIDE * cifar::SIDE);
            for (n, bytes) in i.images.iter().enumerate() {
                let what = match i.names.get(n) {
                    Some(name) => format!("images.inline.images[{n}] ({name})"),
                    None => format!("images.inline.images[{n}]"),
                };
                let img = imageio::decode(bytes, &what)?;
                let rgb = imageio::to_rgb(&img, cifar::SIDE as u32, cifar::SIDE as u32);
                let plane = cifar::SIDE * cifar::SIDE;
                for c in 0..3 {
                    pixels.extend((0..plane).map(|p| (rgb[p * 3 + c] * 255.0).round() as u8));
                }
            }
            let set = ImageSet {
                pixels,
                count: i.images.len(),
                side: cifar::SIDE,
            };
            Ok((None, set, Some(i.images)))
        }
    }
}
