//! End to end: a real daemon on 127.0.0.1:0, driven through the client library.

use oneiro_client::{Client, pb};
use oneiro_daemon::{DaemonConfig, RunningDaemon};
use oneiro_e2e::{SENTENCE, status};
use tonic::Code;

async fn start(
    state: &std::path::Path,
    tweak: impl FnOnce(&mut DaemonConfig),
) -> (RunningDaemon, Client) {
    let daemon = oneiro_e2e::start(state, tweak).await;
    let client = Client::connect(&daemon.endpoint())
        .await
        .expect("client connects");
    (daemon, client)
}

async fn channel(daemon: &RunningDaemon) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(daemon.endpoint())
        .unwrap()
        .connect()
        .await
        .unwrap()
}

fn small_config() -> pb::CharLstmConfig {
    pb::CharLstmConfig {
        maxlen: Some(16),
        step: Some(1),
        hidden: Some(32),
        lowercase: None,
    }
}

fn train_request(model: &str, text: &str, epochs: u32) -> pb::TrainRequest {
    pb::TrainRequest {
        model: model.into(),
        create_if_missing: true,
        stop_on_disconnect: false,
        create_config: Some(pb::train_request::CreateConfig::CharLstm(small_config())),
        options: Some(pb::TrainOptions {
            epochs: Some(epochs),
            batch_size: Some(32),
            seed: Some(7),
            validation_split: 0.1,
            sample_temperatures: vec![0.2, 1.0],
            sample_length: Some(40),
            ..Default::default()
        }),
        data: Some(pb::train_request::Data::Text(pb::TextCorpus {
            source: Some(pb::text_corpus::Source::Text(text.into())),
        })),
    }
}

async fn train_to_end(
    client: &mut Client,
    req: pb::TrainRequest,
) -> Result<Vec<pb::train_event::Event>, tonic::Status> {
    let mut stream = client.train(req).await.map_err(status)?;
    let mut events = Vec::new();
    while let Some(ev) = stream.message().await? {
        events.push(ev.event.expect("every event has a payload"));
    }
    Ok(events)
}

