//! One OS thread per device owns that device's models and runs every training and
//! inference on it. The async side sends it [`Command`]s — the work as a closure over
//! the device's [`DeviceContext`], a tracing span, and where its outcome goes — over a
//! bounded queue. The worker knows no technique: every command runs through one guarded
//! wrapper (skip if nobody waits, catch a panic, unload what it was using, report the
//! error), and techniques bring their own loaders for what stays resident.

use std::any::Any;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use candle_core::Device;
use oneiro_trainer::run::device_name;
use oneiro_trainer::{ModelRecord, ModelStore};
use tokio::sync::mpsc;
use tonic::Status;
use tracing::{Span, error, info, warn};

use crate::device::DeviceSpec;
use crate::error::ServiceError;
use crate::metrics::Metrics;
use crate::residency::{Derived, Residency, Snapshot};

/// The sending end of a stream (or of a one-message answer) to a client.
pub type Reply<T> = mpsc::Sender<Result<T, Status>>;

/// Where a command's failure goes, and whether anyone still waits for it.
pub trait Outcome: Send {
    /// Nobody waits any more (the client left, the job was cancelled while queued):
    /// the command is dropped without running.
    fn abandoned(&self) -> bool;
    /// The command failed (an error or a panic).
    fn fail(&self, e: ServiceError);
}

impl<T: Send> Outcome for Reply<T> {
    fn abandoned(&self) -> bool {
        self.is_closed()
    }

    fn fail(&self, e: ServiceError) {
        let _ = send_within(self, Err(e.into()));
    }
}

/// A reply for work that runs whether or not anyone still waits for it.
struct Unconditional<T>(Reply<T>);

impl<T: Send> Outcome for Unconditional<T> {
    fn abandoned(&self) -> bool {
        false
    }

    fn fail(&self, e: ServiceError) {
        self.0.fail(e);
    }
}

/// The work of a command: runs on the device thread.
pub type Work = Box<dyn FnOnce(&mut DeviceContext) -> Result<(), ServiceError> + Send>;

/// One unit of work for a device worker.
pub struct Command {
    pub span: Span,
    /// What it is, for the log ("training", "generation"...).
    pub what: &'static str,
    /// The resident entry it uses: unloaded if the work panics (it may be half-updated).
    pub uses: Option<String>,
    pub work: Work,
    pub outcome: Box<dyn Outcome>,
    /// When it was queued, for the queue-wait histogram.
    pub queued_at: Instant,
}

impl Command {
    pub fn new(
        what: &'static str,
        span: Span,
        uses: Option<String>,
        outcome: impl Outcome + 'static,
        work: impl FnOnce(&mut DeviceContext) -> Result<(), ServiceError> + Send + 'static,
    ) -> Self {
        Self {
            span,
            what,
            uses,
            work: Box::new(work),
            outcome: Box::new(outcome),
            queued_at: Instant::now(),
        }
    }
}

/// What a command sees of its device: the device, the models kept loaded on it, the
/// model store and the shutdown flag.
pub struct DeviceContext {
    pub device: Device,
    pub store: Arc<ModelStore>,
    /// Set at shutdown: long work stops at its next step.
    pub stopping: Arc<AtomicBool>,
    pub metrics: Arc<Metrics>,
    /// Loaded models and networks, kept between requests; keyed by name, valid for one
    /// (uid, revision) of the model.
    resident: Residency<dyn Any + Send + Sync>,
}

/// A value loaded on a device and how many bytes it holds there.
pub struct Loaded {
    pub value: Arc<dyn Any + Send + Sync>,
    pub bytes: u64,
}

impl Loaded {
    pub fn new<T: Any + Send + Sync>(value: T, bytes: u64) -> Self {
        Self {
            value: Arc::new(value),
            bytes,
        }
    }
}

impl DeviceContext {
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    pub fn is_resident(&self, name: &str) -> bool {
        self.resident.contains(name)
    }

