//! The `oneiro.v1.Oneiro` gRPC service.

use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use oneiro_proto::v1::{self as pb, oneiro_server::Oneiro};
use oneiro_trainer::store::validate_name;
use oneiro_trainer::text_data::CharCorpus;
use oneiro_trainer::text_generate::validate_temperature;
use oneiro_trainer::{ModelRecord, ModelStore};
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::info_span;

use crate::config::DaemonConfig;
use crate::convert;
use crate::error::ServiceError;
use crate::jobs::{Job as TrainJob, JobData, JobManager, JobState, TrainPlan};
use crate::metrics::{Gauges, Metrics};
use crate::vae_ops;
use crate::worker::{Job, Preloaded, Reply, VaeOp, VaeReply, WorkerHandle};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

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

/// Streams a job's events to one client: the replay, then the live feed; ends with the
/// job's failure status, if it failed. With `cancel_on_disconnect`, a client going away
/// cancels the job.
fn watch(job: Arc<TrainJob>, cancel_on_disconnect: bool) -> EventStream<pb::TrainEvent> {
    let sub = job.subscribe();
    let (tx, rx) = mpsc::channel(STREAM_BUFFER);
    tokio::spawn(async move {
        let gone = |job: &TrainJob| {
            if cancel_on_disconnect {
                job.request_stop(JobState::Cancelled, "the client disconnected");
            }
        };
        if sub.replay.is_empty() && sub.live.is_none() {
            // Known from disk only (e.g. after a restart): its outcome is all there is.
            let info = job.info();
            let stopped = pb::JobStopped {
                state: info.state,
                reason: info.message,
            };
            let ev = pb::TrainEvent {
                job_id: job.id.clone(),
                event: Some(pb::train_event::Event::Stopped(stopped)),
            };
            let _ = tx.send(Ok(ev)).await;
        }
        // Events go out in order, each once: `last` is the newest sequence number sent.
        let mut last = None::<u64>;
        for (seq, ev) in sub.replay {
            last = Some(seq);
            if tx.send(Ok(ev)).await.is_err() {
                return gone(&job);
            }
        }
        if let Some(mut live) = sub.live {
            loop {
                let batch = tokio::select! {
                    r = live.recv() => match r {
                        Ok(numbered) => vec![numbered],
                        // Fell behind the live feed: fetch what was missed from the
                        // history instead (only progress older than it can be lost).
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                            job.since(last)
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                    },
                    _ = tx.closed() => return gone(&job),
                };
                for (seq, ev) in batch {
                    if last.is_some_and(|l| seq <= l) {
                        continue;
                    }
                    last = Some(seq);
                    if tx.send(Ok(ev)).await.is_err() {
                        return gone(&job);
                    }
                }
            }
        }
        if let Some(status) = job.final_status() {
            let _ = tx.send(Err(status)).await;
        }
    });
    Box::pin(ReceiverStream::new(rx))
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
        move || Gauges {
            queued: queued(),
            queue_depth: depth,
            active_jobs: jobs.active_count(),
            open_streams: max - streams.available_permits(),
        }
    }

    fn residency(&self) -> crate::residency::Snapshot {
        self.worker
            .residency
            .lock()
            .expect("residency snapshot poisoned")
            .clone()
    }

    fn residency_response(&self, was_resident: bool) -> pb::ResidencyResponse {
        let r = self.residency();
        pb::ResidencyResponse {
            was_resident,
            resident_models: r.models,
            resident_bytes: r.bytes,
            memory_budget_bytes: r.budget,
        }
    }

    /// Admits one more server stream, or refuses at once.
    fn stream_permit(&self) -> Result<OwnedSemaphorePermit, Status> {
        self.streams.clone().try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!(
                "too many open streams ({}); retry later",
                self.config.max_streams
            ))
        })
    }

    fn admit(&self) -> Result<(), Status> {
        if self.shutting_down.load(Ordering::SeqCst) {
            return Err(Status::unavailable("the daemon is shutting down"));
        }
        Ok(())
    }

    fn submit_training(
        &self,
        job: &Arc<TrainJob>,
        data: Option<Preloaded>,
    ) -> Result<(), ServiceError> {
        let span = info_span!("train", job = %job.id, model = %job.model);
        self.worker.submit(Job::Train {
            job: job.clone(),
            plan: job.plan(),
            data,
            span,
        })
    }

    /// Trains a GAN: resolves and checks its images, creates the model if asked, queues
    /// the job.
    async fn train_gan(
        &self,
        req: pb::TrainRequest,
        permit: OwnedSemaphorePermit,
    ) -> Result<Response<EventStream<pb::TrainEvent>>, Status> {
        let options = convert::gan_train_options(req.options.as_ref());
        options.validate().map_err(ServiceError::from)?;
        if self.jobs.active_for(&req.model).is_some() {
            return Err(ServiceError::Busy(req.model).into());
        }
        let data = match &req.data {
            Some(pb::train_request::Data::Images(d)) => Some(d.clone()),
            _ => None,
        };
        let (config, r) = (self.config.clone(), req.clone());
        let (source, images, inline, record) = self
            .with_store(move |s| {
                let (source, images, inline) = crate::gan_ops::resolve_images(data, &config)?;
                let record = ensure_gan_model(s, &r)?;
                Ok((source, Arc::new(images), inline, record))
            })
            .await?;
        let jobs = self.jobs.clone();
        let (model, stop) = (req.model.clone(), req.stop_on_disconnect);
        let target = record.progress_units() + options.steps;
        let job = tokio::task::spawn_blocking(move || {
            let plan = TrainPlan::Gan {
                gan: options,
                images: source,
            };
            let data = match &inline {
                Some(files) => JobData::Images(files),
                None => JobData::InPlan,
            };
            jobs.create(&model, plan, target, stop, data)
        })
        .await
        .map_err(|e| Status::internal(format!("job creation failed: {e}")))??;
        if let Err(e) = self.submit_training(&job, Some(Preloaded::Images(images))) {
            self.jobs.discard(&job);
            return Err(e.into());
        }
        Ok(Response::new(permitted(
            watch(job, req.stop_on_disconnect),
            permit,
        )))
    }

    /// A streamed request on a pretrained network: `plan` (decoding, weights resolution,
    /// a hub download on first use) runs off the async threads, then `job` queues it on
    /// the device with the sending end of the stream.
    async fn streamed<P: Send + 'static, E: Send + 'static>(
        &self,
        plan: impl FnOnce(&DaemonConfig) -> Result<P, ServiceError> + Send + 'static,
        job: impl FnOnce(P, Reply<E>) -> Job,
    ) -> Result<Response<EventStream<E>>, Status> {
        self.admit()?;
        let permit = self.stream_permit()?;
        let config = self.config.clone();
        let plan = tokio::task::spawn_blocking(move || plan(&config))
            .await
            .map_err(|e| ServiceError::Internal(e.to_string()))??;
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        self.worker.submit(job(plan, tx))?;
        Ok(Response::new(permitted(
            Box::pin(ReceiverStream::new(rx)),
            permit,
        )))
    }

    /// Runs a VAE request on the device: decodes it off the async threads, then waits
    /// for the worker's answer.
    async fn vae_call<R: Send + 'static>(
        &self,
        model: String,
        decode: impl FnOnce() -> Result<VaeOp, ServiceError> + Send + 'static,
        pick: impl FnOnce(VaeReply) -> Option<R>,
    ) -> Result<Response<R>, Status> {
        self.admit()?;
        validate_name(&model).map_err(ServiceError::from)?;
        let op = tokio::task::spawn_blocking(decode)
            .await
            .map_err(|e| Status::internal(format!("request decoding failed: {e}")))??;
        let (reply, rx) = tokio::sync::oneshot::channel();
        let span = info_span!("vae", model = %model);
        self.worker.submit(Job::Vae {
            model,
            op,
            reply,
            span,
        })?;
        let answer = rx.await.map_err(|_| ServiceError::WorkerGone)??;
        pick(answer)
            .map(Response::new)
            .ok_or_else(|| Status::internal("the worker answered another request kind"))
    }

    /// Trains a VAE: resolves and checks its digits, creates the model if asked, queues
    /// the job.
    async fn train_vae(
        &self,
        req: pb::TrainRequest,
        permit: OwnedSemaphorePermit,
    ) -> Result<Response<EventStream<pb::TrainEvent>>, Status> {
        let options = convert::vae_train_options(req.options.as_ref());
        options.validate().map_err(ServiceError::from)?;
        if self.jobs.active_for(&req.model).is_some() {
            return Err(ServiceError::Busy(req.model).into());
        }
        let data = match &req.data {
            Some(pb::train_request::Data::Digits(d)) => d.source.clone(),
            _ => None,
        };
        let (config, r) = (self.config.clone(), req.clone());
        let (source, digits, record) = self
            .with_store(move |s| {
                // The data first: a bad data set must not leave a new, empty model behind.
                let (source, digits) = crate::vae_ops::resolve_digits(data, &config)?;
                let record = ensure_vae_model(s, &r)?;
                Ok((source, Arc::new(digits), record))
            })
            .await?;
        let jobs = self.jobs.clone();
        let (model, stop) = (req.model.clone(), req.stop_on_disconnect);
        let target = record.epochs_trained + options.epochs;
        let d = digits.clone();
        let job = tokio::task::spawn_blocking(move || {
            let inline = source.is_none();
            let plan = TrainPlan::Vae {
                vae: options,
                data: source,
            };
            let data = if inline {
                JobData::Digits(&d)
            } else {
                JobData::InPlan
            };
            jobs.create(&model, plan, target, stop, data)
        })
        .await
        .map_err(|e| Status::internal(format!("job creation failed: {e}")))??;
        if let Err(e) = self.submit_training(&job, Some(Preloaded::Digits(digits))) {
            self.jobs.discard(&job);
            return Err(e.into());
        }
        Ok(Response::new(permitted(
            watch(job, req.stop_on_disconnect),
            permit,
        )))
    }

    /// Runs a blocking store operation off the async threads.
    async fn with_store<T: Send + 'static>(
        &self,
        f: impl FnOnce(&ModelStore) -> Result<T, ServiceError> + Send + 'static,
    ) -> Result<T, Status> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| Status::internal(format!("store task failed: {e}")))?
            .map_err(Status::from)
    }

    async fn read_corpus(&self, req: &pb::TrainRequest) -> Result<String, Status> {
        let invalid = ServiceError::InvalidArgument;
        let source = match &req.data {
            Some(pb::train_request::Data::Text(c)) => c.source.as_ref(),
            Some(pb::train_request::Data::Digits(_) | pb::train_request::Data::Images(_))
            | None => None,
        };
        let max = self.config.max_corpus_bytes;
        let text = match source {
            Some(pb::text_corpus::Source::Text(t)) => t.clone(),
            Some(pb::text_corpus::Source::ServerPath(p)) => {
                let Some(root) = self.config.corpus_root.clone() else {
                    return Err(invalid(
                        "reading corpora from the daemon's disk is off; start oneirod with --corpus-root DIR".into(),
                    )
                    .into());
                };
                let p = p.clone();
                tokio::task::spawn_blocking(move || read_server_corpus(&root, &p, max))
                    .await
                    .map_err(|e| Status::internal(format!("corpus read failed: {e}")))??
            }
            None => {
                return Err(invalid(
                    "the request has no corpus: send text or a server path".into(),
                )
                .into());
            }
        };
        if text.len() > max {
            return Err(invalid(format!(
                "the corpus has {} bytes, over the limit of {max}",
                text.len()
            ))
            .into());
        }
        Ok(text)
    }
}

