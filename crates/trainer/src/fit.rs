//! The shape every technique's training shares: the model's record and seed, its model and
//! optimizers resumed from the last checkpoint or created, checkpoints (weights, optimizer
//! state and the record, committed together), a stop request that keeps the work done, a
//! divergence guard that stops before a bad model reaches a checkpoint, and the events
//! around it all.
//!
//! Techniques plug in by what they count: [`EpochTechnique`] for shuffled epochs over
//! examples (text, VAE), [`StepTechnique`] for a stream of steps (the GAN).

use std::collections::HashMap;
use std::time::Instant;

use candle_core::{Device, Tensor, Var};
use oneiro_tensor_ops::{RmsProp, RmsPropConfig};
use rand::Rng;
use rand::seq::SliceRandom;

use crate::events::{EventSink, LossParts, TrainEvent, Unit};
use crate::run::{device_name, rng_for};
use crate::store::{
    EpochProgress, ModelRecord, ModelStore, OptimizerRecord, optimizer_tensors, restore_optimizer,
};
use crate::{Error, Result};

/// The seed of a run: the request's, else the model's, else a random one.
pub(crate) fn resolve_seed(requested: Option<u64>, saved: Option<u64>) -> u64 {
    requested.or(saved).unwrap_or_else(|| rand::rng().random())
}

/// Tensors by name, as checkpoints store them.
pub(crate) type Named = Vec<(String, Tensor)>;

/// A model and its optimizers, as a checkpoint holds them.
pub(crate) trait Learner {
    /// The model's weights and the optimizers' state tensors.
    fn checkpoint_tensors(&self) -> (Named, Named);
    /// What the record says of the optimizer.
    fn optimizer_record(&self) -> OptimizerRecord;
}

/// A model trained by one RMSprop over all its weights (text, VAE).
pub(crate) struct Single<M> {
    pub model: M,
    pub opt: RmsProp,
    pub learning_rate: f64,
    tensors: fn(&M) -> Vec<(String, Tensor)>,
}

impl<M> Single<M> {
    pub fn tensors(&self) -> Vec<(String, Tensor)> {
        (self.tensors)(&self.model)
    }
}

impl<M> Learner for Single<M> {
    fn checkpoint_tensors(&self) -> (Named, Named) {
        let weights = self.tensors();
        let opt = optimizer_tensors("", &weights, &self.opt);
        (weights, opt)
    }

    fn optimizer_record(&self) -> OptimizerRecord {
        OptimizerRecord {
            learning_rate: self.learning_rate,
            rho: self.opt.config.rho,
            epsilon: self.opt.config.epsilon,
            iterations: self.opt.iterations,
        }
    }
}

/// One training run of one model: its record as it advances, and where it reports.
pub(crate) struct Fitting<'a> {
    pub store: &'a ModelStore,
    pub record: ModelRecord,
    pub seed: u64,
    pub device: &'a Device,
    pub sink: &'a mut dyn EventSink,
    started: Instant,
}

impl<'a> Fitting<'a> {
    /// Loads model `name` for a run with the requested seed (see [`resolve_seed`]).
    pub fn open(
        store: &'a ModelStore,
        name: &str,
        seed: Option<u64>,
        device: &'a Device,
        sink: &'a mut dyn EventSink,
    ) -> Result<Self> {
        let started = Instant::now();
        let record = store.load(name)?;
        let seed = resolve_seed(seed, record.seed);
        Ok(Self {
            store,
            record,
            seed,
            device,
            sink,
            started,
        })
    }

    pub fn send(&mut self, event: TrainEvent) -> Result<()> {
        Ok(self.sink.send(event)?)
    }

    /// The model from the last checkpoint (and the optimizer state saved with it), or a
    /// new one when the model has no checkpoint yet.
    pub fn resume_or_create<M, E: std::fmt::Display>(
        &self,
        load: impl FnOnce(&HashMap<String, Tensor>) -> std::result::Result<M, E>,
        create: impl FnOnce() -> Result<M>,
    ) -> Result<(M, Option<HashMap<String, Tensor>>)> {
        self.store
            .resume_or_create(&self.record, self.device, load, create)
    }

