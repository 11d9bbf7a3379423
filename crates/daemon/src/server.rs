//! Assembles and runs the server: the device worker, the Oneiro service, health and
//! reflection.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use oneiro_proto::v1::{FILE_DESCRIPTOR_SET, oneiro_server::OneiroServer};
use oneiro_trainer::ModelStore;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_stream::wrappers::TcpListenerStream;
use tracing::{info, warn};

use crate::config::{DaemonConfig, Secret};
use crate::error::ServiceError;
use crate::jobs::JobManager;
use crate::lock::StateLock;
use crate::metrics::{Gauges, Metrics, RpcMetricsLayer};
use crate::rpc::OneiroService;
use crate::worker;
use tonic::codegen::http;

/// Serves on `listener` until `shutdown` resolves; then reports NOT_SERVING, stops
/// accepting, lets the worker finish its current step and joins it.
pub async fn serve(
    config: DaemonConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    serve_inner(config, listener, shutdown, || {}).await
}

/// Checks `authorization: Bearer <token>` on every call when a token is configured.
#[derive(Clone)]
struct BearerAuth {
    expected: Option<Secret>,
}

impl tonic::service::Interceptor for BearerAuth {
    fn call(&mut self, req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let Some(expected) = &self.expected else {
            return Ok(req);
        };
        let given = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let token = given.strip_prefix("Bearer ").unwrap_or("");
        // Compare without an early exit, so timing does not reveal a matching prefix.
        let (a, b) = (token.as_bytes(), expected.expose().as_bytes());
        let diff = a
            .iter()
            .zip(b)
            .fold(a.len() ^ b.len(), |acc, (x, y)| acc | usize::from(x ^ y));
        if diff == 0 {
            Ok(req)
        } else if given.is_empty() {
            Err(ServiceError::Unauthenticated(
                "this daemon requires a bearer token (authorization: Bearer ...)",
            )
            .into())
        } else {
            Err(ServiceError::Unauthenticated("invalid bearer token").into())
        }
    }
}

