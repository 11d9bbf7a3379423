//! Adversarial training of the DCGAN (SPEC §5): per step, a discriminator update on
//! generated (label 1) and real (label 0) images with `0.5·U(0, 1)` noise on every label,
//! then a generator update through the frozen discriminator with targets 0; real images
//! walked in order with wrap-around; both optimizers Keras RMSprop with `clipvalue` and
//! time decay. Every `sample_every` steps: both losses and learning rates, a PNG of
//! generated samples and one real image, a checkpoint.

use candle_core::{DType, Device, Tensor};
use oneiro_models::Dcgan;
use oneiro_tensor_ops::{RmsProp, RmsPropConfig};

use super::step::{adversarial_step, grid_png, latents, real_batch, step_rng};
use crate::cifar::ImageSet;
use crate::events::{EventSink, TrainEvent};
use crate::fit::{Fitting, Learner, Named, StepPlan, StepTechnique, fit_steps};
use crate::run::check_count;
use crate::store::{
    GanPoint, ModelRecord, ModelSpec, ModelStore, OptimizerRecord, optimizer_tensors,
    restore_optimizer,
};
use crate::{Error, Result};

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
        check_count("steps", self.steps as usize, 10_000_000)?;
        check_count("batch size", self.batch_size, 1024)?;
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

/// Steps in a row with the discriminator's loss under this while the adversarial loss
/// climbs: the book's failure signature.
const COLLAPSE_D_LOSS: f32 = 0.05;

/// The DCGAN and its two optimizers; the record's optimizer entry describes the
/// discriminator's.
struct GanLearner {
    model: Dcgan,
    d_opt: RmsProp,
    g_opt: RmsProp,
    discriminator_lr: f64,
}

impl Learner for GanLearner {
    fn checkpoint_tensors(&self) -> (Named, Named) {
        let model = &self.model;
        let mut opt = optimizer_tensors("d.", &model.discriminator.tensors(), &self.d_opt);
        opt.extend(optimizer_tensors(
            "g.",
            &model.generator.tensors(),
            &self.g_opt,
        ));
        (model.tensors(), opt)
    }

    fn optimizer_record(&self) -> OptimizerRecord {
        OptimizerRecord {
            learning_rate: self.discriminator_lr,
            rho: self.d_opt.config.rho,
            epsilon: self.d_opt.config.epsilon,
            iterations: self.d_opt.iterations,
        }
    }
}

/// The GAN's part of a run: adversarial steps over the real images in order, and the
/// reports with their means over each window of steps.
struct GanFit<'d> {
    learner: GanLearner,
    data: &'d ImageSet,
    opts: &'d GanTrainOptions,
    seed: u64,
    device: Device,
    zeros: Tensor,
    /// Where the last step's real images began.
    start: usize,
    /// Sums over the window since the last report.
    d_sum: f64,
    a_sum: f64,
    d_acc_sum: f64,
    count: usize,
    collapse_run: u64,
    last_a: f32,
}