    /// `model` with a Keras RMSprop at the requested rate (else the saved one, else
    /// `default_rate`), its state restored from `saved` when the model has one.
    pub fn single_optimizer<M>(
        &self,
        model: M,
        vars: Vec<Var>,
        tensors: fn(&M) -> Vec<(String, Tensor)>,
        saved: Option<HashMap<String, Tensor>>,
        requested_rate: Option<f64>,
        default_rate: f64,
    ) -> Result<Single<M>> {
        let learning_rate = requested_rate
            .or(self.record.optimizer.as_ref().map(|o| o.learning_rate))
            .unwrap_or(default_rate);
        let mut opt = RmsProp::new(
            vars,
            RmsPropConfig {
                learning_rate,
                ..Default::default()
            },
        )?;
        if let (Some(state), Some(record)) = (saved, &self.record.optimizer) {
            restore_optimizer(
                &state,
                "",
                &tensors(&model),
                &mut opt,
                record.iterations,
                &self.record.name,
            )?;
        }
        Ok(Single {
            model,
            opt,
            learning_rate,
            tensors,
        })
    }

    /// Writes a checkpoint of `learner` and commits the record pointing at it.
    pub fn save(&mut self, learner: &impl Learner) -> Result<String> {
        self.record.optimizer = Some(learner.optimizer_record());
        let (weights, opt) = learner.checkpoint_tensors();
        self.store.save_checkpoint(&mut self.record, &weights, &opt)
    }

    /// The error that ends a diverging run, naming the checkpoint the model stays at.
    pub fn diverged(&self, unit: Unit, at: u64, what: &str) -> Error {
        let unit = match unit {
            Unit::Epochs => "epoch",
            Unit::Steps => "step",
        };
        Error::Diverged(format!(
            "training diverged at {unit} {at}: {what}; stopped, and the model stays at its last good checkpoint ({})",
            self.record.checkpoint.as_deref().unwrap_or("none yet")
        ))
    }

    /// Ends the run: the `Finished` event, and the record as saved last.
    pub fn finish(mut self, final_loss: f32) -> Result<ModelRecord> {
        let event = TrainEvent::Finished {
            unit: self.record.kind().unit(),
            units_trained: self.record.progress_units(),
            final_loss,
            seconds: self.started.elapsed().as_secs_f32(),
        };
        self.send(event)?;
        Ok(self.record)
    }
}

/// How a run watches for a loss running away.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Spikes {
    /// Batches: a moving average (0.9) of their losses over the limit, once ten batches'
    /// worth of examples are in; the epoch: its mean loss over the limit.
    Smoothed { batch_size: usize },
    /// Batches: this many in a row over the limit; the epoch: its median batch loss over
    /// the limit. For losses with isolated one-batch spikes.
    RunOf(usize),
}

/// Stops an epoch whose loss becomes non-finite or climbs past `factor` × the best epoch
/// loss so far (`factor` 0: only non-finite losses stop it). The `Err` says what happened.
pub(crate) struct Guard {
    spikes: Spikes,
    factor: f32,
    best: Option<f32>,
    ema: Option<f32>,
    over: usize,
    batch_losses: Vec<f32>,
}

impl Guard {
    pub fn new(spikes: Spikes, factor: f32, best: Option<f32>) -> Self {
        Self {
            spikes,
            factor,
            best,
            ema: None,
            over: 0,
            batch_losses: Vec::new(),
        }
    }

    fn limit(&self) -> Option<f32> {
        self.best
            .map(|b| self.factor * b)
            .filter(|_| self.factor > 0.0)
    }

    /// Batch `step` (0-based) had loss `value`; `seen_before`: examples this run trained on
    /// in this epoch before it.
    pub fn batch(
        &mut self,
        step: usize,
        value: f32,
        seen_before: usize,
    ) -> std::result::Result<(), String> {
        if !value.is_finite() {
            return Err(format!("the loss became {value} at step {}", step + 1));
        }
        match self.spikes {
            Spikes::Smoothed { batch_size } => {
                // A smoothed batch loss far above the best epoch so far is an explosion in
                // progress: stop before it reaches a checkpoint.
                let smooth = self.ema.map_or(value, |e| 0.9 * e + 0.1 * value);
                self.ema = Some(smooth);
                if let Some(best) = self.best
                    && self.factor > 0.0
                    && seen_before >= 10 * batch_size
                    && smooth > self.factor * best
                {
                    return Err(format!(
                        "the smoothed batch loss {smooth:.4} at step {} is over {}× the best epoch loss {best:.4}",
                        step + 1,
                        self.factor
                    ));
                }
            }
            Spikes::RunOf(run) => {
                self.batch_losses.push(value);
                self.over = if self.limit().is_some_and(|l| value > l) {
                    self.over + 1
                } else {
                    0
                };
                if self.over >= run {
                    return Err(format!(
                        "{run} batches in a row up to step {} had a loss over {}× the best epoch loss {:.4} (last {value:.4})",
                        step + 1,
                        self.factor,
                        self.best.unwrap_or_default()
                    ));
                }
            }
        }
        Ok(())
    }

