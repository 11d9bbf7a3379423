//! Training of the character-level LSTM (SPEC §1): shuffled batches of windows,
//! categorical cross-entropy, Keras RMSprop; after every epoch a checkpoint and samples
//! at several temperatures.

use candle_core::{DType, Device, Tensor};
use oneiro_models::CharLstm;
use rand::Rng;

use super::data::CharCorpus;
use super::generate::{CharGenerator, validate_temperature};
use crate::Result;
use crate::events::{EventSink, LossParts, TrainEvent};
use crate::fit::{EpochPlan, EpochTechnique, Fitting, Single, Spikes, fit_epochs};
use crate::run::{check_count, check_divergence_factor, check_learning_rate, rng_for};
use crate::store::{ModelRecord, ModelSpec, ModelStore};

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TextTrainOptions {
    pub epochs: u32,
    pub batch_size: usize,
    /// `None`: the model's saved rate, else the book's 0.01.
    pub learning_rate: Option<f64>,
    pub validation_split: f32,
    /// `None`: the model's saved seed, else a random one.
    pub seed: Option<u64>,
    pub sample_temperatures: Vec<f32>,
    pub sample_length: usize,
    /// Also checkpoint every this many steps inside an epoch (0: at epoch ends only).
    pub checkpoint_every_steps: u32,
    /// Stop when the loss exceeds this factor of the best epoch loss so far (0: never).
    pub divergence_factor: f32,
}

impl Default for TextTrainOptions {
    fn default() -> Self {
        Self {
            epochs: 1,
            batch_size: 128,
            learning_rate: None,
            validation_split: 0.0,
            seed: None,
            sample_temperatures: vec![0.2, 0.5, 1.0, 1.2],
            sample_length: 400,
            checkpoint_every_steps: 0,
            divergence_factor: 4.0,
        }
    }
}

impl TextTrainOptions {
    pub fn validate(&self) -> Result<()> {
        check_count("epochs", self.epochs as usize, 100_000)?;
        check_count("batch size", self.batch_size, 65_536)?;
        check_learning_rate(self.learning_rate)?;
        for &t in &self.sample_temperatures {
            validate_temperature(t)?;
        }
        check_divergence_factor(self.divergence_factor)?;
        Ok(())
    }
}

const DEFAULT_LEARNING_RATE: f64 = 0.01;

/// Mean cross-entropy of `windows` (no gradients), in batches.
fn evaluate(
    model: &CharLstm,
    corpus: &CharCorpus,
    windows: &[usize],
    batch: usize,
    dev: &Device,
) -> Result<f32> {
    let (mut ids, mut targets) = (Vec::new(), Vec::new());
    let mut total = 0f64;
    for ws in windows.chunks(batch) {
        corpus.fill_batch(ws, &mut ids, &mut targets);
        let x = Tensor::from_slice(&ids, (ws.len(), corpus.maxlen), dev)?;
        let y = Tensor::from_slice(&targets, ws.len(), dev)?;
        let loss = candle_nn::loss::cross_entropy(&model.forward(&x, false)?, &y)?;
        total += loss.to_dtype(DType::F64)?.to_scalar::<f64>()? * ws.len() as f64;
    }
    Ok((total / windows.len() as f64) as f32)
}

/// The character model's part of a run: batches of windows, validation, samples.
struct TextFit<'c> {
    learner: Single<CharLstm>,
    corpus: &'c CharCorpus,
    validation: Vec<usize>,
    opts: &'c TextTrainOptions,
    device: Device,
    ids: Vec<u32>,
    targets: Vec<u32>,
}

