//! Every image a request carries, cut short: each is refused as INVALID_ARGUMENT naming
//! its field (or file), before any model or network is touched — never dreamed on,
//! styled or trained on as the partial picture a lenient decoder would return.

use oneiro_client::pb::{self, oneiro_client::OneiroClient};
use oneiro_e2e::{picture, start};
use tonic::Code;
use tonic::transport::Channel;

fn assert_refused<T: std::fmt::Debug>(r: Result<T, tonic::Status>, field: &str) {
    let s = r.expect_err(field);
    assert_eq!(s.code(), Code::InvalidArgument, "{field}: {s:?}");
    assert!(
        s.message().contains(field) && s.message().contains("truncated"),
        "{field}: {}",
        s.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_images_are_refused_naming_their_field_everywhere() {
    let state = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let whole = picture(40, 30, 0.0);
    let cut = whole[..whole.len() * 2 / 3].to_vec();
    std::fs::create_dir(data.path().join("frogs")).unwrap();
    std::fs::write(data.path().join("frogs/a.png"), &whole).unwrap();
    std::fs::write(data.path().join("frogs/broken.png"), &cut).unwrap();
    let root = data.path().to_path_buf();
    let daemon = start(state.path(), move |c| {
        c.corpus_root = Some(root);
        c.hub.offline = true;
    })
    .await;
    let mut client = OneiroClient::new(
        Channel::from_shared(daemon.endpoint())
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    let random = || {
        Some(pb::BackboneWeights {
            source: Some(pb::backbone_weights::Source::RandomSeed(1)),
            preprocessing: String::new(),
        })
    };

    let dream = |image: Vec<u8>| pb::DreamRequest {
        image,
        weights: random(),
        ..Default::default()
    };
    assert_refused(client.dream(dream(cut.clone())).await, "image");
    let style = |content_image: Vec<u8>, style_image: Vec<u8>| pb::StyleRequest {
        content_image,
        style_image,
        weights: random(),
        ..Default::default()
    };
    assert_refused(
        client.style(style(cut.clone(), whole.clone())).await,
        "content_image",
    );
    assert_refused(
        client.style(style(whole.clone(), cut.clone())).await,
        "style_image",
    );

    // The VAE's images are read before the model is looked up ("m" does not exist).
    let encode = pb::VaeEncodeRequest {
        model: "m".into(),
        images: vec![whole.clone(), cut.clone()],
    };
    assert_refused(client.vae_encode(encode).await, "images[1]");
    let concept = pb::VaeConceptRequest {
        model: "m".into(),
        from_class: 1,
        to_class: 7,
        image: cut.clone(),
        ..Default::default()
    };
    assert_refused(client.vae_concept(concept).await, "image");
    let morph = |from_image: Vec<u8>, to_image: Vec<u8>| pb::VaeMorphRequest {
        model: "m".into(),
        from_image,
        to_image,
        ..Default::default()
    };
    assert_refused(
        client.vae_morph(morph(cut.clone(), whole.clone())).await,
        "from_image",
    );
    assert_refused(
        client.vae_morph(morph(whole.clone(), cut.clone())).await,
        "to_image",
    );

    // A GAN's images: sent inline with their file names, or a folder on the daemon.
    let gan = |source| pb::TrainRequest {
        model: "g".into(),
        create_if_missing: true,
        data: Some(pb::train_request::Data::Images(pb::ImageData {
            source: Some(source),
            class_label: None,
        })),
        ..Default::default()
    };
    let inline = pb::image_data::Source::Inline(pb::InlineImages {
        images: vec![whole.clone(), cut.clone()],
        names: vec!["a.png".into(), "broken.png".into()],
    });
    assert_refused(client.train(gan(inline)).await, "images[1] (broken.png)");
    let folder = pb::image_data::Source::ServerDir("frogs".into());
    assert_refused(client.train(gan(folder)).await, "broken.png");
    // Nothing was created by the refused trainings.
    let models = client
        .list_models(pb::ListModelsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(models.models.is_empty(), "{models:?}");
    daemon.shutdown().await.unwrap();
}