    pub fn unload(&mut self, name: &str) -> bool {
        self.resident.remove(name)
    }

    /// The model `name` loaded on the device (by `load` if it is not, or not at its
    /// current revision), and its description.
    pub fn model(
        &mut self,
        name: &str,
        load: impl FnOnce(&ModelStore, &ModelRecord, &Device) -> Result<Loaded, ServiceError>,
    ) -> Result<(Arc<dyn Any + Send + Sync>, ModelRecord), ServiceError> {
        let record = self.store.load(name)?;
        let key = (record.uid, record.revision);
        let (store, device) = (self.store.clone(), self.device.clone());
        let value = self.keep(name, key, || load(&store, &record, &device))?;
        Ok((value, record))
    }

    /// A value that depends on no stored model (a pretrained network), loaded once
    /// under `name` and kept like a model.
    pub fn shared(
        &mut self,
        name: &str,
        load: impl FnOnce(&Device) -> Result<Loaded, ServiceError>,
    ) -> Result<Arc<dyn Any + Send + Sync>, ServiceError> {
        let device = self.device.clone();
        self.keep(name, (0, 0), || load(&device))
    }

    fn keep(
        &mut self,
        name: &str,
        key: (u64, u64),
        load: impl FnOnce() -> Result<Loaded, ServiceError>,
    ) -> Result<Arc<dyn Any + Send + Sync>, ServiceError> {
        if let Some(v) = self.resident.get(name, key) {
            return Ok(v);
        }
        let started = Instant::now();
        let loaded = load()?;
        info!(
            name,
            ms = started.elapsed().as_millis() as u64,
            "loaded on the device"
        );
        let evicted = self
            .resident
            .insert(name, key, loaded.value.clone(), loaded.bytes)
            .map_err(ServiceError::OverBudget)?;
        for other in evicted {
            info!(model = %other, "unloaded to stay within the memory budget");
        }
        Ok(loaded.value)
    }
}

/// The async side's handle on a device worker.
#[derive(Clone)]
pub struct WorkerHandle {
    commands: mpsc::Sender<Command>,
    depth: usize,
    pub device: String,
    /// Set at shutdown: generations stop at their next character.
    pub stopping: Arc<AtomicBool>,
    pub metrics: Arc<Metrics>,
    pub residency: Arc<std::sync::Mutex<Snapshot>>,
}

