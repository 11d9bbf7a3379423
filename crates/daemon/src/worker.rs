//! One OS thread per device owns that device's models and runs every training and
//! generation on it. The async side talks to it with jobs that carry their payload and a
//! bounded reply channel; the worker notices a closed channel (client gone) or a stop
//! request at the next step and drops the work.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use candle_core::Device;
use oneiro_proto::v1 as pb;
use oneiro_trainer::backbones::{Network, ResolvedWeights};
use oneiro_trainer::cifar::ImageSet;
use oneiro_trainer::events::{EventSink, Stop};
use oneiro_trainer::gan_train::train_gan;
use oneiro_trainer::mnist::Mnist;
use oneiro_trainer::store::ModelKind;
use oneiro_trainer::text_generate::CharGenerator;
use oneiro_trainer::text_train::{device_name, train_char_lstm};
use oneiro_trainer::vae_infer::VaeRunner;
use oneiro_trainer::vae_train::train_vae;
use oneiro_trainer::{ModelStore, TrainEvent};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tokio::sync::mpsc;
use tonic::Status;
use tracing::{Span, error, info, warn};

use crate::convert;
use crate::device::DeviceSpec;
use crate::error::ServiceError;
use crate::jobs::{Job as TrainJob, JobState, TrainPlan};
use crate::metrics::Metrics;
use crate::residency::{Residency, Snapshot};

/// Sends one event of a streamed request; a client that went away stops the work.
fn streaming_sender<E, T>(
    events: &Reply<T>,
    wrap: impl Fn(E) -> T,
) -> impl Fn(E) -> Result<(), oneiro_trainer::Error> {
    move |e| {
        if send_within(events, Ok(wrap(e))) {
            Ok(())
        } else {
            Err(oneiro_trainer::Error::Cancelled(
                "the client went away".into(),
            ))
        }
    }
}

/// How a streamed request ended, for its client: a client that left is told nothing; a
/// shutdown is `Unavailable`.
fn stream_outcome<T>(
    result: oneiro_trainer::Result<()>,
    events: &Reply<T>,
) -> Result<(), ServiceError> {
    match result {
        Ok(()) => Ok(()),
        Err(oneiro_trainer::Error::Cancelled(why)) if events.is_closed() => {
            info!(why, "request dropped");
            Ok(())
        }
        Err(oneiro_trainer::Error::Cancelled(why)) => Err(ServiceError::Trainer(
            oneiro_trainer::Error::Unavailable(format!("stopped: {why}")),
        )),
        Err(e) => Err(e.into()),
    }
}

/// The residency name of a loaded pretrained network.
fn backbone_key(w: &ResolvedWeights) -> String {
    format!("@{}", w.cache_key())
}

pub type Reply<T> = mpsc::Sender<Result<T, Status>>;

pub enum Job {
    Train {
        job: Arc<TrainJob>,
        plan: TrainPlan,
        /// Data already loaded (and checked) by the service; `None`: load it from the
        /// plan's source (a resumed job).
        data: Option<Preloaded>,
        span: Span,
    },
    /// A VAE request, answered with the finished response.
    Vae {
        model: String,
        op: VaeOp,
        reply: tokio::sync::oneshot::Sender<Result<VaeReply, ServiceError>>,
        span: Span,
    },
    /// Load a model ahead of use; replies whether it was resident already.
    Load {
        model: String,
        reply: tokio::sync::oneshot::Sender<Result<bool, ServiceError>>,
    },
    /// A GAN sample grid.
    GanSample {
        request: pb::GanSampleRequest,
        reply: tokio::sync::oneshot::Sender<Result<pb::Image, ServiceError>>,
        span: Span,
    },
    /// Unload a model; replies whether it was resident.
    Unload {
        model: String,
        reply: tokio::sync::oneshot::Sender<bool>,
    },
    /// A style transfer, streamed.
    Style {
        plan: crate::style_ops::StylePlan,
        events: Reply<pb::StyleEvent>,
        span: Span,
    },
    /// A DeepDream run, streamed.
    Dream {
        plan: crate::dream_ops::DreamPlan,
        events: Reply<pb::DreamEvent>,
        span: Span,
    },
    Generate {
        model: String,
        seed_text: String,
        temperature: f32,
        length: usize,
        seed: Option<u64>,
        chunks: Reply<pb::GenerateChunk>,
        span: Span,
    },
}