impl StepTechnique for GanFit<'_> {
    type Learner = GanLearner;

    fn learner(&self) -> &GanLearner {
        &self.learner
    }

    fn step(&mut self, step: u64) -> Result<[(&'static str, f32); 2]> {
        let b = self.opts.batch_size;
        let mut rng = step_rng(self.seed, step + 1, 1);
        self.start = (step as usize * b) % self.data.count;
        let real = real_batch(self.data, self.start, b, &self.device)?;
        let l = &mut self.learner;
        let s = adversarial_step(
            &l.model,
            &mut l.d_opt,
            &mut l.g_opt,
            &real,
            &self.zeros,
            &mut rng,
        )?;
        let (d_loss, a_loss) = (s.discriminator_loss, s.adversarial_loss);
        if d_loss.is_finite() && a_loss.is_finite() {
            self.d_sum += d_loss as f64;
            self.a_sum += a_loss as f64;
            self.d_acc_sum += s.discriminator_right as f64 / (2 * b) as f64;
            self.count += 1;
        }
        Ok([("discriminator loss", d_loss), ("adversarial loss", a_loss)])
    }

    fn report(&mut self, fitting: &mut Fitting, done: u64) -> Result<()> {
        let n = self.count as f64;
        let (d_mean, a_mean) = ((self.d_sum / n) as f32, (self.a_sum / n) as f32);
        let d_accuracy = (self.d_acc_sum / n) as f32;
        (self.d_sum, self.a_sum, self.d_acc_sum, self.count) = (0.0, 0.0, 0.0, 0);
        // The book's failure signature: the discriminator wins outright while the
        // adversarial loss climbs.
        self.collapse_run =
            if d_mean < COLLAPSE_D_LOSS && (self.last_a.is_nan() || a_mean > self.last_a) {
                self.collapse_run + 1
            } else {
                0
            };
        self.last_a = a_mean;
        let warning = (self.collapse_run >= 2).then(|| {
            format!(
                "the discriminator's loss has stayed near zero ({d_mean:.4}) while the adversarial loss climbs ({a_mean:.4}): the generator is losing. The book's advice: lower the discriminator's learning rate and raise its dropout rate."
            )
        });
        let l = &self.learner;
        let mut rng = step_rng(self.seed, done, 2);
        let latent = l.model.config.latent_dim;
        let samples = l.model.generate(&latents(
            &mut rng,
            self.opts.sample_count,
            latent,
            &self.device,
        )?)?;
        let real_one = real_batch(self.data, self.start, 1, &self.device)?;
        fitting.send(TrainEvent::GanReport {
            step: done,
            discriminator_loss: d_mean,
            adversarial_loss: a_mean,
            discriminator_accuracy: d_accuracy,
            discriminator_lr: l.d_opt.learning_rate() as f32,
            generator_lr: l.g_opt.learning_rate() as f32,
            generated_png: grid_png(&samples)?,
            real_png: grid_png(&real_one)?,
            warning,
        })?;
        let record = &mut fitting.record;
        if let ModelSpec::Gan { history, .. } = &mut record.spec {
            history.push(GanPoint {
                step: done,
                discriminator_loss: d_mean,
                adversarial_loss: a_mean,
            });
        }
        record.loss_history.push(d_mean);
        Ok(())
    }
}

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
    let mut fitting = Fitting::open(store, name, opts.seed, device, sink)?;
    let cfg = fitting.record.gan_config()?.clone();
    if data.count == 0 {
        return Err(Error::invalid("the training data has no images"));
    }
    if data.side != oneiro_models::dcgan::SIDE {
        return Err(Error::invalid(format!(
            "the images are {0}×{0}; the DCGAN takes 32×32",
            data.side
        )));
    }
    let seed = fitting.seed;
    let (model, saved_opt) = fitting.resume_or_create(
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
    if let Some(state) = saved_opt {
        let steps = fitting.record.steps_trained();
        for (prefix, opt, params) in [
            ("d.", &mut d_opt, model.discriminator.tensors()),
            ("g.", &mut g_opt, model.generator.tensors()),
        ] {
            restore_optimizer(&state, prefix, &params, opt, steps, name)?;
        }
    }
    if fitting.record.seed.is_none() {
        fitting.record.seed = Some(seed);
        fitting.record.parameters = model.parameter_count() as u64;
    }
    let plan = StepPlan {
        steps: opts.steps,
        report_every: opts.sample_every,
        train_examples: data.count as u64,
    };
    let mut technique = GanFit {
        learner: GanLearner {
            model,
            d_opt,
            g_opt,
            discriminator_lr: opts.discriminator_lr,
        },
        data,
        opts,
        seed,
        device: device.clone(),
        zeros: Tensor::zeros((opts.batch_size, 1), DType::F32, device)?,
        start: 0,
        d_sum: 0.0,
        a_sum: 0.0,
        d_acc_sum: 0.0,
        count: 0,
        collapse_run: 0,
        last_a: f32::NAN,
    };
    fit_steps(&mut fitting, &plan, &mut technique)?;
    fitting.finish(technique.last_a)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::cifar::synthetic_blobs;
    use crate::imageio;
    use oneiro_models::GanConfig;

    pub(crate) fn small() -> GanConfig {
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
        assert_eq!(record.steps_trained(), 150);
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
        assert_eq!(store.load("g")?.steps_trained(), 5);
        let r = train_gan(&store, "g", &data, &opts, &Device::Cpu, &mut |_| Ok(()))?;
        assert_eq!(r.steps_trained(), 11);
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
