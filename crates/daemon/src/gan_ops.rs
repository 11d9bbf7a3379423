//! The GAN's data resolution (async side, blocking) and its sample RPC (device worker).

use candle_core::{Device, Tensor};
use oneiro_models::Dcgan;
use oneiro_proto::v1 as pb;
use oneiro_trainer::cifar::{self, ImageSet, ImageSource};
use oneiro_trainer::gan_train::{grid_png, latents};
use oneiro_trainer::hub::HubOptions;
use oneiro_trainer::imageio;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::config::DaemonConfig;
use crate::error::ServiceError;

const DEFAULT_COUNT: usize = 64;
const MAX_COUNT: usize = 1024;
/// Images generated per forward pass.
const CHUNK: usize = 64;

fn invalid(msg: String) -> ServiceError {
    ServiceError::InvalidArgument(msg)
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
            let dir = crate::service::server_path(root, &p, "data directory")?;
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
                let img = imageio::decode(bytes, &format!("image {n}"))?;
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

/// A PNG grid of images generated from `req`'s latents, or `count` seeded random ones.
pub fn sample(
    model: &Dcgan,
    req: &pb::GanSampleRequest,
    dev: &Device,
) -> Result<pb::Image, ServiceError> {
    let dim = model.config.latent_dim;
    let z = if req.latents.is_empty() {
        let count = if req.count == 0 {
            DEFAULT_COUNT
        } else {
            req.count as usize
        };
        if count > MAX_COUNT {
            return Err(invalid(format!(
                "count must be 1 to {MAX_COUNT}, got {count}"
            )));
        }
        let mut rng = match req.seed {
            Some(s) => ChaCha8Rng::seed_from_u64(s),
            None => ChaCha8Rng::from_os_rng(),
        };
        latents(&mut rng, count, dim, dev)?
    } else {
        if req.latents.len() > MAX_COUNT {
            return Err(invalid(format!(
                "give at most {MAX_COUNT} latent points, not {}",
                req.latents.len()
            )));
        }
        let mut flat = Vec::with_capacity(req.latents.len() * dim);
        for (i, p) in req.latents.iter().enumerate() {
            if p.values.len() != dim {
                return Err(invalid(format!(
                    "latent point {i} has {} coordinates; this model's latent space has {dim}",
                    p.values.len()
                )));
            }
            if p.values.iter().any(|v| !v.is_finite()) {
                return Err(invalid(format!(
                    "latent point {i} has a non-finite coordinate"
                )));
            }
            flat.extend_from_slice(&p.values);
        }
        Tensor::from_vec(flat, (req.latents.len(), dim), dev)
            .map_err(oneiro_trainer::Error::from)?
    };
    let n = z.dim(0).map_err(oneiro_trainer::Error::from)?;
    let mut parts = Vec::new();
    for start in (0..n).step_by(CHUNK) {
        let len = CHUNK.min(n - start);
        let zc = z
            .narrow(0, start, len)
            .map_err(oneiro_trainer::Error::from)?;
        parts.push(model.generate(&zc).map_err(oneiro_trainer::Error::from)?);
    }
    let images = Tensor::cat(&parts, 0).map_err(oneiro_trainer::Error::from)?;
    let png = grid_png(&images)?;
    let cols = (n as f64).sqrt().ceil() as u32;
    let rows = n.div_ceil(cols as usize) as u32;
    Ok(pb::Image {
        png,
        width: cols * 32,
        height: rows * 32,
    })
}
