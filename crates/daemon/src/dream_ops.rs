//! DeepDream requests: checked and prepared on the async side (image decoding, weights
//! resolution, which may download), run on the device worker, streamed back.

use oneiro_models::Preprocessing;
use oneiro_proto::v1 as pb;
use oneiro_trainer::backbones::{self, Network, ResolvedWeights, WeightsSpec};
use oneiro_trainer::dream::{DreamOptions, Planes, random_layers};
use oneiro_trainer::imageio;

use crate::config::DaemonConfig;
use crate::error::ServiceError;

/// A dream ready for the device.
pub struct DreamPlan {
    pub image: Planes,
    pub options: DreamOptions,
    pub weights: ResolvedWeights,
}

fn invalid(msg: String) -> ServiceError {
    ServiceError::InvalidArgument(msg)
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
            WeightsSpec::File(crate::service::server_path(root, &p, "weights file")?)
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

/// Checks a request and prepares everything but the network (blocking).
pub fn plan(req: pb::DreamRequest, config: &DaemonConfig) -> Result<DreamPlan, ServiceError> {
    let defaults = DreamOptions::default();
    let layers = match (req.random_layers_seed, req.layers.is_empty()) {
        (Some(_), false) => {
            return Err(invalid(
                "give either layers or random_layers_seed, not both".into(),
            ));
        }
        (Some(seed), true) => random_layers(seed),
        (None, true) => defaults.layers.clone(),
        (None, false) => req
            .layers
            .iter()
            .map(|l| (l.name.clone(), l.weight))
            .collect(),
    };
    let options = DreamOptions {
        layers,
        step: req.step.unwrap_or(defaults.step),
        iterations: req.iterations.map_or(defaults.iterations, |i| i as usize),
        max_loss: req.max_loss.unwrap_or(defaults.max_loss),
        octaves: req.octaves.map_or(defaults.octaves, |o| o as usize),
        octave_scale: req.octave_scale.unwrap_or(defaults.octave_scale),
    };
    options.validate()?;
    let img = decode_image(&req.image, "image", config)?;
    let (w, h) = (img.width(), img.height());
    let image = Planes::from_rgb01(&imageio::to_rgb(&img, w, h), w as usize, h as usize);
    let weights = resolve_weights(Network::InceptionV3, req.weights, config)?;
    Ok(DreamPlan {
        image,
        options,
        weights,
    })
}

/// An image for the wire.
pub fn png(p: &Planes) -> Result<pb::Image, ServiceError> {
    Ok(pb::Image {
        png: imageio::encode_png(&p.to_rgb01(), p.width as u32, p.height as u32, 3)?,
        width: p.width as u32,
        height: p.height as u32,
    })
}
