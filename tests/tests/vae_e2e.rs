//! The VAE through a real daemon: training as a job on digits from a (seeded, offline) hub
//! cache and inline, the latent grid, decode, encode, concept vectors, morphing, and the
//! errors of each.

use std::time::Duration;

use oneiro_client::{Client, pb};
use oneiro_e2e::{code, start, status};
use oneiro_trainer::hub::{HubOptions, seed_cache};
use oneiro_trainer::imageio;
use oneiro_trainer::mnist::{self, Split, synthetic};
use pb::train_event::Event;
use tonic::Code;

fn options(epochs: u32) -> pb::TrainOptions {
    pb::TrainOptions {
        epochs: Some(epochs),
        seed: Some(5),
        grid_size: Some(4),
        ..Default::default()
    }
}

fn digits_request(
    model: &str,
    source: pb::digit_data::Source,
    opts: pb::TrainOptions,
) -> pb::TrainRequest {
    pb::TrainRequest {
        model: model.into(),
        create_if_missing: true,
        stop_on_disconnect: false,
        create_config: Some(pb::train_request::CreateConfig::Vae(
            pb::VaeConfig::default(),
        )),
        options: Some(opts),
        data: Some(pb::train_request::Data::Digits(pb::DigitData {
            source: Some(source),
        })),
    }
}

fn inline(train: &Split, test: &Split) -> pb::digit_data::Source {
    pb::digit_data::Source::Inline(pb::InlineDigits {
        train_images: train.images.clone(),
        train_labels: train.labels.clone(),
        test_images: test.images.clone(),
        test_labels: test.labels.clone(),
    })
}

async fn events(stream: &mut tonic::Streaming<pb::TrainEvent>) -> Vec<Event> {
    let mut out = Vec::new();
    while let Some(ev) = tokio::time::timeout(Duration::from_secs(300), stream.message())
        .await
        .expect("events keep coming")
        .expect("a healthy stream")
    {
        out.extend(ev.event);
    }
    out
}

fn png_size(bytes: &[u8]) -> (u32, u32) {
    let img = imageio::decode(bytes, "reply").expect("a PNG");
    (img.width(), img.height())
}

