//! Typed progress events of a training run. The trainer produces them; sinks (the gRPC
//! stream, the CLI's progress bar, logs) consume them.

use crate::store::ModelKind;

/// What a model's training progress is counted in: epochs over the data (text, VAE) or
/// steps (the GAN, which walks its data without epochs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unit {
    Epochs,
    Steps,
}

impl Unit {
    pub fn name(self) -> &'static str {
        match self {
            Self::Epochs => "epochs",
            Self::Steps => "steps",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum TrainEvent {
    Started {
        model: String,
        device: String,
        kind: ModelKind,
        /// What `first` and `count` count.
        unit: Unit,
        /// The first epoch or step this run trains (1-based).
        first: u32,
        /// Epochs or steps this run trains.
        count: u32,
        /// Epochs: steps of epoch `first` already done before this run (a resumed
        /// epoch). Steps: 0.
        first_step: u32,
        /// Epochs: steps (batches) per epoch. Steps: `None`.
        steps_per_epoch: Option<u32>,
        /// Training examples (text windows, images) and validation examples.
        train_examples: u64,
        validation_examples: u64,
        /// Text models only.
        vocab_size: Option<u32>,
    },
    Batch {
        /// The epoch in progress; `None` when training counts steps.
        epoch: Option<u32>,
        /// Steps done: of `epoch`, or of the model's whole training when counting steps.
        step: u32,
        /// Where `step` is heading: steps per epoch, or the model's step count at the end
        /// of this run.
        last_step: u32,
        loss: f32,
        /// Epochs: examples per second over the epoch so far. Steps: steps since the last
        /// report per second since the run began.
        rate: f32,
    },
    EpochEnd {
        epoch: u32,
        loss: f32,
        val_loss: Option<f32>,
        seconds: f32,
        /// Models whose loss is a sum (the VAE) report its terms too.
        parts: Option<LossParts>,
    },
    /// The GAN's figures every `sample_every` steps (means over the window).
    GanReport {
        step: u64,
        discriminator_loss: f32,
        adversarial_loss: f32,
        /// Share of the window's real and generated images the discriminator got right.
        discriminator_accuracy: f32,
        discriminator_lr: f32,
        generator_lr: f32,
        generated_png: Vec<u8>,
        real_png: Vec<u8>,
        /// Set when the book's failure signature shows, with its advice.
        warning: Option<String>,
    },
    /// A picture of the model's progress (the VAE's latent grid).
    Image {
        epoch: u32,
        step: u32,
        /// What the picture shows, e.g. "latent grid 15×15".
        caption: String,
        png: Vec<u8>,
    },
    Sample {
        epoch: u32,
        temperature: f32,
        seed_text: String,
        text: String,
    },
    Checkpoint {
        /// The epoch in progress or just ended; `None` when training counts steps.
        epoch: Option<u32>,
        /// Steps done at this checkpoint: of `epoch` (all of them at an epoch end), or of
        /// the model's whole training when counting steps.
        step: u32,
        checkpoint: String,
    },
    Finished {
        unit: Unit,
        /// The model's progress after the run, in `unit` (epochs or steps trained).
        units_trained: u32,
        /// Epochs: the last epoch's mean loss. Steps (GAN): the last report's mean
        /// adversarial loss.
        final_loss: f32,
        seconds: f32,
    },
}

/// The VAE's loss split into its two terms, for training and validation.
#[derive(Clone, Debug, PartialEq)]
pub struct LossParts {
    pub reconstruction: f32,
    pub kl: f32,
    pub val_reconstruction: Option<f32>,
    pub val_kl: Option<f32>,
}

/// Returned by a sink that wants the run to stop (its client went away).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stop(pub String);

/// Where a run sends its events. `Batch` events may be dropped by a sink that is
/// behind; the others must be delivered or the sink must return `Stop`.
pub trait EventSink {
    fn send(&mut self, event: TrainEvent) -> Result<(), Stop>;
    /// Polled once per step: `Some` stops the run at this step.
    fn should_stop(&mut self) -> Option<Stop> {
        None
    }
}

impl<F: FnMut(TrainEvent) -> Result<(), Stop>> EventSink for F {
    fn send(&mut self, event: TrainEvent) -> Result<(), Stop> {
        self(event)
    }
}
