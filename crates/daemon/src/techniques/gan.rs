//! The DCGAN (SPEC §5): training on CIFAR-10 frogs or any pictures, by steps, and sample
//! grids from the resident generator.

use std::sync::Arc;

use candle_core::{Device, Tensor};
use oneiro_models::{Dcgan, GanConfig};
use oneiro_proto::v1 as pb;
use oneiro_trainer::cifar::{self, ImageSet, ImageSource};
use oneiro_trainer::events::EventSink;
use oneiro_trainer::gan::{GanTrainOptions, grid_png, latents, train_gan};
use oneiro_trainer::store::ModelKind;
use oneiro_trainer::{ModelRecord, ModelStore};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tracing::info_span;

use super::{ResolvedData, TrainKind, count_or, ensure_kind_model, resident};
use crate::config::DaemonConfig;
use crate::error::ServiceError;
use crate::jobs::{Job, JobData, TrainPlan};
use crate::sources;
use crate::worker::{DeviceContext, Loaded, WorkerHandle};

const DEFAULT_COUNT: usize = 64;
/// Images generated per forward pass.
const CHUNK: usize = 64;

fn invalid(msg: String) -> ServiceError {
    ServiceError::InvalidArgument(msg)
}

pub struct Gan;

impl TrainKind for Gan {
    const KIND: ModelKind = ModelKind::Gan;
    type Options = GanTrainOptions;
    type Data = ImageSet;
    type Source = Option<ImageSource>;

    fn options(p: Option<&pb::TrainOptions>) -> Result<GanTrainOptions, ServiceError> {
        let options = gan_train_options(p);
        options.validate()?;
        Ok(options)
    }

    fn data(
        req: &pb::TrainRequest,
        _: &GanTrainOptions,
        config: &DaemonConfig,
    ) -> Result<ResolvedData<ImageSet, Option<ImageSource>>, ServiceError> {
        let data = match &req.data {
            Some(pb::train_request::Data::Images(d)) => Some(d.clone()),
            _ => None,
        };
        let (source, images, inline) = sources::resolve_images(data, config)?;
        Ok(ResolvedData {
            data: Arc::new(images),
            source,
            kept: match inline {
                Some(files) => JobData::Images(files),
                None => JobData::InPlan,
            },
        })
    }

    fn ensure_model(
        store: &ModelStore,
        req: &pb::TrainRequest,
        _: &GanTrainOptions,
        _: &ImageSet,
    ) -> Result<ModelRecord, ServiceError> {
        let requested = match &req.create_config {
            Some(pb::train_request::CreateConfig::Gan(c)) => Some(c),
            _ => None,
        };
        ensure_kind_model(
            store,
            req,
            ModelRecord::gan_config,
            |existing| requested.map(|p| gan_config(Some(p), existing)),
            || {
                Ok(ModelRecord::new_gan(
                    &req.model,
                    gan_config(requested, &Default::default()),
                ))
            },
            |_| Ok(()),
        )
    }

    /// GAN progress is counted in steps.
    fn plan(
        options: GanTrainOptions,
        source: Option<ImageSource>,
        record: &ModelRecord,
    ) -> (TrainPlan, u32) {
        let target = record.progress_units() + options.steps;
        (
            TrainPlan::Gan {
                gan: options,
                images: source,
            },
            target,
        )
    }

    fn reload(job: &Job) -> oneiro_trainer::Result<Arc<ImageSet>> {
        match job.plan() {
            TrainPlan::Gan {
                images: Some(source),
                ..
            } => source.load().map(Arc::new),
            _ => cifar::load_folder(&job.images_dir(), cifar::SIDE).map(Arc::new),
        }
    }

    fn train(
        ctx: &mut DeviceContext,
        job: &Job,
        plan: &TrainPlan,
        images: &ImageSet,
        sink: &mut dyn EventSink,
    ) -> oneiro_trainer::Result<ModelRecord> {
        let TrainPlan::Gan { gan, .. } = plan else {
            unreachable!("dispatched by plan")
        };
        train_gan(&ctx.store, &job.model, images, gan, &ctx.device, sink)
    }
}

