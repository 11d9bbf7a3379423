//! Style transfer through a real daemon: VGG19 weights from a (seeded, offline) hub cache
//! in timm's layout or seeded random; each round's loss and image streamed; the errors,
//! after which the daemon keeps serving.

use oneiro_client::{Client, pb};
use oneiro_e2e::{messages, picture, start};
use oneiro_models::Vgg19;
use oneiro_models::backbone::seeded_checkpoint;
use oneiro_trainer::hub::{HubOptions, RepoKind, seed_repo_cache};
use oneiro_trainer::imageio;
use pb::style_event::Event;
use tonic::Code;

fn request(
    content: Vec<u8>,
    style: Vec<u8>,
    weights: pb::backbone_weights::Source,
) -> pb::StyleRequest {
    pb::StyleRequest {
        content_image: content,
        style_image: style,
        style_weight: Some(1e4),
        rounds: Some(2),
        iterations: Some(3),
        height: Some(20),
        content_layer: "block3_conv1".into(),
        style_layers: vec!["block1_conv1".into(), "block2_conv1".into()],
        weights: Some(pb::BackboneWeights {
            source: Some(weights),
            preprocessing: String::new(),
        }),
        ..Default::default()
    }
}

async fn style(client: &mut Client, req: pb::StyleRequest) -> Result<Vec<Event>, tonic::Status> {
    let events = messages(client.style(req).await).await?;
    Ok(events.into_iter().filter_map(|e| e.event).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn style_transfer_streams_rounds_and_refuses_bad_requests() {
    let state = tempfile::tempdir().unwrap();
    let ckpt = seeded_checkpoint(4, |vb| Vgg19::from_var_builder(vb).map(|_| ())).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("model.safetensors");
    candle_core::safetensors::save(&ckpt, &file).unwrap();
    let cache = state.path().join("hub");
    seed_repo_cache(
        &cache,
        RepoKind::Model,
        "timm/vgg19.tv_in1k",
        &[("model.safetensors", &std::fs::read(&file).unwrap())],
    )
    .unwrap();
    let daemon = start(state.path(), |c| {
        c.hub = HubOptions {
            offline: true,
            cache_dir: Some(cache),
            revision: None,
        };
        c.max_image_pixels = 300 * 300;
    })
    .await;
    let mut client = Client::connect(&daemon.endpoint()).await.unwrap();
    let (content, painting) = (picture(30, 24, 0.0), picture(17, 41, 2.0));

    // The hub's default VGG19 (torchvision's weights and normalisation).
    let evs = style(
        &mut client,
        request(
            content.clone(),
            painting.clone(),
            pb::backbone_weights::Source::HubRepo(String::new()),
        ),
    )
    .await
    .unwrap();
    let Some(Event::Start(s)) = evs.first() else {
        panic!("a start event first: {evs:?}")
    };
    assert!(
        s.pretrained && s.weights.contains("timm/vgg19.tv_in1k"),
        "{}",
        s.weights
    );
    assert!(s.preprocessing.contains("0.485"), "{}", s.preprocessing);
    // The book's content weight, scaled for torchvision's input; the style weight as given.
    assert!(
        s.loss_weights.contains("content x3321"),
        "{}",
        s.loss_weights
    );
    assert!((s.content_weight - 0.025 * 3321.2).abs() < 0.1 && s.style_weight == 1e4);
    // Height 20, the content's aspect: 30 × 20 / 24 = 25.
    assert_eq!((s.height, s.width), (20, 25));
    let mut losses = vec![s.initial_loss.as_ref().unwrap().total];
    for e in &evs[1..] {
        let Event::Round(r) = e else {
            panic!("rounds after the start")
        };
        let l = r.loss.as_ref().unwrap();
        assert!((l.total - (l.content + l.style + l.total_variation)).abs() <= 1e-6 * l.total);
        losses.push(l.total);
        let img = r.image.as_ref().unwrap();
        let d = imageio::decode(&img.png, "round").unwrap();
        assert_eq!((d.width(), d.height()), (25, 20));
        assert!(r.evaluations >= r.iterations);
    }
    assert_eq!(losses.len(), 3);
    assert!(losses[2] < losses[1] && losses[1] < losses[0], "{losses:?}");

    // Random weights are said to be random; Caffe preprocessing on request.
    let mut req = request(
        content.clone(),
        painting.clone(),
        pb::backbone_weights::Source::RandomSeed(2),
    );
    req.weights.as_mut().unwrap().preprocessing = "caffe".into();
    req.rounds = Some(1);
    let evs = style(&mut client, req).await.unwrap();
    let Some(Event::Start(s)) = evs.first() else {
        panic!("a start event")
    };
    assert!(!s.pretrained && s.weights.contains("NOT pretrained"));
    assert!(s.preprocessing.contains("BGR"), "{}", s.preprocessing);
    assert_eq!(s.loss_weights, "the book's loss weights");

    // Errors, each naming the problem.
    let random = || pb::backbone_weights::Source::RandomSeed(1);
    let bad = |r: Result<Vec<Event>, tonic::Status>| r.expect_err("refused");
    let e = bad(style(
        &mut client,
        request(content.clone(), b"GIF89a garbage".to_vec(), random()),
    )
    .await);
    assert!(
        e.code() == Code::InvalidArgument && e.message().contains("style_image"),
        "{e:?}"
    );
    let e = bad(style(&mut client, request(vec![], painting.clone(), random())).await);
    assert!(
        e.code() == Code::InvalidArgument && e.message().contains("content_image"),
        "{e:?}"
    );
    let mut req = request(content.clone(), painting.clone(), random());
    (req.content_weight, req.style_weight) = (Some(0.0), Some(0.0));
    let e = bad(style(&mut client, req).await);
    assert!(
        e.code() == Code::InvalidArgument && e.message().contains("both 0"),
        "{e:?}"
    );
    for h in [0, 1_000_000] {
        let mut req = request(content.clone(), painting.clone(), random());
        req.height = Some(h);
        let e = bad(style(&mut client, req).await);
        assert!(
            e.code() == Code::InvalidArgument && e.message().contains("height"),
            "{e:?}"
        );
    }
    let mut req = request(content.clone(), painting.clone(), random());
    req.height = Some(2000);
    let e = bad(style(&mut client, req).await);
    assert!(
        e.code() == Code::InvalidArgument && e.message().contains("limit"),
        "{e:?}"
    );
    let mut req = request(content.clone(), painting.clone(), random());
    req.style_layers = vec!["block7_conv1".into()];
    let e = bad(style(&mut client, req).await);
    assert!(
        e.code() == Code::InvalidArgument && e.message().contains("block7_conv1"),
        "{e:?}"
    );

    // Still serving.
    let mut req = request(content, painting, random());
    req.rounds = Some(1);
    let evs = style(&mut client, req).await.unwrap();
    assert!(evs.iter().any(|e| matches!(e, Event::Round(_))));
}
