//! The convolutional VAE (SPEC §4): training on MNIST-like digits, and the latent-space
//! requests (grid, decode, encode, concept vectors, morphs) on the resident model.

use std::sync::Arc;

use candle_core::Device;
use oneiro_models::VaeConfig;
use oneiro_models::vae::SIDE;
use oneiro_proto::v1 as pb;
use oneiro_trainer::events::EventSink;
use oneiro_trainer::imageio;
use oneiro_trainer::mnist::{Mnist, MnistSource};
use oneiro_trainer::store::ModelKind;
use oneiro_trainer::vae::infer::VaeRunner;
use oneiro_trainer::vae::{VaeTrainOptions, train_vae};
use oneiro_trainer::{ModelRecord, ModelStore};
use tracing::info_span;

use super::{ResolvedData, TrainKind, count_or, divergence_factor, ensure_kind_model, resident};
use crate::config::DaemonConfig;
use crate::error::ServiceError;
use crate::jobs::{Job, JobData, TrainPlan};
use crate::sources;
use crate::worker::{DeviceContext, Loaded, WorkerHandle};

pub struct Vae;

impl TrainKind for Vae {
    const KIND: ModelKind = ModelKind::Vae;
    type Options = VaeTrainOptions;
    type Data = Mnist;
    type Source = Option<MnistSource>;

    fn options(p: Option<&pb::TrainOptions>) -> Result<VaeTrainOptions, ServiceError> {
        let options = vae_train_options(p);
        options.validate()?;
        Ok(options)
    }

    fn data(
        req: &pb::TrainRequest,
        _: &VaeTrainOptions,
        config: &DaemonConfig,
    ) -> Result<ResolvedData<Mnist, Option<MnistSource>>, ServiceError> {
        let source = match &req.data {
            Some(pb::train_request::Data::Digits(d)) => d.source.clone(),
            _ => None,
        };
        let (source, digits) = sources::resolve_digits(source, config)?;
        let digits = Arc::new(digits);
        Ok(ResolvedData {
            kept: match source {
                None => JobData::Digits(digits.clone()),
                Some(_) => JobData::InPlan,
            },
            data: digits,
            source,
        })
    }

    fn ensure_model(
        store: &ModelStore,
        req: &pb::TrainRequest,
        _: &VaeTrainOptions,
        _: &Mnist,
    ) -> Result<ModelRecord, ServiceError> {
        let requested = match &req.create_config {
            Some(pb::train_request::CreateConfig::Vae(c)) => Some(c),
            _ => None,
        };
        ensure_kind_model(
            store,
            req,
            ModelRecord::vae_config,
            |existing| requested.map(|p| vae_config(Some(p), existing)),
            || {
                Ok(ModelRecord::new_vae(
                    &req.model,
                    vae_config(requested, &Default::default()),
                ))
            },
            |_| Ok(()),
        )
    }

    fn plan(
        options: VaeTrainOptions,
        source: Option<MnistSource>,
        record: &ModelRecord,
    ) -> (TrainPlan, u32) {
        let target = record.epochs_trained + options.epochs;
        (
            TrainPlan::Vae {
                vae: options,
                data: source,
            },
            target,
        )
    }

    fn reload(job: &Job) -> oneiro_trainer::Result<Arc<Mnist>> {
        match job.plan() {
            TrainPlan::Vae {
                data: Some(source), ..
            } => source.load().map(Arc::new),
            _ => oneiro_trainer::mnist::load_dir(&job.data_dir()).map(Arc::new),
        }
    }

    fn train(
        ctx: &mut DeviceContext,
        job: &Job,
        plan: &TrainPlan,
        digits: &Mnist,
        sink: &mut dyn EventSink,
    ) -> oneiro_trainer::Result<ModelRecord> {
        let TrainPlan::Vae { vae, .. } = plan else {
            unreachable!("dispatched by plan")
        };
        train_vae(&ctx.store, &job.model, digits, vae, &ctx.device, sink)
    }
}

pub fn vae_config(p: Option<&pb::VaeConfig>, base: &VaeConfig) -> VaeConfig {
    let Some(p) = p else { return base.clone() };
    VaeConfig {
        latent_dim: p.latent_dim.map_or(base.latent_dim, |d| d as usize),
        kl_weight: p.kl_weight.map_or(base.kl_weight, f64::from),
    }
}

pub fn vae_to_proto(c: &VaeConfig) -> pb::VaeConfig {
    pb::VaeConfig {
        latent_dim: Some(c.latent_dim as u32),
        kl_weight: Some(c.kl_weight as f32),
    }
}

