//! Models written by format 1 (`model.json` with a `kind` and three optional
//! configurations) load, train on, and are saved as format 2. The fixtures were written
//! by `examples/write_format1_fixtures.rs` at the last format-1 commit.

use std::fs;
use std::path::Path;

use candle_core::Device;
use oneiro_models::{CharLstmConfig, GanConfig, VaeConfig};
use oneiro_trainer::gan::{GanTrainOptions, train_gan};
use oneiro_trainer::mnist::{Mnist, synthetic};
use oneiro_trainer::text::{TextTrainOptions, train_char_lstm};
use oneiro_trainer::vae::{VaeTrainOptions, train_vae};
use oneiro_trainer::{ModelKind, ModelRecord, ModelStore, Result, TrainEvent, Unit};

const CORPUS: &str = "the cat sat on the mat. ";

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    fs::create_dir_all(to)?;
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}

/// The fixtures in a scratch state directory (training writes to it).
fn fixtures() -> (tempfile::TempDir, ModelStore) {
    let tmp = tempfile::tempdir().unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/format1");
    copy_dir(&src, tmp.path()).unwrap();
    let store = ModelStore::open(tmp.path()).unwrap();
    (tmp, store)
}

fn text_options() -> TextTrainOptions {
    TextTrainOptions {
        epochs: 1,
        batch_size: 16,
        sample_temperatures: vec![],
        ..Default::default()
    }
}

/// What is on disk says format `want`, and reads back as `record`.
fn on_disk(store: &ModelStore, dir: &Path, record: &ModelRecord, want: u32) -> Result<()> {
    let path = dir.join("models").join(&record.name).join("model.json");
    let json: serde_json::Value = serde_json::from_slice(&fs::read(path)?).unwrap();
    assert_eq!(json["format"], want, "{}", record.name);
    if want == 2 {
        assert_eq!(json["spec"]["kind"], record.kind().name().replace('-', "_"));
        assert!(json.get("kind").is_none());
    }
    assert_eq!(&store.load(&record.name)?, record);
    Ok(())
}

#[test]
fn format1_models_load_as_they_were_written() -> Result<()> {
    let (tmp, store) = fixtures();
    let names: Vec<String> = store.list()?.into_iter().map(|r| r.name).collect();
    assert_eq!(names, ["gan", "text", "text-partial", "vae"]);

    let text = store.load("text")?;
    assert_eq!(text.format, 2, "converted as it is read");
    assert_eq!(text.kind(), ModelKind::CharLstm);
    assert_eq!(
        text.text_config()?,
        &CharLstmConfig {
            maxlen: 8,
            step: 2,
            hidden: 8,
            lowercase: true,
        }
    );
    let mut chars: Vec<char> = CORPUS.chars().collect();
    chars.sort();
    chars.dedup();
    assert_eq!(text.vocab(), Some(&chars[..]));
    assert_eq!(text.vocabulary().unwrap().len(), chars.len());
    assert!(text.seed_text().is_some_and(|s| s.chars().count() == 8));
    assert_eq!((text.epochs_trained, text.progress_units()), (1, 1));
    assert_eq!(text.loss_history.len(), 1);
    assert_eq!(text.seed, Some(3));
    assert!(text.optimizer.as_ref().unwrap().iterations > 0);
    assert!(text.vae_config().is_err() && text.gan_config().is_err());
    assert_eq!(text.steps_trained(), 0);

    let partial = store.load("text-partial")?;
    assert_eq!(partial.epochs_trained, 1);
    assert_eq!(
        partial.progress.as_ref().map(|p| (p.epoch, p.step)),
        Some((2, 5))
    );

    let vae = store.load("vae")?;
    assert_eq!(vae.kind(), ModelKind::Vae);
    assert_eq!(vae.vae_config()?, &VaeConfig::default());
    assert_eq!(vae.epochs_trained, 1);
    assert_eq!(vae.class_means().map(<[_]>::len), Some(10));
    assert_eq!((vae.loss_history.len(), vae.val_loss_history.len()), (1, 1));
    assert_eq!(vae.vocab(), None);

    let gan = store.load("gan")?;
    assert_eq!(gan.kind(), ModelKind::Gan);
    assert_eq!(gan.gan_config()?.discriminator_channels, 8);
    assert_eq!(
        (
            gan.steps_trained(),
            gan.progress_units(),
            gan.epochs_trained
        ),
        (4, 4, 0)
    );
    let steps: Vec<u64> = gan.gan_history().iter().map(|p| p.step).collect();
    assert_eq!(steps, [2, 4]);
    assert_eq!(gan.loss_history.len(), 2);
    assert_eq!(gan.optimizer.as_ref().unwrap().iterations, 4);

    // Loading alone rewrites nothing.
    for r in [&text, &partial, &vae, &gan] {
        let path = tmp.path().join("models").join(&r.name).join("model.json");
        let json: serde_json::Value = serde_json::from_slice(&fs::read(path)?).unwrap();
        assert_eq!(json["format"], 1);
    }
    Ok(())
}

