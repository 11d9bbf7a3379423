//! Typed progress events of a training run. The trainer produces them; sinks (the gRPC
//! stream, the CLI's progress bar, logs) consume them.

#[derive(Clone, Debug, PartialEq)]
pub enum TrainEvent {
    Started {
        model: String,
        device: String,
        first_epoch: u32,
        epochs: u32,
        /// Steps of `first_epoch` already done before this run (a resumed epoch).
        first_step: u32,
        steps_per_epoch: u32,
        train_sequences: u64,
        validation_sequences: u64,
        vocab_size: u32,
    },
    Batch {
        epoch: u32,
        step: u32,
        steps_per_epoch: u32,
        loss: f32,
        sequences_per_second: f32,
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
    /// A picture of the model's progress (the VAE's latent grid, the GAN's samples).
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
        epoch: u32,
        /// Steps of `epoch` done at this checkpoint (all of them at an epoch end).
        step: u32,
        checkpoint: String,
    },
    Finished {
        epochs_trained: u32,
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