/// A corpus from the daemon's disk: only a regular file under `root` (after resolving
/// links and `..`), at most `max` bytes, UTF-8. Paths are relative to `root`.
fn read_server_corpus(root: &Path, p: &str, max: usize) -> Result<String, ServiceError> {
    use std::io::Read;
    let invalid = ServiceError::InvalidArgument;
    let path = server_path(root, p, "corpus")?;
    if !path.is_file() {
        return Err(invalid(format!("corpus {p:?} is not a regular file")));
    }
    let mut bytes = Vec::new();
    std::fs::File::open(&path)
        .and_then(|f| f.take(max as u64 + 1).read_to_end(&mut bytes))
        .map_err(|e| invalid(format!("cannot read corpus {p:?}: {e}")))?;
    if bytes.len() > max {
        return Err(invalid(format!(
            "corpus {p:?} is over the limit of {max} bytes"
        )));
    }
    String::from_utf8(bytes).map_err(|e| {
        invalid(format!(
            "corpus {p:?} is not UTF-8 text (invalid byte at offset {})",
            e.utf8_error().valid_up_to()
        ))
    })
}

/// A path on the daemon's disk named by a request: only under `root` (after resolving
/// links and `..`). `what` names it in errors ("corpus", "data directory").
pub(crate) fn server_path(
    root: &Path,
    p: &str,
    what: &str,
) -> Result<std::path::PathBuf, ServiceError> {
    let invalid = ServiceError::InvalidArgument;
    let root = root.canonicalize().map_err(|e| {
        invalid(format!(
            "the corpus root {} is unusable: {e}",
            root.display()
        ))
    })?;
    let path = root
        .join(p)
        .canonicalize()
        .map_err(|e| invalid(format!("cannot read {what} {p:?}: {e}")))?;
    if !path.starts_with(&root) {
        return Err(invalid(format!(
            "{what} {p:?} is outside the directory the daemon serves such files from"
        )));
    }
    Ok(path)
}

