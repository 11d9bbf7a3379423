//! Adversarial training of the DCGAN (SPEC §5): per step, a discriminator update on
//! generated (label 1) and real (label 0) images with `0.5·U(0, 1)` noise on every label,
//! then a generator update through the frozen discriminator with targets 0; real images
//! walked in order with wrap-around; both optimizers Keras RMSprop with `clipvalue` and
//! time decay. Every `sample_every` steps: both losses and learning rates, a PNG of
//! generated samples and one real image, a checkpoint.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use oneiro_models::Dcgan;
use oneiro_models::dcgan::bce_with_logits;
use oneiro_tensor_ops::{RmsProp, RmsPropConfig};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

use crate::cifar::ImageSet;
use crate::events::{EventSink, TrainEvent};
use crate::store::{
    GanPoint, ModelRecord, ModelStore, OptimizerRecord, optimizer_tensors, restore_optimizer,
};
use crate::text_train::device_name;
use crate::{Error, Result, imageio};

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GanTrainOptions {
    /// Steps to run in this request.
    pub steps: u32,
    pub batch_size: usize,
    pub discriminator_lr: f64,
    pub generator_lr: f64,
    /// Keras `clipvalue` of both optimizers (0: none).
    pub clip_value: f64,
    /// Keras time decay of both learning rates.
    pub decay: f64,
    /// `None`: the model's saved seed, else a random one.
    pub seed: Option<u64>,
    /// Report, picture and checkpoint every this many steps.
    pub sample_every: u32,
    /// Generated images in each picture (a square grid).
    pub sample_count: usize,
}

impl Default for GanTrainOptions {
    fn default() -> Self {
        Self {
            steps: 10_000,
            batch_size: 20,
            discriminator_lr: 0.0008,
            generator_lr: 0.0004,
            clip_value: 1.0,
            decay: 1e-8,
            seed: None,
            sample_every: 100,
            sample_count: 16,
        }
    }
}

impl GanTrainOptions {
    pub fn validate(&self) -> Result<()> {
        if self.steps == 0 || self.steps > 10_000_000 {
            return Err(Error::invalid(format!(
                "steps must be between 1 and 10000000, got {}",
                self.steps
            )));
        }
        if self.batch_size == 0 || self.batch_size > 1024 {
            return Err(Error::invalid(format!(
                "batch size must be between 1 and 1024, got {}",
                self.batch_size
            )));
        }
        for (what, lr) in [
            ("discriminator", self.discriminator_lr),
            ("generator", self.generator_lr),
        ] {
            if !(lr.is_finite() && lr > 0.0) {
                return Err(Error::invalid(format!(
                    "the {what} learning rate must be a finite number > 0, got {lr}"
                )));
            }
        }
        if !(self.clip_value.is_finite() && self.clip_value >= 0.0) {
            return Err(Error::invalid(format!(
                "clip value must be >= 0 (0: none), got {}",
                self.clip_value
            )));
        }
        if !(self.decay.is_finite() && self.decay >= 0.0) {
            return Err(Error::invalid(format!(
                "decay must be >= 0, got {}",
                self.decay
            )));
        }
        if self.sample_every == 0 {
            return Err(Error::invalid("sample_every must be at least 1"));
        }
        if self.sample_count == 0 || self.sample_count > 256 {
            return Err(Error::invalid(format!(
                "sample count must be 1 to 256, got {}",
                self.sample_count
            )));
        }
        Ok(())
    }

    pub fn optimizer(&self, lr: f64) -> RmsPropConfig {
        RmsPropConfig {
            learning_rate: lr,
            clip_value: (self.clip_value > 0.0).then_some(self.clip_value),
            decay: self.decay,
            ..Default::default()
        }
    }
}

/// A stream of its own per (step, purpose): a resumed run draws what an uninterrupted
/// one would have.
fn step_rng(seed: u64, step: u64, purpose: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream((step << 8) | purpose);
    rng
}

pub fn latents(rng: &mut impl Rng, n: usize, dim: usize, dev: &Device) -> Result<Tensor> {
    let v: Vec<f32> = (0..n * dim).map(|_| rng.sample(StandardNormal)).collect();
    Ok(Tensor::from_vec(v, (n, dim), dev)?)
}

