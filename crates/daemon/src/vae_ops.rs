//! The VAE's RPCs: requests checked and decoded on the async side ([`op_from_*`], run
//! off the async threads by the service), answered on the device worker ([`run`]).

use oneiro_models::vae::SIDE;
use oneiro_proto::v1 as pb;
use oneiro_trainer::hub::{self, HubOptions};
use oneiro_trainer::imageio;
use oneiro_trainer::mnist::{self, Mnist, MnistSource, Split};
use oneiro_trainer::vae_infer::{MAX_POINTS, VaeRunner};

use crate::config::DaemonConfig;
use crate::error::ServiceError;
use crate::worker::{VaeOp, VaeReply};

const DEFAULT_GRID: u32 = 15;
const DEFAULT_FRAMES: u32 = 16;
const DEFAULT_FRAME_MS: u32 = 100;

fn invalid(msg: String) -> ServiceError {
    ServiceError::InvalidArgument(msg)
}

/// An uploaded image as the VAE reads it: 28×28 grey levels in [0, 1].
pub fn digit_from_bytes(bytes: &[u8], what: &str) -> Result<Vec<f32>, ServiceError> {
    if bytes.is_empty() {
        return Err(invalid(format!("{what} is empty")));
    }
    let img = imageio::decode(bytes, what)?;
    Ok(imageio::to_grey_square(&img, SIDE as u32))
}

pub fn op_from_grid(req: &pb::VaeGridRequest) -> Result<VaeOp, ServiceError> {
    let size = if req.size == 0 {
        DEFAULT_GRID
    } else {
        req.size
    };
    if size > 64 {
        return Err(invalid(format!("grid size must be 1 to 64, got {size}")));
    }
    Ok(VaeOp::Grid {
        size: size as usize,
    })
}

pub fn op_from_decode(req: &pb::VaeDecodeRequest) -> Result<VaeOp, ServiceError> {
    if req.points.is_empty() || req.points.len() > MAX_POINTS {
        return Err(invalid(format!(
            "give 1 to {MAX_POINTS} latent points, not {}",
            req.points.len()
        )));
    }
    Ok(VaeOp::Decode {
        points: req.points.iter().map(|p| p.values.clone()).collect(),
    })
}

pub fn op_from_encode(req: &pb::VaeEncodeRequest) -> Result<VaeOp, ServiceError> {
    if req.images.is_empty() || req.images.len() > MAX_POINTS {
        return Err(invalid(format!(
            "give 1 to {MAX_POINTS} images, not {}",
            req.images.len()
        )));
    }
    let images = req
        .images
        .iter()
        .enumerate()
        .map(|(i, b)| digit_from_bytes(b, &format!("image {i}")))
        .collect::<Result<_, _>>()?;
    Ok(VaeOp::Encode { images })
}

pub fn op_from_concept(req: &pb::VaeConceptRequest) -> Result<VaeOp, ServiceError> {
    let amount = req.amount.unwrap_or(1.0);
    if !amount.is_finite() {
        return Err(invalid(format!("amount must be finite, got {amount}")));
    }
    let vector = req.vector.as_ref().map(|v| v.values.clone());
    if vector.is_none() && req.from_class == req.to_class {
        return Err(invalid(format!(
            "from and to are the same class ({}): the concept vector would be zero",
            req.from_class
        )));
    }
    let image = if req.image.is_empty() {
        None
    } else {
        Some(digit_from_bytes(&req.image, "the image")?)
    };
    Ok(VaeOp::Concept {
        from: req.from_class,
        to: req.to_class,
        vector,
        amount,
        image,
    })
}

pub fn op_from_morph(req: &pb::VaeMorphRequest) -> Result<VaeOp, ServiceError> {
    let frames = if req.frames == 0 {
        DEFAULT_FRAMES
    } else {
        req.frames
    };
    if !(2..=256).contains(&frames) {
        return Err(invalid(format!("frames must be 2 to 256, got {frames}")));
    }
    let ms = if req.frame_ms == 0 {
        DEFAULT_FRAME_MS
    } else {
        req.frame_ms
    };
    Ok(VaeOp::Morph {
        from: digit_from_bytes(&req.from_image, "the first image")?,
        to: digit_from_bytes(&req.to_image, "the second image")?,
        frames: frames as usize,
        gif_frame_ms: req.gif.then_some(ms),
    })
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
            let dir = crate::service::server_path(root, &p, "data directory")?;
            let s = MnistSource::Dir(dir);
            let data = s.load()?;
            Ok((Some(s), data))
        }
        Some(Source::Inline(d)) => {
            let split = |images: &[u8], labels: &[u8], what: &str| -> Result<Split, ServiceError> {
                let px = SIDE * SIDE;
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
                    rows: SIDE,
                    cols: SIDE,
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

fn png(pixels: &[f32], side: usize) -> Result<pb::Image, ServiceError> {
    Ok(pb::Image {
        png: imageio::encode_png(pixels, side as u32, side as u32, 1)?,
        width: side as u32,
        height: side as u32,
    })
}

fn code((mean, log_var): (Vec<f32>, Vec<f32>)) -> pb::LatentCode {
    pb::LatentCode { mean, log_var }
}

/// Answers `op` with the resident model.
pub fn run(runner: &VaeRunner, op: VaeOp) -> Result<VaeReply, ServiceError> {
    Ok(match op {
        VaeOp::Grid { size } => VaeReply::Grid(png(&runner.grid(size)?, size * SIDE)?),
        VaeOp::Decode { points } => VaeReply::Decode(pb::VaeDecodeResponse {
            images: runner
                .decode(&points)?
                .iter()
                .map(|p| png(p, SIDE))
                .collect::<Result<_, _>>()?,
        }),
        VaeOp::Encode { images } => VaeReply::Encode(pb::VaeEncodeResponse {
            codes: runner.encode(&images)?.into_iter().map(code).collect(),
        }),
        VaeOp::Concept {
            from,
            to,
            vector,
            amount,
            image,
        } => {
            let vector = match vector {
                Some(v) => v,
                None => runner.concept_vector(from, to)?,
            };
            let (image, code_before) = match image {
                Some(img) => {
                    let before = runner.encode(std::slice::from_ref(&img))?.remove(0);
                    let edited = runner.move_code(&before.0, &vector, amount)?;
                    (Some(png(&edited, SIDE)?), Some(code(before)))
                }
                None => (None, None),
            };
            VaeReply::Concept(pb::VaeConceptResponse {
                vector: Some(pb::LatentPoint { values: vector }),
                image,
                code: code_before,
            })
        }
        VaeOp::Morph {
            from,
            to,
            frames,
            gif_frame_ms,
        } => {
            let images = runner.morph(&from, &to, frames)?;
            let gif = match gif_frame_ms {
                Some(ms) => imageio::encode_gif(&images, SIDE as u32, SIDE as u32, 1, ms)?,
                None => vec![],
            };
            VaeReply::Morph(pb::VaeMorphResponse {
                frames: images
                    .iter()
                    .map(|p| png(p, SIDE))
                    .collect::<Result<_, _>>()?,
                gif,
            })
        }
    })
}
