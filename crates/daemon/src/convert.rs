//! Between the proto messages and the trainer's types. Zero / unset proto fields mean
//! "the default" (the book's).

use oneiro_models::{CharLstmConfig, GanConfig, VaeConfig};
use oneiro_proto::v1 as pb;
use oneiro_trainer::gan_train::GanTrainOptions;
use oneiro_trainer::store::ModelKind;
use oneiro_trainer::text_train::TextTrainOptions;
use oneiro_trainer::vae_train::VaeTrainOptions;
use oneiro_trainer::{ModelRecord, TrainEvent};

/// A full config from a partial one: unset fields take `base`'s values.
pub fn char_lstm_config(p: Option<&pb::CharLstmConfig>, base: &CharLstmConfig) -> CharLstmConfig {
    let Some(p) = p else { return base.clone() };
    let or = |v: u32, d: usize| if v == 0 { d } else { v as usize };
    CharLstmConfig {
        maxlen: or(p.maxlen, base.maxlen),
        step: or(p.step, base.step),
        hidden: or(p.hidden, base.hidden),
        lowercase: p.lowercase.unwrap_or(base.lowercase),
    }
}

pub fn char_lstm_to_proto(c: &CharLstmConfig) -> pb::CharLstmConfig {
    pb::CharLstmConfig {
        maxlen: c.maxlen as u32,
        step: c.step as u32,
        hidden: c.hidden as u32,
        lowercase: Some(c.lowercase),
    }
}

pub fn vae_config(p: Option<&pb::VaeConfig>, base: &VaeConfig) -> VaeConfig {
    let Some(p) = p else { return base.clone() };
    VaeConfig {
        latent_dim: if p.latent_dim == 0 {
            base.latent_dim
        } else {
            p.latent_dim as usize
        },
        kl_weight: p.kl_weight.map_or(base.kl_weight, f64::from),
    }
}

pub fn vae_to_proto(c: &VaeConfig) -> pb::VaeConfig {
    pb::VaeConfig {
        latent_dim: c.latent_dim as u32,
        kl_weight: Some(c.kl_weight as f32),
    }
}

pub fn gan_config(p: Option<&pb::GanConfig>, base: &GanConfig) -> GanConfig {
    let Some(p) = p else { return base.clone() };
    let or = |v: u32, d: usize| if v == 0 { d } else { v as usize };
    GanConfig {
        latent_dim: or(p.latent_dim, base.latent_dim),
        dropout: p.dropout.map_or(base.dropout, f64::from),
        leaky_slope: p.leaky_slope.map_or(base.leaky_slope, f64::from),
        generator_seed_channels: or(p.generator_seed_channels, base.generator_seed_channels),
        generator_channels: or(p.generator_channels, base.generator_channels),
        discriminator_channels: or(p.discriminator_channels, base.discriminator_channels),
    }
}

pub fn gan_to_proto(c: &GanConfig) -> pb::GanConfig {
    pb::GanConfig {
        latent_dim: c.latent_dim as u32,
        dropout: Some(c.dropout as f32),
        leaky_slope: Some(c.leaky_slope as f32),
        generator_seed_channels: c.generator_seed_channels as u32,
        generator_channels: c.generator_channels as u32,
        discriminator_channels: c.discriminator_channels as u32,
    }
}

pub fn gan_train_options(p: Option<&pb::TrainOptions>) -> GanTrainOptions {
    let d = GanTrainOptions::default();
    let Some(p) = p else { return d };
    let or = |v: u32, d: usize| if v == 0 { d } else { v as usize };
    GanTrainOptions {
        steps: if p.steps == 0 { d.steps } else { p.steps },
        batch_size: or(p.batch_size, d.batch_size),
        discriminator_lr: p.discriminator_lr.map_or(d.discriminator_lr, f64::from),
        generator_lr: p.generator_lr.map_or(d.generator_lr, f64::from),
        clip_value: p.clip_value.map_or(d.clip_value, |c| f64::from(c).max(0.0)),
        decay: p.decay.unwrap_or(d.decay),
        seed: p.seed,
        sample_every: if p.sample_every == 0 {
            d.sample_every
        } else {
            p.sample_every
        },
        sample_count: or(p.sample_count, d.sample_count),
    }
}

pub fn model_info(r: &ModelRecord) -> pb::ModelInfo {
    let kind = match r.kind {
        ModelKind::CharLstm => pb::ModelKind::CharLstm,
        ModelKind::Vae => pb::ModelKind::Vae,
        ModelKind::Gan => pb::ModelKind::Gan,
    };
    let config = match (&r.char_lstm, &r.vae, &r.gan) {
        (Some(c), _, _) => Some(pb::model_info::Config::CharLstm(char_lstm_to_proto(c))),
        (None, Some(v), _) => Some(pb::model_info::Config::Vae(vae_to_proto(v))),
        (None, None, Some(g)) => Some(pb::model_info::Config::Gan(gan_to_proto(g))),
        (None, None, None) => None,
    };
    pb::ModelInfo {
        name: r.name.clone(),
        kind: kind as i32,
        config,
        steps_trained: r.steps_trained,
        classes_with_means: r
            .class_means
            .as_ref()
            .map_or(0, |m| m.iter().filter(|c| !c.is_empty()).count() as u32),
        epochs_trained: r.epochs_trained,
        vocab_size: r.vocab.as_ref().map_or(0, |v| v.len() as u32),
        parameters: r.parameters,
        loss_history: r.loss_history.clone(),
        val_loss_history: r.val_loss_history.clone(),
        updated_unix: r.updated_unix,
    }
}

