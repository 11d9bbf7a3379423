//! What the reorganisation promised its users: requests whose data and create-config
//! name different kinds are refused before anything is created, and a state directory
//! written by the previous release (committed under `tests/fixtures/`) is read, served
//! and resumed by this one.

use std::path::Path;

use oneiro_client::{Client, pb};
use oneiro_e2e::{SENTENCE, messages, start, status};
use pb::train_event::Event;
use tonic::Code;

fn corpus() -> pb::train_request::Data {
    pb::train_request::Data::Text(pb::TextCorpus {
        source: Some(pb::text_corpus::Source::Text(SENTENCE.repeat(20))),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_and_create_config_of_different_kinds_are_refused_and_create_nothing() {
    let state = tempfile::tempdir().unwrap();
    let daemon = start(state.path(), |_| {}).await;
    let mut client = Client::connect(&daemon.endpoint()).await.unwrap();
    let configs = [
        pb::train_request::CreateConfig::Vae(pb::VaeConfig::default()),
        pb::train_request::CreateConfig::Gan(pb::GanConfig::default()),
    ];
    for config in configs {
        let e = client
            .train(pb::TrainRequest {
                model: "mixed".into(),
                create_if_missing: true,
                create_config: Some(config),
                data: Some(corpus()),
                ..Default::default()
            })
            .await
            .unwrap_err();
        let s = status(e);
        assert_eq!(s.code(), Code::InvalidArgument, "{}", s.message());
        assert!(
            s.message().contains("char-lstm") && s.message().contains("create-config"),
            "{}",
            s.message()
        );
    }
    let images = pb::train_request::Data::Images(pb::ImageData::default());
    let e = client
        .train(pb::TrainRequest {
            model: "mixed".into(),
            create_if_missing: true,
            create_config: Some(pb::train_request::CreateConfig::Vae(Default::default())),
            data: Some(images),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status(e).code(), Code::InvalidArgument);
    let models = client.list_models().await.unwrap();
    assert!(models.is_empty(), "{models:?}");
    assert!(client.list_jobs().await.unwrap().is_empty());
    daemon.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_directory_of_the_previous_release_is_served_and_its_job_resumed() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/release-0.1-state");
    let state = tempfile::tempdir().unwrap();
    copy_tree(&fixture, state.path());
    let daemon = start(state.path(), |_| {}).await;
    let mut client = Client::connect(&daemon.endpoint()).await.unwrap();

    // The finished model: listed with its kind and history, and it generates.
    let models = client.list_models().await.unwrap();
    let names: Vec<&str> = models.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["old-long", "old-text"]);
    let text = client.describe_model("old-text").await.unwrap();
    assert_eq!(text.kind, pb::ModelKind::CharLstm as i32);
    assert_eq!(text.epochs_trained, 1);
    assert_eq!(text.loss_history.len(), 1);
    assert!(text.vocab_size > 10, "{}", text.vocab_size);
    let generated = client
        .generate_text(pb::GenerateRequest {
            model: "old-text".into(),
            length: Some(50),
            seed: Some(1),
            temperature: Some(0.5),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(generated.chars().count(), 50);

    // The job the old daemon was running when it shut down: interrupted inside its only
    // epoch, resumed here from its step-level checkpoint to the end of that epoch.
    let jobs = client.list_jobs().await.unwrap();
    assert_eq!(jobs.len(), 2, "{jobs:?}");
    let job = jobs.iter().find(|j| j.model == "old-long").unwrap();
    assert_eq!(job.state, pb::JobState::Interrupted as i32, "{job:?}");
    assert_eq!(job.kind, pb::ModelKind::CharLstm as i32);
    let before = client.describe_model("old-long").await.unwrap();
    assert_eq!(before.epochs_trained, 0);
    let events = messages(client.resume_job(&job.job_id).await)
        .await
        .unwrap();
    let started = events
        .iter()
        .find_map(|e| match &e.event {
            Some(Event::Started(s)) => Some(s.clone()),
            _ => None,
        })
        .expect("the resumed run starts");
    assert_eq!(started.first_epoch, 1);
    // The old daemon checkpointed the step it stopped at; the run goes on from there.
    assert_eq!(started.first_step, job.step, "{started:?}");
    assert!(started.first_step > 0);
    assert!(
        events
            .iter()
            .any(|e| matches!(e.event, Some(Event::Finished(_)))),
        "{events:?}"
    );
    let after = client.describe_model("old-long").await.unwrap();
    assert_eq!(after.epochs_trained, 1);
    assert!(after.loss_history[0].is_finite());
    let jobs = client.list_jobs().await.unwrap();
    let job = jobs.iter().find(|j| j.model == "old-long").unwrap();
    assert_eq!(job.state, pb::JobState::Finished as i32, "{job:?}");

    // Saving rewrote the model in the current format; the untouched one stays as it was.
    let json = |name: &str| {
        let path = state.path().join("models").join(name).join("model.json");
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        v["format"].as_u64().unwrap()
    };
    assert_eq!(json("old-long"), oneiro_trainer::store::FORMAT as u64);
    assert_eq!(json("old-text"), 1);
    daemon.shutdown().await.unwrap();
}

/// Copies a fixture tree (files and folders) to `to`.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}
