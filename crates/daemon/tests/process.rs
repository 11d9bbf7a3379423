//! The `oneirod` binary as a process: killed hard, or asked to stop, in the middle of a
//! training; restarted on the same state directory, the job resumes from its last
//! checkpoint. One engine per state directory, with the `oneiro` CLI beside it.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use oneiro_client::{Client, pb};
use pb::train_event::Event;

struct Daemon {
    child: Child,
    endpoint: String,
}

impl Daemon {
    /// Starts `oneirod` on a free loopback port and waits until it serves.
    fn start(state: &std::path::Path) -> Daemon {
        Self::start_with(state, &[])
    }

    fn start_with(state: &std::path::Path, env: &[(&str, &str)]) -> Daemon {
        let mut child = oneirod(state)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("oneirod starts");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let addr = loop {
            let line = lines.next().expect("oneirod prints its address").unwrap();
            if let Some(rest) = line.split("addr=").nth(1)
                && line.contains("serving")
            {
                break rest.split_whitespace().next().unwrap().to_string();
            }
        };
        // Keep draining the log so the daemon never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Daemon {
            child,
            endpoint: format!("http://{addr}"),
        }
    }
}

/// `oneirod` on a free loopback port over `state`.
fn oneirod(state: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_oneirod"));
    c.args([
        "--listen",
        "127.0.0.1:0",
        "--device",
        "cpu",
        "--shutdown-timeout-secs",
        "20",
    ])
    .arg("--state-dir")
    .arg(state)
    .env("RUST_LOG", "info")
    .env_remove("ONEIRO_ENDPOINT");
    c
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn training(epochs: u32) -> pb::TrainRequest {
    pb::TrainRequest {
        model: "m".into(),
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
            seed: Some(5),
            no_samples: true,
            checkpoint_every_steps: 10,
            ..Default::default()
        }),
        data: Some(pb::train_request::Data::Text(pb::TextCorpus {
            source: Some(pb::text_corpus::Source::Text(
                "the quick brown fox jumps over the lazy dog. ".repeat(60),
            )),
        })),
    }
}

/// Follows a stream until `until` says stop; returns the job id and the last
/// checkpoint seen as (epoch, step).
async fn follow_until(
    stream: &mut tonic::Streaming<pb::TrainEvent>,
    mut until: impl FnMut(&pb::TrainEvent) -> bool,
) -> (String, Option<(u32, u32)>) {
    let (mut job, mut ck) = (String::new(), None);
    while let Ok(Ok(Some(ev))) =
        tokio::time::timeout(Duration::from_secs(60), stream.message()).await
    {
        job.clone_from(&ev.job_id);
        if let Some(Event::Checkpoint(c)) = &ev.event {
            ck = Some((c.epoch, c.step));
        }
        if until(&ev) {
            break;
        }
    }
    (job, ck)
}