/// A training's data, loaded by the service before the job is queued.
pub enum Preloaded {
    Digits(Arc<Mnist>),
    Images(Arc<ImageSet>),
}

/// What a VAE request asks of the resident model. Images arrive decoded to 28×28 grey.
pub enum VaeOp {
    Grid {
        size: usize,
    },
    Decode {
        points: Vec<Vec<f32>>,
    },
    Encode {
        images: Vec<Vec<f32>>,
    },
    Concept {
        from: u32,
        to: u32,
        vector: Option<Vec<f32>>,
        amount: f32,
        image: Option<Vec<f32>>,
    },
    Morph {
        from: Vec<f32>,
        to: Vec<f32>,
        frames: usize,
        gif_frame_ms: Option<u32>,
    },
}

pub enum VaeReply {
    Grid(pb::Image),
    Decode(pb::VaeDecodeResponse),
    Encode(pb::VaeEncodeResponse),
    Concept(pb::VaeConceptResponse),
    Morph(pb::VaeMorphResponse),
}

/// A model loaded on the device.
#[derive(Clone)]
enum Resident {
    Text(Arc<CharGenerator>),
    Vae(Arc<VaeRunner>),
    Gan(Arc<oneiro_models::Dcgan>),
    /// A pretrained feature extractor (under a `@`-prefixed name no model can have).
    Inception(Arc<oneiro_models::InceptionV3>),
    Vgg(Arc<oneiro_models::Vgg19>),
}

/// The async side's handle on a device worker.
#[derive(Clone)]
pub struct WorkerHandle {
    jobs: mpsc::Sender<Job>,
    depth: usize,
    pub device: String,
    /// Set at shutdown: generations stop at their next character.
    pub stopping: Arc<AtomicBool>,
    pub metrics: Arc<Metrics>,
    pub residency: Arc<std::sync::Mutex<Snapshot>>,
}

impl WorkerHandle {
    /// Queues a job, or fails at once when the queue is full.
    pub fn submit(&self, job: Job) -> Result<(), ServiceError> {
        self.jobs.try_send(job).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => ServiceError::QueueFull {
                device: self.device.clone(),
                depth: self.depth,
            },
            mpsc::error::TrySendError::Closed(_) => ServiceError::WorkerGone,
        })
    }

    /// Jobs waiting in the queue right now.
    pub fn queued(&self) -> usize {
        self.depth - self.jobs.capacity()
    }

    /// Reads the queue length without keeping the queue open (the worker stops when
    /// the last handle goes).
    pub fn queue_probe(&self) -> impl Fn() -> usize + Send + Sync + 'static {
        let (weak, depth) = (self.jobs.downgrade(), self.depth);
        move || weak.upgrade().map_or(0, |s| depth - s.capacity())
    }

    pub fn queue_depth(&self) -> usize {
        self.depth
    }
}

/// Starts the worker for `spec`; returns once the device is open (or why it is not).
pub fn spawn(
    spec: DeviceSpec,
    store: Arc<ModelStore>,
    queue_depth: usize,
    memory_budget: u64,
) -> Result<(WorkerHandle, std::thread::JoinHandle<()>), String> {
    let resident = Residency::new(memory_budget);
    let residency = resident.snapshot_handle();
    let depth = queue_depth.max(1);
    let (tx, rx) = mpsc::channel(depth);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let stopping = Arc::new(AtomicBool::new(false));
    let stopping_w = stopping.clone();
    let metrics = Arc::new(Metrics::default());
    let metrics_w = metrics.clone();
    let thread = std::thread::Builder::new()
        .name(format!("oneiro-worker-{spec}"))
        .spawn(move || match spec.open() {
            Ok(device) => {
                let _ = ready_tx.send(Ok(device_name(&device)));
                Worker {
                    device,
                    store,
                    stopping: stopping_w,
                    metrics: metrics_w,
                    resident,
                }
                .run(rx);
            }
            Err(e) => {
                let _ = ready_tx.send(Err(e));
            }
        })
        .map_err(|e| format!("cannot start the worker thread: {e}"))?;
    let device = ready_rx
        .recv()
        .map_err(|_| "the worker thread died while starting".to_string())??;
    Ok((
        WorkerHandle {
            jobs: tx,
            depth,
            device,
            stopping,
            metrics,
            residency,
        },
        thread,
    ))
}