    /// The epoch ended with mean loss `mean`.
    pub fn epoch(&mut self, mean: f32) -> std::result::Result<(), String> {
        let Some(best) = self.best.filter(|_| self.factor > 0.0) else {
            return Ok(());
        };
        match self.spikes {
            Spikes::Smoothed { .. } if mean > self.factor * best => Err(format!(
                "the epoch loss {mean:.4} is over {}× the best epoch loss {best:.4}",
                self.factor
            )),
            Spikes::Smoothed { .. } => Ok(()),
            Spikes::RunOf(_) => {
                self.batch_losses.sort_by(f32::total_cmp);
                match self.batch_losses.get(self.batch_losses.len() / 2) {
                    Some(&median) if median > self.factor * best => Err(format!(
                        "the epoch's median batch loss {median:.4} is over {}× the best epoch loss {best:.4}",
                        self.factor
                    )),
                    _ => Ok(()),
                }
            }
        }
    }
}

/// The saved partial epoch a run continues, if any: a checkpoint taken inside epoch
/// `epochs_trained + 1` resumes it at its next step, with the same data order (derived
/// from the seed and the epoch number), but only over the same batches; otherwise the
/// epoch restarts.
pub(crate) fn resumable(
    progress: Option<EpochProgress>,
    epochs_trained: u32,
    batch_size: usize,
    train_count: usize,
    model: &str,
) -> Option<EpochProgress> {
    progress
        .filter(|p| p.epoch == epochs_trained + 1)
        .filter(|p| {
            let same = p.batch_size == batch_size as u64 && p.train_sequences == train_count as u64;
            if !same {
                tracing::warn!(
                    model = model,
                    "the partial epoch was run with other batches; restarting it"
                );
            }
            same
        })
}

/// A technique trained by epochs over shuffled batches of examples.
pub(crate) trait EpochTechnique {
    type Learner: Learner;
    /// What a batch's forward pass leaves for its update.
    type Pending;

    fn learner(&self) -> &Self::Learner;

    /// An epoch begins (or resumes).
    fn begin_epoch(&mut self) {}

    /// The loss of the examples `idx`, batch `step` (0-based) of `epoch`, and what the
    /// update needs. Nothing is updated yet: the guard sees the loss first.
    fn forward(&mut self, epoch: u32, step: usize, idx: &[usize]) -> Result<(f32, Self::Pending)>;

    fn update(&mut self, pending: Self::Pending) -> Result<()>;

    /// After the epoch's batches: its validation loss and loss terms. May add to the
    /// record what the epoch's checkpoint should carry.
    fn evaluate(
        &mut self,
        fitting: &mut Fitting,
        epoch: u32,
    ) -> Result<(Option<f32>, Option<LossParts>)>;

    /// After the epoch's checkpoint: samples, pictures.
    fn after_checkpoint(&mut self, _fitting: &mut Fitting, _epoch: u32) -> Result<()> {
        Ok(())
    }
}

/// The shape of an epoch run.
pub(crate) struct EpochPlan {
    pub epochs: u32,
    pub batch_size: usize,
    /// The training examples in their unshuffled order.
    pub examples: Vec<usize>,
    pub validation_examples: u64,
    /// Also checkpoint every this many steps inside an epoch (0: at epoch ends only).
    pub checkpoint_every_steps: u32,
    pub spikes: Spikes,
    pub divergence_factor: f32,
    pub vocab_size: Option<u32>,
}