fn greedy(model: &str, seed_text: &str, length: u32) -> pb::GenerateRequest {
    pb::GenerateRequest {
        model: model.into(),
        seed_text: seed_text.into(),
        temperature: Some(0.0),
        length: Some(length),
        seed: Some(1),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_trains_a_model_that_learns_and_generates_and_survives_a_restart() {
    let state = tempfile::tempdir().unwrap();
    let (daemon, mut client) = start(state.path(), |_| {}).await;

    let mut health = tonic_health::pb::health_client::HealthClient::new(channel(&daemon).await);
    let serving = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "oneiro.v1.Oneiro".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        serving.status(),
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );

    let corpus = SENTENCE.repeat(60);
    let events = train_to_end(&mut client, train_request("fox", &corpus, 6))
        .await
        .expect("training succeeds");
    use pb::train_event::Event;
    let Some(Event::Accepted(accepted)) = events.first() else {
        panic!("first event is Accepted: {events:?}")
    };
    assert_eq!(accepted.model, "fox");
    let Some(started) = events.iter().find_map(|e| match e {
        Event::Started(s) => Some(s),
        _ => None,
    }) else {
        panic!("a Started event: {events:?}")
    };
    assert_eq!(
        (started.first_epoch, started.epochs, started.device.as_str()),
        (1, 6, "cpu")
    );
    assert!(started.validation_sequences > 0);
    let epoch_ends: Vec<&pb::EpochEnd> = events
        .iter()
        .filter_map(|e| {
            if let Event::EpochEnd(x) = e {
                Some(x)
            } else {
                None
            }
        })
        .collect();
    assert_eq!(epoch_ends.len(), 6);
    assert!(epoch_ends.iter().all(|e| e.val_loss.is_some()));
    let (first, last) = (epoch_ends[0].loss, epoch_ends[5].loss);
    assert!(
        last < 0.1 && last < first / 10.0,
        "loss went {first} -> {last}"
    );
    assert!(events.iter().any(
        |e| matches!(e, Event::Batch(b) if b.loss.is_finite() && b.sequences_per_second > 0.0)
    ));
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(e, Event::Checkpoint(_)))
            .count(),
        6
    );
    let samples: Vec<&pb::TextSample> = events
        .iter()
        .filter_map(|e| {
            if let Event::Sample(x) = e {
                Some(x)
            } else {
                None
            }
        })
        .collect();
    assert_eq!(samples.len(), 12);
    assert!(
        samples
            .iter()
            .all(|s| s.text.chars().count() == 40 && s.seed_text.chars().count() == 16)
    );
    assert!(matches!(events.last(), Some(Event::Finished(f)) if f.epochs_trained == 6));

    // The model continues the sentence it was trained on.
    let text = client
        .generate_text(greedy("fox", "the quick brown ", 30))
        .await
        .unwrap();
    assert_eq!(text, "fox jumps over the lazy dog. t");
    // Chunks arrive as a stream, the first naming the seed window used.
    let mut stream = client.generate(greedy("fox", "", 500)).await.unwrap();
    let first = stream.message().await.unwrap().unwrap();
    assert_eq!(first.seed_text.chars().count(), 16);
    let mut total = first.text.chars().count();
    while let Some(c) = stream.message().await.unwrap() {
        total += c.text.chars().count();
    }
    assert_eq!(total, 500);
    // Seeded sampling is reproducible.
    let sampled = |seed| pb::GenerateRequest {
        temperature: Some(1.0),
        seed: Some(seed),
        ..greedy("fox", "the lazy", 80)
    };
    let a = client.generate_text(sampled(5)).await.unwrap();
    assert_eq!(a, client.generate_text(sampled(5)).await.unwrap());

    let models = client.list_models().await.unwrap();
    assert_eq!(models.len(), 1);
    assert_eq!(
        (models[0].name.as_str(), models[0].epochs_trained),
        ("fox", 6)
    );
    assert_eq!(models[0].loss_history.len(), 6);

    // A restarted daemon on the same state directory serves the same model.
    drop(client);
    daemon.shutdown().await.unwrap();
    let (daemon, mut client) = start(state.path(), |_| {}).await;
    assert_eq!(
        client.describe_model("fox").await.unwrap().epochs_trained,
        6
    );
    assert_eq!(
        client
            .generate_text(greedy("fox", "the quick brown ", 30))
            .await
            .unwrap(),
        text
    );
    assert_eq!(client.generate_text(sampled(5)).await.unwrap(), a);
    // Training continues from the checkpoint: epoch numbers go on.
    let more = train_to_end(&mut client, train_request("fox", &corpus, 1))
        .await
        .unwrap();
    assert!(
        more.iter()
            .any(|e| matches!(e, Event::Started(s) if s.first_epoch == 7))
    );
    client.delete_model("fox").await.unwrap();
    assert_eq!(
        client
            .describe_model("fox")
            .await
            .map_err(status)
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    drop(client);
    daemon.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clear_errors_and_the_daemon_keeps_serving() {
    let state = tempfile::tempdir().unwrap();
    let (daemon, mut client) = start(state.path(), |c| c.max_generate_length = 1000).await;
    let corpus = SENTENCE.repeat(10);
    let opts = |r: pb::TrainRequest| pb::TrainRequest {
        options: Some(pb::TrainOptions {
            no_samples: true,
            epochs: Some(1),
            batch_size: Some(64),
            ..Default::default()
        }),
        ..r
    };
    train_to_end(&mut client, opts(train_request("ok", &corpus, 1)))
        .await
        .unwrap();

    let train_err = |text: &str, name: &str| opts(train_request(name, text, 1));
    let cases: Vec<(pb::TrainRequest, Code, &str)> = vec![
        (train_err("", "a"), Code::InvalidArgument, "empty"),
        (
            train_err("zzzzzzzzzzzzzzzzzzzzzzzzzzzzzz", "b"),
            Code::InvalidArgument,
            "single distinct character",
        ),
        (
            train_err("short text", "c"),
            Code::InvalidArgument,
            "maxlen 16 needs at least 17",
        ),
        (
            train_err(&corpus, "../escape"),
            Code::InvalidArgument,
            "invalid model name",
        ),
        (
            train_err("THE QUICK BROWN FOX! JUMPS OVER THE LAZY DOG", "ok"),
            Code::InvalidArgument,
            "'!'",
        ),
        (
            pb::TrainRequest {
                create_if_missing: false,
                ..train_err(&corpus, "missing")
            },
            Code::NotFound,
            "no model named",
        ),
        (
            pb::TrainRequest {
                data: Some(pb::train_request::Data::Text(pb::TextCorpus {
                    source: Some(pb::text_corpus::Source::ServerPath(
                        "/nonexistent/corpus.txt".into(),
                    )),
                })),
                ..train_err("", "d")
            },
            Code::InvalidArgument,
            "--corpus-root",
        ),
        (
            pb::TrainRequest {
                create_config: Some(pb::train_request::CreateConfig::CharLstm(
                    pb::CharLstmConfig {
                        hidden: Some(99),
                        ..small_config()
                    },
                )),
                ..train_err(&corpus, "ok")
            },
            Code::InvalidArgument,
            "exists with",
        ),
    ];
    for (req, code, needle) in cases {
        let name = req.model.clone();
        let err = train_to_end(&mut client, req).await.expect_err(&name);
        assert_eq!(err.code(), code, "{name}: {err:?}");
        assert!(
            err.message().contains(needle),
            "{name}: {:?} lacks {needle:?}",
            err.message()
        );
    }

    let gen_cases: Vec<(pb::GenerateRequest, Code, &str)> = vec![
        (
            greedy("nope", "the", 10),
            Code::NotFound,
            "no model named \"nope\"",
        ),
        (
            greedy("ok", "the", 0),
            Code::InvalidArgument,
            "length must be an integer from 1 to 1000",
        ),
        (
            greedy("ok", "the", 1001),
            Code::InvalidArgument,
            "length must be an integer from 1 to 1000",
        ),
        (
            pb::GenerateRequest {
                temperature: Some(-0.5),
                ..greedy("ok", "the", 10)
            },
            Code::InvalidArgument,
            "temperature",
        ),
        (
            pb::GenerateRequest {
                temperature: Some(f32::NAN),
                ..greedy("ok", "the", 10)
            },
            Code::InvalidArgument,
            "temperature",
        ),
        (
            pb::GenerateRequest {
                temperature: Some(f32::INFINITY),
                ..greedy("ok", "the", 10)
            },
            Code::InvalidArgument,
            "temperature",
        ),
        (
            greedy("ok", "the fox?!", 10),
            Code::InvalidArgument,
            "'?', '!'",
        ),
        (
            greedy("a/b", "the", 10),
            Code::InvalidArgument,
            "invalid model name",
        ),
    ];
    for (req, code, needle) in gen_cases {
        let what = format!("{req:?}");
        let err = client
            .generate_text(req)
            .await
            .map_err(status)
            .expect_err(&what);
        assert_eq!(err.code(), code, "{what}: {err:?}");
        assert!(
            err.message().contains(needle),
            "{what}: {:?} lacks {needle:?}",
            err.message()
        );
    }

    // An untrained model is a precondition failure, not a crash.
    client
        .create_model(pb::CreateModelRequest {
            name: "fresh".into(),
            config: None,
        })
        .await
        .unwrap();
    let err = client
        .generate_text(greedy("fresh", "the", 5))
        .await
        .map_err(status)
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    let err = client
        .create_model(pb::CreateModelRequest {
            name: "fresh".into(),
            config: None,
        })
        .await
        .map_err(status)
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);

    // Still serving, model intact.
    assert_eq!(
        client
            .generate_text(greedy("ok", "the", 5))
            .await
            .unwrap()
            .chars()
            .count(),
        5
    );
    let info = client.info().await.unwrap();
    assert_eq!(info.limits.unwrap().max_generate_length, 1000);
    drop(client);
    daemon.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corpus_can_be_read_from_the_servers_disk_and_reflection_lists_the_api() {
    let state = tempfile::tempdir().unwrap();
    let root = state.path().join("corpora");
    std::fs::create_dir_all(root.join("sub")).unwrap();
    std::fs::write(root.join("sub/corpus.txt"), SENTENCE.repeat(8)).unwrap();
    std::fs::write(state.path().join("secret.txt"), SENTENCE.repeat(8)).unwrap();
    let r = root.clone();
    let (daemon, mut client) = start(state.path(), move |c| c.corpus_root = Some(r)).await;
    let from_disk = |p: &str| {
        let mut req = train_request("disk", "", 1);
        req.data = Some(pb::train_request::Data::Text(pb::TextCorpus {
            source: Some(pb::text_corpus::Source::ServerPath(p.into())),
        }));
        req
    };
    let events = train_to_end(&mut client, from_disk("sub/corpus.txt"))
        .await
        .unwrap();
    assert!(matches!(
        events.last(),
        Some(pb::train_event::Event::Finished(_))
    ));
    // Nothing outside the corpus root, however it is spelled; no special files.
    let outside = [
        "../secret.txt".to_string(),
        state
            .path()
            .join("secret.txt")
            .to_string_lossy()
            .into_owned(),
        "/etc/passwd".into(),
        "sub".into(),
        "/dev/zero".into(),
    ];
    for p in outside {
        let err = train_to_end(&mut client, from_disk(&p)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{p}: {err:?}");
        assert!(
            err.message()
                .contains("outside the directory the daemon serves")
                || err.message().contains("not a regular file"),
            "{p}: {err:?}"
        );
    }

    // Both reflection versions list the API: v1, and v1alpha for the tools that ask only it.
    for names in [
        oneiro_e2e::list_services!(v1, channel(&daemon).await),
        oneiro_e2e::list_services!(v1alpha, channel(&daemon).await),
    ] {
        for service in [
            "oneiro.v1.Oneiro",
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
        ] {
            assert!(names.iter().any(|n| n == service), "{service}: {names:?}");
        }
    }
    drop(client);
    daemon.shutdown().await.unwrap();
}