/// Creates the model when asked to, or checks that explicitly requested settings match
/// the existing model's.
/// Also checks the corpus against the model's settings before anything is created, so a
/// bad corpus is an immediate error rather than a failed job.
fn ensure_model(
    store: &ModelStore,
    req: &pb::TrainRequest,
    corpus: &str,
    validation_split: f32,
) -> Result<ModelRecord, ServiceError> {
    let check = |config: &oneiro_models::CharLstmConfig,
                 vocab: Option<&oneiro_models::Vocabulary>| {
        CharCorpus::prepare(corpus, config, vocab)?
            .split(validation_split)
            .map(|_| ())
    };
    let requested = match &req.create_config {
        Some(pb::train_request::CreateConfig::CharLstm(c)) => Some(c),
        Some(pb::train_request::CreateConfig::Vae(_) | pb::train_request::CreateConfig::Gan(_)) => {
            return Err(ServiceError::InvalidArgument(
                "a text corpus trains a char-lstm model; the request gives another kind's configuration"
                    .into(),
            ));
        }
        None => None,
    };
    match store.load(&req.model) {
        Ok(record) => {
            let existing = record.text_config()?;
            if let Some(p) = requested {
                let wanted = convert::char_lstm_config(Some(p), existing);
                if wanted != *existing {
                    return Err(ServiceError::InvalidArgument(format!(
                        "model {:?} exists with {:?}; the request asks for {:?} (delete the model or drop those settings)",
                        req.model, existing, wanted
                    )));
                }
            }
            check(existing, record.vocabulary().as_ref())?;
            Ok(record)
        }
        Err(oneiro_trainer::Error::NotFound(_)) if req.create_if_missing => {
            let config = convert::char_lstm_config(requested, &Default::default());
            check(&config, None)?;
            let record = ModelRecord::new_char_lstm(&req.model, config);
            store.create(&record)?;
            Ok(record)
        }
        Err(e) => Err(e.into()),
    }
}