/// Runs `plan.epochs` more epochs of `technique`, checkpointing after each (and every
/// `checkpoint_every_steps`); returns the last epoch's mean loss.
pub(crate) fn fit_epochs<T: EpochTechnique>(
    fitting: &mut Fitting,
    plan: &EpochPlan,
    technique: &mut T,
) -> Result<f32> {
    let train_count = plan.examples.len();
    let batch_size = plan.batch_size;
    let steps_per_epoch = train_count.div_ceil(batch_size) as u32;
    let record = &fitting.record;
    let resume = resumable(
        record.progress.clone(),
        record.epochs_trained,
        batch_size,
        train_count,
        &record.name,
    );
    let first_epoch = record.epochs_trained + 1;
    let last_epoch = record.epochs_trained + plan.epochs;
    let started = TrainEvent::Started {
        model: record.name.clone(),
        device: device_name(fitting.device),
        kind: record.kind(),
        unit: Unit::Epochs,
        first: first_epoch,
        count: plan.epochs,
        first_step: resume.as_ref().map_or(0, |p| p.step),
        steps_per_epoch: Some(steps_per_epoch),
        train_examples: train_count as u64,
        validation_examples: plan.validation_examples,
        vocab_size: plan.vocab_size,
    };
    fitting.send(started)?;
    let progress = |epoch: u32, step: usize, loss_sum: f64, seen: usize| EpochProgress {
        epoch,
        step: step as u32,
        loss_sum,
        seen: seen as u64,
        batch_size: batch_size as u64,
        train_sequences: train_count as u64,
    };

    let mut order = plan.examples.clone();
    let mut last_loss = f32::NAN;
    for epoch in first_epoch..=last_epoch {
        let epoch_start = Instant::now();
        order.copy_from_slice(&plan.examples);
        order.shuffle(&mut rng_for(fitting.seed, epoch, 2));
        let partial = resume.as_ref().filter(|p| p.epoch == epoch);
        let skip = partial.map_or(0, |p| p.step as usize);
        let mut loss_sum = partial.map_or(0.0, |p| p.loss_sum);
        let mut seen = partial.map_or(0, |p| p.seen as usize);
        let mut seen_here = 0usize;
        let mut saved_at = skip;
        let best = fitting.record.loss_history.iter().copied().reduce(f32::min);
        let mut guard = Guard::new(plan.spikes, plan.divergence_factor, best);
        technique.begin_epoch();
        for (step, idx) in order.chunks(batch_size).enumerate().skip(skip) {
            if let Some(stop) = fitting.sink.should_stop() {
                // Keep every step done so far: the run resumes here.
                if step > saved_at {
                    fitting.record.progress = Some(progress(epoch, step, loss_sum, seen));
                    let checkpoint = fitting.save(technique.learner())?;
                    let _ = fitting.sink.send(TrainEvent::Checkpoint {
                        epoch: Some(epoch),
                        step: step as u32,
                        checkpoint,
                    });
                }
                return Err(stop.into());
            }
            let (value, pending) = technique.forward(epoch, step, idx)?;
            guard
                .batch(step, value, seen_here)
                .map_err(|what| fitting.diverged(Unit::Epochs, epoch.into(), &what))?;
            technique.update(pending)?;
            loss_sum += value as f64 * idx.len() as f64;
            seen += idx.len();
            seen_here += idx.len();
            let rate = seen_here as f32 / epoch_start.elapsed().as_secs_f32().max(1e-6);
            fitting.send(TrainEvent::Batch {
                epoch: Some(epoch),
                step: step as u32 + 1,
                last_step: steps_per_epoch,
                loss: value,
                rate,
            })?;
            let done = step + 1;
            if plan.checkpoint_every_steps > 0
                && done % plan.checkpoint_every_steps as usize == 0
                && done < steps_per_epoch as usize
            {
                fitting.record.progress = Some(progress(epoch, done, loss_sum, seen));
                let checkpoint = fitting.save(technique.learner())?;
                saved_at = done;
                fitting.send(TrainEvent::Checkpoint {
                    epoch: Some(epoch),
                    step: done as u32,
                    checkpoint,
                })?;
            }
        }
        last_loss = (loss_sum / seen as f64) as f32;
        guard
            .epoch(last_loss)
            .map_err(|what| fitting.diverged(Unit::Epochs, epoch.into(), &what))?;
        let (val_loss, parts) = technique.evaluate(fitting, epoch)?;
        fitting.send(TrainEvent::EpochEnd {
            epoch,
            loss: last_loss,
            val_loss,
            seconds: epoch_start.elapsed().as_secs_f32(),
            parts,
        })?;

        let record = &mut fitting.record;
        record.epochs_trained = epoch;
        record.progress = None;
        record.loss_history.push(last_loss);
        if let Some(v) = val_loss {
            record.val_loss_history.push(v);
        }
        let checkpoint = fitting.save(technique.learner())?;
        fitting.send(TrainEvent::Checkpoint {
            epoch: Some(epoch),
            step: steps_per_epoch,
            checkpoint,
        })?;
        technique.after_checkpoint(fitting, epoch)?;
    }
    Ok(last_loss)
}

