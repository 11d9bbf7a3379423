//! The `oneiro.v1.Oneiro` gRPC service. Each RPC is a few lines in the file of its
//! family — admit, convert, submit — over the techniques (what runs), the worker (where)
//! and the jobs (what outlives a call):
//!
//! - [`models`]: `Info`, `CreateModel`, `ListModels`, `DescribeModel`, `DeleteModel`,
//!   `LoadModel`, `UnloadModel`;
//! - [`training`]: `Train` (one generic path for every trainable kind), `WatchJob`,
//!   `CancelJob`, `ListJobs`, `ResumeJob`;
//! - [`inference`]: `Generate`, the VAE's latent-space calls, `GanSample`;
//! - [`vision`]: `Dream`, `Style`.

mod inference;
mod models;
mod training;
mod vision;

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use oneiro_proto::v1::{self as pb, oneiro_server::Oneiro};
use oneiro_trainer::ModelStore;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::config::DaemonConfig;
use crate::error::ServiceError;
use crate::jobs::JobManager;
use crate::metrics::{Gauges, Metrics};
use crate::validate::{self, Validate};
use crate::worker::{Command, Reply, WorkerHandle};

pub use models::model_info;

pub type EventStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Replies buffered per stream before the worker waits for the client.
const STREAM_BUFFER: usize = 64;

pub struct OneiroService {
    config: DaemonConfig,
    store: Arc<ModelStore>,
    worker: WorkerHandle,
    jobs: Arc<JobManager>,
    /// Set when shutdown begins: new work is refused.
    shutting_down: Arc<AtomicBool>,
    /// One permit per open server stream.
    streams: Arc<Semaphore>,
    pub metrics: Arc<Metrics>,
}

/// A stream that holds its admission permit for as long as it is open.
struct Permitted<S> {
    inner: S,
    _permit: OwnedSemaphorePermit,
}

impl<S: Stream + Unpin> Stream for Permitted<S> {
    type Item = S::Item;
    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<S::Item>> {
        Pin::new(&mut self.inner).poll_next(cx)
    }
}

fn permitted<T: Send + 'static>(
    inner: EventStream<T>,
    permit: OwnedSemaphorePermit,
) -> EventStream<T> {
    Box::pin(Permitted {
        inner,
        _permit: permit,
    })
}

impl OneiroService {
    pub fn new(
        config: DaemonConfig,
        store: Arc<ModelStore>,
        worker: WorkerHandle,
        jobs: Arc<JobManager>,
        shutting_down: Arc<AtomicBool>,
    ) -> Self {
        let streams = Arc::new(Semaphore::new(config.max_streams.max(1)));
        let metrics = worker.metrics.clone();
        Self {
            config,
            store,
            worker,
            jobs,
            shutting_down,
            streams,
            metrics,
        }
    }

    /// A reader of the live figures, for the metrics endpoint.
    pub fn gauge_source(&self) -> impl Fn() -> Gauges + Send + Sync + 'static {
        let (queued, depth) = (self.worker.queue_probe(), self.worker.queue_depth());
        let (jobs, streams) = (self.jobs.clone(), self.streams.clone());
        let max = self.config.max_streams.max(1);
        let (device, residency) = (self.worker.device.clone(), self.worker.residency.clone());
        move || {
            let (resident_bytes, memory_budget_bytes) = {
                let r = residency.lock().expect("residency snapshot poisoned");
                (r.bytes, r.budget)
            };
            Gauges {
                device: device.clone(),
                resident_bytes,
                memory_budget_bytes,
                queued: queued(),
                queue_depth: depth,
                active_jobs: jobs.active_count(),
                open_streams: max - streams.available_permits(),
            }
        }
    }

    /// Admits one more server stream, or refuses at once.
    fn stream_permit(&self) -> Result<OwnedSemaphorePermit, Status> {
        self.streams
            .clone()
            .try_acquire_owned()
            .map_err(|_| ServiceError::TooManyStreams(self.config.max_streams).into())
    }

    /// The request, once its numbers are within [`validate::RULES`].
    fn checked<R: Validate>(&self, r: Request<R>) -> Result<R, Status> {
        let req = r.into_inner();
        validate::check(&req, &self.config)?;
        Ok(req)
    }

    fn admit(&self) -> Result<(), Status> {
        if self.shutting_down.load(Ordering::SeqCst) {
            return Err(ServiceError::ShuttingDown("the daemon is shutting down".into()).into());
        }
        Ok(())
    }

    /// Runs blocking work (store access, file reads, hub downloads) off the async
    /// threads.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&ModelStore, &DaemonConfig) -> Result<T, ServiceError> + Send + 'static,
    ) -> Result<T, Status> {
        let (store, config) = (self.store.clone(), self.config.clone());
        tokio::task::spawn_blocking(move || f(&store, &config))
            .await
            .map_err(|e| ServiceError::Internal(format!("blocking task failed: {e}")))?
            .map_err(Status::from)
    }

    /// A streamed request: `plan` (decoding, checks, weights resolution) runs off the
    /// async threads, then `command` queues it on the device with the stream's sender.
    async fn streamed<P: Send + 'static, E: Send + 'static>(
        &self,
        plan: impl FnOnce(&DaemonConfig) -> Result<P, ServiceError> + Send + 'static,
        command: impl FnOnce(P, Reply<E>) -> Command,
    ) -> Result<Response<EventStream<E>>, Status> {
        self.admit()?;
        let permit = self.stream_permit()?;
        let plan = self.blocking(move |_, config| plan(config)).await?;
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        self.worker.submit(command(plan, tx))?;
        Ok(Response::new(permitted(
            Box::pin(ReceiverStream::new(rx)),
            permit,
        )))
    }
}

