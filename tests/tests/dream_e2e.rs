//! DeepDream through a real daemon: InceptionV3 weights from a (seeded, offline) hub cache
//! in timm's layout, from a file under --weights-root, or seeded random; the streamed
//! losses and octave images; the network kept resident; and the errors, after which the
//! daemon keeps serving.

use oneiro_client::{Client, pb};
use oneiro_e2e::{messages, start};

fn picture(w: u32, h: u32) -> Vec<u8> {
    oneiro_e2e::picture(w, h, 0.0)
}
use oneiro_models::InceptionV3;
use oneiro_models::backbone::seeded_checkpoint;
use oneiro_trainer::hub::{HubOptions, RepoKind, seed_repo_cache};
use oneiro_trainer::imageio;
use pb::dream_event::Event;
use tonic::Code;

fn request(image: Vec<u8>, weights: pb::backbone_weights::Source) -> pb::DreamRequest {
    pb::DreamRequest {
        image,
        layers: vec![
            pb::DreamLayer {
                name: "mixed0".into(),
                weight: 1.0,
            },
            pb::DreamLayer {
                name: "Mixed_5d".into(),
                weight: 0.5,
            },
        ],
        iterations: Some(3),
        octaves: Some(2),
        octave_scale: Some(1.3),
        step: Some(0.05),
        max_loss: Some(f32::INFINITY),
        weights: Some(pb::BackboneWeights {
            source: Some(weights),
            preprocessing: String::new(),
        }),
        ..Default::default()
    }
}

