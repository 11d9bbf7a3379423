//! Writes small trained models of every kind into `<dir>/models/`, with the store format of
//! the code it is built with. Run once with format-1 code to make the fixtures that
//! `tests/format1_compat.rs` reads:
//!
//! ```text
//! cargo run -p oneiro-trainer --example write_format1_fixtures -- crates/trainer/tests/fixtures/format1
//! ```
//!
//! Kept to today's public API so that the fixtures say what that code wrote.

use std::path::PathBuf;

use candle_core::Device;
use oneiro_models::{CharLstmConfig, GanConfig, VaeConfig};
use oneiro_trainer::events::{EventSink, Stop};
use oneiro_trainer::gan::{GanTrainOptions, train_gan};
use oneiro_trainer::mnist::{Mnist, synthetic};
use oneiro_trainer::text::{TextTrainOptions, train_char_lstm};
use oneiro_trainer::vae::{VaeTrainOptions, train_vae};
use oneiro_trainer::{ModelRecord, ModelStore, Result, TrainEvent};

/// The corpus of the text fixtures; `tests/format1_compat.rs` continues on the same text.
const CORPUS: &str = "the cat sat on the mat. ";

fn text_config() -> CharLstmConfig {
    CharLstmConfig {
        maxlen: 8,
        step: 2,
        hidden: 8,
        lowercase: true,
    }
}

fn text_options(epochs: u32) -> TextTrainOptions {
    TextTrainOptions {
        epochs,
        batch_size: 16,
        seed: Some(3),
        sample_temperatures: vec![],
        ..Default::default()
    }
}

/// Stops the run once `after` batches are done (the trainer then checkpoints them).
struct StopAfter(u32);

impl EventSink for StopAfter {
    fn send(&mut self, e: TrainEvent) -> std::result::Result<(), Stop> {
        if matches!(e, TrainEvent::Batch { .. }) {
            self.0 = self.0.saturating_sub(1);
        }
        Ok(())
    }
    fn should_stop(&mut self) -> Option<Stop> {
        (self.0 == 0).then(|| Stop("fixture".into()))
    }
}

fn main() -> Result<()> {
    let dir: PathBuf = std::env::args_os()
        .nth(1)
        .expect("usage: write_format1_fixtures <dir>")
        .into();
    let store = ModelStore::open(&dir)?;
    let dev = Device::Cpu;
    let corpus = CORPUS.repeat(40);
    let quiet = &mut |_: TrainEvent| Ok(());

    // A text model trained for one whole epoch.
    store.create(&ModelRecord::new_char_lstm("text", text_config()))?;
    train_char_lstm(&store, "text", &corpus, &text_options(1), &dev, quiet)?;

    // A text model stopped inside its second epoch: its record carries the epoch progress.
    store.create(&ModelRecord::new_char_lstm("text-partial", text_config()))?;
    train_char_lstm(
        &store,
        "text-partial",
        &corpus,
        &text_options(1),
        &dev,
        quiet,
    )?;
    let stopped = train_char_lstm(
        &store,
        "text-partial",
        &corpus,
        &text_options(1),
        &dev,
        &mut StopAfter(5),
    );
    assert!(stopped.is_err(), "the partial run must stop");

    store.create(&ModelRecord::new_vae("vae", VaeConfig::default()))?;
    let mnist = Mnist {
        train: synthetic(32, 1),
        test: synthetic(16, 2),
    };
    let vae = VaeTrainOptions {
        epochs: 1,
        seed: Some(3),
        grid_size: 0,
        ..Default::default()
    };
    train_vae(&store, "vae", &mnist, &vae, &dev, quiet)?;

    let gan_config = GanConfig {
        generator_seed_channels: 4,
        generator_channels: 8,
        discriminator_channels: 8,
        ..Default::default()
    };
    store.create(&ModelRecord::new_gan("gan", gan_config))?;
    let gan = GanTrainOptions {
        steps: 4,
        seed: Some(1),
        sample_every: 2,
        sample_count: 1,
        ..Default::default()
    };
    let images = oneiro_trainer::cifar::synthetic_blobs(10, 2);
    train_gan(&store, "gan", &images, &gan, &dev, quiet)?;

    for r in store.list()? {
        // Only the current checkpoint is read back: the older one the store keeps would
        // only add to the repository.
        let checkpoints = dir.join("models").join(&r.name).join("checkpoints");
        for entry in std::fs::read_dir(&checkpoints)? {
            let entry = entry?;
            if Some(entry.file_name().to_string_lossy().as_ref()) != r.checkpoint.as_deref() {
                std::fs::remove_dir_all(entry.path())?;
            }
        }
        println!(
            "{} {:?} format {} epochs {} steps {} checkpoint {:?}",
            r.name,
            r.kind(),
            r.format,
            r.epochs_trained,
            r.steps_trained(),
            r.checkpoint
        );
    }
    Ok(())
}