impl WorkerHandle {
    /// Queues a command, or fails at once when the queue is full.
    pub fn submit(&self, command: Command) -> Result<(), ServiceError> {
        self.commands.try_send(command).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => ServiceError::QueueFull {
                device: self.device.clone(),
                depth: self.depth,
            },
            mpsc::error::TrySendError::Closed(_) => ServiceError::WorkerGone,
        })
    }

    /// Runs `work` on the device and waits for its one answer; skipped if the caller
    /// is gone by the time it would run.
    pub async fn call<R: Send + 'static>(
        &self,
        what: &'static str,
        span: Span,
        uses: Option<String>,
        work: impl FnOnce(&mut DeviceContext) -> Result<R, ServiceError> + Send + 'static,
    ) -> Result<R, ServiceError> {
        self.answer(what, span, uses, false, work).await
    }

    /// [`Self::call`] for work that must happen even if the caller leaves (unloading).
    pub async fn call_even_if_abandoned<R: Send + 'static>(
        &self,
        what: &'static str,
        span: Span,
        work: impl FnOnce(&mut DeviceContext) -> Result<R, ServiceError> + Send + 'static,
    ) -> Result<R, ServiceError> {
        self.answer(what, span, None, true, work).await
    }

    async fn answer<R: Send + 'static>(
        &self,
        what: &'static str,
        span: Span,
        uses: Option<String>,
        always: bool,
        work: impl FnOnce(&mut DeviceContext) -> Result<R, ServiceError> + Send + 'static,
    ) -> Result<R, ServiceError> {
        let (tx, mut rx) = mpsc::channel::<Result<R, Status>>(1);
        let reply = tx.clone();
        let work = move |ctx: &mut DeviceContext| {
            let answer = work(ctx)?;
            let _ = reply.try_send(Ok(answer));
            Ok(())
        };
        let command = if always {
            Command::new(what, span, uses, Unconditional(tx), work)
        } else {
            Command::new(what, span, uses, tx, work)
        };
        self.submit(command)?;
        match rx.recv().await {
            Some(Ok(r)) => Ok(r),
            Some(Err(status)) => Err(ServiceError::Status(status)),
            None => Err(ServiceError::WorkerGone),
        }
    }

    /// Jobs waiting in the queue right now.
    pub fn queued(&self) -> usize {
        self.depth - self.commands.capacity()
    }

    /// Reads the queue length without keeping the queue open (the worker stops when
    /// the last handle goes).
    pub fn queue_probe(&self) -> impl Fn() -> usize + Send + Sync + 'static {
        let (weak, depth) = (self.commands.downgrade(), self.depth);
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
    // The CPU kernels' packed-weight cache holds memory for the resident networks too.
    let resident = Residency::with_derived(
        memory_budget,
        Derived {
            bytes: || oneiro_tensor_ops::packed_cache_bytes() as u64,
            release: oneiro_tensor_ops::clear_packed_cache,
        },
    );
    let residency = resident.snapshot_handle();
    let depth = queue_depth.max(1);
    let (tx, rx) = mpsc::channel(depth);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let stopping = Arc::new(AtomicBool::new(false));
    let metrics = Arc::new(Metrics::new());
    let (stopping_w, metrics_w) = (stopping.clone(), metrics.clone());
    let thread = std::thread::Builder::new()
        .name(format!("oneiro-worker-{spec}"))
        .spawn(move || match spec.open() {
            Ok(device) => {
                let _ = ready_tx.send(Ok(device_name(&device)));
                run(
                    DeviceContext {
                        device,
                        store,
                        stopping: stopping_w,
                        metrics: metrics_w,
                        resident,
                    },
                    rx,
                );
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
            commands: tx,
            depth,
            device,
            stopping,
            metrics,
            residency,
        },
        thread,
    ))
}

fn run(mut ctx: DeviceContext, mut rx: mpsc::Receiver<Command>) {
    info!(device = %device_name(&ctx.device), "worker started");
    while let Some(command) = rx.blocking_recv() {
        guarded(&mut ctx, command);
        ctx.resident.publish();
    }
    info!("worker stopped");
}

/// Runs one command: nothing if nobody waits for it; a panic in tensor code fails the
/// command, unloads what it used and keeps the device serving.
fn guarded(ctx: &mut DeviceContext, command: Command) {
    let Command {
        span,
        what,
        uses,
        work,
        outcome,
        queued_at,
    } = command;
    let _g = span.enter();
    ctx.metrics
        .queue_waited(&device_name(&ctx.device), queued_at.elapsed());
    if outcome.abandoned() {
        return;
    }
    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(ctx)));
    let result = run.unwrap_or_else(|panic| {
        let msg = panic_message(&panic);
        error!(what, uses = uses.as_deref().unwrap_or(""), panic = %msg, "panicked");
        if let Some(name) = &uses {
            ctx.unload(name);
        }
        Err(ServiceError::Internal(msg))
    });
    if let Err(e) = result {
        outcome.fail(e);
    }
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".into())
}

/// Sends one reply, waiting at most [`SEND_TIMEOUT`] for a client that does not read:
/// the device thread must never wait on one client forever.
pub fn send_within<T>(tx: &Reply<T>, mut msg: Result<T, Status>) -> bool {
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

/// A sender of one streamed request's events: a client that went away stops the work.
pub fn streaming_sender<E, T>(
    events: &Reply<T>,
    wrap: impl Fn(E) -> T,
) -> impl Fn(E) -> oneiro_trainer::Result<()> {
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
pub fn stream_outcome<T>(
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