/// Loads the model a VAE or GAN training names, checking that `requested` (the
/// request's partial configuration) agrees with the existing one, or creates it when
/// asked to. `config` reads the kind's configuration (an error for another kind), `merge`
/// fills a partial configuration from a base, `new` makes the record.
fn ensure_kind_model<C: PartialEq + Default + std::fmt::Debug, P>(
    store: &ModelStore,
    req: &pb::TrainRequest,
    requested: Option<&P>,
    config: impl Fn(&ModelRecord) -> oneiro_trainer::Result<&C>,
    merge: impl Fn(Option<&P>, &C) -> C,
    new: impl Fn(&str, C) -> ModelRecord,
) -> Result<ModelRecord, ServiceError> {
    match store.load(&req.model) {
        Ok(record) => {
            let existing = config(&record)?;
            if requested.is_some() {
                let wanted = merge(requested, existing);
                if wanted != *existing {
                    return Err(ServiceError::InvalidArgument(format!(
                        "model {:?} exists with {:?}; the request asks for {:?} (delete the model or drop those settings)",
                        req.model, existing, wanted
                    )));
                }
            }
            Ok(record)
        }
        Err(oneiro_trainer::Error::NotFound(_)) if req.create_if_missing => {
            let record = new(&req.model, merge(requested, &C::default()));
            store.create(&record)?;
            Ok(record)
        }
        Err(e) => Err(e.into()),
    }
}

