//! Assembles and runs the server: the device worker, the Oneiro service, health and
//! reflection.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use oneiro_proto::v1::{FILE_DESCRIPTOR_SET, oneiro_server::OneiroServer};
use oneiro_trainer::ModelStore;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_stream::wrappers::TcpListenerStream;
use tracing::info;

use crate::config::DaemonConfig;
use crate::service::OneiroService;
use crate::worker;

/// Serves on `listener` until `shutdown` resolves; then reports NOT_SERVING, stops
/// accepting, lets the worker finish its current step and joins it.
pub async fn serve(
    config: DaemonConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    serve_inner(config, listener, shutdown, || {}).await
}

async fn serve_inner(
    config: DaemonConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
    on_ready: impl FnOnce(),
) -> anyhow::Result<()> {
    let store = Arc::new(ModelStore::open(&config.state_dir).with_context(|| {
        format!(
            "cannot open the state directory {}",
            config.state_dir.display()
        )
    })?);
    let (handle, thread) = worker::spawn(config.device, store.clone(), config.queue_depth)
        .map_err(|e| anyhow::anyhow!(e))?;
    let device = handle.device.clone();

    let (reporter, health) = tonic_health::server::health_reporter();
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("building the reflection service")?;
    let max = config.max_request_bytes;
    let oneiro = OneiroServer::new(OneiroService::new(config, store, handle))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    reporter.set_serving::<OneiroServer<OneiroService>>().await;
    info!(addr = %listener.local_addr()?, %device, "serving");
    on_ready();

    let shutdown_reporter = reporter.clone();
    tonic::transport::Server::builder()
        .add_service(health)
        .add_service(reflection)
        .add_service(oneiro)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async move {
            shutdown.await;
            shutdown_reporter
                .set_not_serving::<OneiroServer<OneiroService>>()
                .await;
            info!("shutting down");
        })
        .await
        .context("gRPC server failed")?;
    // The service (and with it the worker's job queue) is dropped by now: the worker
    // ends after its current job, whose streams are closed.
    tokio::task::spawn_blocking(move || thread.join())
        .await
        .ok();
    Ok(())
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