/// Real images `start..start+n` (wrapping) as (n, 3, 32, 32) pixels / 255 (the book's
/// scaling, although the generator's tanh spans [-1, 1]).
fn real_batch(data: &ImageSet, start: usize, n: usize, dev: &Device) -> Result<Tensor> {
    let per = 3 * data.side * data.side;
    let mut px = Vec::with_capacity(n * per);
    for i in 0..n {
        px.extend(
            data.image((start + i) % data.count)
                .iter()
                .map(|&p| p as f32 / 255.0),
        );
    }
    Ok(Tensor::from_vec(px, (n, 3, data.side, data.side), dev)?)
}

/// A square grid PNG of images on the real data's scale, [0, 1] (values outside are
/// clipped). Generated images go in as they are: the book trains against pixels / 255, so
/// the generator learns to produce that scale with its tanh, and the book saves its
/// output ×255 the same way.
pub fn grid_png(images: &Tensor) -> Result<Vec<u8>> {
    let (n, _, side, _) = images.dims4()?;
    let cols = (n as f64).sqrt().ceil() as usize;
    let rows = n.div_ceil(cols);
    let hwc = images
        .permute((0, 2, 3, 1))?
        .clamp(0f32, 1f32)?
        .flatten_from(1)?
        .to_dtype(DType::F32)?
        .to_vec2::<f32>()?;
    let mosaic = imageio::tile(&hwc, rows, cols, side, 3);
    imageio::encode_png(&mosaic, (cols * side) as u32, (rows * side) as u32, 3)
}

/// What one adversarial step measured.
pub struct StepLosses {
    pub discriminator_loss: f32,
    pub adversarial_loss: f32,
    /// Images of the discriminator's batch it classified right (before its update).
    pub discriminator_right: usize,
}

/// One step of the book's loop: a discriminator update on generated (label 1) and `real`
/// (label 0) images with `0.5·U(0, 1)` label noise, then a generator update through the
/// frozen discriminator towards `zeros` ("real"). The benchmark times exactly this.
pub fn adversarial_step(
    model: &Dcgan,
    d_opt: &mut RmsProp,
    g_opt: &mut RmsProp,
    real: &Tensor,
    zeros: &Tensor,
    rng: &mut ChaCha8Rng,
) -> Result<StepLosses> {
    let (b, latent, device) = (real.dim(0)?, model.config.latent_dim, real.device());
    let generated = model.generate(&latents(rng, b, latent, device)?)?.detach();
    let images = Tensor::cat(&[&generated, real], 0)?;
    let labels: Vec<f32> = (0..2 * b)
        .map(|i| (if i < b { 1.0 } else { 0.0 }) + 0.5 * rng.random::<f32>())
        .collect();
    let labels = Tensor::from_vec(labels, (2 * b, 1), device)?;
    let logits = model.discriminate(&images, Some(rng), false)?;
    let loss = bce_with_logits(&logits, &labels)?;
    let discriminator_loss = loss.to_scalar::<f32>()?;
    d_opt.step(&loss.backward()?)?;
    let p = logits.flatten_all()?.to_vec1::<f32>()?;
    let discriminator_right = p
        .iter()
        .enumerate()
        .filter(|&(i, &l)| (l > 0.0) == (i < b))
        .count();

    let z = latents(rng, b, latent, device)?;
    let logits = model.discriminate(&model.generate(&z)?, Some(rng), true)?;
    let loss = bce_with_logits(&logits, zeros)?;
    let adversarial_loss = loss.to_scalar::<f32>()?;
    g_opt.step(&loss.backward()?)?;
    Ok(StepLosses {
        discriminator_loss,
        adversarial_loss,
        discriminator_right,
    })
}

/// Steps in a row with the discriminator's loss under this while the adversarial loss
/// climbs: the book's failure signature.
const COLLAPSE_D_LOSS: f32 = 0.05;