/// The GAN's [`ensure_kind_model`].
fn ensure_gan_model(
    store: &ModelStore,
    req: &pb::TrainRequest,
) -> Result<ModelRecord, ServiceError> {
    let requested = match &req.create_config {
        Some(pb::train_request::CreateConfig::Gan(c)) => Some(c),
        Some(_) => {
            return Err(ServiceError::InvalidArgument(
                "image data trains a GAN; the request gives another kind's configuration".into(),
            ));
        }
        None => None,
    };
    ensure_kind_model(
        store,
        req,
        requested,
        ModelRecord::gan_config,
        convert::gan_config,
        ModelRecord::new_gan,
    )
}

/// The VAE's [`ensure_kind_model`].
fn ensure_vae_model(
    store: &ModelStore,
    req: &pb::TrainRequest,
) -> Result<ModelRecord, ServiceError> {
    let requested = match &req.create_config {
        Some(pb::train_request::CreateConfig::Vae(c)) => Some(c),
        Some(_) => {
            return Err(ServiceError::InvalidArgument(
                "digit data trains a VAE; the request gives another kind's configuration".into(),
            ));
        }
        None => None,
    };
    ensure_kind_model(
        store,
        req,
        requested,
        ModelRecord::vae_config,
        convert::vae_config,
        ModelRecord::new_vae,
    )
}

#[tonic::async_trait]
impl Oneiro for OneiroService {
    async fn info(
        &self,
        _: Request<pb::InfoRequest>,
    ) -> Result<Response<pb::InfoResponse>, Status> {
        let resident = self.residency();
        Ok(Response::new(pb::InfoResponse {
            version: env!("CARGO_PKG_VERSION").into(),
            device: self.worker.device.clone(),
            dtype: "f32".into(),
            limits: Some(pb::Limits {
                max_generate_length: self.config.max_generate_length,
                max_request_bytes: self.config.max_request_bytes as u64,
                max_corpus_bytes: self.config.max_corpus_bytes as u64,
                queue_depth: self.worker.queue_depth() as u32,
                max_image_pixels: self.config.max_image_pixels,
            }),
            backbones: [
                oneiro_trainer::backbones::Network::InceptionV3,
                oneiro_trainer::backbones::Network::Vgg19,
            ]
            .into_iter()
            .map(|n| pb::BackboneInfo {
                network: n.name().into(),
                default_weights: n.default_repo().into(),
                preprocessing: n.preprocessing_for(n.default_repo()).describe().into(),
            })
            .collect(),
            queued: self.worker.queued() as u32,
            active_jobs: self.jobs.active_count() as u32,
            auth_required: self.config.auth_token.is_some(),
            resident_models: resident.models,
            resident_bytes: resident.bytes,
            memory_budget_bytes: resident.budget,
            open_streams: (self.config.max_streams.max(1) - self.streams.available_permits())
                as u32,
            max_streams: self.config.max_streams as u32,
        }))
    }

