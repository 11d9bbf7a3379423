//! `/metrics` after one call of every RPC the daemon serves (the list comes from the
//! services' descriptors, as the daemon's does): every call counted, every call timed,
//! and an error that ends a stream after it started counted by method and code.

use std::time::Duration;

use oneiro_client::pb::{self, oneiro_client::OneiroClient};
use oneiro_daemon::metrics::rpcs_of;
use oneiro_e2e::{free_addr, scrape, start};
use tonic::transport::Channel;

/// The value of the sample line that starts with `prefix`, if any.
fn sample(body: &str, prefix: &str) -> Option<f64> {
    body.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// Calls `method` of the Oneiro service with an empty request and reads any stream to
/// its end; every such call fails somewhere (no model, no image...), which is the point.
async fn call_empty(client: &mut OneiroClient<Channel>, method: &str) {
    macro_rules! unary {
        ($f:ident, $t:ty) => {{
            let _ = client.$f(<$t>::default()).await;
        }};
    }
    macro_rules! stream {
        ($f:ident, $t:ty) => {{
            if let Ok(r) = client.$f(<$t>::default()).await {
                let mut s = r.into_inner();
                while let Ok(Ok(Some(_))) =
                    tokio::time::timeout(Duration::from_secs(10), s.message()).await
                {}
            }
        }};
    }
    match method {
        "Info" => unary!(info, pb::InfoRequest),
        "CreateModel" => unary!(create_model, pb::CreateModelRequest),
        "ListModels" => unary!(list_models, pb::ListModelsRequest),
        "DescribeModel" => unary!(describe_model, pb::DescribeModelRequest),
        "DeleteModel" => unary!(delete_model, pb::DeleteModelRequest),
        "LoadModel" => unary!(load_model, pb::LoadModelRequest),
        "UnloadModel" => unary!(unload_model, pb::UnloadModelRequest),
        "Train" => stream!(train, pb::TrainRequest),
        "WatchJob" => stream!(watch_job, pb::WatchJobRequest),
        "CancelJob" => unary!(cancel_job, pb::CancelJobRequest),
        "ListJobs" => unary!(list_jobs, pb::ListJobsRequest),
        "ResumeJob" => stream!(resume_job, pb::ResumeJobRequest),
        "Generate" => stream!(generate, pb::GenerateRequest),
        "VaeGrid" => unary!(vae_grid, pb::VaeGridRequest),
        "VaeDecode" => unary!(vae_decode, pb::VaeDecodeRequest),
        "VaeEncode" => unary!(vae_encode, pb::VaeEncodeRequest),
        "VaeConcept" => unary!(vae_concept, pb::VaeConceptRequest),
        "VaeMorph" => unary!(vae_morph, pb::VaeMorphRequest),
        "GanSample" => unary!(gan_sample, pb::GanSampleRequest),
        "Dream" => stream!(dream, pb::DreamRequest),
        "Style" => stream!(style, pb::StyleRequest),
        other => panic!("{other} is not called here: add it"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_and_time_every_rpc_including_errors_mid_stream() {
    let state = tempfile::tempdir().unwrap();
    let metrics_addr = free_addr();
    let daemon = start(state.path(), |c| {
        c.metrics_listen = Some(metrics_addr);
        c.hub.offline = true;
    })
    .await;
    let channel = Channel::from_shared(daemon.endpoint())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = OneiroClient::new(channel.clone());
    let all = rpcs_of(&[
        pb::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
    ]);
    assert!(all.len() >= 21 + 4, "{all:?}");
    for rpc in all.iter().filter(|r| r.service == "oneiro.v1.Oneiro") {
        call_empty(&mut client, &rpc.method).await;
    }

    // Health: Check, and a Watch left by the client (its call ends CANCELLED).
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let req = || tonic_health::pb::HealthCheckRequest {
        service: String::new(),
    };
    health.check(req()).await.unwrap();
    let mut watch = health.watch(req()).await.unwrap().into_inner();
    watch.message().await.unwrap();
    drop(watch);
    // Reflection, both versions.
    for listed in [
        oneiro_e2e::list_services!(v1, channel.clone()),
        oneiro_e2e::list_services!(v1alpha, channel.clone()),
    ] {
        assert!(listed.iter().any(|s| s == "oneiro.v1.Oneiro"), "{listed:?}");
    }

    // An error after the stream began: the model is looked up on the device, so the
    // response has started when NOT_FOUND arrives (in the trailers).
    let mut stream = client
        .generate(pb::GenerateRequest {
            model: "nope".into(),
            length: Some(5),
            ..Default::default()
        })
        .await
        .expect("the stream opens")
        .into_inner();
    let err = stream.message().await.expect_err("the model is missing");
    assert_eq!(err.code(), tonic::Code::NotFound);

    let labels = |r: &oneiro_daemon::metrics::RpcLabels| {
        format!("{{service=\"{}\",method=\"{}\"}}", r.service, r.method)
    };
    // The dropped Watch ends on the server a moment after the client lets go.
    let mut body = String::new();
    for _ in 0..100 {
        body = scrape(metrics_addr);
        let timed = |r| {
            sample(
                &body,
                &format!("oneiro_rpc_duration_seconds_count{}", labels(r)),
            )
        };
        if all.iter().all(|r| timed(r).is_some_and(|n| n >= 1.0)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for rpc in &all {
        let calls = sample(&body, &format!("oneiro_rpc_calls_total{} ", labels(rpc)));
        assert!(
            calls.is_some_and(|n| n >= 1.0),
            "{rpc:?} not counted:\n{body}"
        );
        let timed = sample(
            &body,
            &format!("oneiro_rpc_duration_seconds_count{} ", labels(rpc)),
        );
        assert!(
            timed.is_some_and(|n| n >= 1.0),
            "{rpc:?} not timed:\n{body}"
        );
    }
    let mid_stream = "oneiro_rpc_errors_total{service=\"oneiro.v1.Oneiro\",method=\"Generate\",code=\"not_found\"} ";
    assert_eq!(sample(&body, mid_stream), Some(1.0), "{body}");
    for refused in ["Train", "Dream", "VaeGrid"] {
        let line = format!(
            "oneiro_rpc_errors_total{{service=\"oneiro.v1.Oneiro\",method=\"{refused}\",code=\"invalid_argument\"}} "
        );
        assert!(sample(&body, &line).is_some(), "{line}\n{body}");
    }
    assert!(
        sample(&body, "oneiro_queue_wait_seconds_count{device=\"cpu\"} ").is_some_and(|n| n >= 1.0),
        "{body}"
    );
    drop(client);
    daemon.shutdown().await.unwrap();
}