pub fn train_options(p: Option<&pb::TrainOptions>) -> TextTrainOptions {
    let d = TextTrainOptions::default();
    let Some(p) = p else { return d };
    TextTrainOptions {
        epochs: if p.epochs == 0 { d.epochs } else { p.epochs },
        batch_size: if p.batch_size == 0 {
            d.batch_size
        } else {
            p.batch_size as usize
        },
        learning_rate: p.learning_rate.map(f64::from),
        validation_split: p.validation_split,
        seed: p.seed,
        sample_temperatures: if p.no_samples {
            vec![]
        } else if p.sample_temperatures.is_empty() {
            d.sample_temperatures
        } else {
            p.sample_temperatures.clone()
        },
        sample_length: if p.sample_length == 0 {
            d.sample_length
        } else {
            p.sample_length as usize
        },
        checkpoint_every_steps: p.checkpoint_every_steps,
        // Zero is "unset" in proto3: the default; a negative factor switches it off.
        divergence_factor: if p.divergence_factor == 0.0 {
            d.divergence_factor
        } else {
            p.divergence_factor.max(0.0)
        },
    }
}

pub fn vae_train_options(p: Option<&pb::TrainOptions>) -> VaeTrainOptions {
    let d = VaeTrainOptions::default();
    let Some(p) = p else { return d };
    let or = |v: u32, d: usize| if v == 0 { d } else { v as usize };
    VaeTrainOptions {
        epochs: if p.epochs == 0 { d.epochs } else { p.epochs },
        batch_size: or(p.batch_size, d.batch_size),
        learning_rate: p.learning_rate.map(f64::from),
        seed: p.seed,
        max_train_images: p.max_train_images as usize,
        max_validation_images: p.max_validation_images as usize,
        grid_size: if p.no_samples {
            0
        } else {
            or(p.grid_size, d.grid_size)
        },
        checkpoint_every_steps: p.checkpoint_every_steps,
        divergence_factor: if p.divergence_factor == 0.0 {
            d.divergence_factor
        } else {
            p.divergence_factor.max(0.0)
        },
    }
}

pub fn train_event(e: TrainEvent) -> pb::TrainEvent {
    use pb::train_event::Event;
    let event = match e {
        TrainEvent::Started {
            model,
            device,
            first_epoch,
            epochs,
            first_step,
            steps_per_epoch,
            train_sequences,
            validation_sequences,
            vocab_size,
        } => Event::Started(pb::TrainStarted {
            model,
            device,
            first_epoch,
            epochs,
            first_step,
            steps_per_epoch,
            train_sequences,
            validation_sequences,
            vocab_size,
        }),
        TrainEvent::Batch {
            epoch,
            step,
            steps_per_epoch,
            loss,
            sequences_per_second,
        } => Event::Batch(pb::BatchProgress {
            epoch,
            step,
            steps_per_epoch,
            loss,
            sequences_per_second,
        }),
        TrainEvent::EpochEnd {
            epoch,
            loss,
            val_loss,
            seconds,
            parts,
        } => Event::EpochEnd(pb::EpochEnd {
            epoch,
            loss,
            val_loss,
            seconds,
            reconstruction_loss: parts.as_ref().map(|p| p.reconstruction),
            kl_loss: parts.as_ref().map(|p| p.kl),
            val_reconstruction_loss: parts.as_ref().and_then(|p| p.val_reconstruction),
            val_kl_loss: parts.as_ref().and_then(|p| p.val_kl),
        }),
        TrainEvent::GanReport {
            step,
            discriminator_loss,
            adversarial_loss,
            discriminator_accuracy,
            discriminator_lr,
            generator_lr,
            generated_png,
            real_png,
            warning,
        } => Event::Gan(pb::GanProgress {
            step,
            discriminator_loss,
            adversarial_loss,
            discriminator_accuracy,
            discriminator_lr,
            generator_lr,
            generated_png,
            real_png,
            warning: warning.unwrap_or_default(),
        }),
        TrainEvent::Image {
            epoch,
            step,
            caption,
            png,
        } => Event::Image(pb::ImageSample {
            epoch,
            step,
            caption,
            png,
        }),
        TrainEvent::Sample {
            epoch,
            temperature,
            seed_text,
            text,
        } => Event::Sample(pb::TextSample {
            epoch,
            temperature,
            seed_text,
            text,
        }),
        TrainEvent::Checkpoint {
            epoch,
            step,
            checkpoint,
        } => Event::Checkpoint(pb::CheckpointWritten {
            epoch,
            checkpoint,
            step,
        }),
        TrainEvent::Finished {
            epochs_trained,
            final_loss,
            seconds,
        } => Event::Finished(pb::TrainFinished {
            epochs_trained,
            final_loss,
            seconds,
        }),
    };
    pb::TrainEvent {
        job_id: String::new(),
        event: Some(event),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_config_fields_keep_the_base_values() {
        let base = CharLstmConfig {
            maxlen: 40,
            ..Default::default()
        };
        let p = pb::CharLstmConfig {
            hidden: 64,
            ..Default::default()
        };
        let c = char_lstm_config(Some(&p), &base);
        assert_eq!((c.maxlen, c.step, c.hidden, c.lowercase), (40, 3, 64, true));
    }

    #[test]
    fn default_train_options_are_the_books() {
        let o = train_options(Some(&pb::TrainOptions::default()));
        assert_eq!(o, TextTrainOptions::default());
        let o = train_options(Some(&pb::TrainOptions {
            no_samples: true,
            ..Default::default()
        }));
        assert!(o.sample_temperatures.is_empty());
        let v = vae_train_options(Some(&pb::TrainOptions::default()));
        assert_eq!(v, VaeTrainOptions::default());
        assert_eq!((v.epochs, v.batch_size, v.grid_size), (10, 16, 15));
    }
}