    async fn create_model(
        &self,
        req: Request<pb::CreateModelRequest>,
    ) -> Result<Response<pb::ModelInfo>, Status> {
        let req = req.into_inner();
        let info = self
            .with_store(move |s| {
                let record = match &req.config {
                    Some(pb::create_model_request::Config::Gan(c)) => ModelRecord::new_gan(
                        &req.name,
                        convert::gan_config(Some(c), &Default::default()),
                    ),
                    Some(pb::create_model_request::Config::Vae(c)) => ModelRecord::new_vae(
                        &req.name,
                        convert::vae_config(Some(c), &Default::default()),
                    ),
                    Some(pb::create_model_request::Config::CharLstm(c)) => {
                        ModelRecord::new_char_lstm(
                            &req.name,
                            convert::char_lstm_config(Some(c), &Default::default()),
                        )
                    }
                    None => ModelRecord::new_char_lstm(&req.name, Default::default()),
                };
                s.create(&record)?;
                Ok(convert::model_info(&record))
            })
            .await?;
        Ok(Response::new(info))
    }

    async fn list_models(
        &self,
        _: Request<pb::ListModelsRequest>,
    ) -> Result<Response<pb::ListModelsResponse>, Status> {
        let models = self
            .with_store(|s| Ok(s.list()?.iter().map(convert::model_info).collect()))
            .await?;
        Ok(Response::new(pb::ListModelsResponse { models }))
    }

    async fn describe_model(
        &self,
        req: Request<pb::DescribeModelRequest>,
    ) -> Result<Response<pb::ModelInfo>, Status> {
        let name = req.into_inner().name;
        let info = self
            .with_store(move |s| Ok(convert::model_info(&s.load(&name)?)))
            .await?;
        Ok(Response::new(info))
    }

    async fn delete_model(
        &self,
        req: Request<pb::DeleteModelRequest>,
    ) -> Result<Response<pb::DeleteModelResponse>, Status> {
        let name = req.into_inner().name;
        validate_name(&name).map_err(ServiceError::from)?;
        if self.jobs.active_for(&name).is_some() {
            return Err(ServiceError::Busy(name).into());
        }
        self.with_store(move |s| Ok(s.delete(&name)?)).await?;
        Ok(Response::new(pb::DeleteModelResponse {}))
    }

    async fn load_model(
        &self,
        req: Request<pb::LoadModelRequest>,
    ) -> Result<Response<pb::ResidencyResponse>, Status> {
        self.admit()?;
        let model = req.into_inner().name;
        validate_name(&model).map_err(ServiceError::from)?;
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.worker.submit(Job::Load { model, reply })?;
        let was = rx.await.map_err(|_| ServiceError::WorkerGone)??;
        Ok(Response::new(self.residency_response(was)))
    }

    async fn unload_model(
        &self,
        req: Request<pb::UnloadModelRequest>,
    ) -> Result<Response<pb::ResidencyResponse>, Status> {
        let model = req.into_inner().name;
        validate_name(&model).map_err(ServiceError::from)?;
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.worker.submit(Job::Unload { model, reply })?;
        let was = rx.await.map_err(|_| ServiceError::WorkerGone)?;
        Ok(Response::new(self.residency_response(was)))
    }

    type TrainStream = EventStream<pb::TrainEvent>;

