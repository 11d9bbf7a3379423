//! Training events from the trainer's types to the wire.

use oneiro_proto::v1 as pb;
use oneiro_trainer::TrainEvent;

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
            ..Default::default()
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
            ..Default::default()
        }),
    };
    pb::TrainEvent {
        job_id: String::new(),
        event: Some(event),
    }
}