/// Trains GAN `name` of `store` on `data` for `opts.steps` more steps.
pub fn train_gan(
    store: &ModelStore,
    name: &str,
    data: &ImageSet,
    opts: &GanTrainOptions,
    device: &Device,
    sink: &mut dyn EventSink,
) -> Result<ModelRecord> {
    opts.validate()?;
    let run_start = Instant::now();
    let mut record = store.load(name)?;
    let cfg = record.gan_config()?.clone();
    if data.count == 0 {
        return Err(Error::invalid("the training data has no images"));
    }
    if data.side != oneiro_models::dcgan::SIDE {
        return Err(Error::invalid(format!(
            "the images are {0}×{0}; the DCGAN takes 32×32",
            data.side
        )));
    }
    let seed = opts
        .seed
        .or(record.seed)
        .unwrap_or_else(|| rand::rng().random());
    let (model, saved_opt) = store.resume_or_create(
        &record,
        device,
        |w| Dcgan::from_tensors(cfg.clone(), w, device),
        || {
            Ok(Dcgan::new_random(
                cfg.clone(),
                &mut step_rng(seed, 0, 0),
                device,
            )?)
        },
    )?;
    let mut d_opt = RmsProp::new(
        model.discriminator.vars(),
        opts.optimizer(opts.discriminator_lr),
    )?;
    let mut g_opt = RmsProp::new(model.generator.vars(), opts.optimizer(opts.generator_lr))?;
    let first_step = record.steps_trained;
    if let Some(state) = saved_opt {
        for (prefix, opt, params) in [
            ("d.", &mut d_opt, model.discriminator.tensors()),
            ("g.", &mut g_opt, model.generator.tensors()),
        ] {
            restore_optimizer(&state, prefix, &params, opt, first_step, name)?;
        }
    }
    if record.seed.is_none() {
        record.seed = Some(seed);
        record.parameters = model.parameter_count() as u64;
    }
    let last_step = first_step + opts.steps as u64;
    let per_report = opts.sample_every as u64;
    sink.send(TrainEvent::Started {
        model: name.to_string(),
        device: device_name(device),
        first_epoch: 1,
        epochs: 1,
        first_step: first_step as u32,
        steps_per_epoch: last_step as u32,
        train_sequences: data.count as u64,
        validation_sequences: 0,
        vocab_size: 0,
    })
    .map_err(|s| Error::Cancelled(s.0))?;

    let save = |record: &mut ModelRecord, d_opt: &RmsProp, g_opt: &RmsProp| -> Result<String> {
        record.optimizer = Some(OptimizerRecord {
            learning_rate: opts.discriminator_lr,
            rho: d_opt.config.rho,
            epsilon: d_opt.config.epsilon,
            iterations: d_opt.iterations,
        });
        let mut opt_tensors = optimizer_tensors("d.", &model.discriminator.tensors(), d_opt);
        opt_tensors.extend(optimizer_tensors("g.", &model.generator.tensors(), g_opt));
        store.save_checkpoint(record, &model.tensors(), &opt_tensors)
    };

    let b = opts.batch_size;
    let latent = cfg.latent_dim;
    let (mut d_sum, mut a_sum, mut d_acc_sum, mut count) = (0f64, 0f64, 0f64, 0usize);
    let mut collapse_run = 0u64;
    let mut last_a = f32::NAN;
    let mut d_loss = f32::NAN;
    let mut a_loss = f32::NAN;
    let zeros = Tensor::zeros((b, 1), DType::F32, device)?;
    let window_start = Instant::now();
    for step in first_step..last_step {
        if let Some(stop) = sink.should_stop() {
            if step > record.steps_trained {
                record.steps_trained = step;
                let checkpoint = save(&mut record, &d_opt, &g_opt)?;
                let _ = sink.send(TrainEvent::Checkpoint {
                    epoch: 1,
                    step: step as u32,
                    checkpoint,
                });
            }
            return Err(Error::Cancelled(stop.0));
        }
        let mut rng = step_rng(seed, step + 1, 1);
        let start = (step as usize * b) % data.count;
        let real = real_batch(data, start, b, device)?;
        let s = adversarial_step(&model, &mut d_opt, &mut g_opt, &real, &zeros, &mut rng)?;
        (d_loss, a_loss) = (s.discriminator_loss, s.adversarial_loss);
        let right = s.discriminator_right;
        if !(d_loss.is_finite() && a_loss.is_finite()) {
            return Err(Error::Diverged(format!(
                "training diverged at step {}: discriminator loss {d_loss}, adversarial loss {a_loss}; stopped, and the model stays at its last good checkpoint ({})",
                step + 1,
                record.checkpoint.as_deref().unwrap_or("none yet")
            )));
        }
        d_sum += d_loss as f64;
        a_sum += a_loss as f64;
        d_acc_sum += right as f64 / (2 * b) as f64;
        count += 1;
        let done = step + 1;
        let rate = count as f32 / window_start.elapsed().as_secs_f32().max(1e-6);
        sink.send(TrainEvent::Batch {
            epoch: 1,
            step: done as u32,
            steps_per_epoch: last_step as u32,
            loss: d_loss,
            sequences_per_second: rate,
        })
        .map_err(|s| Error::Cancelled(s.0))?;

        if done % per_report == 0 || done == last_step {
            let n = count as f64;
            let (d_mean, a_mean) = ((d_sum / n) as f32, (a_sum / n) as f32);
            let d_accuracy = (d_acc_sum / n) as f32;
            (d_sum, a_sum, d_acc_sum, count) = (0.0, 0.0, 0.0, 0);
            // The book's failure signature: the discriminator wins outright while the
            // adversarial loss climbs.
            collapse_run = if d_mean < COLLAPSE_D_LOSS && (last_a.is_nan() || a_mean > last_a) {
                collapse_run + 1
            } else {
                0
            };
            last_a = a_mean;
            let warning = (collapse_run >= 2).then(|| {
                format!(
                    "the discriminator's loss has stayed near zero ({d_mean:.4}) while the adversarial loss climbs ({a_mean:.4}): the generator is losing. The book's advice: lower the discriminator's learning rate and raise its dropout rate."
                )
            });
            let mut rng = step_rng(seed, done, 2);
            let samples = model.generate(&latents(&mut rng, opts.sample_count, latent, device)?)?;
            let real_one = real_batch(data, start, 1, device)?;
            sink.send(TrainEvent::GanReport {
                step: done,
                discriminator_loss: d_mean,
                adversarial_loss: a_mean,
                discriminator_accuracy: d_accuracy,
                discriminator_lr: d_opt.learning_rate() as f32,
                generator_lr: g_opt.learning_rate() as f32,
                generated_png: grid_png(&samples)?,
                real_png: grid_png(&real_one)?,
                warning,
            })
            .map_err(|s| Error::Cancelled(s.0))?;
            record.steps_trained = done;
            record.gan_history.push(GanPoint {
                step: done,
                discriminator_loss: d_mean,
                adversarial_loss: a_mean,
            });
            record.loss_history.push(d_mean);
            let checkpoint = save(&mut record, &d_opt, &g_opt)?;
            sink.send(TrainEvent::Checkpoint {
                epoch: 1,
                step: done as u32,
                checkpoint,
            })
            .map_err(|s| Error::Cancelled(s.0))?;
        }
    }
    let _ = (d_loss, a_loss);
    sink.send(TrainEvent::Finished {
        epochs_trained: 0,
        final_loss: last_a,
        seconds: run_start.elapsed().as_secs_f32(),
    })
    .map_err(|s| Error::Cancelled(s.0))?;
    Ok(record)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cifar::synthetic_blobs;
    use oneiro_models::GanConfig;

    fn small() -> GanConfig {
        GanConfig {
            generator_seed_channels: 8,
            generator_channels: 16,
            discriminator_channels: 16,
            ..Default::default()
        }
    }

    /// Mean of each colour channel over a batch of generated images, on the data's scale.
    fn colour_means(images: &Tensor) -> Vec<f32> {
        images.mean((0, 2, 3)).unwrap().to_vec1::<f32>().unwrap()
    }

    #[test]
    fn training_moves_the_discriminator_and_the_colours() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let store = ModelStore::open(dir.path())?;
        store.create(&ModelRecord::new_gan("g", small()))?;
        let data = synthetic_blobs(60, 1);
        let dev = Device::Cpu;
        // The data's colour means (pixels / 255).
        let mut want = [0f64; 3];
        for i in 0..data.count {
            for (c, w) in want.iter_mut().enumerate() {
                let plane = &data.image(i)[c * 1024..(c + 1) * 1024];
                *w += plane.iter().map(|&p| p as f64 / 255.0).sum::<f64>() / 1024.0;
            }
        }
        let want: Vec<f32> = want
            .iter()
            .map(|w| (w / data.count as f64) as f32)
            .collect();
        let start = Dcgan::new_random(small(), &mut step_rng(9, 0, 0), &dev)?;
        let z = latents(&mut step_rng(1, 1, 7), 64, 32, &dev)?;
        let dist = |m: &[f32]| m.iter().zip(&want).map(|(a, b)| (a - b).abs()).sum::<f32>();
        let before = dist(&colour_means(&start.generate(&z)?));

        let mut reports = Vec::new();
        let opts = GanTrainOptions {
            steps: 150,
            seed: Some(9),
            sample_every: 50,
            sample_count: 4,
            ..Default::default()
        };
        let record = train_gan(&store, "g", &data, &opts, &dev, &mut |e| {
            if let TrainEvent::GanReport { .. } = &e {
                reports.push(e);
            }
            Ok(())
        })?;
        assert_eq!(record.steps_trained, 150);
        assert_eq!(reports.len(), 3);
        let TrainEvent::GanReport {
            discriminator_accuracy,
            generated_png,
            real_png,
            discriminator_lr,
            ..
        } = &reports[2]
        else {
            unreachable!()
        };
        // Away from a coin toss (0.5) at some point: it learned something about the data.
        let accs: Vec<f32> = reports
            .iter()
            .map(|r| match r {
                TrainEvent::GanReport {
                    discriminator_accuracy,
                    ..
                } => *discriminator_accuracy,
                _ => 0.0,
            })
            .collect();
        assert!(
            accs.iter().any(|a| (a - 0.5).abs() > 0.15),
            "{accs:?} (last {discriminator_accuracy})"
        );
        assert!(imageio::decode(generated_png, "g")?.width() == 64);
        assert!(imageio::decode(real_png, "r")?.width() == 32);
        // Keras decay: lr / (1 + 1e-8 · 150).
        assert!((*discriminator_lr as f64 - 0.0008 / (1.0 + 1e-8 * 150.0)).abs() < 1e-9);

        let trained = Dcgan::from_tensors(small(), &store.load_checkpoint(&record, &dev)?.0, &dev)?;
        let after = dist(&colour_means(&trained.generate(&z)?));
        assert!(after < 0.6 * before, "colour distance {before} -> {after}");
        Ok(())
    }

    #[test]
    fn the_generator_step_leaves_the_discriminator_bit_identical() -> Result<()> {
        let dev = Device::Cpu;
        let m = Dcgan::new_random(small(), &mut step_rng(1, 0, 0), &dev)?;
        let opts = GanTrainOptions::default();
        let mut g_opt = RmsProp::new(m.generator.vars(), opts.optimizer(opts.generator_lr))?;
        let before: Vec<Vec<f32>> = m
            .discriminator
            .tensors()
            .iter()
            .map(|(_, t)| t.flatten_all().unwrap().to_vec1::<f32>().unwrap())
            .collect();
        let g_before = m.generator.tensors()[0].1.flatten_all()?.to_vec1::<f32>()?;
        let mut rng = step_rng(1, 1, 1);
        let z = latents(&mut rng, 4, 32, &dev)?;
        let logits = m.discriminate(&m.generate(&z)?, Some(&mut rng), true)?;
        let loss = bce_with_logits(&logits, &Tensor::zeros((4, 1), DType::F32, &dev)?)?;
        g_opt.step(&loss.backward()?)?;
        let after: Vec<Vec<f32>> = m
            .discriminator
            .tensors()
            .iter()
            .map(|(_, t)| t.flatten_all().unwrap().to_vec1::<f32>().unwrap())
            .collect();
        let same = before
            .iter()
            .flatten()
            .zip(after.iter().flatten())
            .all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(same);
        assert_ne!(
            g_before,
            m.generator.tensors()[0].1.flatten_all()?.to_vec1::<f32>()?
        );
        Ok(())
    }

    #[test]
    fn a_stopped_run_resumes_its_step_count() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let store = ModelStore::open(dir.path())?;
        store.create(&ModelRecord::new_gan("g", small()))?;
        let data = synthetic_blobs(10, 2);
        let opts = GanTrainOptions {
            steps: 6,
            seed: Some(1),
            sample_every: 4,
            sample_count: 1,
            ..Default::default()
        };
        struct StopAfter(usize);
        impl EventSink for StopAfter {
            fn send(&mut self, e: TrainEvent) -> std::result::Result<(), crate::Stop> {
                if matches!(e, TrainEvent::Batch { .. }) {
                    self.0 -= 1;
                }
                Ok(())
            }
            fn should_stop(&mut self) -> Option<crate::Stop> {
                (self.0 == 0).then(|| crate::Stop("test".into()))
            }
        }
        let e = train_gan(&store, "g", &data, &opts, &Device::Cpu, &mut StopAfter(5)).unwrap_err();
        assert!(matches!(e, Error::Cancelled(_)));
        assert_eq!(store.load("g")?.steps_trained, 5);
        let r = train_gan(&store, "g", &data, &opts, &Device::Cpu, &mut |_| Ok(()))?;
        assert_eq!(r.steps_trained, 11);
        let e = train_gan(
            &store,
            "g",
            &crate::cifar::ImageSet {
                pixels: vec![],
                count: 0,
                side: 32,
            },
            &opts,
            &Device::Cpu,
            &mut |_| Ok(()),
        )
        .unwrap_err();
        assert!(e.to_string().contains("no images"));
        Ok(())
    }
}
