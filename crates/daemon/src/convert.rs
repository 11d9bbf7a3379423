//! The trainer's events and kinds on the wire.

use oneiro_proto::v1 as pb;
use oneiro_trainer::{ModelKind, TrainEvent, Unit};

pub fn model_kind(k: ModelKind) -> pb::ModelKind {
    match k {
        ModelKind::CharLstm => pb::ModelKind::CharLstm,
        ModelKind::Vae => pb::ModelKind::Vae,
        ModelKind::Gan => pb::ModelKind::Gan,
    }
}

pub fn progress_unit(u: Unit) -> pb::ProgressUnit {
    match u {
        Unit::Epochs => pb::ProgressUnit::Epochs,
        Unit::Steps => pb::ProgressUnit::Steps,
    }
}

pub fn train_event(e: TrainEvent) -> pb::TrainEvent {
    use pb::train_event::Event;
    let event = match e {
        TrainEvent::Started {
            model,
            device,
            kind,
            unit,
            first,
            count,
            first_step,
            steps_per_epoch,
            train_examples,
            validation_examples,
            vocab_size,
        } => {
            // A run by steps (the GAN) keeps the shape daemons sent before `unit`
            // existed, so older clients still draw its progress: one "epoch" whose
            // steps are the model's steps.
            let (first_epoch, epochs, first_step, steps_per_epoch) = match unit {
                Unit::Epochs => (first, count, first_step, steps_per_epoch.unwrap_or(0)),
                Unit::Steps => (1, 1, first - 1, first - 1 + count),
            };
            Event::Started(pb::TrainStarted {
                model,
                device,
                first_epoch,
                epochs,
                first_step,
                steps_per_epoch,
                train_sequences: train_examples,
                validation_sequences: validation_examples,
                vocab_size: vocab_size.unwrap_or(0),
                kind: model_kind(kind) as i32,
                unit: progress_unit(unit) as i32,
            })
        }
        TrainEvent::Batch {
            epoch,
            step,
            last_step,
            loss,
            rate,
        } => Event::Batch(pb::BatchProgress {
            epoch: epoch.unwrap_or(1),
            step,
            steps_per_epoch: last_step,
            loss,
            sequences_per_second: rate,
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
            epoch: epoch.unwrap_or(1),
            checkpoint,
            step,
        }),
        TrainEvent::Finished {
            unit,
            units_trained,
            final_loss,
            seconds,
        } => Event::Finished(pb::TrainFinished {
            // Clients before `unit` read 0 as "a GAN, which counts steps".
            epochs_trained: match unit {
                Unit::Epochs => units_trained,
                Unit::Steps => 0,
            },
            final_loss,
            seconds,
            unit: progress_unit(unit) as i32,
            units_trained,
        }),
    };
    pb::TrainEvent {
        job_id: String::new(),
        event: Some(event),
    }
}