impl EpochTechnique for TextFit<'_> {
    type Learner = Single<CharLstm>;
    type Pending = Tensor;

    fn learner(&self) -> &Single<CharLstm> {
        &self.learner
    }

    fn forward(&mut self, _epoch: u32, _step: usize, ws: &[usize]) -> Result<(f32, Tensor)> {
        let corpus = self.corpus;
        corpus.fill_batch(ws, &mut self.ids, &mut self.targets);
        let x = Tensor::from_slice(&self.ids, (ws.len(), corpus.maxlen), &self.device)?;
        let y = Tensor::from_slice(&self.targets, ws.len(), &self.device)?;
        let loss = candle_nn::loss::cross_entropy(&self.learner.model.forward(&x, true)?, &y)?;
        let value = loss.to_dtype(DType::F32)?.to_scalar::<f32>()?;
        Ok((value, loss))
    }

    fn update(&mut self, loss: Tensor) -> Result<()> {
        self.learner.opt.step(&loss.backward()?)?;
        Ok(())
    }

    fn evaluate(
        &mut self,
        _fitting: &mut Fitting,
        _epoch: u32,
    ) -> Result<(Option<f32>, Option<LossParts>)> {
        if self.validation.is_empty() {
            return Ok((None, None));
        }
        let loss = evaluate(
            &self.learner.model,
            self.corpus,
            &self.validation,
            self.opts.batch_size,
            &self.device,
        )?;
        Ok((Some(loss), None))
    }

    fn after_checkpoint(&mut self, fitting: &mut Fitting, epoch: u32) -> Result<()> {
        let opts = self.opts;
        if opts.sample_temperatures.is_empty() || opts.sample_length == 0 {
            return Ok(());
        }
        let corpus = self.corpus;
        let cfg = fitting.record.text_config()?;
        let generator = CharGenerator::new(
            CharLstm::from_tensors(
                &self.learner.tensors().into_iter().collect(),
                corpus.vocab.len(),
                cfg.hidden,
                &self.device,
            )?,
            corpus.vocab.clone(),
            cfg.maxlen,
            cfg.lowercase,
        )?;
        let mut rng = rng_for(fitting.seed, epoch, 3);
        let (seed_ids, _) = corpus.window(rng.random_range(0..corpus.window_count()));
        let seed_text = corpus.decode(seed_ids);
        for &temperature in &opts.sample_temperatures {
            if let Some(stop) = fitting.sink.should_stop() {
                return Err(stop.into());
            }
            let text =
                generator.generate_string(seed_ids, temperature, opts.sample_length, &mut rng)?;
            fitting.send(TrainEvent::Sample {
                epoch,
                temperature,
                seed_text: seed_text.clone(),
                text,
            })?;
        }
        Ok(())
    }
}