struct Worker {
    device: Device,
    store: Arc<ModelStore>,
    stopping: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
    /// Loaded models, kept resident between requests; keyed by name, valid for one
    /// (uid, revision) of the model.
    resident: Residency<Resident>,
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".into())
}

/// Sends one reply, waiting at most [`SEND_TIMEOUT`] for a client that does not read:
/// the device thread must never wait on one client forever.
fn send_within<T>(tx: &Reply<T>, mut msg: Result<T, Status>) -> bool {
    let deadline = Instant::now() + SEND_TIMEOUT;
    loop {
        match tx.try_send(msg) {
            Ok(()) => return true,
            Err(mpsc::error::TrySendError::Closed(_)) => return false,
            Err(mpsc::error::TrySendError::Full(back)) => {
                if Instant::now() >= deadline {
                    warn!("a client stopped reading its stream; dropping it");
                    return false;
                }
                msg = back;
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
}

const SEND_TIMEOUT: Duration = Duration::from_secs(30);

/// Publishes trainer events to the job (its watchers and its replay buffer), and stops
/// the run when the job is cancelled or the daemon shuts down.
struct JobSink<'a> {
    job: &'a TrainJob,
    metrics: &'a Metrics,
}

impl EventSink for JobSink<'_> {
    fn send(&mut self, event: TrainEvent) -> Result<(), Stop> {
        if let TrainEvent::Batch {
            sequences_per_second,
            ..
        } = &event
        {
            self.metrics.train_steps.fetch_add(1, Ordering::Relaxed);
            self.metrics
                .sequences_per_second
                .store(sequences_per_second.to_bits() as u64, Ordering::Relaxed);
        }
        if let Some(e) = convert::train_event(event).event {
            self.job.publish(e);
        }
        Ok(())
    }

    fn should_stop(&mut self) -> Option<Stop> {
        self.job.stop_requested().map(|(_, why)| Stop(why))
    }
}

impl Worker {
    fn run(mut self, mut rx: mpsc::Receiver<Job>) {
        info!(device = %device_name(&self.device), "worker started");
        while let Some(job) = rx.blocking_recv() {
            match job {
                Job::Train {
                    job,
                    plan,
                    data,
                    span,
                } => {
                    let _g = span.enter();
                    // A panic in tensor code must not leave the job running forever or
                    // take the device down: fail the job and keep serving.
                    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        self.train(&job, &plan, data)
                    }));
                    if let Err(panic) = run {
                        error!(job = %job.id, panic = panic_message(&panic), "training panicked");
                        self.resident.remove(&job.model);
                        let msg = format!("internal error: {}", panic_message(&panic));
                        job.finish(JobState::Failed, msg, tonic::Code::Internal);
                    }
                }
                Job::Load { model, reply } => {
                    let was = self.resident.contains(&model);
                    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        self.resident(&model)
                    }));
                    let result = match run {
                        Ok(r) => r.map(|_| was),
                        Err(panic) => Err(ServiceError::Internal(panic_message(&panic))),
                    };
                    let _ = reply.send(result);
                }
                Job::Vae {
                    model,
                    op,
                    reply,
                    span,
                } => {
                    let _g = span.enter();
                    if reply.is_closed() {
                        continue;
                    }
                    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        self.vae(&model, op)
                    }));
                    let result = run.unwrap_or_else(|panic| {
                        error!(model = %model, panic = panic_message(&panic), "VAE request panicked");
                        self.resident.remove(&model);
                        Err(ServiceError::Internal(panic_message(&panic)))
                    });
                    let _ = reply.send(result);
                }
                Job::GanSample {
                    request,
                    reply,
                    span,
                } => {
                    let _g = span.enter();
                    if reply.is_closed() {
                        continue;
                    }
                    let model = request.model.clone();
                    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        let (loaded, record) = self.resident(&model)?;
                        match loaded.as_ref() {
                            Resident::Gan(g) => crate::gan_ops::sample(g, &request, &self.device),
                            _ => Err(record.gan_config().unwrap_err().into()),
                        }
                    }));
                    let result = run.unwrap_or_else(|panic| {
                        error!(model = %model, panic = panic_message(&panic), "GAN sample panicked");
                        self.resident.remove(&model);
                        Err(ServiceError::Internal(panic_message(&panic)))
                    });
                    let _ = reply.send(result);
                }
                Job::Dream { plan, events, span } => {
                    let _g = span.enter();
                    let key = backbone_key(&plan.weights);
                    self.streamed(&key, &events, |w| w.dream(&plan, &events));
                }
                Job::Style { plan, events, span } => {
                    let _g = span.enter();
                    let key = backbone_key(&plan.weights);
                    self.streamed(&key, &events, |w| w.style(&plan, &events));
                }
                Job::Unload { model, reply } => {
                    let _ = reply.send(self.resident.remove(&model));
                }
                Job::Generate {
                    model,
                    seed_text,
                    temperature,
                    length,
                    seed,
                    chunks,
                    span,
                } => {
                    let _g = span.enter();
                    if chunks.is_closed() {
                        continue;
                    }
                    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        self.generate(&model, &seed_text, temperature, length, seed, &chunks)
                    }));
                    let result = run.unwrap_or_else(|panic| {
                        error!(model = %model, panic = panic_message(&panic), "generation panicked");
                        self.resident.remove(&model);
                        Err(ServiceError::Internal(panic_message(&panic)))
                    });
                    if let Err(e) = result {
                        let _ = chunks.try_send(Err(e.into()));
                    }
                }
            }
        }
        info!("worker stopped");
    }

    fn train(&mut self, job: &TrainJob, plan: &TrainPlan, data: Option<Preloaded>) {
        if job.state() != JobState::Queued {
            return; // cancelled while it waited
        }
        if self.stopping.load(Ordering::SeqCst) {
            job.request_stop(JobState::Interrupted, "the daemon is shutting down");
        }
        if let Some((state, why)) = job.stop_requested() {
            job.finish(state, why, tonic::Code::Cancelled);
            return;
        }
        let mut sink = JobSink {
            job,
            metrics: &self.metrics,
        };
        let result = match plan {
            TrainPlan::Text(options) => match std::fs::read_to_string(job.corpus_path()) {
                Ok(corpus) => train_char_lstm(
                    &self.store,
                    &job.model,
                    &corpus,
                    options,
                    &self.device,
                    &mut sink,
                ),
                Err(e) => {
                    let msg = format!("cannot read the job's saved corpus: {e}");
                    job.finish(JobState::Failed, msg, tonic::Code::DataLoss);
                    return;
                }
            },
            TrainPlan::Gan { gan, images } => {
                let loaded = match (data, images) {
                    (Some(Preloaded::Images(d)), _) => Ok(d),
                    (_, Some(source)) => source.load().map(Arc::new),
                    (_, None) => oneiro_trainer::cifar::load_folder(
                        &job.images_dir(),
                        oneiro_trainer::cifar::SIDE,
                    )
                    .map(Arc::new),
                };
                loaded.and_then(|d| {
                    train_gan(&self.store, &job.model, &d, gan, &self.device, &mut sink)
                })
            }
            TrainPlan::Vae { vae, data: source } => {
                let loaded = match (data, source) {
                    (Some(Preloaded::Digits(d)), _) => Ok(d),
                    (_, Some(source)) => source.load().map(Arc::new),
                    (_, None) => oneiro_trainer::mnist::load_dir(&job.data_dir()).map(Arc::new),
                };
                loaded.and_then(|d| {
                    train_vae(&self.store, &job.model, &d, vae, &self.device, &mut sink)
                })
            }
        };
        self.resident.remove(&job.model);
        match result {
            Ok(r) => {
                info!(job = %job.id, model = %job.model, epochs = r.epochs_trained, "training finished");
                job.finish(JobState::Finished, String::new(), tonic::Code::Ok);
            }
            Err(oneiro_trainer::Error::Cancelled(_))
                if self
                    .store
                    .load(&job.model)
                    .is_ok_and(|r| r.progress_units() >= job.target_epoch()) =>
            {
                // Stopped while sampling after its last epoch: the training itself is done.
                job.finish(JobState::Finished, String::new(), tonic::Code::Ok);
            }
            Err(oneiro_trainer::Error::Cancelled(why)) => {
                let state = job.stop_requested().map_or(JobState::Cancelled, |(s, _)| s);
                info!(job = %job.id, model = %job.model, reason = %why, "training stopped");
                job.finish(state, why, tonic::Code::Cancelled);
            }
            Err(e) => {
                warn!(job = %job.id, model = %job.model, error = %e, "training failed");
                let status = Status::from(ServiceError::from(e));
                job.finish(
                    JobState::Failed,
                    status.message().to_string(),
                    status.code(),
                );
            }
        }
    }

    /// The model loaded on the device (loading it if needed), and its description.
    fn resident(
        &mut self,
        name: &str,
    ) -> Result<(Arc<Resident>, oneiro_trainer::ModelRecord), ServiceError> {
        let record = self.store.load(name)?;
        let key = (record.uid, record.revision);
        if let Some(r) = self.resident.get(name, key) {
            return Ok((r, record));
        }
        let started = Instant::now();
        let (loaded, bytes) = match record.kind {
            ModelKind::CharLstm => {
                let g = CharGenerator::load(&self.store, &record, &self.device)?;
                let bytes = g.resident_bytes();
                (Resident::Text(Arc::new(g)), bytes)
            }
            ModelKind::Vae => {
                let v = VaeRunner::load(&self.store, &record, &self.device)?;
                let bytes = v.resident_bytes();
                (Resident::Vae(Arc::new(v)), bytes)
            }
            ModelKind::Gan => {
                let cfg = record.gan_config()?.clone();
                let (weights, _) = self.store.load_checkpoint(&record, &self.device)?;
                let g = oneiro_models::Dcgan::from_tensors(cfg, &weights, &self.device)
                    .map_err(|e| oneiro_trainer::Error::Corrupt(format!("model {name:?}: {e}")))?;
                let bytes = g.parameter_count() as u64 * 4;
                (Resident::Gan(Arc::new(g)), bytes)
            }
        };
        let loaded = Arc::new(loaded);
        info!(
            model = name,
            ms = started.elapsed().as_millis() as u64,
            "model loaded"
        );
        let evicted = self
            .resident
            .insert(name, key, loaded.clone(), bytes)
            .map_err(ServiceError::OverBudget)?;
        for other in evicted {
            info!(model = %other, "unloaded to stay within the memory budget");
        }
        Ok((loaded, record))
    }

    /// The pretrained network `weights` name, loaded once and kept resident like a
    /// model.
    fn backbone(&mut self, weights: &ResolvedWeights) -> Result<Arc<Resident>, ServiceError> {
        let name = backbone_key(weights);
        if let Some(r) = self.resident.get(&name, (0, 0)) {
            return Ok(r);
        }
        let started = Instant::now();
        let corrupt = |e: candle_core::Error| {
            oneiro_trainer::Error::Corrupt(format!("{}: {e}", weights.origin))
        };
        let (loaded, params) = match weights.network {
            Network::InceptionV3 => {
                let eps = oneiro_models::inception_v3::INCEPTION_BN_EPS;
                let net = oneiro_models::InceptionV3::load(&weights.weights, eps, &self.device)
                    .map_err(corrupt)?;
                let n = net.parameter_count();
                (Resident::Inception(Arc::new(net)), n)
            }
            Network::Vgg19 => {
                let net =
                    oneiro_models::Vgg19::load(&weights.weights, &self.device).map_err(corrupt)?;
                let n = net.parameter_count();
                (Resident::Vgg(Arc::new(net)), n)
            }
        };
        let loaded = Arc::new(loaded);
        info!(
            network = %name,
            ms = started.elapsed().as_millis() as u64,
            "network loaded"
        );
        let evicted = self
            .resident
            .insert(&name, (0, 0), loaded.clone(), params as u64 * 4)
            .map_err(ServiceError::OverBudget)?;
        for other in evicted {
            info!(model = %other, "unloaded to stay within the memory budget");
        }
        Ok(loaded)
    }

    /// Runs a streamed request on a pretrained network (`key`): nothing if the client is
    /// gone already; a panic fails the request and unloads the network; an error ends the
    /// stream.
    fn streamed<T>(
        &mut self,
        key: &str,
        events: &Reply<T>,
        work: impl FnOnce(&mut Self) -> Result<(), ServiceError>,
    ) {
        if events.is_closed() {
            return;
        }
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(self)));
        let result = run.unwrap_or_else(|panic| {
            error!(
                network = key,
                panic = panic_message(&panic),
                "request panicked"
            );
            self.resident.remove(key);
            Err(ServiceError::Internal(panic_message(&panic)))
        });
        if let Err(e) = result {
            let _ = send_within(events, Err(e.into()));
        }
    }

    fn style(
        &mut self,
        plan: &crate::style_ops::StylePlan,
        events: &Reply<pb::StyleEvent>,
    ) -> Result<(), ServiceError> {
        use oneiro_trainer::style::{StyleEvent, Stylizer};
        use pb::style_event::Event;
        let loaded = self.backbone(&plan.weights)?;
        let Resident::Vgg(net) = loaded.as_ref() else {
            return Err(ServiceError::Internal("not a VGG19".into()));
        };
        let o = &plan.options;
        let stylizer = Stylizer::new(
            net,
            plan.weights.preprocessing,
            &plan.content,
            &plan.style,
            o,
            &self.device,
        )?;
        let send = streaming_sender(events, |e| pb::StyleEvent { event: Some(e) });
        let initial = stylizer.loss_of(&plan.content)?;
        send(Event::Start(pb::StyleStart {
            weights: plan.weights.describe(),
            pretrained: plan.weights.weights.is_pretrained(),
            preprocessing: plan.weights.preprocessing.describe().into(),
            width: plan.content.width as u32,
            height: plan.content.height as u32,
            content_weight: o.content_weight,
            style_weight: o.style_weight,
            total_variation_weight: o.total_variation_weight,
            initial_loss: Some(crate::style_ops::loss(&initial)),
            loss_weights: plan.preset.clone(),
        }))?;
        let stopping = self.stopping.clone();
        let result = stylizer.run(&plan.content, &mut |e| {
            if stopping.load(Ordering::Relaxed) {
                return Err(oneiro_trainer::Error::Cancelled(
                    "the daemon is shutting down".into(),
                ));
            }
            let StyleEvent::Round {
                round,
                loss,
                iterations,
                evaluations,
                image,
            } = e;
            let image = crate::style_ops::png(image)
                .map_err(|e| oneiro_trainer::Error::invalid(e.to_string()))?;
            send(Event::Round(pb::StyleRound {
                round: round as u32,
                loss: Some(crate::style_ops::loss(&loss)),
                iterations: iterations as u32,
                evaluations: evaluations as u32,
                image: Some(image),
            }))
        });
        stream_outcome(result.map(|_| ()), events)
    }

    fn dream(
        &mut self,
        plan: &crate::dream_ops::DreamPlan,
        events: &Reply<pb::DreamEvent>,
    ) -> Result<(), ServiceError> {
        use oneiro_trainer::dream::{DreamEvent, Dreamer};
        use pb::dream_event::Event;
        let loaded = self.backbone(&plan.weights)?;
        let Resident::Inception(net) = loaded.as_ref() else {
            return Err(ServiceError::Internal("not an InceptionV3".into()));
        };
        let dreamer = Dreamer::new(
            net,
            plan.weights.preprocessing,
            &plan.options.layers,
            &self.device,
        )?;
        let o = &plan.options;
        let send = |e: Event| -> Result<(), oneiro_trainer::Error> {
            if send_within(events, Ok(pb::DreamEvent { event: Some(e) })) {
                Ok(())
            } else {
                Err(oneiro_trainer::Error::Cancelled(
                    "the client went away".into(),
                ))
            }
        };
        let shapes = oneiro_trainer::dream::octave_shapes(
            plan.image.height,
            plan.image.width,
            o.octaves,
            o.octave_scale,
        );
        send(Event::Start(pb::DreamStart {
            weights: plan.weights.describe(),
            pretrained: plan.weights.weights.is_pretrained(),
            preprocessing: plan.weights.preprocessing.describe().into(),
            layers: o
                .layers
                .iter()
                .map(|(name, weight)| pb::DreamLayer {
                    name: name.clone(),
                    weight: *weight,
                })
                .collect(),
            octave_sizes: shapes
                .iter()
                .map(|&(h, w)| pb::Image {
                    png: vec![],
                    width: w as u32,
                    height: h as u32,
                })
                .collect(),
        }))?;
        let stopping = self.stopping.clone();
        let result = dreamer.dream(&plan.image, o, &mut |e| {
            if stopping.load(Ordering::Relaxed) {
                return Err(oneiro_trainer::Error::Cancelled(
                    "the daemon is shutting down".into(),
                ));
            }
            match e {
                DreamEvent::Step {
                    octave,
                    iteration,
                    loss,
                } => send(Event::Step(pb::DreamStep {
                    octave: octave as u32,
                    iteration: iteration as u32,
                    loss,
                })),
                DreamEvent::Octave {
                    octave,
                    image,
                    stopped_early,
                } => {
                    let image = crate::dream_ops::png(image)
                        .map_err(|e| oneiro_trainer::Error::invalid(e.to_string()))?;
                    send(Event::Octave(pb::DreamOctave {
                        octave: octave as u32,
                        image: Some(image),
                        stopped_early,
                    }))
                }
            }
        });
        stream_outcome(result.map(|_| ()), events)
    }

    fn generator(
        &mut self,
        name: &str,
    ) -> Result<(Arc<CharGenerator>, Option<String>), ServiceError> {
        let (loaded, record) = self.resident(name)?;
        match loaded.as_ref() {
            Resident::Text(g) => Ok((g.clone(), record.seed_text)),
            _ => Err(record.text_config().unwrap_err().into()),
        }
    }

    fn vae(&mut self, name: &str, op: VaeOp) -> Result<VaeReply, ServiceError> {
        let (loaded, record) = self.resident(name)?;
        let Resident::Vae(runner) = loaded.as_ref() else {
            return Err(record.vae_config().unwrap_err().into());
        };
        crate::vae_ops::run(runner, op)
    }

    fn generate(
        &mut self,
        name: &str,
        seed_text: &str,
        temperature: f32,
        length: usize,
        seed: Option<u64>,
        chunks: &Reply<pb::GenerateChunk>,
    ) -> Result<(), ServiceError> {
        let (generator, saved_seed) = self.generator(name)?;
        let stopping = self.stopping.clone();
        let seed_text = if seed_text.is_empty() {
            saved_seed.unwrap_or_default()
        } else {
            seed_text.to_string()
        };
        let seed_ids = generator.encode_seed(&seed_text)?;
        let used: String = seed_ids[seed_ids.len().saturating_sub(generator.maxlen)..]
            .iter()
            .map(|&i| generator.vocab.char(i))
            .collect();
        let mut rng = match seed {
            Some(s) => ChaCha8Rng::seed_from_u64(s),
            None => ChaCha8Rng::from_os_rng(),
        };
        // Characters go out in small chunks: at least every 20 ms while drawing, so a
        // reader sees them as they come, without one message per character.
        const FLUSH_EVERY: Duration = Duration::from_millis(20);
        let mut pending = String::new();
        let mut first = Some(used);
        let mut last_flush = Instant::now();
        let flush = |pending: &mut String, first: &mut Option<String>| -> bool {
            let chunk = pb::GenerateChunk {
                text: std::mem::take(pending),
                seed_text: first.take().unwrap_or_default(),
            };
            send_within(chunks, Ok(chunk))
        };
        let metrics = self.metrics.clone();
        let drawn = generator.generate(&seed_ids, temperature, length, &mut rng, &mut |c| {
            metrics.generated_chars.fetch_add(1, Ordering::Relaxed);
            pending.push(c);
            if pending.len() >= 256 || last_flush.elapsed() >= FLUSH_EVERY {
                last_flush = Instant::now();
                return flush(&mut pending, &mut first);
            }
            !chunks.is_closed() && !stopping.load(Ordering::Relaxed)
        })?;
        if !pending.is_empty() || first.is_some() {
            flush(&mut pending, &mut first);
        }
        if drawn < length && self.stopping.load(Ordering::Relaxed) {
            let msg = format!(
                "the daemon is shutting down; generation stopped after {drawn} of {length} characters"
            );
            let _ = send_within(chunks, Err(Status::unavailable(msg)));
        }
        Ok(())
    }
}
