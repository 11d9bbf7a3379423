//! Jobs, access control and stream hygiene, against a real daemon on 127.0.0.1:0.

use std::time::Duration;

use oneiro_client::{BearerToken, Client, pb};
use oneiro_daemon::config::Secret;
use oneiro_e2e::{SENTENCE, code, start};
use pb::train_event::Event;
use tonic::Code;

/// A training long enough to act on while it runs (a few seconds).
fn slow_training(model: &str, epochs: u32) -> pb::TrainRequest {
    pb::TrainRequest {
        model: model.into(),
        create_if_missing: true,
        stop_on_disconnect: false,
        create_config: Some(pb::train_request::CreateConfig::CharLstm(
            pb::CharLstmConfig {
                maxlen: Some(30),
                step: Some(1),
                hidden: Some(64),
                lowercase: None,
            },
        )),
        options: Some(pb::TrainOptions {
            epochs: Some(epochs),
            batch_size: Some(8),
            seed: Some(3),
            no_samples: true,
            checkpoint_every_steps: 10,
            ..Default::default()
        }),
        data: Some(pb::train_request::Data::Text(pb::TextCorpus {
            source: Some(pb::text_corpus::Source::Text(SENTENCE.repeat(40))),
        })),
    }
}

async fn next_event(stream: &mut tonic::Streaming<pb::TrainEvent>) -> pb::TrainEvent {
    tokio::time::timeout(Duration::from_secs(60), stream.message())
        .await
        .expect("an event within a minute")
        .expect("a healthy stream")
        .expect("the stream has not ended")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_outlives_its_client_and_can_be_watched_cancelled_and_resumed() {
    let state = tempfile::tempdir().unwrap();
    let daemon = start(state.path(), |_| {}).await;
    let mut client = Client::connect(&daemon.endpoint()).await.unwrap();

    // Start, learn the job id, and walk away.
    let mut stream = client.train(slow_training("long", 3)).await.unwrap();
    let first = next_event(&mut stream).await;
    assert!(matches!(first.event, Some(Event::Accepted(_))));
    let job_id = first.job_id.clone();
    assert!(!job_id.is_empty());
    loop {
        if let Some(Event::Batch(b)) = next_event(&mut stream).await.event
            && b.step >= 2
        {
            break;
        }
    }
    drop(stream);

    // Still running without its client; the model cannot be deleted meanwhile.
    let jobs = client.list_jobs().await.unwrap();
    let job = jobs.iter().find(|j| j.job_id == job_id).expect("listed");
    assert_eq!(job.state(), pb::JobState::Running, "{job:?}");
    assert_eq!((job.model.as_str(), job.target_epoch), ("long", 3));
    assert_eq!(
        code(client.delete_model("long").await.unwrap_err()),
        Code::FailedPrecondition
    );
    assert_eq!(
        code(client.train(slow_training("long", 1)).await.unwrap_err()),
        Code::FailedPrecondition
    );

    // A watcher gets the replay (accepted, started, recent events) and live progress.
    let mut watch = client.watch_job(&job_id).await.unwrap();
    assert!(matches!(
        next_event(&mut watch).await.event,
        Some(Event::Accepted(_))
    ));
    assert!(matches!(
        next_event(&mut watch).await.event,
        Some(Event::Started(_))
    ));

    // Cancel: a checkpoint of the steps done, then a Stopped event; the stream ends.
    let info = client.cancel_job(&job_id).await.unwrap();
    assert_eq!(info.job_id, job_id);
    let mut last_checkpoint = None;
    let mut stopped = None;
    while let Some(ev) = watch.message().await.unwrap() {
        match ev.event {
            Some(Event::Checkpoint(c)) => last_checkpoint = Some((c.epoch, c.step)),
            Some(Event::Stopped(s)) => stopped = Some(s),
            _ => {}
        }
    }
    let stopped = stopped.expect("a Stopped event");
    assert_eq!(stopped.state(), pb::JobState::Cancelled);
    let (ck_epoch, ck_step) = last_checkpoint.expect("a checkpoint before stopping");
    let jobs = client.list_jobs().await.unwrap();
    assert_eq!(
        jobs.iter().find(|j| j.job_id == job_id).unwrap().state(),
        pb::JobState::Cancelled
    );
    assert_eq!(
        code(client.cancel_job(&job_id).await.unwrap_err()),
        Code::FailedPrecondition
    );

    // Resume continues at the checkpoint, step numbering and all, and finishes the job.
    let mut resumed = client.resume_job(&job_id).await.unwrap();
    let mut started = None;
    let mut first_batch = None;
    let mut finished = None;
    while let Some(ev) = resumed.message().await.unwrap() {
        assert_eq!(ev.job_id, job_id);
        match ev.event {
            Some(Event::Started(s)) => started = Some(s),
            Some(Event::Batch(b)) if first_batch.is_none() => first_batch = Some(b),
            Some(Event::Finished(f)) => finished = Some(f),
            _ => {}
        }
    }
    let started = started.expect("Started");
    let epochs_done_at_cancel = if ck_step == started.steps_per_epoch {
        ck_epoch
    } else {
        ck_epoch - 1
    };
    if ck_step < started.steps_per_epoch {
        assert_eq!(
            (started.first_epoch, started.first_step),
            (ck_epoch, ck_step)
        );
        let b = first_batch.expect("a batch");
        assert_eq!((b.epoch, b.step), (ck_epoch, ck_step + 1));
    }
    assert_eq!(started.epochs, 3 - epochs_done_at_cancel);
    assert_eq!(finished.expect("Finished").epochs_trained, 3);
    let model = client.describe_model("long").await.unwrap();
    assert_eq!((model.epochs_trained, model.loss_history.len()), (3, 3));
    let jobs = client.list_jobs().await.unwrap();
    assert_eq!(
        jobs.iter().find(|j| j.job_id == job_id).unwrap().state(),
        pb::JobState::Finished
    );
    assert_eq!(
        code(client.resume_job(&job_id).await.unwrap_err()),
        Code::FailedPrecondition
    );
    assert_eq!(
        code(client.watch_job("nope").await.unwrap_err()),
        Code::NotFound
    );
    drop(client);
    daemon.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generation_whose_client_leaves_frees_the_worker() {
    let state = tempfile::tempdir().unwrap();
    let daemon = start(state.path(), |_| {}).await;
    let mut client = Client::connect(&daemon.endpoint()).await.unwrap();
    let mut quick = slow_training("gen", 1);
    quick.options.as_mut().unwrap().checkpoint_every_steps = 0;
    let mut s = client.train(quick).await.unwrap();
    while s.message().await.unwrap().is_some() {}

    let long = pb::GenerateRequest {
        model: "gen".into(),
        length: Some(100_000),
        temperature: Some(1.0),
        ..Default::default()
    };
    let mut stream = client.generate(long).await.unwrap();
    assert!(stream.message().await.unwrap().is_some());
    drop(stream);
    // 100k characters take seconds; the worker must drop them within a step or two.
    let short = pb::GenerateRequest {
        model: "gen".into(),
        length: Some(20),
        temperature: Some(0.0),
        ..Default::default()
    };
    let text = tokio::time::timeout(Duration::from_secs(2), client.generate_text(short))
        .await
        .expect("the worker is free again")
        .unwrap();
    assert_eq!(text.chars().count(), 20);
    drop(client);
    daemon.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_token_every_call_must_carry_it() {
    let state = tempfile::tempdir().unwrap();
    let daemon = start(state.path(), |c| {
        c.auth_token = Some(Secret::new("s3cret-t0ken"))
    })
    .await;
    assert!(!format!("{:?}", Secret::new("s3cret-t0ken")).contains("s3cret"));

    let mut none = Client::connect(&daemon.endpoint()).await.unwrap();
    assert_eq!(code(none.info().await.unwrap_err()), Code::Unauthenticated);
    assert_eq!(
        code(none.list_models().await.unwrap_err()),
        Code::Unauthenticated
    );
    let mut wrong = Client::connect_with_token(
        &daemon.endpoint(),
        BearerToken::new("s3cret-t0keN").unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(code(wrong.info().await.unwrap_err()), Code::Unauthenticated);
    let mut right = Client::connect_with_token(
        &daemon.endpoint(),
        BearerToken::new("s3cret-t0ken").unwrap(),
    )
    .await
    .unwrap();
    assert!(right.info().await.unwrap().auth_required);

    // The health service is behind the token too.
    let channel = tonic::transport::Endpoint::from_shared(daemon.endpoint())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let err = health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    drop((none, wrong, right));
    daemon.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_resource_exhausted_at_once() {
    let state = tempfile::tempdir().unwrap();
    let daemon = start(state.path(), |c| c.queue_depth = 1).await;
    let mut client = Client::connect(&daemon.endpoint()).await.unwrap();
    // One job running (taken off the queue), one waiting: the queue is full.
    let mut running = client.train(slow_training("a", 5)).await.unwrap();
    loop {
        if let Some(Event::Started(_)) = next_event(&mut running).await.event {
            break;
        }
    }
    let mut waiting = client.train(slow_training("b", 1)).await.unwrap();
    let b_id = next_event(&mut waiting).await.job_id;
    let t0 = std::time::Instant::now();
    let err = client.train(slow_training("c", 1)).await.unwrap_err();
    assert_eq!(code(err), Code::ResourceExhausted);
    let generate = pb::GenerateRequest {
        model: "a".into(),
        length: Some(5),
        ..Default::default()
    };
    assert_eq!(
        code(client.generate(generate).await.unwrap_err()),
        Code::ResourceExhausted
    );
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "rejections are immediate"
    );
    // A refused training leaves no job behind.
    assert!(
        client
            .list_jobs()
            .await
            .unwrap()
            .iter()
            .all(|j| j.model != "c")
    );
    // Cancelling a job that waits in the queue ends it at once.
    assert_eq!(
        client.cancel_job(&b_id).await.unwrap().state(),
        pb::JobState::Cancelled
    );
    let mut rest = Vec::new();
    while let Some(ev) = waiting.message().await.unwrap() {
        rest.push(ev.event);
    }
    assert!(
        matches!(rest.last(), Some(Some(Event::Stopped(s))) if s.state() == pb::JobState::Cancelled),
        "{rest:?}"
    );
    for j in client.list_jobs().await.unwrap() {
        let _ = client.cancel_job(&j.job_id).await;
    }
    drop(client);
    daemon.shutdown().await.unwrap();
}