/// Trains model `name` of `store` on `text` for `opts.epochs` more epochs, on `device`,
/// checkpointing after every epoch. Stops without saving the partial epoch when the sink
/// asks to; a non-finite loss stops the run and keeps the last good checkpoint.
pub fn train_char_lstm(
    store: &ModelStore,
    name: &str,
    text: &str,
    opts: &TextTrainOptions,
    device: &Device,
    sink: &mut dyn EventSink,
) -> Result<ModelRecord> {
    opts.validate()?;
    let mut fitting = Fitting::open(store, name, opts.seed, device, sink)?;
    let cfg = fitting.record.text_config()?.clone();
    let corpus = CharCorpus::prepare(text, &cfg, fitting.record.vocabulary().as_ref())?;
    let (train_ws, val_ws) = corpus.split(opts.validation_split)?;
    let seed = fitting.seed;
    let vocab = corpus.vocab.len();

    let (model, saved_opt) = fitting.resume_or_create(
        |w| CharLstm::from_tensors(w, vocab, cfg.hidden, device),
        || {
            Ok(CharLstm::new_random(
                vocab,
                cfg.hidden,
                &mut rng_for(seed, 0, 0),
                device,
            )?)
        },
    )?;
    let vars = model.vars();
    let learner = fitting.single_optimizer(
        model,
        vars,
        CharLstm::tensors,
        saved_opt,
        opts.learning_rate,
        DEFAULT_LEARNING_RATE,
    )?;
    let parameters = learner.model.parameter_count() as u64;
    let record = &mut fitting.record;
    if let ModelSpec::CharLstm {
        vocab: saved_vocab @ None,
        seed_text,
        ..
    } = &mut record.spec
    {
        *saved_vocab = Some(corpus.vocab.chars().to_vec());
        record.seed = Some(seed);
        record.parameters = parameters;
        let mut rng = rng_for(seed, 0, 1);
        let w = rng.random_range(0..corpus.window_count());
        *seed_text = Some(corpus.decode(corpus.window(w).0));
    }

    let plan = EpochPlan {
        epochs: opts.epochs,
        batch_size: opts.batch_size,
        examples: train_ws,
        validation_examples: val_ws.len() as u64,
        checkpoint_every_steps: opts.checkpoint_every_steps,
        spikes: Spikes::Smoothed {
            batch_size: opts.batch_size,
        },
        divergence_factor: opts.divergence_factor,
        vocab_size: Some(vocab as u32),
    };
    let mut technique = TextFit {
        learner,
        corpus: &corpus,
        validation: val_ws,
        opts,
        device: device.clone(),
        ids: Vec::new(),
        targets: Vec::new(),
    };
    let last_loss = fit_epochs(&mut fitting, &plan, &mut technique)?;
    fitting.finish(last_loss)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Error;
    use crate::events::{Stop, Unit};
    use oneiro_models::CharLstmConfig;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn setup(cfg: CharLstmConfig) -> (tempfile::TempDir, ModelStore) {
        let tmp = tempfile::tempdir().unwrap();
        let store = ModelStore::open(tmp.path()).unwrap();
        store.create(&ModelRecord::new_char_lstm("m", cfg)).unwrap();
        (tmp, store)
    }

    fn corpus() -> String {
        "the cat sat on the mat. ".repeat(40)
    }

    #[test]
    fn a_small_model_learns_a_repetitive_text() -> Result<()> {
        let cfg = CharLstmConfig {
            maxlen: 12,
            step: 1,
            hidden: 32,
            lowercase: true,
        };
        let (_tmp, store) = setup(cfg);
        let opts = TextTrainOptions {
            epochs: 8,
            batch_size: 32,
            seed: Some(1),
            sample_temperatures: vec![0.2],
            sample_length: 30,
            validation_split: 0.1,
            ..Default::default()
        };
        let mut events = Vec::new();
        let rec = train_char_lstm(&store, "m", &corpus(), &opts, &Device::Cpu, &mut |e| {
            events.push(e);
            Ok(())
        })?;
        assert_eq!(rec.epochs_trained, 8);
        let first = rec.loss_history[0];
        let last = *rec.loss_history.last().unwrap();
        assert!(
            last < 0.2 && last < first / 5.0,
            "losses {:?}",
            rec.loss_history
        );
        assert_eq!(rec.val_loss_history.len(), 8);
        assert!(matches!(
            events[0],
            TrainEvent::Started {
                first: 1,
                count: 8,
                unit: Unit::Epochs,
                vocab_size: Some(_),
                ..
            }
        ));
        assert!(matches!(
            events.last(),
            Some(TrainEvent::Finished {
                units_trained: 8,
                unit: Unit::Epochs,
                ..
            })
        ));
        let samples = events
            .iter()
            .filter(|e| matches!(e, TrainEvent::Sample { .. }))
            .count();
        assert_eq!(samples, 8);
        // Greedy continuation of a seed reproduces the pattern.
        let g = CharGenerator::load(&store, &store.load("m")?, &Device::Cpu)?;
        let out = g.generate_string(
            &g.encode_seed("the cat sat ")?,
            0.0,
            24,
            &mut ChaCha8Rng::seed_from_u64(0),
        )?;
        assert_eq!(out, "on the mat. the cat sat ");
        Ok(())
    }

    #[test]
    fn continuing_a_model_resumes_its_epochs_and_optimizer() -> Result<()> {
        let cfg = CharLstmConfig {
            maxlen: 8,
            step: 2,
            hidden: 8,
            lowercase: true,
        };
        let (_tmp, store) = setup(cfg);
        let opts = TextTrainOptions {
            epochs: 1,
            batch_size: 16,
            seed: Some(3),
            sample_temperatures: vec![],
            ..Default::default()
        };
        let a = train_char_lstm(&store, "m", &corpus(), &opts, &Device::Cpu, &mut |_| Ok(()))?;
        let b = train_char_lstm(&store, "m", &corpus(), &opts, &Device::Cpu, &mut |_| Ok(()))?;
        assert_eq!((a.epochs_trained, b.epochs_trained), (1, 2));
        let iters = |r: &ModelRecord| r.optimizer.as_ref().unwrap().iterations;
        assert_eq!(iters(&b), 2 * iters(&a));
        assert_eq!(b.loss_history.len(), 2);
        let err = train_char_lstm(
            &store,
            "m",
            "THE DOG!",
            &opts,
            &Device::Cpu,
            &mut |_| Ok(()),
        )
        .unwrap_err();
        assert!(err.to_string().contains("'d', 'g', '!'"), "{err}");
        Ok(())
    }

    #[test]
    fn a_sink_that_stops_ends_the_run_and_keeps_the_last_checkpoint() -> Result<()> {
        let cfg = CharLstmConfig {
            maxlen: 8,
            step: 1,
            hidden: 8,
            lowercase: true,
        };
        let (_tmp, store) = setup(cfg);
        let opts = TextTrainOptions {
            epochs: 3,
            batch_size: 16,
            seed: Some(3),
            sample_temperatures: vec![],
            ..Default::default()
        };
        let mut batches = 0;
        let err = train_char_lstm(&store, "m", &corpus(), &opts, &Device::Cpu, &mut |e| {
            if matches!(e, TrainEvent::Batch { epoch: Some(2), .. }) {
                batches += 1;
                if batches == 3 {
                    return Err(Stop("client went away".into()));
                }
            }
            Ok(())
        })
        .unwrap_err();
        assert!(matches!(err, Error::Cancelled(_)));
        let rec = store.load("m")?;
        assert_eq!(rec.epochs_trained, 1);
        CharGenerator::load(&store, &rec, &Device::Cpu)?;
        Ok(())
    }

    #[test]
    fn a_run_stopped_mid_epoch_resumes_exactly_where_it_stopped() -> Result<()> {
        let cfg = CharLstmConfig {
            maxlen: 8,
            step: 1,
            hidden: 8,
            lowercase: true,
        };
        let opts = TextTrainOptions {
            epochs: 2,
            batch_size: 16,
            seed: Some(11),
            sample_temperatures: vec![],
            checkpoint_every_steps: 7,
            ..Default::default()
        };
        // Uninterrupted.
        let (_a, store_a) = setup(cfg.clone());
        let straight = train_char_lstm(&store_a, "m", &corpus(), &opts, &Device::Cpu, &mut |_| {
            Ok(())
        })?;
        // Stopped at step 23 of epoch 1 (a checkpoint of all 23 steps is written), then
        // continued.
        let (_b, store_b) = setup(cfg);
        let mut steps = 0;
        let mut stop_sink = |e: TrainEvent| {
            if let TrainEvent::Batch { .. } = e {
                steps += 1;
            }
            Ok(())
        };
        struct StopAt<'a, F>(&'a mut F, &'a dyn Fn() -> bool);
        impl<F: FnMut(TrainEvent) -> std::result::Result<(), Stop>> EventSink for StopAt<'_, F> {
            fn send(&mut self, e: TrainEvent) -> std::result::Result<(), Stop> {
                (self.0)(e)
            }
            fn should_stop(&mut self) -> Option<Stop> {
                (self.1)().then(|| Stop("test stop".into()))
            }
        }
        let counter = std::cell::Cell::new(0u32);
        let stop_now = || {
            counter.set(counter.get() + 1);
            counter.get() > 23
        };
        let err = train_char_lstm(
            &store_b,
            "m",
            &corpus(),
            &opts,
            &Device::Cpu,
            &mut StopAt(&mut stop_sink, &stop_now),
        )
        .unwrap_err();
        assert!(matches!(err, Error::Cancelled(_)), "{err}");
        assert_eq!(steps, 23);
        let mid = store_b.load("m")?;
        assert_eq!(mid.epochs_trained, 0);
        assert_eq!(
            mid.progress.as_ref().map(|p| (p.epoch, p.step)),
            Some((1, 23))
        );
        let mut started = None;
        let resumed = train_char_lstm(&store_b, "m", &corpus(), &opts, &Device::Cpu, &mut |e| {
            if let TrainEvent::Started {
                first, first_step, ..
            } = e
            {
                started = Some((first, first_step));
            }
            Ok(())
        })?;
        assert_eq!(started, Some((1, 23)));
        assert_eq!(resumed.epochs_trained, 2);
        // A partial epoch is continued only with the same batches.
        let (_c, store_c) = setup(CharLstmConfig {
            maxlen: 8,
            step: 1,
            hidden: 8,
            lowercase: true,
        });
        let mut counter2 = 0u32;
        let stop_early = || {
            counter2 += 1;
            counter2 > 5
        };
        let stop_early = std::cell::RefCell::new(stop_early);
        let f = || (stop_early.borrow_mut())();
        let _ = train_char_lstm(
            &store_c,
            "m",
            &corpus(),
            &opts,
            &Device::Cpu,
            &mut StopAt(&mut |_| Ok(()), &f),
        );
        assert_eq!(store_c.load("m")?.progress.map(|p| p.step), Some(5));
        let other = TextTrainOptions {
            batch_size: 32,
            epochs: 1,
            ..opts.clone()
        };
        let mut first_step = None;
        train_char_lstm(&store_c, "m", &corpus(), &other, &Device::Cpu, &mut |e| {
            if let TrainEvent::Started { first_step: s, .. } = e {
                first_step = Some(s);
            }
            Ok(())
        })?;
        assert_eq!(first_step, Some(0));
        assert_eq!(resumed.progress, None);
        assert_eq!(
            resumed.optimizer.as_ref().unwrap().iterations,
            straight.optimizer.as_ref().unwrap().iterations
        );
        // Same data order, same optimizer state, same weights: the same loss curve.
        for (a, b) in straight.loss_history.iter().zip(&resumed.loss_history) {
            assert!(
                (a - b).abs() < 1e-5,
                "{:?} vs {:?}",
                straight.loss_history,
                resumed.loss_history
            );
        }
        Ok(())
    }

    #[test]
    fn a_loss_exploding_past_the_factor_of_its_best_stops_the_run() -> Result<()> {
        let cfg = CharLstmConfig {
            maxlen: 8,
            step: 1,
            hidden: 8,
            lowercase: true,
        };
        let (_tmp, store) = setup(cfg);
        let base = TextTrainOptions {
            epochs: 2,
            batch_size: 16,
            seed: Some(3),
            sample_temperatures: vec![],
            ..Default::default()
        };
        let good = train_char_lstm(&store, "m", &corpus(), &base, &Device::Cpu, &mut |_| Ok(()))?;
        // A learning rate that wrecks the model makes the loss climb far above its best.
        let wild = TextTrainOptions {
            learning_rate: Some(5.0),
            divergence_factor: 1.5,
            ..base
        };
        let err = train_char_lstm(&store, "m", &corpus(), &wild, &Device::Cpu, &mut |_| Ok(()))
            .unwrap_err();
        assert!(
            matches!(err, Error::Diverged(_)) && err.to_string().contains("best epoch loss"),
            "{err}"
        );
        let after = store.load("m")?;
        assert_eq!(
            after.checkpoint, good.checkpoint,
            "the last good checkpoint stays current"
        );
        assert_eq!(after.epochs_trained, 2);
        Ok(())
    }

    #[test]
    fn a_diverging_loss_stops_without_saving() -> Result<()> {
        let cfg = CharLstmConfig {
            maxlen: 8,
            step: 1,
            hidden: 8,
            lowercase: true,
        };
        let (_tmp, store) = setup(cfg);
        let opts = TextTrainOptions {
            epochs: 2,
            batch_size: 16,
            learning_rate: Some(3e38),
            seed: Some(3),
            sample_temperatures: vec![],
            ..Default::default()
        };
        let err = train_char_lstm(&store, "m", &corpus(), &opts, &Device::Cpu, &mut |_| Ok(()))
            .unwrap_err();
        assert!(matches!(err, Error::Diverged(_)), "{err}");
        assert_eq!(store.load("m")?.checkpoint, None);
        Ok(())
    }
}