#[test]
fn format1_models_train_on_and_are_saved_as_format2() -> Result<()> {
    let (tmp, store) = fixtures();
    let dev = Device::Cpu;
    let corpus = CORPUS.repeat(40);
    let quiet = &mut |_: TrainEvent| Ok(());

    let before = store.load("text")?;
    let text = train_char_lstm(&store, "text", &corpus, &text_options(), &dev, quiet)?;
    assert_eq!(text.epochs_trained, 2);
    assert_eq!(text.loss_history[0], before.loss_history[0]);
    assert_eq!(text.seed, Some(3), "the saved seed is kept");
    assert_eq!(text.vocab(), before.vocab());
    let iters = |r: &ModelRecord| r.optimizer.as_ref().unwrap().iterations;
    assert_eq!(
        iters(&text),
        2 * iters(&before),
        "the optimizer state resumed"
    );
    on_disk(&store, tmp.path(), &text, 2)?;

    // The partial epoch resumes at its saved step.
    let mut started = None;
    let partial = train_char_lstm(
        &store,
        "text-partial",
        &corpus,
        &text_options(),
        &dev,
        &mut |e| {
            if let TrainEvent::Started {
                first,
                first_step,
                unit,
                ..
            } = e
            {
                started = Some((unit, first, first_step));
            }
            Ok(())
        },
    )?;
    assert_eq!(started, Some((Unit::Epochs, 2, 5)));
    assert_eq!(
        (partial.epochs_trained, partial.progress.clone()),
        (2, None)
    );
    on_disk(&store, tmp.path(), &partial, 2)?;

    let mnist = Mnist {
        train: synthetic(32, 1),
        test: synthetic(16, 2),
    };
    let vae_opts = VaeTrainOptions {
        epochs: 1,
        grid_size: 0,
        ..Default::default()
    };
    let vae = train_vae(&store, "vae", &mnist, &vae_opts, &dev, quiet)?;
    assert_eq!((vae.epochs_trained, vae.loss_history.len()), (2, 2));
    assert_eq!(vae.class_means().map(<[_]>::len), Some(10));
    on_disk(&store, tmp.path(), &vae, 2)?;

    let gan_opts = GanTrainOptions {
        steps: 2,
        sample_every: 2,
        sample_count: 1,
        ..Default::default()
    };
    let images = oneiro_trainer::cifar::synthetic_blobs(10, 2);
    let gan = train_gan(&store, "gan", &images, &gan_opts, &dev, quiet)?;
    assert_eq!(gan.steps_trained(), 6);
    assert_eq!(gan.gan_history().len(), 3);
    assert_eq!(gan.optimizer.as_ref().unwrap().iterations, 6);
    assert_eq!(
        gan.gan_config()?,
        &GanConfig {
            generator_seed_channels: 4,
            generator_channels: 8,
            discriminator_channels: 8,
            ..Default::default()
        }
    );
    on_disk(&store, tmp.path(), &gan, 2)?;
    Ok(())
}