    async fn train(
        &self,
        req: Request<pb::TrainRequest>,
    ) -> Result<Response<Self::TrainStream>, Status> {
        self.admit()?;
        let permit = self.stream_permit()?;
        let req = req.into_inner();
        validate_name(&req.model).map_err(ServiceError::from)?;
        if matches!(req.data, Some(pb::train_request::Data::Images(_)))
            || matches!(
                req.create_config,
                Some(pb::train_request::CreateConfig::Gan(_))
            )
        {
            return self.train_gan(req, permit).await;
        }
        if matches!(req.data, Some(pb::train_request::Data::Digits(_)))
            || matches!(
                req.create_config,
                Some(pb::train_request::CreateConfig::Vae(_))
            )
        {
            return self.train_vae(req, permit).await;
        }
        let options = convert::train_options(req.options.as_ref());
        options.validate().map_err(ServiceError::from)?;
        if self.jobs.active_for(&req.model).is_some() {
            return Err(ServiceError::Busy(req.model).into());
        }
        let corpus = self.read_corpus(&req).await?;
        let req = Arc::new(req);
        let (r, corpus) = (req.clone(), Arc::new(corpus));
        let c = corpus.clone();
        let split = options.validation_split;
        let record = self
            .with_store(move |s| ensure_model(s, &r, &c, split))
            .await?;
        let jobs = self.jobs.clone();
        let (model, stop) = (req.model.clone(), req.stop_on_disconnect);
        let target = record.epochs_trained + options.epochs;
        let job = tokio::task::spawn_blocking(move || {
            jobs.create(
                &model,
                TrainPlan::Text(options),
                target,
                stop,
                JobData::Corpus(&corpus),
            )
        })
        .await
        .map_err(|e| Status::internal(format!("job creation failed: {e}")))??;
        if let Err(e) = self.submit_training(&job, None) {
            self.jobs.discard(&job);
            return Err(e.into());
        }
        Ok(Response::new(permitted(
            watch(job, req.stop_on_disconnect),
            permit,
        )))
    }

    type WatchJobStream = EventStream<pb::TrainEvent>;

    async fn watch_job(
        &self,
        req: Request<pb::WatchJobRequest>,
    ) -> Result<Response<Self::WatchJobStream>, Status> {
        let permit = self.stream_permit()?;
        let job = self.jobs.get(&req.into_inner().job_id)?;
        Ok(Response::new(permitted(watch(job, false), permit)))
    }

    async fn cancel_job(
        &self,
        req: Request<pb::CancelJobRequest>,
    ) -> Result<Response<pb::JobInfo>, Status> {
        let job = self.jobs.get(&req.into_inner().job_id)?;
        if !job.cancel_if_queued("cancelled by request")
            && !job.request_stop(JobState::Cancelled, "cancelled by request")
        {
            return Err(Status::failed_precondition(format!(
                "job {} is not queued or running",
                job.id
            )));
        }
        Ok(Response::new(job.info()))
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
        req: Request<pb::ResumeJobRequest>,
    ) -> Result<Response<Self::ResumeJobStream>, Status> {
        self.admit()?;
        let permit = self.stream_permit()?;
        let job = self.jobs.get(&req.into_inner().job_id)?;
        if self.jobs.active_for(&job.model).is_some() {
            return Err(ServiceError::Busy(job.model.clone()).into());
        }
        let model = job.model.clone();
        let record = self.with_store(move |s| Ok(s.load(&model)?)).await?;
        self.jobs.rearm(&job, record.progress_units())?;
        if let Err(e) = self.submit_training(&job, None) {
            job.finish(
                JobState::Interrupted,
                e.to_string(),
                tonic::Code::ResourceExhausted,
            );
            return Err(e.into());
        }
        Ok(Response::new(permitted(watch(job, false), permit)))
    }

    type GenerateStream = EventStream<pb::GenerateChunk>;

    async fn generate(
        &self,
        req: Request<pb::GenerateRequest>,
    ) -> Result<Response<Self::GenerateStream>, Status> {
        self.admit()?;
        let permit = self.stream_permit()?;
        let req = req.into_inner();
        validate_name(&req.model).map_err(ServiceError::from)?;
        let temperature = req.temperature.unwrap_or(1.0);
        validate_temperature(temperature).map_err(ServiceError::from)?;
        let max = self.config.max_generate_length;
        if req.length == 0 || req.length > max {
            return Err(ServiceError::InvalidArgument(format!(
                "length must be between 1 and {max} characters, got {}",
                req.length
            ))
            .into());
        }
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let span = info_span!("generate", model = %req.model, length = req.length);
        self.worker.submit(Job::Generate {
            model: req.model,
            seed_text: req.seed_text,
            temperature,
            length: req.length as usize,
            seed: req.seed,
            chunks: tx,
            span,
        })?;
        Ok(Response::new(permitted(
            Box::pin(ReceiverStream::new(rx)),
            permit,
        )))
    }