#[tonic::async_trait]
impl Oneiro for OneiroService {
    async fn info(
        &self,
        r: Request<pb::InfoRequest>,
    ) -> Result<Response<pb::InfoResponse>, Status> {
        self.info_rpc(self.checked(r)?).await
    }

    async fn create_model(
        &self,
        r: Request<pb::CreateModelRequest>,
    ) -> Result<Response<pb::ModelInfo>, Status> {
        self.create_model_rpc(self.checked(r)?).await
    }

    async fn list_models(
        &self,
        _: Request<pb::ListModelsRequest>,
    ) -> Result<Response<pb::ListModelsResponse>, Status> {
        self.list_models_rpc().await
    }

    async fn describe_model(
        &self,
        r: Request<pb::DescribeModelRequest>,
    ) -> Result<Response<pb::ModelInfo>, Status> {
        self.describe_model_rpc(self.checked(r)?.name).await
    }

    async fn delete_model(
        &self,
        r: Request<pb::DeleteModelRequest>,
    ) -> Result<Response<pb::DeleteModelResponse>, Status> {
        self.delete_model_rpc(self.checked(r)?.name).await
    }

    async fn load_model(
        &self,
        r: Request<pb::LoadModelRequest>,
    ) -> Result<Response<pb::ResidencyResponse>, Status> {
        self.load_model_rpc(self.checked(r)?.name).await
    }

    async fn unload_model(
        &self,
        r: Request<pb::UnloadModelRequest>,
    ) -> Result<Response<pb::ResidencyResponse>, Status> {
        self.unload_model_rpc(self.checked(r)?.name).await
    }

    type TrainStream = EventStream<pb::TrainEvent>;

    async fn train(
        &self,
        r: Request<pb::TrainRequest>,
    ) -> Result<Response<Self::TrainStream>, Status> {
        self.train_rpc(self.checked(r)?).await
    }

    type WatchJobStream = EventStream<pb::TrainEvent>;

    async fn watch_job(
        &self,
        r: Request<pb::WatchJobRequest>,
    ) -> Result<Response<Self::WatchJobStream>, Status> {
        self.watch_job_rpc(self.checked(r)?.job_id)
    }

    async fn cancel_job(
        &self,
        r: Request<pb::CancelJobRequest>,
    ) -> Result<Response<pb::JobInfo>, Status> {
        self.cancel_job_rpc(self.checked(r)?.job_id)
    }

    async fn list_jobs(
        &self,
        _: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        Ok(Response::new(pb::ListJobsResponse {
            jobs: self.jobs.list(),
        }))
    }

    type ResumeJobStream = EventStream<pb::TrainEvent>;

    async fn resume_job(
        &self,
        r: Request<pb::ResumeJobRequest>,
    ) -> Result<Response<Self::ResumeJobStream>, Status> {
        self.resume_job_rpc(self.checked(r)?.job_id).await
    }

    type GenerateStream = EventStream<pb::GenerateChunk>;

    async fn generate(
        &self,
        r: Request<pb::GenerateRequest>,
    ) -> Result<Response<Self::GenerateStream>, Status> {
        self.generate_rpc(self.checked(r)?)
    }

    async fn vae_grid(
        &self,
        r: Request<pb::VaeGridRequest>,
    ) -> Result<Response<pb::Image>, Status> {
        self.vae_grid_rpc(self.checked(r)?).await
    }

    async fn vae_decode(
        &self,
        r: Request<pb::VaeDecodeRequest>,
    ) -> Result<Response<pb::VaeDecodeResponse>, Status> {
        self.vae_decode_rpc(self.checked(r)?).await
    }

    async fn vae_encode(
        &self,
        r: Request<pb::VaeEncodeRequest>,
    ) -> Result<Response<pb::VaeEncodeResponse>, Status> {
        self.vae_encode_rpc(self.checked(r)?).await
    }

    async fn vae_concept(
        &self,
        r: Request<pb::VaeConceptRequest>,
    ) -> Result<Response<pb::VaeConceptResponse>, Status> {
        self.vae_concept_rpc(self.checked(r)?).await
    }

    async fn vae_morph(
        &self,
        r: Request<pb::VaeMorphRequest>,
    ) -> Result<Response<pb::VaeMorphResponse>, Status> {
        self.vae_morph_rpc(self.checked(r)?).await
    }

    type StyleStream = EventStream<pb::StyleEvent>;

    async fn style(
        &self,
        r: Request<pb::StyleRequest>,
    ) -> Result<Response<Self::StyleStream>, Status> {
        self.style_rpc(self.checked(r)?).await
    }

    type DreamStream = EventStream<pb::DreamEvent>;

    async fn dream(
        &self,
        r: Request<pb::DreamRequest>,
    ) -> Result<Response<Self::DreamStream>, Status> {
        self.dream_rpc(self.checked(r)?).await
    }

    async fn gan_sample(
        &self,
        r: Request<pb::GanSampleRequest>,
    ) -> Result<Response<pb::Image>, Status> {
        self.gan_sample_rpc(self.checked(r)?).await
    }
}