/// Restarts on `state`, checks the job is interrupted, resumes it and checks that it
/// continues from a checkpoint at or after `seen` and finishes.
async fn resume_after_restart(state: &std::path::Path, job: &str, seen: (u32, u32), epochs: u32) {
    let daemon = Daemon::start(state);
    let mut client = Client::connect(&daemon.endpoint).await.unwrap();
    let jobs = client.list_jobs().await.unwrap();
    let info = jobs
        .iter()
        .find(|j| j.job_id == job)
        .expect("the job survives the restart");
    assert_eq!(info.state(), pb::JobState::Interrupted, "{info:?}");
    // The checkpoint on disk is whole: the model loads and generates.
    let text = client
        .generate_text(pb::GenerateRequest {
            model: "m".into(),
            length: Some(10),
            temperature: Some(0.0),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(text.chars().count(), 10);

    let mut stream = client.resume_job(job).await.unwrap();
    let (mut started, mut first_batch, mut finished) = (None, None, None);
    while let Some(ev) = stream.message().await.unwrap() {
        match ev.event {
            Some(Event::Started(s)) => started = Some(s),
            Some(Event::Batch(b)) if first_batch.is_none() => first_batch = Some(b),
            Some(Event::Finished(f)) => finished = Some(f),
            _ => {}
        }
    }
    let s = started.expect("Started");
    let b = first_batch.expect("a batch");
    // It goes on from where the last checkpoint left it, not from the start.
    assert!(
        (s.first_epoch, s.first_step) >= seen,
        "resumed at {:?}, had seen {seen:?}",
        (s.first_epoch, s.first_step)
    );
    assert_eq!((b.epoch, b.step), (s.first_epoch, s.first_step + 1));
    assert_eq!(finished.expect("Finished").epochs_trained, epochs);
    let model = client.describe_model("m").await.unwrap();
    assert_eq!(
        (model.epochs_trained, model.loss_history.len() as u32),
        (epochs, epochs)
    );
    assert!(model.loss_history.iter().all(|l| l.is_finite()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_killed_mid_training_resumes_the_job_from_its_last_checkpoint() {
    let state = tempfile::tempdir().unwrap();
    let mut daemon = Daemon::start(state.path());
    let mut client = Client::connect(&daemon.endpoint).await.unwrap();
    let mut stream = client.train(training(2)).await.unwrap();
    // Wait for a mid-epoch checkpoint, then pull the plug.
    let (job, ck) = follow_until(
        &mut stream,
        |ev| matches!(&ev.event, Some(Event::Checkpoint(c)) if c.step >= 20),
    )
    .await;
    let seen = ck.expect("a checkpoint");
    daemon.child.kill().unwrap(); // SIGKILL
    daemon.child.wait().unwrap();
    drop((stream, client, daemon));
    resume_after_restart(state.path(), &job, seen, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_training_checkpoints_and_the_job_resumes() {
    let state = tempfile::tempdir().unwrap();
    let mut daemon = Daemon::start(state.path());
    let mut client = Client::connect(&daemon.endpoint).await.unwrap();
    let mut stream = client.train(training(2)).await.unwrap();
    let (job, _) = follow_until(
        &mut stream,
        |ev| matches!(&ev.event, Some(Event::Batch(b)) if b.step >= 15),
    )
    .await;
    let pid = daemon.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    // The stream reports the shutdown checkpoint and the interruption, then ends.
    let mut stopped = None;
    let (_, ck) = follow_until(&mut stream, |ev| {
        if let Some(Event::Stopped(s)) = &ev.event {
            stopped = Some(s.clone());
            return true;
        }
        false
    })
    .await;
    let stopped = stopped.expect("a Stopped event");
    assert_eq!(stopped.state(), pb::JobState::Interrupted);
    assert!(stopped.reason.contains("shutting down"), "{stopped:?}");
    let ck = ck.expect("a checkpoint written at shutdown");
    assert!(ck >= (1, 15), "{ck:?}");
    let status = daemon.child.wait().unwrap();
    assert!(
        status.success(),
        "oneirod exits cleanly on SIGTERM: {status:?}"
    );
    drop((stream, client, daemon));
    resume_after_restart(state.path(), &job, ck, 2).await;
}

/// With backtraces switched on in the daemon's environment (candle then attaches one to
/// its errors), a client still gets the message alone: no frames, no source paths.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_reach_clients_without_backtraces_whatever_the_environment() {
    let state = tempfile::tempdir().unwrap();
    let daemon = Daemon::start_with(
        state.path(),
        &[("RUST_BACKTRACE", "1"), ("RUST_LIB_BACKTRACE", "1")],
    );
    let mut client = Client::connect(&daemon.endpoint).await.unwrap();
    let mut png = Vec::new();
    for y in 0..160u32 {
        for x in 0..160u32 {
            png.push(((x ^ y) % 7) as f32 / 7.0);
        }
    }
    let req = pb::DreamRequest {
        image: oneiro_trainer_png(&png, 160),
        layers: vec![pb::DreamLayer {
            name: "mixed99".into(),
            weight: 1.0,
        }],
        weights: Some(pb::BackboneWeights {
            source: Some(pb::backbone_weights::Source::RandomSeed(1)),
            preprocessing: String::new(),
        }),
        ..Default::default()
    };
    let err = match client.dream(req).await {
        Err(oneiro_client::ClientError::Status(s)) => s,
        other => panic!("expected a refusal, got {other:?}"),
    };
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let m = err.message();
    assert!(m.contains("mixed99"), "{m}");
    assert!(
        !m.contains("backtrace") && !m.contains(".rs:") && !m.contains('\n'),
        "internals reached the client: {m}"
    );
}

/// A grey PNG, encoded with the image crate the daemon decodes with.
fn oneiro_trainer_png(grey: &[f32], side: u32) -> Vec<u8> {
    let bytes: Vec<u8> = grey.iter().map(|v| (v * 255.0) as u8).collect();
    let img = image::GrayImage::from_raw(side, side, bytes).unwrap();
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// The `oneiro` CLI, built beside `oneirod` (a workspace build has it already).
fn oneiro_cli() -> PathBuf {
    let path = Path::new(env!("CARGO_BIN_EXE_oneirod"))
        .with_file_name(format!("oneiro{}", std::env::consts::EXE_SUFFIX));
    if !path.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-p", "oneiro-client", "--bin", "oneiro"])
            .status()
            .expect("cargo runs");
        assert!(status.success(), "building the oneiro CLI failed");
    }
    path
}

/// Runs the CLI without `--endpoint` over `state`, as a user on the daemon's machine.
fn cli(state: &Path, args: &[&str]) -> Output {
    Command::new(oneiro_cli())
        .arg("--state-dir")
        .arg(state)
        .args(["--device", "cpu"])
        .args(args)
        .env_remove("ONEIRO_ENDPOINT")
        .env_remove("ONEIRO_TOKEN")
        .env_remove("ONEIRO_TOKEN_FILE")
        .env("ONEIRO_OFFLINE", "1")
        .output()
        .expect("oneiro runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `oneirod` holds its state directory: the CLI on it talks to the daemon instead of
/// opening a second engine, a second daemon is refused naming the first, and a SIGKILL
/// leaves no stale lock behind.
#[test]
fn one_engine_per_state_directory() {
    let state = tempfile::tempdir().unwrap();
    let mut first = Daemon::start(state.path());

    let out = cli(state.path(), &["models", "list", "--json"]);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("served by oneirod at {}", first.endpoint)),
        "{stderr}"
    );

    let second = oneirod(state.path()).output().expect("oneirod runs");
    let err = text(&second.stderr) + &text(&second.stdout);
    assert!(!second.status.success(), "a second daemon started: {err}");
    assert!(
        err.contains(&format!("in use by oneirod (pid {})", first.child.id()))
            && err.contains(&first.endpoint),
        "{err}"
    );

    // SIGKILL: no shutdown path runs; the kernel alone releases the lock.
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    let third = Daemon::start(state.path());
    let out = cli(state.path(), &["info"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains(&third.endpoint),
        "{}",
        text(&out.stderr)
    );
    drop(third);

    // With no daemon left, the CLI runs its own engine and says nothing about one.
    let out = cli(state.path(), &["models", "list"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        !text(&out.stderr).contains("oneirod"),
        "{}",
        text(&out.stderr)
    );
}