    async fn vae_grid(
        &self,
        req: Request<pb::VaeGridRequest>,
    ) -> Result<Response<pb::Image>, Status> {
        let req = req.into_inner();
        self.vae_call(
            req.model.clone(),
            move || vae_ops::op_from_grid(&req),
            |r| match r {
                VaeReply::Grid(i) => Some(i),
                _ => None,
            },
        )
        .await
    }

    async fn vae_decode(
        &self,
        req: Request<pb::VaeDecodeRequest>,
    ) -> Result<Response<pb::VaeDecodeResponse>, Status> {
        let req = req.into_inner();
        self.vae_call(
            req.model.clone(),
            move || vae_ops::op_from_decode(&req),
            |r| match r {
                VaeReply::Decode(d) => Some(d),
                _ => None,
            },
        )
        .await
    }

    async fn vae_encode(
        &self,
        req: Request<pb::VaeEncodeRequest>,
    ) -> Result<Response<pb::VaeEncodeResponse>, Status> {
        let req = req.into_inner();
        self.vae_call(
            req.model.clone(),
            move || vae_ops::op_from_encode(&req),
            |r| match r {
                VaeReply::Encode(e) => Some(e),
                _ => None,
            },
        )
        .await
    }

    async fn vae_concept(
        &self,
        req: Request<pb::VaeConceptRequest>,
    ) -> Result<Response<pb::VaeConceptResponse>, Status> {
        let req = req.into_inner();
        self.vae_call(
            req.model.clone(),
            move || vae_ops::op_from_concept(&req),
            |r| match r {
                VaeReply::Concept(c) => Some(c),
                _ => None,
            },
        )
        .await
    }

    async fn vae_morph(
        &self,
        req: Request<pb::VaeMorphRequest>,
    ) -> Result<Response<pb::VaeMorphResponse>, Status> {
        let req = req.into_inner();
        self.vae_call(
            req.model.clone(),
            move || vae_ops::op_from_morph(&req),
            |r| match r {
                VaeReply::Morph(m) => Some(m),
                _ => None,
            },
        )
        .await
    }

    type StyleStream = EventStream<pb::StyleEvent>;

    async fn style(
        &self,
        req: Request<pb::StyleRequest>,
    ) -> Result<Response<Self::StyleStream>, Status> {
        let req = req.into_inner();
        self.streamed(
            move |config| crate::style_ops::plan(req, config),
            |plan, events| {
                let span = info_span!(
                    "style",
                    height = plan.content.height,
                    width = plan.content.width,
                    weights = %plan.weights.origin
                );
                Job::Style { plan, events, span }
            },
        )
        .await
    }

    type DreamStream = EventStream<pb::DreamEvent>;

    async fn dream(
        &self,
        req: Request<pb::DreamRequest>,
    ) -> Result<Response<Self::DreamStream>, Status> {
        let req = req.into_inner();
        self.streamed(
            move |config| crate::dream_ops::plan(req, config),
            |plan, events| {
                let span = info_span!(
                    "dream",
                    height = plan.image.height,
                    width = plan.image.width,
                    weights = %plan.weights.origin
                );
                Job::Dream { plan, events, span }
            },
        )
        .await
    }

    async fn gan_sample(
        &self,
        req: Request<pb::GanSampleRequest>,
    ) -> Result<Response<pb::Image>, Status> {
        self.admit()?;
        let request = req.into_inner();
        validate_name(&request.model).map_err(ServiceError::from)?;
        let (reply, rx) = tokio::sync::oneshot::channel();
        let span = info_span!("gan_sample", model = %request.model);
        self.worker.submit(Job::GanSample {
            request,
            reply,
            span,
        })?;
        Ok(Response::new(
            rx.await.map_err(|_| ServiceError::WorkerGone)??,
        ))
    }
}