async fn dream(client: &mut Client, req: pb::DreamRequest) -> Result<Vec<Event>, tonic::Status> {
    let events = messages(client.dream(req).await).await?;
    Ok(events.into_iter().filter_map(|e| e.event).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dreams_stream_losses_and_octaves_with_hub_file_and_random_weights() {
    let state = tempfile::tempdir().unwrap();
    // timm's InceptionV3 layout, seeded into a hub cache the daemon reads offline, and
    // the same file under a weights root.
    let ckpt =
        seeded_checkpoint(11, |vb| InceptionV3::from_var_builder(vb, 1e-3).map(|_| ())).unwrap();
    let roots = tempfile::tempdir().unwrap();
    let file = roots.path().join("inception.safetensors");
    candle_core::safetensors::save(&ckpt, &file).unwrap();
    let cache = state.path().join("hub");
    seed_repo_cache(
        &cache,
        RepoKind::Model,
        "timm/inception_v3.tf_in1k",
        &[("model.safetensors", &std::fs::read(&file).unwrap())],
    )
    .unwrap();
    let daemon = start(state.path(), |c| {
        c.hub = HubOptions {
            offline: true,
            cache_dir: Some(cache),
            revision: None,
        };
        c.weights_root = Some(roots.path().to_path_buf());
        c.max_image_pixels = 100 * 100;
    })
    .await;
    let mut client = Client::connect(&daemon.endpoint()).await.unwrap();

    // Default weights: the hub's tf_in1k, with the book's [-1, 1] scaling.
    let evs = dream(
        &mut client,
        request(
            picture(70, 60),
            pb::backbone_weights::Source::HubRepo(String::new()),
        ),
    )
    .await
    .unwrap();
    let Some(Event::Start(start)) = evs.first() else {
        panic!("a start event first: {evs:?}")
    };
    assert!(start.pretrained);
    assert!(
        start.weights.contains("timm/inception_v3.tf_in1k"),
        "{}",
        start.weights
    );
    assert!(
        start.preprocessing.contains("127.5"),
        "{}",
        start.preprocessing
    );
    let sizes: Vec<(u32, u32)> = start
        .octave_sizes
        .iter()
        .map(|i| (i.height, i.width))
        .collect();
    assert_eq!(sizes, vec![(46, 53), (60, 70)]);
    let losses: Vec<f32> = evs
        .iter()
        .filter_map(|e| match e {
            Event::Step(s) => Some(s.loss),
            _ => None,
        })
        .collect();
    assert_eq!(losses.len(), 6);
    assert!(
        losses[2] > losses[0] && losses[5] > losses[3],
        "the loss rises: {losses:?}"
    );
    let octaves: Vec<&pb::DreamOctave> = evs
        .iter()
        .filter_map(|e| match e {
            Event::Octave(o) => Some(o),
            _ => None,
        })
        .collect();
    assert_eq!(octaves.len(), 2);
    for (o, (h, w)) in octaves.iter().zip(&sizes) {
        let img = o.image.as_ref().unwrap();
        let decoded = imageio::decode(&img.png, "octave").unwrap();
        assert_eq!((decoded.height(), decoded.width()), (*h, *w));
    }
    let info = client.info().await.unwrap();
    assert!(
        info.resident_models
            .iter()
            .any(|m| m.starts_with("@InceptionV3")),
        "the network stays resident: {:?}",
        info.resident_models
    );
    assert_eq!(info.limits.unwrap().max_image_pixels, 10_000);
    assert!(info.backbones.iter().any(|b| b.network == "VGG19"));

    // The same weights from a file give the same dream (the octave images are equal).
    let again = dream(
        &mut client,
        request(
            picture(70, 60),
            pb::backbone_weights::Source::ServerFile("inception.safetensors".into()),
        ),
    )
    .await
    .unwrap();
    let last = |evs: &[Event]| {
        evs.iter()
            .rev()
            .find_map(|e| match e {
                Event::Octave(o) => o.image.clone(),
                _ => None,
            })
            .unwrap()
    };
    assert_eq!(last(&again).png, last(&evs).png);

    // Random weights are said to be random; random layers are reported.
    let mut req = request(picture(50, 50), pb::backbone_weights::Source::RandomSeed(3));
    req.layers.clear();
    req.random_layers_seed = Some(4);
    req.octaves = Some(1);
    let evs = dream(&mut client, req).await.unwrap();
    let Some(Event::Start(start)) = evs.first() else {
        panic!("a start event")
    };
    assert!(
        !start.pretrained && start.weights.contains("NOT pretrained"),
        "{}",
        start.weights
    );
    assert!((2..=4).contains(&start.layers.len()));

    // max_loss stops an octave early.
    let mut req = request(picture(60, 60), pb::backbone_weights::Source::RandomSeed(3));
    req.max_loss = Some(0.0);
    req.octaves = Some(1);
    let evs = dream(&mut client, req).await.unwrap();
    let steps = evs.iter().filter(|e| matches!(e, Event::Step(_))).count();
    assert_eq!(steps, 1);
    assert!(
        evs.iter()
            .any(|e| matches!(e, Event::Octave(o) if o.stopped_early))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_dream_requests_get_clear_errors_and_the_daemon_keeps_serving() {
    let state = tempfile::tempdir().unwrap();
    let cache = state.path().join("empty-hub");
    let daemon = start(state.path(), |c| {
        c.hub = HubOptions {
            offline: true,
            cache_dir: Some(cache),
            revision: None,
        };
        c.max_image_pixels = 200 * 200;
    })
    .await;
    let mut client = Client::connect(&daemon.endpoint()).await.unwrap();
    let random = || pb::backbone_weights::Source::RandomSeed(1);
    let err = |r: Result<Vec<Event>, tonic::Status>| r.expect_err("refused");

    let e = err(dream(
        &mut client,
        request(b"not an image at all".to_vec(), random()),
    )
    .await);
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let mut png = picture(60, 60);
    png.truncate(png.len() / 2);
    let e = err(dream(&mut client, request(png, random())).await);
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let e = err(dream(&mut client, request(vec![], random())).await);
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");

    let mut req = request(picture(60, 60), random());
    req.layers[0].name = "mixed99".into();
    let e = err(dream(&mut client, req).await);
    assert!(
        e.code() == Code::InvalidArgument && e.message().contains("mixed99"),
        "{e:?}"
    );

    let mut req = request(picture(60, 60), random());
    req.layers.iter_mut().for_each(|l| l.weight = 0.0);
    let e = err(dream(&mut client, req).await);
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");

    // Too small once shrunk for the octaves: the minimum is named, before any work.
    let mut req = request(picture(40, 90), random());
    req.octaves = Some(3);
    let e = err(dream(&mut client, req).await);
    assert!(
        e.code() == Code::InvalidArgument && e.message().contains("needs"),
        "{e:?}"
    );

    let e = err(dream(&mut client, request(picture(300, 200), random())).await);
    assert!(
        e.code() == Code::InvalidArgument && e.message().contains("limit"),
        "{e:?}"
    );

    let e = err(dream(
        &mut client,
        request(
            picture(60, 60),
            pb::backbone_weights::Source::ServerFile("/etc/passwd".into()),
        ),
    )
    .await);
    assert!(
        e.code() == Code::InvalidArgument && e.message().contains("--weights-root"),
        "{e:?}"
    );

    let e = err(dream(
        &mut client,
        request(
            picture(60, 60),
            pb::backbone_weights::Source::HubRepo(String::new()),
        ),
    )
    .await);
    assert!(
        e.code() == Code::Unavailable && e.message().contains("inception_v3.tf_in1k"),
        "{e:?}"
    );
    let mut req = request(picture(60, 60), random());
    req.weights.as_mut().unwrap().preprocessing = "sepia".into();
    let e = err(dream(&mut client, req).await);
    assert!(
        e.code() == Code::InvalidArgument && e.message().contains("sepia"),
        "{e:?}"
    );

    // Still serving.
    let evs = dream(&mut client, request(picture(60, 60), random()))
        .await
        .unwrap();
    assert!(evs.iter().any(|e| matches!(e, Event::Octave(_))));
}