pub fn gan_config(p: Option<&pb::GanConfig>, base: &GanConfig) -> GanConfig {
    let Some(p) = p else { return base.clone() };
    GanConfig {
        latent_dim: count_or(p.latent_dim, base.latent_dim),
        dropout: p.dropout.map_or(base.dropout, f64::from),
        leaky_slope: p.leaky_slope.map_or(base.leaky_slope, f64::from),
        generator_seed_channels: count_or(p.generator_seed_channels, base.generator_seed_channels),
        generator_channels: count_or(p.generator_channels, base.generator_channels),
        discriminator_channels: count_or(p.discriminator_channels, base.discriminator_channels),
    }
}

pub fn gan_to_proto(c: &GanConfig) -> pb::GanConfig {
    pb::GanConfig {
        latent_dim: Some(c.latent_dim as u32),
        dropout: Some(c.dropout as f32),
        leaky_slope: Some(c.leaky_slope as f32),
        generator_seed_channels: Some(c.generator_seed_channels as u32),
        generator_channels: Some(c.generator_channels as u32),
        discriminator_channels: Some(c.discriminator_channels as u32),
    }
}

pub fn gan_train_options(p: Option<&pb::TrainOptions>) -> GanTrainOptions {
    let d = GanTrainOptions::default();
    let Some(p) = p else { return d };
    GanTrainOptions {
        steps: p.steps.unwrap_or(d.steps),
        batch_size: count_or(p.batch_size, d.batch_size),
        discriminator_lr: p.discriminator_lr.map_or(d.discriminator_lr, f64::from),
        generator_lr: p.generator_lr.map_or(d.generator_lr, f64::from),
        clip_value: p.clip_value.map_or(d.clip_value, |c| f64::from(c).max(0.0)),
        decay: p.decay.unwrap_or(d.decay),
        seed: p.seed,
        sample_every: p.sample_every.unwrap_or(d.sample_every),
        sample_count: count_or(p.sample_count, d.sample_count),
    }
}

/// A trained GAN, ready to sample.
pub fn load(
    store: &ModelStore,
    record: &ModelRecord,
    device: &Device,
) -> Result<Loaded, ServiceError> {
    let cfg = record.gan_config()?.clone();
    let (weights, _) = store.load_checkpoint(record, device)?;
    let g = Dcgan::from_tensors(cfg, &weights, device)
        .map_err(|e| oneiro_trainer::Error::Corrupt(format!("model {:?}: {e}", record.name)))?;
    let bytes = g.parameter_count() as u64 * 4;
    Ok(Loaded::new(g, bytes))
}

/// A sample grid from the resident GAN the request names.
pub async fn sample_on(
    worker: &WorkerHandle,
    request: pb::GanSampleRequest,
) -> Result<pb::Image, ServiceError> {
    oneiro_trainer::store::validate_name(&request.model)?;
    let span = info_span!("gan_sample", model = %request.model);
    let model = request.model.clone();
    worker
        .call("GAN sample", span, Some(model.clone()), move |ctx| {
            let (gan, _) = resident::<Dcgan>(ctx, &model, ModelKind::Gan)?;
            sample(&gan, &request, &ctx.device)
        })
        .await
}

/// A PNG grid of images generated from `req`'s latents, or `count` seeded random ones.
pub fn sample(
    model: &Dcgan,
    req: &pb::GanSampleRequest,
    dev: &Device,
) -> Result<pb::Image, ServiceError> {
    let dim = model.config.latent_dim;
    let z = if req.latents.is_empty() {
        // In range: checked with the request (validate.rs).
        let count = req.count.map_or(DEFAULT_COUNT, |c| c as usize);
        let mut rng = match req.seed {
            Some(s) => ChaCha8Rng::seed_from_u64(s),
            None => ChaCha8Rng::from_os_rng(),
        };
        latents(&mut rng, count, dim, dev)?
    } else {
        let mut flat = Vec::with_capacity(req.latents.len() * dim);
        for (i, p) in req.latents.iter().enumerate() {
            if p.values.len() != dim {
                return Err(invalid(format!(
                    "latent point {i} has {} coordinates; this model's latent space has {dim}",
                    p.values.len()
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