pub fn vae_train_options(p: Option<&pb::TrainOptions>) -> VaeTrainOptions {
    let d = VaeTrainOptions::default();
    let Some(p) = p else { return d };
    VaeTrainOptions {
        epochs: p.epochs.unwrap_or(d.epochs),
        batch_size: count_or(p.batch_size, d.batch_size),
        learning_rate: p.learning_rate.map(f64::from),
        seed: p.seed,
        max_train_images: p.max_train_images as usize,
        max_validation_images: p.max_validation_images as usize,
        grid_size: if p.no_samples {
            0
        } else {
            count_or(p.grid_size, d.grid_size)
        },
        checkpoint_every_steps: p.checkpoint_every_steps,
        divergence_factor: divergence_factor(p.divergence_factor, d.divergence_factor),
    }
}

/// A trained VAE, ready for latent-space requests.
pub fn load(
    store: &ModelStore,
    record: &ModelRecord,
    device: &Device,
) -> Result<Loaded, ServiceError> {
    let v = VaeRunner::load(store, record, device)?;
    let bytes = v.resident_bytes();
    Ok(Loaded::new(v, bytes))
}

/// A checked VAE request: what it asks of the resident model, its uploaded images
/// already decoded to 28×28 grey (off the async threads).
pub type VaeWork<R> = Box<dyn FnOnce(&VaeRunner) -> Result<R, ServiceError> + Send>;

/// Runs `work` on the resident VAE `model`.
pub async fn call<R: Send + 'static>(
    worker: &WorkerHandle,
    model: String,
    work: VaeWork<R>,
) -> Result<R, ServiceError> {
    let span = info_span!("vae", model = %model);
    worker
        .call("VAE request", span, Some(model.clone()), move |ctx| {
            let (runner, _) = resident::<VaeRunner>(ctx, &model, ModelKind::Vae)?;
            work(&runner)
        })
        .await
}

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

// The requests' numbers are in range already (validate.rs).

pub fn grid(req: &pb::VaeGridRequest) -> Result<VaeWork<pb::Image>, ServiceError> {
    let size = req.size.unwrap_or(DEFAULT_GRID) as usize;
    Ok(Box::new(move |runner| {
        png(&runner.grid(size)?, size * SIDE)
    }))
}

pub fn decode(req: &pb::VaeDecodeRequest) -> Result<VaeWork<pb::VaeDecodeResponse>, ServiceError> {
    let points: Vec<Vec<f32>> = req.points.iter().map(|p| p.values.clone()).collect();
    Ok(Box::new(move |runner| {
        Ok(pb::VaeDecodeResponse {
            images: runner
                .decode(&points)?
                .iter()
                .map(|p| png(p, SIDE))
                .collect::<Result<_, _>>()?,
        })
    }))
}

pub fn encode(req: &pb::VaeEncodeRequest) -> Result<VaeWork<pb::VaeEncodeResponse>, ServiceError> {
    let images: Vec<Vec<f32>> = req
        .images
        .iter()
        .enumerate()
        .map(|(i, b)| digit_from_bytes(b, &format!("images[{i}]")))
        .collect::<Result<_, _>>()?;
    Ok(Box::new(move |runner| {
        Ok(pb::VaeEncodeResponse {
            codes: runner.encode(&images)?.into_iter().map(code).collect(),
        })
    }))
}

pub fn concept(
    req: &pb::VaeConceptRequest,
) -> Result<VaeWork<pb::VaeConceptResponse>, ServiceError> {
    let amount = req.amount.unwrap_or(1.0);
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
        Some(digit_from_bytes(&req.image, "image")?)
    };
    let (from, to) = (req.from_class, req.to_class);
    Ok(Box::new(move |runner| {
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
        Ok(pb::VaeConceptResponse {
            vector: Some(pb::LatentPoint { values: vector }),
            image,
            code: code_before,
        })
    }))
}

pub fn morph(req: &pb::VaeMorphRequest) -> Result<VaeWork<pb::VaeMorphResponse>, ServiceError> {
    let frames = req.frames.unwrap_or(DEFAULT_FRAMES);
    let ms = req.frame_ms.unwrap_or(DEFAULT_FRAME_MS);
    let from = digit_from_bytes(&req.from_image, "from_image")?;
    let to = digit_from_bytes(&req.to_image, "to_image")?;
    let (frames, gif_frame_ms) = (frames as usize, req.gif.then_some(ms));
    Ok(Box::new(move |runner| {
        let images = runner.morph(&from, &to, frames)?;
        let gif = match gif_frame_ms {
            Some(ms) => imageio::encode_gif(&images, SIDE as u32, SIDE as u32, 1, ms)?,
            None => vec![],
        };
        Ok(pb::VaeMorphResponse {
            frames: images
                .iter()
                .map(|p| png(p, SIDE))
                .collect::<Result<_, _>>()?,
            gif,
        })
    }))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_train_options_are_the_books() {
        let v = vae_train_options(Some(&pb::TrainOptions::default()));
        assert_eq!(v, VaeTrainOptions::default());
        assert_eq!((v.epochs, v.batch_size, v.grid_size), (10, 16, 15));
    }
}