async fn serve_inner(
    config: DaemonConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
    on_ready: impl FnOnce(),
) -> anyhow::Result<()> {
    // Before anything reads the directory: a second engine must not open its jobs (and
    // mark the first one's running jobs interrupted) or write its checkpoints.
    let mut lock = StateLock::acquire(&config.state_dir, config.role)?;
    lock.serving(listener.local_addr()?, config.tls.is_some())
        .with_context(|| {
            format!(
                "cannot write {}",
                config.state_dir.join(crate::lock::LOCK_FILE).display()
            )
        })?;
    let store = Arc::new(ModelStore::open(&config.state_dir).with_context(|| {
        format!(
            "cannot open the state directory {}",
            config.state_dir.display()
        )
    })?);
    let jobs = Arc::new(
        JobManager::open(&config.state_dir)
            .with_context(|| format!("cannot open the jobs of {}", config.state_dir.display()))?,
    );
    let (handle, thread) = worker::spawn(
        config.device,
        store.clone(),
        config.queue_depth,
        config.memory_budget_bytes as u64,
    )
    .map_err(|e| anyhow::anyhow!(e))?;
    let device = handle.device.clone();
    let stopping = handle.stopping.clone();

    let (reporter, health) = tonic_health::server::health_reporter();
    // v1 and v1alpha: grpcio-reflection, Postman, Evans and older grpcurl ask only v1alpha.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    // Each version lists itself; name the other one too, so both are discoverable.
    let reflection_v1 = reflection()
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("building the reflection service")?;
    let reflection_v1alpha = reflection()
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .context("building the reflection service (v1alpha)")?;
    let max = config.max_request_bytes;
    let deadline = config.shutdown_timeout;
    let auth = BearerAuth {
        expected: config.auth_token.clone(),
    };
    let shutting_down = Arc::new(AtomicBool::new(false));
    let metrics_listen = config.metrics_listen;
    let tls = config.tls.clone();
    let service = OneiroService::new(config, store, handle, jobs.clone(), shutting_down.clone());
    let metrics = service.metrics.clone();
    let metrics_task = match metrics_listen {
        Some(addr) => Some(serve_metrics(addr, metrics.clone(), service.gauge_source()).await?),
        None => None,
    };
    let oneiro = OneiroServer::new(service)
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    reporter.set_serving::<OneiroServer<OneiroService>>().await;
    info!(addr = %listener.local_addr()?, %device, auth = auth.expected.is_some(), tls = tls.is_some(), "serving");
    on_ready();

    // Shutdown: NOT_SERVING, refuse new work, ask running trainings to checkpoint and
    // stop (they end as interrupted, resumable), end generations; tonic then waits for
    // open streams, which end as their jobs do, up to the deadline.
    let begun = Arc::new(tokio::sync::Notify::new());
    let begun_tx = begun.clone();
    // One span per call, so every log line of a request carries its method.
    let mut builder = tonic::transport::Server::builder()
        .trace_fn(|req| tracing::info_span!("rpc", method = %req.uri().path()));
    if let Some(tls) = &tls {
        // Two rustls providers are linked (ring for tonic, aws-lc-rs for the hub client):
        // name one, or rustls panics at the first handshake. Already set is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let read = |p: &std::path::Path| {
            std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))
        };
        let identity = tonic::transport::Identity::from_pem(read(&tls.cert)?, read(&tls.key)?);
        builder = builder
            .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
            .context("invalid TLS certificate or key")?;
    }
    let server = builder
        .layer(
            tower::ServiceBuilder::new()
                .layer(RpcMetricsLayer {
                    metrics: metrics.clone(),
                })
                .layer(tonic::service::InterceptorLayer::new(auth)),
        )
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(oneiro)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async move {
            shutdown.await;
            info!("shutting down");
            reporter
                .set_not_serving::<OneiroServer<OneiroService>>()
                .await;
            shutting_down.store(true, Ordering::SeqCst);
            stopping.store(true, Ordering::SeqCst);
            jobs.interrupt_all("the daemon is shutting down");
            begun_tx.notify_one();
        });
    tokio::select! {
        r = server => r.context("gRPC server failed")?,
        _ = async { begun.notified().await; tokio::time::sleep(deadline).await } => {
            warn!(?deadline, "shutdown deadline passed; streams still open are dropped");
        }
    }
    if let Some(t) = metrics_task {
        t.abort();
    }
    // The service (and with it the worker's job queue) is dropped by now: the worker
    // ends after its current job.
    let joined = tokio::task::spawn_blocking(move || thread.join());
    if tokio::time::timeout(deadline, joined).await.is_err() {
        warn!("the worker did not stop within the deadline");
    }
    drop(lock);
    Ok(())
}

/// Serves `/metrics` (OpenMetrics text, as prometheus-client encodes it) on `addr`.
async fn serve_metrics(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    gauges: impl Fn() -> Gauges + Send + Sync + 'static,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let gauges = Arc::new(gauges);
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let text = metrics.render(&gauges());
            async move {
                (
                    [(
                        http::header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    text,
                )
            }
        }),
    );
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} for metrics"))?;
    info!(addr = %listener.local_addr()?, "serving metrics");
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            warn!(error = %e, "the metrics endpoint stopped");
        }
    }))
}

/// A daemon running on a tokio task, for the CLI's embedded mode and for tests.
pub struct RunningDaemon {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl RunningDaemon {
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops it and waits for the worker to finish.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.await?
    }
}

/// Starts a daemon on `addr` (use port 0 for any free port) on the current runtime.
pub async fn spawn(config: DaemonConfig, addr: SocketAddr) -> anyhow::Result<RunningDaemon> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = oneshot::channel::<()>();
    // Fail fast on start-up errors (state directory, device) rather than on first call.
    let (ready_tx, ready_rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let shutdown = async move {
            let _ = stopped.await;
        };
        serve_inner(config, listener, shutdown, move || {
            let _ = ready_tx.send(());
        })
        .await
    });
    if ready_rx.await.is_err() {
        // The sender was dropped unused: serving failed before it was ready.
        task.await??;
        anyhow::bail!("the daemon stopped while starting");
    }
    Ok(RunningDaemon {
        addr,
        stop: Some(stop),
        task,
    })
}
