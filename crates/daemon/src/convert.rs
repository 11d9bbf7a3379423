//! Between the proto messages and the trainer's types. Zero / unset proto fields mean
//! "the default" (the book's).

use oneiro_models::{CharLstmConfig, VaeConfig};
use oneiro_proto::v1 as pb;
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

pub fn model_info(r: &ModelRecord) -> pb::ModelInfo {
    let kind = match r.kind {
        ModelKind::CharLstm => pb::ModelKind::CharLstm,
        ModelKind::Vae => pb::ModelKind::Vae,
    };
    let config = match (&r.char_lstm, &r.vae) {
        (Some(c), _) => Some(pb::model_info::Config::CharLstm(char_lstm_to_proto(c))),
        (None, Some(v)) => Some(pb::model_info::Config::Vae(vae_to_proto(v))),
        (None, None) => None,
    };
    pb::ModelInfo {
        name: r.name.clone(),
        kind: kind as i32,
        config,
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
