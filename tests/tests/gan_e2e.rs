//! The DCGAN through a real daemon: adversarial training as a job on CIFAR-10's hub layout
//! (a seeded, offline cache) and on inline images, samples, resume, and bad input.

use std::time::Duration;

use oneiro_client::{Client, pb};
use oneiro_e2e::{code, start, status};
use oneiro_trainer::cifar::{self, synthetic_blobs};
use oneiro_trainer::hub::{HubOptions, seed_cache};
use oneiro_trainer::imageio;
use pb::train_event::Event;
use tonic::Code;

/// The book's architecture at test widths.
fn small() -> pb::GanConfig {
    pb::GanConfig {
        generator_seed_channels: Some(8),
        generator_channels: Some(8),
        discriminator_channels: Some(8),
        ..Default::default()
    }
}

fn request(
    model: &str,
    source: Option<pb::image_data::Source>,
    steps: u32,
    every: u32,
) -> pb::TrainRequest {
    pb::TrainRequest {
        model: model.into(),
        create_if_missing: true,
        stop_on_disconnect: false,
        create_config: Some(pb::train_request::CreateConfig::Gan(small())),
        options: Some(pb::TrainOptions {
            steps: Some(steps),
            batch_size: Some(4),
            sample_every: Some(every),
            sample_count: Some(4),
            seed: Some(3),
            ..Default::default()
        }),
        data: Some(pb::train_request::Data::Images(pb::ImageData {
            source,
            class_label: None,
        })),
    }
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gan_trains_on_hub_frogs_and_samples_reproducibly() {
    let state = tempfile::tempdir().unwrap();
    // CIFAR-10's hub layout with frogs (class 6) and others, in an offline cache.
    let blobs = synthetic_blobs(12, 1);
    let labels: Vec<u8> = (0..12)
        .map(|i| if i % 3 == 0 { 2 } else { cifar::FROG })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("train.parquet");
    cifar::write_parquet(&file, &blobs, &labels).unwrap();
    let cache = state.path().join("hub");
    seed_cache(
        &cache,
        cifar::HUB_REPO,
        &[(cifar::HUB_TRAIN, &std::fs::read(&file).unwrap())],
    )
    .unwrap();
    let hub = HubOptions {
        offline: true,
        cache_dir: Some(cache),
        revision: None,
    };
    let daemon = start(state.path(), |c| c.hub = hub).await;
    let mut client = Client::connect(&daemon.endpoint()).await.unwrap();

    let evs = events(&mut client.train(request("frogs", None, 6, 3)).await.unwrap()).await;
    let started = evs.iter().find_map(|e| match e {
        Event::Started(s) => Some(s.clone()),
        _ => None,
    });
    assert_eq!(started.unwrap().train_sequences, 8, "only the 8 frogs");
    let reports: Vec<&pb::GanProgress> = evs
        .iter()
        .filter_map(|e| match e {
            Event::Gan(g) => Some(g),
            _ => None,
        })
        .collect();
    assert_eq!(
        reports.iter().map(|g| g.step).collect::<Vec<_>>(),
        vec![3, 6]
    );
    let g = reports[1];
    assert!(g.discriminator_loss.is_finite() && g.adversarial_loss.is_finite());
    assert!((g.discriminator_lr - 0.0008).abs() < 1e-6 && (g.generator_lr - 0.0004).abs() < 1e-6);
    let generated = imageio::decode(&g.generated_png, "generated").unwrap();
    assert_eq!((generated.width(), generated.height()), (64, 64));
    assert_eq!(imageio::decode(&g.real_png, "real").unwrap().width(), 32);
    assert!(
        evs.iter()
            .any(|e| matches!(e, Event::Checkpoint(c) if c.step == 6))
    );
    let info = client.describe_model("frogs").await.unwrap();
    assert_eq!(
        (info.kind, info.steps_trained),
        (pb::ModelKind::Gan as i32, 6)
    );

    // Samples: seeded grids are reproducible; explicit latents are checked.
    let sample = |seed| pb::GanSampleRequest {
        model: "frogs".into(),
        count: Some(5),
        seed: Some(seed),
        latents: vec![],
    };
    let a = client.gan_sample(sample(1)).await.unwrap();
    let b = client.gan_sample(sample(1)).await.unwrap();
    let c = client.gan_sample(sample(2)).await.unwrap();
    assert_eq!((a.width, a.height), (96, 64));
    assert_eq!(a.png, b.png);
    assert_ne!(a.png, c.png);
    let bad = pb::GanSampleRequest {
        model: "frogs".into(),
        latents: vec![pb::LatentPoint {
            values: vec![0.0; 3],
        }],
        ..Default::default()
    };
    let s = status(client.gan_sample(bad).await.unwrap_err());
    assert_eq!(s.code(), Code::InvalidArgument);
    assert!(s.message().contains("3 coordinates"), "{}", s.message());
    let s = status(
        client
            .vae_grid(pb::VaeGridRequest {
                model: "frogs".into(),
                size: Some(2),
            })
            .await
            .unwrap_err(),
    );
    assert_eq!(s.code(), Code::FailedPrecondition);

    // Bad input: a corrupt inline image, an absent class; nothing is created.
    let png = imageio::encode_png(&vec![0.5; 40 * 30 * 3], 40, 30, 3).unwrap();
    let inline = pb::image_data::Source::Inline(pb::InlineImages {
        images: vec![png, b"garbage".to_vec()],
        names: vec!["frog.png".into(), "broken.jpg".into()],
    });
    let s = status(
        client
            .train(request("other", Some(inline), 2, 1))
            .await
            .unwrap_err(),
    );
    assert_eq!(s.code(), Code::InvalidArgument);
    assert!(
        s.message().contains("images[1] (broken.jpg)"),
        "{}",
        s.message()
    );
    let mut req = request("other", None, 2, 1);
    if let Some(pb::train_request::Data::Images(d)) = &mut req.data {
        d.class_label = Some(9);
    }
    let s = status(client.train(req).await.unwrap_err());
    assert!(s.message().contains("class 9"), "{}", s.message());
    assert_eq!(
        code(client.describe_model("other").await.unwrap_err()),
        Code::NotFound
    );
    daemon.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inline_gan_job_resumes_its_step_count() {
    let state = tempfile::tempdir().unwrap();
    let daemon = start(state.path(), |_| {}).await;
    let mut client = Client::connect(&daemon.endpoint()).await.unwrap();
    let blobs = synthetic_blobs(6, 2);
    // Any size: the daemon resizes to 32×32.
    let images = (0..6)
        .map(|i| {
            let img = imageio::encode_png(&blobs.interleaved(i), 32, 32, 3).unwrap();
            let decoded = imageio::decode(&img, "x").unwrap();
            imageio::encode_png(&imageio::to_rgb(&decoded, 48, 40), 48, 40, 3).unwrap()
        })
        .collect();
    let source = pb::image_data::Source::Inline(pb::InlineImages {
        images,
        names: vec![],
    });
    let mut stream = client
        .train(request("own", Some(source), 8, 2))
        .await
        .unwrap();
    let mut job_id = String::new();
    while let Some(ev) = stream.message().await.unwrap() {
        job_id = ev.job_id.clone();
        if let Some(Event::Checkpoint(_)) = ev.event {
            client.cancel_job(&job_id).await.unwrap();
            break;
        }
    }
    events(&mut stream).await;
    let done = client.describe_model("own").await.unwrap().steps_trained;
    assert!((2..8).contains(&done), "{done}");
    let evs = events(&mut client.resume_job(&job_id).await.unwrap()).await;
    let Some(Event::Finished(finished)) = evs.last() else {
        panic!("{evs:?}")
    };
    // Counted in steps; `epochs_trained` stays 0 as older clients expect of a GAN.
    assert_eq!(finished.unit, pb::ProgressUnit::Steps as i32);
    assert_eq!((finished.units_trained, finished.epochs_trained), (8, 0));
    let started = evs.iter().find_map(|e| match e {
        Event::Started(s) => Some(s.clone()),
        _ => None,
    });
    let started = started.expect("the resumed run starts");
    assert_eq!(started.kind, pb::ModelKind::Gan as i32);
    assert_eq!(started.unit, pb::ProgressUnit::Steps as i32);
    assert_eq!(
        (started.first_step, started.steps_per_epoch),
        (done as u32, 8)
    );
    assert_eq!(client.describe_model("own").await.unwrap().steps_trained, 8);
    daemon.shutdown().await.unwrap();
}
