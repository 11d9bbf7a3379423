//! Residency, limits, metrics and a bounded load test, against a real daemon on
//! 127.0.0.1:0.

use std::time::{Duration, Instant};

use oneiro_client::{Client, ClientError, pb};
use oneiro_e2e::{SENTENCE, code, free_addr, scrape, start};
use tonic::Code;

async fn train_small(client: &mut Client, model: &str) {
    let req = pb::TrainRequest {
        model: model.into(),
        create_if_missing: true,
        stop_on_disconnect: false,
        create_config: Some(pb::train_request::CreateConfig::CharLstm(
            pb::CharLstmConfig {
                maxlen: Some(16),
                step: Some(2),
                hidden: Some(32),
                lowercase: None,
            },
        )),
        options: Some(pb::TrainOptions {
            epochs: Some(1),
            batch_size: Some(32),
            seed: Some(1),
            no_samples: true,
            ..Default::default()
        }),
        data: Some(pb::train_request::Data::Text(pb::TextCorpus {
            source: Some(pb::text_corpus::Source::Text(SENTENCE.repeat(20))),
        })),
    };
    let mut s = client.train(req).await.unwrap();
    while s.message().await.unwrap().is_some() {}
}

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_load_unload_and_report_residency() {
    let state = tempfile::tempdir().unwrap();
    let daemon = start(state.path(), |_| {}).await;
    let mut client = Client::connect(&daemon.endpoint()).await.unwrap();
    train_small(&mut client, "a").await;
    train_small(&mut client, "b").await;

    let r = client.load_model("a").await.unwrap();
    assert!(!r.was_resident);
    assert_eq!(r.resident_models, vec!["a".to_string()]);
    assert!(r.resident_bytes > 0 && r.resident_bytes <= r.memory_budget_bytes);
    assert!(client.load_model("a").await.unwrap().was_resident);
    // Generation loads on use too.
    let g = pb::GenerateRequest {
        model: "b".into(),
        length: Some(5),
        temperature: Some(0.0),
        ..Default::default()
    };
    client.generate_text(g).await.unwrap();
    let info = client.info().await.unwrap();
    assert_eq!(info.resident_models, vec!["a".to_string(), "b".to_string()]);
    let r = client.unload_model("a").await.unwrap();
    assert!(r.was_resident);
    assert_eq!(r.resident_models, vec!["b".to_string()]);
    assert!(!client.unload_model("a").await.unwrap().was_resident);
    assert_eq!(
        code(client.load_model("missing").await.unwrap_err()),
        Code::NotFound
    );
    assert_eq!(
        code(client.load_model("../x").await.unwrap_err()),
        Code::InvalidArgument
    );
    drop(client);
    daemon.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_budget_unloads_the_least_recently_used_model() {
    let state = tempfile::tempdir().unwrap();
    // Room for about one small model (≈ 3 × 4 bytes × 9k parameters).
    let daemon = start(state.path(), |c| c.memory_budget_bytes = 150_000).await;
    let mut client = Client::connect(&daemon.endpoint()).await.unwrap();
    train_small(&mut client, "a").await;
    train_small(&mut client, "b").await;
    client.load_model("a").await.unwrap();
    let r = client.load_model("b").await.unwrap();
    assert_eq!(r.resident_models, vec!["b".to_string()], "{r:?}");
    assert!(r.resident_bytes <= 150_000);
    drop(client);
    daemon.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_streams_are_capped_and_metrics_are_served() {
    let state = tempfile::tempdir().unwrap();
    let metrics_addr = free_addr();
    let daemon = start(state.path(), |c| {
        c.max_streams = 1;
        c.metrics_listen = Some(metrics_addr);
    })
    .await;
    let mut client = Client::connect(&daemon.endpoint()).await.unwrap();
    train_small(&mut client, "m").await;
    let long = pb::GenerateRequest {
        model: "m".into(),
        length: Some(100_000),
        temperature: Some(1.0),
        ..Default::default()
    };
    let mut open = client.generate(long).await.unwrap();
    assert!(open.message().await.unwrap().is_some());
    let short = pb::GenerateRequest {
        model: "m".into(),
        length: Some(5),
        ..Default::default()
    };
    assert_eq!(
        code(client.generate(short.clone()).await.unwrap_err()),
        Code::ResourceExhausted
    );
    assert_eq!(client.info().await.unwrap().open_streams, 1);
    drop(open);
    // The permit goes with the stream.
    let mut ok = None;
    for _ in 0..50 {
        match client.generate_text(short.clone()).await {
            Ok(t) => {
                ok = Some(t);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    assert_eq!(ok.expect("a stream slot frees up").chars().count(), 5);

    let body = tokio::task::spawn_blocking(move || scrape(metrics_addr))
        .await
        .unwrap();
    assert!(
        body.starts_with("HTTP/1.0 200") || body.starts_with("HTTP/1.1 200"),
        "{body}"
    );
    // Three calls at least: the open stream, the refused one, and the retries until a
    // slot freed (how many depends on timing).
    let generate_calls = body
        .lines()
        .find(|l| {
            l.starts_with(
                "oneiro_rpc_calls_total{service=\"oneiro.v1.Oneiro\",method=\"Generate\"} ",
            )
        })
        .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok());
    assert!(generate_calls.is_some_and(|n| n >= 3), "{body}");
    assert!(
        body.contains("content-type: application/openmetrics-text"),
        "{body}"
    );
    assert!(
        body.contains("oneiro_rpc_errors_total{service=\"oneiro.v1.Oneiro\",method=\"Generate\",code=\"resource_exhausted\"} "),
        "{body}"
    );
    assert!(body.contains("oneiro_train_steps_total"), "{body}");
    assert!(
        body.contains("oneiro_queue_jobs{device=\"cpu\"} 0"),
        "{body}"
    );
    drop(client);
    daemon.shutdown().await.unwrap();
}

/// Many clients against a small queue: every request completes or is refused with
/// RESOURCE_EXHAUSTED at once; none hangs; memory stays bounded. Prints the figures
/// (`cargo test -p oneiro-e2e --test service_e2e load -- --nocapture`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bounded_load_test_completes_or_rejects_every_request() {
    const CLIENTS: usize = 48;
    const ROUNDS: usize = 6;
    let state = tempfile::tempdir().unwrap();
    let daemon = start(state.path(), |c| {
        c.queue_depth = 4;
        c.max_streams = 8;
    })
    .await;
    let endpoint = daemon.endpoint();
    let mut client = Client::connect(&endpoint).await.unwrap();
    train_small(&mut client, "m").await;
    client.load_model("m").await.unwrap();
    let rss_before = rss_bytes();

    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let endpoint = endpoint.clone();
        tasks.push(tokio::spawn(async move {
            let mut client = Client::connect(&endpoint).await.unwrap();
            let mut out = Vec::new();
            for r in 0..ROUNDS {
                let req = pb::GenerateRequest {
                    model: "m".into(),
                    length: Some(400),
                    temperature: Some(1.0),
                    seed: Some((c * ROUNDS + r) as u64),
                    ..Default::default()
                };
                let t0 = Instant::now();
                let result =
                    tokio::time::timeout(Duration::from_secs(60), client.generate_text(req)).await;
                let outcome = match result {
                    Err(_) => Err("hung".to_string()),
                    Ok(Ok(text)) if text.chars().count() == 400 => Ok(()),
                    Ok(Ok(text)) => Err(format!("short text: {} chars", text.chars().count())),
                    Ok(Err(ClientError::Status(s))) if s.code() == Code::ResourceExhausted => {
                        Err("rejected".into())
                    }
                    Ok(Err(e)) => Err(format!("error: {e}")),
                };
                out.push((outcome, t0.elapsed()));
            }
            out
        }));
    }
    let mut latencies = Vec::new();
    let (mut completed, mut rejected, mut failures) = (0, 0, Vec::new());
    for t in tasks {
        for (outcome, latency) in t.await.unwrap() {
            match outcome {
                Ok(()) => {
                    completed += 1;
                    latencies.push(latency);
                }
                Err(e) if e == "rejected" => rejected += 1,
                Err(e) => failures.push(e),
            }
        }
    }
    let wall = started.elapsed();
    let rss_after = rss_bytes();
    latencies.sort();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    println!(
        "load: {} requests from {CLIENTS} clients in {:.2}s: {completed} completed, {rejected} rejected (RESOURCE_EXHAUSTED), {} failed; \
         completed latency p50 {:.1} ms, p99 {:.1} ms; RSS {:.1} -> {:.1} MiB",
        CLIENTS * ROUNDS,
        wall.as_secs_f64(),
        failures.len(),
        pct(0.5).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
        rss_before as f64 / (1 << 20) as f64,
        rss_after as f64 / (1 << 20) as f64,
    );
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(completed + rejected, CLIENTS * ROUNDS);
    assert!(
        completed > 0 && rejected > 0,
        "{completed} completed, {rejected} rejected"
    );
    assert!(
        rss_after < rss_before + (256 << 20),
        "memory grew from {rss_before} to {rss_after}"
    );
    // Still serving normally afterwards.
    let info = client.info().await.unwrap();
    assert_eq!((info.queued, info.open_streams), (0, 0));
    drop(client);
    daemon.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_clients_that_trust_the_certificate() {
    let state = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert_pem, key_pem) = (cert.cert.pem(), cert.signing_key.serialize_pem());
    std::fs::write(state.path().join("cert.pem"), &cert_pem).unwrap();
    std::fs::write(state.path().join("key.pem"), &key_pem).unwrap();
    let files = oneiro_daemon::config::TlsFiles {
        cert: state.path().join("cert.pem"),
        key: state.path().join("key.pem"),
    };
    let daemon = start(state.path(), |c| c.tls = Some(files)).await;
    let https = format!("https://localhost:{}", daemon.addr.port());

    let mut client = Client::connect_with(&https, Default::default(), Some(cert_pem.as_bytes()))
        .await
        .unwrap();
    assert_eq!(client.info().await.unwrap().device, "cpu");
    // Plain text against the TLS port fails, and so does an untrusted certificate.
    let mut plain = Client::connect(&format!("http://127.0.0.1:{}", daemon.addr.port()))
        .await
        .unwrap();
    assert!(plain.info().await.is_err());
    let untrusted = Client::connect_with(&https, Default::default(), None).await;
    assert!(untrusted.is_err() || untrusted.unwrap().info().await.is_err());
    drop((client, plain));
    daemon.shutdown().await.unwrap();
}