fn png_of(pixels: &[f32], w: u32, h: u32, channels: usize) -> Vec<u8> {
    imageio::encode_png(pixels, w, h, channels).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vae_trains_from_the_hub_cache_and_serves_its_latent_space() {
    let state = tempfile::tempdir().unwrap();
    // MNIST's hub layout, seeded into a cache the daemon reads offline.
    let cache = state.path().join("hub");
    let (train, test) = (synthetic(192, 1), synthetic(48, 2));
    let dir = tempfile::tempdir().unwrap();
    let (tp, vp) = (
        dir.path().join("train.parquet"),
        dir.path().join("test.parquet"),
    );
    mnist::write_parquet(&tp, &train).unwrap();
    mnist::write_parquet(&vp, &test).unwrap();
    seed_cache(
        &cache,
        mnist::HUB_REPO,
        &[
            (mnist::HUB_FILES[0], &std::fs::read(&tp).unwrap()),
            (mnist::HUB_FILES[1], &std::fs::read(&vp).unwrap()),
        ],
    )
    .unwrap();
    let hub = HubOptions {
        offline: true,
        cache_dir: Some(cache),
        revision: None,
    };
    let daemon = start(state.path(), |c| c.hub = hub).await;
    let mut client = Client::connect(&daemon.endpoint()).await.unwrap();

    // Training: the default source is the hub's MNIST.
    let mut req = digits_request(
        "digits",
        pb::digit_data::Source::Hub(Default::default()),
        options(2),
    );
    req.data = Some(pb::train_request::Data::Digits(pb::DigitData {
        source: None,
    }));
    let evs = events(&mut client.train(req).await.unwrap()).await;
    let started = evs.iter().find_map(|e| match e {
        Event::Started(s) => Some(s.clone()),
        _ => None,
    });
    let s = started.expect("a started event");
    assert_eq!(
        (s.train_sequences, s.validation_sequences, s.steps_per_epoch),
        (192, 48, 12)
    );
    let ends: Vec<&pb::EpochEnd> = evs
        .iter()
        .filter_map(|e| match e {
            Event::EpochEnd(e) => Some(e),
            _ => None,
        })
        .collect();
    assert_eq!(ends.len(), 2);
    for e in &ends {
        let (r, k) = (e.val_reconstruction_loss.unwrap(), e.val_kl_loss.unwrap());
        assert!((r + k - e.val_loss.unwrap()).abs() < 1e-4);
        assert!(e.reconstruction_loss.unwrap() > 0.0 && e.kl_loss.unwrap() > 0.0);
    }
    assert!(ends[1].val_loss.unwrap() < ends[0].val_loss.unwrap());
    let grids: Vec<&pb::ImageSample> = evs
        .iter()
        .filter_map(|e| match e {
            Event::Image(i) => Some(i),
            _ => None,
        })
        .collect();
    assert_eq!(grids.len(), 2);
    assert_eq!(png_size(&grids[0].png), (4 * 28, 4 * 28));
    assert!(matches!(evs.last(), Some(Event::Finished(f)) if f.epochs_trained == 2));

    let info = client.describe_model("digits").await.unwrap();
    assert_eq!(info.kind, pb::ModelKind::Vae as i32);
    assert_eq!(info.classes_with_means, 10);
    assert!(
        matches!(info.config, Some(pb::model_info::Config::Vae(ref v)) if v.latent_dim == Some(2))
    );

    // The latent grid, and decoding chosen points.
    let grid = client
        .vae_grid(pb::VaeGridRequest {
            model: "digits".into(),
            size: Some(5),
        })
        .await
        .unwrap();
    assert_eq!((grid.width, grid.height), (140, 140));
    assert_eq!(png_size(&grid.png), (140, 140));
    let point = |v: &[f32]| pb::LatentPoint { values: v.to_vec() };
    let decoded = client
        .vae_decode(pb::VaeDecodeRequest {
            model: "digits".into(),
            points: vec![point(&[0.5, -1.2]), point(&[0.0, 0.0])],
        })
        .await
        .unwrap();
    assert_eq!(decoded.images.len(), 2);
    assert_eq!(png_size(&decoded.images[0].png), (28, 28));
    let e = client
        .vae_decode(pb::VaeDecodeRequest {
            model: "digits".into(),
            points: vec![point(&[1.0, 2.0, 3.0])],
        })
        .await
        .unwrap_err();
    let s = status(e);
    assert_eq!(s.code(), Code::InvalidArgument);
    assert!(s.message().contains("3 coordinates"), "{}", s.message());

    // Encoding images of any size and colour; a decoded digit encodes near its point.
    let odd = png_of(&vec![0.3; 50 * 41 * 3], 50, 41, 3);
    let codes = client
        .vae_encode(pb::VaeEncodeRequest {
            model: "digits".into(),
            images: vec![decoded.images[1].png.clone(), odd],
        })
        .await
        .unwrap();
    assert_eq!(codes.codes.len(), 2);
    assert_eq!(codes.codes[0].mean.len(), 2);
    assert_eq!(codes.codes[0].log_var.len(), 2);
    let e = client
        .vae_encode(pb::VaeEncodeRequest {
            model: "digits".into(),
            images: vec![b"not a picture".to_vec()],
        })
        .await
        .unwrap_err();
    let s = status(e);
    assert_eq!(s.code(), Code::InvalidArgument);
    assert!(s.message().contains("images[0]"), "{}", s.message());

    // Concept vectors: class means from the validation digits.
    let one: Vec<f32> = test.image(1).iter().map(|&p| p as f32 / 255.0).collect();
    let c = client
        .vae_concept(pb::VaeConceptRequest {
            model: "digits".into(),
            from_class: 1,
            to_class: 0,
            vector: None,
            amount: Some(1.0),
            image: png_of(&one, 28, 28, 1),
        })
        .await
        .unwrap();
    assert_eq!(c.vector.unwrap().values.len(), 2);
    assert_eq!(png_size(&c.image.unwrap().png), (28, 28));
    assert_eq!(c.code.unwrap().mean.len(), 2);
    let e = client
        .vae_concept(pb::VaeConceptRequest {
            model: "digits".into(),
            from_class: 1,
            to_class: 12,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(code(e), Code::InvalidArgument);

    // Morphing, as PNG frames and a GIF.
    let m = client
        .vae_morph(pb::VaeMorphRequest {
            model: "digits".into(),
            from_image: png_of(&one, 28, 28, 1),
            to_image: grid.png.clone(),
            frames: Some(5),
            gif: true,
            frame_ms: Some(50),
        })
        .await
        .unwrap();
    assert_eq!(m.frames.len(), 5);
    assert!(m.gif.starts_with(b"GIF89a"));
    let e = client
        .vae_morph(pb::VaeMorphRequest {
            model: "digits".into(),
            frames: Some(5),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(code(e), Code::InvalidArgument);

    // A VAE is not a text model, and the other way round.
    let e = client
        .generate_text(pb::GenerateRequest {
            model: "digits".into(),
            length: Some(5),
            ..Default::default()
        })
        .await
        .unwrap_err();
    let s = status(e);
    assert_eq!(s.code(), Code::FailedPrecondition);
    assert!(
        s.message().contains("vae model, not a char-lstm"),
        "{}",
        s.message()
    );
    let e = client
        .vae_grid(pb::VaeGridRequest {
            model: "nobody".into(),
            size: Some(3),
        })
        .await
        .unwrap_err();
    assert_eq!(code(e), Code::NotFound);

    // A hub dataset missing from the offline cache, and malformed inline digits: clear
    // errors, no model left behind, and the daemon keeps serving.
    let req = digits_request(
        "other",
        pb::digit_data::Source::Hub(pb::HubDataset {
            repo: "someone/absent".into(),
            ..Default::default()
        }),
        options(1),
    );
    let s = status(client.train(req).await.unwrap_err());
    assert_eq!(s.code(), Code::Unavailable);
    assert!(s.message().contains("someone/absent"), "{}", s.message());
    let mut bad = synthetic(4, 3);
    bad.labels[2] = 11;
    let s = status(
        client
            .train(digits_request(
                "other",
                inline(&bad, &synthetic(2, 4)),
                options(1),
            ))
            .await
            .unwrap_err(),
    );
    assert_eq!(s.code(), Code::InvalidArgument);
    assert!(s.message().contains("label 11"), "{}", s.message());
    let mut short = synthetic(4, 3);
    short.images.truncate(100);
    assert_eq!(
        code(
            client
                .train(digits_request(
                    "other",
                    inline(&short, &synthetic(2, 4)),
                    options(1)
                ))
                .await
                .unwrap_err()
        ),
        Code::InvalidArgument
    );
    assert_eq!(
        code(client.describe_model("other").await.unwrap_err()),
        Code::NotFound
    );
    client.info().await.unwrap();
    daemon.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inline_vae_job_is_cancelled_and_resumed_from_its_saved_digits() {
    let state = tempfile::tempdir().unwrap();
    let daemon = start(state.path(), |_| {}).await;
    let mut client = Client::connect(&daemon.endpoint()).await.unwrap();
    let opts = pb::TrainOptions {
        checkpoint_every_steps: 1,
        no_samples: true,
        ..options(2)
    };
    let mut stream = client
        .train(digits_request(
            "resumable",
            inline(&synthetic(64, 1), &synthetic(16, 2)),
            opts,
        ))
        .await
        .unwrap();
    let mut job_id = String::new();
    // Cancel after the first in-epoch checkpoint.
    while let Some(ev) = stream.message().await.unwrap() {
        job_id = ev.job_id.clone();
        if let Some(Event::Checkpoint(_)) = ev.event {
            client.cancel_job(&job_id).await.unwrap();
            break;
        }
    }
    let rest = events(&mut stream).await;
    assert!(
        rest.iter()
            .any(|e| matches!(e, Event::Stopped(s) if s.state == pb::JobState::Cancelled as i32)),
        "{rest:?}"
    );
    let before = client.describe_model("resumable").await.unwrap();
    assert!(before.epochs_trained < 2);

    let evs = events(&mut client.resume_job(&job_id).await.unwrap()).await;
    let started = evs
        .iter()
        .find_map(|e| match e {
            Event::Started(s) => Some(s.clone()),
            _ => None,
        })
        .unwrap();
    assert!(
        started.first_step > 0 || started.first_epoch > 1,
        "{started:?}"
    );
    assert!(
        matches!(evs.last(), Some(Event::Finished(f)) if f.epochs_trained == 2),
        "{evs:?}"
    );
    assert_eq!(
        client
            .describe_model("resumable")
            .await
            .unwrap()
            .loss_history
            .len(),
        2
    );
    daemon.shutdown().await.unwrap();
}