/// A technique trained by a stream of steps, reporting every so many.
pub(crate) trait StepTechnique {
    type Learner: Learner;

    fn learner(&self) -> &Self::Learner;

    /// Step `step` (0-based over the model's training): its losses, named; the first is
    /// the one progress events show. A non-finite one stops the run.
    fn step(&mut self, step: u64) -> Result<[(&'static str, f32); 2]>;

    /// The model's figures after step `done` (1-based), before they are checkpointed.
    fn report(&mut self, fitting: &mut Fitting, done: u64) -> Result<()>;
}

/// The shape of a step run.
pub(crate) struct StepPlan {
    pub steps: u32,
    /// Report and checkpoint every this many steps (and after the last).
    pub report_every: u32,
    pub train_examples: u64,
}

/// Runs `plan.steps` more steps of `technique`.
pub(crate) fn fit_steps<T: StepTechnique>(
    fitting: &mut Fitting,
    plan: &StepPlan,
    technique: &mut T,
) -> Result<()> {
    let first_step = fitting.record.steps_trained();
    let last_step = first_step + plan.steps as u64;
    let started = TrainEvent::Started {
        model: fitting.record.name.clone(),
        device: device_name(fitting.device),
        kind: fitting.record.kind(),
        unit: Unit::Steps,
        first: first_step as u32 + 1,
        count: plan.steps,
        first_step: 0,
        steps_per_epoch: None,
        train_examples: plan.train_examples,
        validation_examples: 0,
        vocab_size: None,
    };
    fitting.send(started)?;
    let every = plan.report_every as u64;
    // Steps since the last report over the time since the run began (what the GAN has
    // always reported; see the trainer's report notes).
    let mut in_window = 0usize;
    let window_start = Instant::now();
    for step in first_step..last_step {
        if let Some(stop) = fitting.sink.should_stop() {
            if step > fitting.record.steps_trained() {
                fitting.record.set_steps_trained(step);
                let checkpoint = fitting.save(technique.learner())?;
                let _ = fitting.sink.send(TrainEvent::Checkpoint {
                    epoch: None,
                    step: step as u32,
                    checkpoint,
                });
            }
            return Err(stop.into());
        }
        let losses = technique.step(step)?;
        if losses.iter().any(|(_, v)| !v.is_finite()) {
            let what = losses
                .iter()
                .map(|(name, v)| format!("{name} {v}"))
                .collect::<Vec<_>>()
                .join(", ");
            return Err(fitting.diverged(Unit::Steps, step + 1, &what));
        }
        in_window += 1;
        let done = step + 1;
        let rate = in_window as f32 / window_start.elapsed().as_secs_f32().max(1e-6);
        fitting.send(TrainEvent::Batch {
            epoch: None,
            step: done as u32,
            last_step: last_step as u32,
            loss: losses[0].1,
            rate,
        })?;
        if done % every == 0 || done == last_step {
            in_window = 0;
            technique.report(fitting, done)?;
            fitting.record.set_steps_trained(done);
            let checkpoint = fitting.save(technique.learner())?;
            fitting.send(TrainEvent::Checkpoint {
                epoch: None,
                step: done as u32,
                checkpoint,
            })?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_non_finite_batch_loss_always_stops() {
        for spikes in [Spikes::Smoothed { batch_size: 4 }, Spikes::RunOf(3)] {
            let mut off = Guard::new(spikes, 0.0, None);
            assert_eq!(
                off.batch(6, f32::NAN, 0).unwrap_err(),
                "the loss became NaN at step 7"
            );
            let mut g = Guard::new(spikes, 4.0, Some(1.0));
            assert_eq!(
                g.batch(0, f32::INFINITY, 100).unwrap_err(),
                "the loss became inf at step 1"
            );
        }
    }

    #[test]
    fn the_smoothed_guard_waits_for_ten_batches_then_watches_the_average() {
        let mut g = Guard::new(Spikes::Smoothed { batch_size: 4 }, 2.0, Some(1.0));
        // High losses before ten batches' worth of examples pass.
        for step in 0..10 {
            g.batch(step, 100.0, step * 4).unwrap();
        }
        let err = g.batch(10, 100.0, 40).unwrap_err();
        assert_eq!(
            err,
            "the smoothed batch loss 100.0000 at step 11 is over 2× the best epoch loss 1.0000"
        );
        // A spike is averaged away.
        let mut g = Guard::new(Spikes::Smoothed { batch_size: 1 }, 2.0, Some(1.0));
        for step in 0..20 {
            g.batch(step, 1.0, step).unwrap();
        }
        g.batch(20, 5.0, 20).unwrap();
        // No best epoch yet (a first epoch) or factor 0: nothing to compare with.
        let mut g = Guard::new(Spikes::Smoothed { batch_size: 1 }, 2.0, None);
        g.batch(50, 1e9, 1000).unwrap();
        g.epoch(1e9).unwrap();
        let mut g = Guard::new(Spikes::Smoothed { batch_size: 1 }, 0.0, Some(1.0));
        g.batch(50, 1e9, 1000).unwrap();
        g.epoch(1e9).unwrap();
        let mut g = Guard::new(Spikes::Smoothed { batch_size: 1 }, 2.0, Some(1.0));
        g.epoch(2.0).unwrap();
        assert_eq!(
            g.epoch(2.5).unwrap_err(),
            "the epoch loss 2.5000 is over 2× the best epoch loss 1.0000"
        );
    }

    #[test]
    fn the_run_guard_forgives_spikes_but_not_runs_or_a_high_median() {
        let mut g = Guard::new(Spikes::RunOf(3), 2.0, Some(1.0));
        g.batch(0, 9.0, 0).unwrap();
        g.batch(1, 9.0, 0).unwrap();
        g.batch(2, 1.0, 0).unwrap();
        g.batch(3, 9.0, 0).unwrap();
        g.batch(4, 9.0, 0).unwrap();
        assert_eq!(
            g.batch(5, 9.5, 0).unwrap_err(),
            "3 batches in a row up to step 6 had a loss over 2× the best epoch loss 1.0000 (last 9.5000)"
        );
        let mut g = Guard::new(Spikes::RunOf(3), 2.0, Some(1.0));
        for (step, v) in [1.0, 3.0, 1.0, 3.0, 3.0].into_iter().enumerate() {
            g.batch(step, v, 0).unwrap();
        }
        // The mean (2.2) would pass; the median (3) does not.
        assert_eq!(
            g.epoch(2.2).unwrap_err(),
            "the epoch's median batch loss 3.0000 is over 2× the best epoch loss 1.0000"
        );
        let mut g = Guard::new(Spikes::RunOf(3), 2.0, Some(1.0));
        for (step, v) in [1.0, 30.0, 1.0].into_iter().enumerate() {
            g.batch(step, v, 0).unwrap();
        }
        g.epoch(10.6).unwrap();
    }

    fn progress(epoch: u32, step: u32, batch_size: u64, train: u64) -> EpochProgress {
        EpochProgress {
            epoch,
            step,
            loss_sum: 1.5,
            seen: 12,
            batch_size,
            train_sequences: train,
        }
    }

    #[test]
    fn a_partial_epoch_resumes_only_as_the_next_epoch_with_the_same_batches() {
        let p = progress(3, 5, 16, 100);
        assert_eq!(resumable(Some(p.clone()), 2, 16, 100, "m"), Some(p.clone()));
        assert_eq!(resumable(None, 2, 16, 100, "m"), None);
        // A stale progress (the epoch completed since) is ignored.
        assert_eq!(resumable(Some(p.clone()), 3, 16, 100, "m"), None);
        // Other batches: the epoch restarts.
        assert_eq!(resumable(Some(p.clone()), 2, 32, 100, "m"), None);
        assert_eq!(resumable(Some(p), 2, 16, 99, "m"), None);
    }
}
