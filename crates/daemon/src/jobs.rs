//! Training jobs: each training runs as a daemon-side job with an id, independent of the
//! client that started it. A job keeps its recent events for re-attaching watchers and
//! broadcasts new ones; its description and corpus are persisted under
//! `<state>/jobs/<id>/` so that jobs survive a daemon restart (a job that was queued or
//! running when the daemon stopped comes back as interrupted, and can be resumed).

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use oneiro_proto::v1 as pb;
use oneiro_trainer::cifar::ImageSource;
use oneiro_trainer::gan_train::GanTrainOptions;
use oneiro_trainer::mnist::{Mnist, MnistSource};
use oneiro_trainer::store::write_atomic;
use oneiro_trainer::text_train::TextTrainOptions;
use oneiro_trainer::vae_train::VaeTrainOptions;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use tonic::{Code, Status};
use tracing::warn;

use crate::error::ServiceError;

/// Events kept for replay (besides the run's `accepted` and `started` events).
const HISTORY: usize = 256;
/// Finished jobs kept on disk; older ones are forgotten.
const KEEP_FINISHED: usize = 200;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Queued,
    Running,
    Finished,
    Failed,
    Cancelled,
    Interrupted,
}

impl JobState {
    pub fn is_active(self) -> bool {
        matches!(self, Self::Queued | Self::Running)
    }

    fn to_proto(self) -> pb::JobState {
        match self {
            Self::Queued => pb::JobState::Queued,
            Self::Running => pb::JobState::Running,
            Self::Finished => pb::JobState::Finished,
            Self::Failed => pb::JobState::Failed,
            Self::Cancelled => pb::JobState::Cancelled,
            Self::Interrupted => pb::JobState::Interrupted,
        }
    }
}

/// What a job trains, with which settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
// Untagged so that job files written before the VAE existed (bare text options) still read.
#[serde(untagged)]
pub enum TrainPlan {
    /// The GAN; `images: None` means the images saved in the job's `images/` directory.
    /// (`steps` counts as the plan's "epochs": jobs track GAN progress in steps.)
    Gan {
        gan: GanTrainOptions,
        images: Option<ImageSource>,
    },
    /// The VAE; `data: None` means the digits saved in the job's own `data/` directory.
    Vae {
        vae: VaeTrainOptions,
        data: Option<MnistSource>,
    },
    /// The character model, on the job's `corpus.txt`.
    Text(TextTrainOptions),
}

impl TrainPlan {
    pub fn epochs(&self) -> u32 {
        match self {
            Self::Gan { gan, .. } => gan.steps,
            Self::Vae { vae, .. } => vae.epochs,
            Self::Text(t) => t.epochs,
        }
    }

    fn set_epochs(&mut self, epochs: u32) {
        match self {
            Self::Gan { gan, .. } => gan.steps = epochs,
            Self::Vae { vae, .. } => vae.epochs = epochs,
            Self::Text(t) => t.epochs = epochs,
        }
    }
}

/// What a job trains on, saved next to it when it came with the request.
pub enum JobData<'a> {
    Corpus(&'a str),
    Digits(&'a Mnist),
    /// Encoded images, saved as files.
    Images(&'a [Vec<u8>]),
    /// Named by the plan (a hub dataset, a directory of the daemon's).
    InPlan,
}

/// What `job.json` holds.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct JobFile {
    id: String,
    model: String,
    options: TrainPlan,
    target_epoch: u32,
    stop_on_disconnect: bool,
    created_unix: i64,
    state: JobState,
    epoch: u32,
    step: u32,
    steps_per_epoch: u32,
    last_loss: Option<f32>,
    sequences_per_second: f32,
    message: String,
    /// gRPC code of a failure, for watchers.
    code: i32,
    updated_unix: i64,
}

/// An event with its position in the job's history, so a watcher that falls behind
/// the live feed can fetch exactly what it missed.
pub type Numbered = (u64, pb::TrainEvent);

struct Inner {
    file: JobFile,
    /// `accepted` and `started` of the current run, always replayed.
    head: Vec<Numbered>,
    recent: VecDeque<Numbered>,
    next_seq: u64,
    /// Live while the job is queued or running.
    live: Option<broadcast::Sender<Numbered>>,
}

pub struct Job {
    pub id: String,
    pub model: String,
    dir: PathBuf,
    inner: Mutex<Inner>,
    /// Set by CancelJob or a shutdown: the state to end in, and why.
    stop: Mutex<Option<(JobState, String)>>,
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// What a watcher gets: the events so far, then the live feed (if the job is active).
pub struct Subscription {
    pub replay: Vec<Numbered>,
    pub live: Option<broadcast::Receiver<Numbered>>,
}

impl Job {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("job state poisoned")
    }

    fn persist(&self, file: &JobFile) {
        let json = serde_json::to_vec_pretty(file).expect("job files serialize");
        if let Err(e) = write_atomic(&self.dir.join("job.json"), &json) {
            warn!(job = %self.id, error = %e, "cannot persist job state");
        }
    }

    pub fn state(&self) -> JobState {
        self.lock().file.state
    }

    pub fn plan(&self) -> TrainPlan {
        self.lock().file.options.clone()
    }

    pub fn corpus_path(&self) -> PathBuf {
        self.dir.join("corpus.txt")
    }

    /// Where images that came with a GAN request are kept.
    pub fn images_dir(&self) -> PathBuf {
        self.dir.join("images")
    }

    /// Where digits that came with the request are kept (IDX files).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    pub fn info(&self) -> pb::JobInfo {
        let f = &self.lock().file;
        pb::JobInfo {
            job_id: f.id.clone(),
            model: f.model.clone(),
            state: f.state.to_proto() as i32,
            target_epoch: f.target_epoch,
            epoch: f.epoch,
            step: f.step,
            steps_per_epoch: f.steps_per_epoch,
            last_loss: f.last_loss,
            sequences_per_second: f.sequences_per_second,
            message: f.message.clone(),
            created_unix: f.created_unix,
            updated_unix: f.updated_unix,
        }
    }

    /// Records and broadcasts one event, updating the job's progress figures.
    pub fn publish(&self, event: pb::train_event::Event) {
        use pb::train_event::Event;
        let mut g = self.lock();
        let mut persist = false;
        match &event {
            Event::Accepted(_) => {}
            Event::Started(s) => {
                g.file.state = JobState::Running;
                g.file.steps_per_epoch = s.steps_per_epoch;
                g.file.epoch = s.first_epoch;
                g.file.step = s.first_step;
                persist = true;
            }
            Event::Batch(b) => {
                g.file.epoch = b.epoch;
                g.file.step = b.step;
                g.file.last_loss = Some(b.loss);
                g.file.sequences_per_second = b.sequences_per_second;
            }
            Event::EpochEnd(e) => g.file.last_loss = Some(e.loss),
            Event::Checkpoint(_) | Event::Finished(_) | Event::Stopped(_) => persist = true,
            Event::Sample(_) | Event::Image(_) | Event::Gan(_) => {}
        }
        g.file.updated_unix = now_unix();
        let msg = pb::TrainEvent {
            job_id: self.id.clone(),
            event: Some(event),
        };
        let seq = g.next_seq;
        g.next_seq += 1;
        if matches!(msg.event, Some(Event::Accepted(_) | Event::Started(_))) {
            g.head.push((seq, msg.clone()));
        } else {
            if g.recent.len() == HISTORY {
                g.recent.pop_front();
            }
            g.recent.push_back((seq, msg.clone()));
        }
        if let Some(tx) = &g.live {
            let _ = tx.send((seq, msg));
        }
        if persist {
            self.persist(&g.file);
        }
    }

    /// Ends the job in `state`; closes the live feed (watchers finish).
    pub fn finish(&self, state: JobState, message: String, code: Code) {
        if state != JobState::Finished {
            self.publish(pb::train_event::Event::Stopped(pb::JobStopped {
                state: state.to_proto() as i32,
                reason: message.clone(),
            }));
        }
        let mut g = self.lock();
        g.file.state = state;
        g.file.message = message;
        g.file.code = code as i32;
        g.file.updated_unix = now_unix();
        g.live = None;
        self.persist(&g.file);
    }

    pub fn subscribe(&self) -> Subscription {
        let g = self.lock();
        let mut replay = g.head.clone();
        replay.extend(g.recent.iter().cloned());
        Subscription {
            replay,
            live: g.live.as_ref().map(|tx| tx.subscribe()),
        }
    }

    /// Events after `seq` still in the history (for a watcher that lagged behind).
    pub fn since(&self, seq: Option<u64>) -> Vec<Numbered> {
        let g = self.lock();
        g.head
            .iter()
            .chain(g.recent.iter())
            .filter(|(s, _)| seq.is_none_or(|l| *s > l))
            .cloned()
            .collect()
    }

    /// The status a watcher's stream ends with once the feed closes.
    pub fn final_status(&self) -> Option<Status> {
        let g = self.lock();
        (g.file.state == JobState::Failed)
            .then(|| Status::new(Code::from(g.file.code), g.file.message.clone()))
    }

    /// Asks the job to stop at its next step, ending in `state` (cancelled or
    /// interrupted). Returns false if it is not active.
    pub fn request_stop(&self, state: JobState, reason: &str) -> bool {
        if !self.state().is_active() {
            return false;
        }
        *self.stop.lock().expect("job stop poisoned") = Some((state, reason.to_string()));
        true
    }

    pub fn stop_requested(&self) -> Option<(JobState, String)> {
        self.stop.lock().expect("job stop poisoned").clone()
    }

    /// Re-arms a stopped job for another run; false if it is active (someone else
    /// re-armed it first).
    fn rearm(&self, options: TrainPlan) -> bool {
        let mut g = self.lock();
        if g.file.state.is_active() {
            return false;
        }
        *self.stop.lock().expect("job stop poisoned") = None;
        g.file.state = JobState::Queued;
        g.file.options = options;
        g.file.message.clear();
        g.file.code = 0;
        g.head.clear();
        g.recent.clear();
        g.live = Some(broadcast::channel(HISTORY).0);
        self.persist(&g.file);
        true
    }

    /// Ends a job that has not started yet, at once; false if it already runs.
    pub fn cancel_if_queued(&self, reason: &str) -> bool {
        if self.state() != JobState::Queued {
            return false;
        }
        self.request_stop(JobState::Cancelled, reason);
        self.finish(JobState::Cancelled, reason.to_string(), Code::Cancelled);
        true
    }

    pub fn target_epoch(&self) -> u32 {
        self.lock().file.target_epoch
    }
}

pub struct JobManager {
    dir: PathBuf,
    jobs: Mutex<BTreeMap<String, Arc<Job>>>,
}

impl JobManager {
    /// Loads the jobs of `<state>/jobs`; those that were active are now interrupted.
    pub fn open(state_dir: &Path) -> std::io::Result<Self> {
        let dir = state_dir.join("jobs");
        std::fs::create_dir_all(&dir)?;
        let mut jobs = BTreeMap::new();
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            let file = match std::fs::read(path.join("job.json"))
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<JobFile>(&b).map_err(|e| e.to_string()))
            {
                Ok(f) => f,
                Err(e) => {
                    warn!(path = %path.display(), error = %e, "skipping unreadable job");
                    continue;
                }
            };
            let job = Job {
                id: file.id.clone(),
                model: file.model.clone(),
                dir: path,
                inner: Mutex::new(Inner {
                    file,
                    head: vec![],
                    recent: VecDeque::new(),
                    next_seq: 0,
                    live: None,
                }),
                stop: Mutex::new(None),
            };
            {
                let mut g = job.lock();
                if g.file.state.is_active() {
                    g.file.state = JobState::Interrupted;
                    g.file.message =
                        "the daemon stopped while this job was active; resume it".into();
                    job.persist(&g.file);
                }
            }
            jobs.insert(job.id.clone(), Arc::new(job));
        }
        Ok(Self {
            dir,
            jobs: Mutex::new(jobs),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Arc<Job>>> {
        self.jobs.lock().expect("job table poisoned")
    }

    /// Registers a queued job and saves its data next to it.
    pub fn create(
        &self,
        model: &str,
        options: TrainPlan,
        target_epoch: u32,
        stop_on_disconnect: bool,
        data: JobData<'_>,
    ) -> Result<Arc<Job>, ServiceError> {
        let id = format!("{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff);
        let dir = self.dir.join(&id);
        let now = now_unix();
        let file = JobFile {
            id: id.clone(),
            model: model.to_string(),
            options,
            target_epoch,
            stop_on_disconnect,
            created_unix: now,
            state: JobState::Queued,
            epoch: 0,
            step: 0,
            steps_per_epoch: 0,
            last_loss: None,
            sequences_per_second: 0.0,
            message: String::new(),
            code: 0,
            updated_unix: now,
        };
        let job = Arc::new(Job {
            id: id.clone(),
            model: model.to_string(),
            dir,
            inner: Mutex::new(Inner {
                file,
                head: vec![],
                recent: VecDeque::new(),
                next_seq: 0,
                live: Some(broadcast::channel(HISTORY).0),
            }),
            stop: Mutex::new(None),
        });
        // The busy check and the insert under one lock: two requests for one model
        // cannot both get a job.
        {
            let mut table = self.lock();
            if table
                .values()
                .any(|j| j.model == model && j.state().is_active())
            {
                return Err(ServiceError::Busy(model.to_string()));
            }
            table.insert(id.clone(), job.clone());
        }
        let written = std::fs::create_dir_all(&job.dir)
            .map_err(oneiro_trainer::Error::from)
            .and_then(|_| match data {
                JobData::Corpus(corpus) => {
                    write_atomic(&job.dir.join("corpus.txt"), corpus.as_bytes())
                }
                JobData::Digits(m) => {
                    let dir = job.data_dir();
                    std::fs::create_dir_all(&dir)?;
                    oneiro_trainer::mnist::write_split(&dir, "train", &m.train)?;
                    oneiro_trainer::mnist::write_split(&dir, "t10k", &m.test)
                }
                JobData::Images(images) => {
                    let dir = job.images_dir();
                    std::fs::create_dir_all(&dir)?;
                    for (i, bytes) in images.iter().enumerate() {
                        // The extension only has to be one the folder loader reads;
                        // the decoder sniffs the real format.
                        std::fs::write(dir.join(format!("{i:06}.png")), bytes)?;
                    }
                    Ok(())
                }
                JobData::InPlan => Ok(()),
            });
        if let Err(e) = written {
            self.discard(&job);
            return Err(e.into());
        }
        job.persist(&job.lock().file);
        job.publish(pb::train_event::Event::Accepted(pb::JobAccepted {
            model: model.to_string(),
        }));
        self.prune();
        Ok(job)
    }

    /// Forgets a job that never ran (its submission was refused).
    pub fn discard(&self, job: &Job) {
        self.lock().remove(&job.id);
        let _ = std::fs::remove_dir_all(&job.dir);
    }

    pub fn get(&self, id: &str) -> Result<Arc<Job>, ServiceError> {
        self.lock()
            .get(id)
            .cloned()
            .ok_or_else(|| oneiro_trainer::Error::NotFound(format!("no job with id {id:?}")).into())
    }

    pub fn list(&self) -> Vec<pb::JobInfo> {
        let mut v: Vec<pb::JobInfo> = self.lock().values().map(|j| j.info()).collect();
        v.sort_by(|a, b| {
            b.created_unix
                .cmp(&a.created_unix)
                .then(b.job_id.cmp(&a.job_id))
        });
        v
    }

    /// The active job training `model`, if any.
    pub fn active_for(&self, model: &str) -> Option<Arc<Job>> {
        self.lock()
            .values()
            .find(|j| j.model == model && j.state().is_active())
            .cloned()
    }

    pub fn active_count(&self) -> usize {
        self.lock()
            .values()
            .filter(|j| j.state().is_active())
            .count()
    }

    /// Stops every active job at its next step, leaving it interrupted (resumable).
    pub fn interrupt_all(&self, reason: &str) {
        for job in self.lock().values() {
            job.request_stop(JobState::Interrupted, reason);
        }
    }

    /// Prepares a stopped job to run again for the epochs it has left.
    /// `epochs_trained`: the model's progress in the plan's unit (steps for the GAN).
    pub fn rearm(&self, job: &Job, epochs_trained: u32) -> Result<(), ServiceError> {
        let state = job.state();
        if state == JobState::Finished {
            return Err(oneiro_trainer::Error::FailedPrecondition(format!(
                "job {} has finished",
                job.id
            ))
            .into());
        }
        let target = job.target_epoch();
        if epochs_trained >= target {
            return Err(oneiro_trainer::Error::FailedPrecondition(format!(
                "model {:?} is already at {epochs_trained} (epochs, or steps for a GAN); job {} aimed at {target}",
                job.model, job.id
            ))
            .into());
        }
        let mut options = job.plan();
        options.set_epochs(target - epochs_trained);
        {
            // Under the table lock: no other job may become active on this model meanwhile.
            let table = self.lock();
            if table
                .values()
                .any(|j| j.model == job.model && j.id != job.id && j.state().is_active())
            {
                return Err(ServiceError::Busy(job.model.clone()));
            }
            if !job.rearm(options) {
                return Err(oneiro_trainer::Error::FailedPrecondition(format!(
                    "job {} is already queued or running",
                    job.id
                ))
                .into());
            }
        }
        job.publish(pb::train_event::Event::Accepted(pb::JobAccepted {
            model: job.model.clone(),
        }));
        Ok(())
    }

    fn prune(&self) {
        let mut jobs = self.lock();
        let mut done: Vec<(i64, String)> = jobs
            .values()
            .filter(|j| !j.state().is_active())
            .map(|j| (j.lock().file.created_unix, j.id.clone()))
            .collect();
        if done.len() <= KEEP_FINISHED {
            return;
        }
        done.sort();
        for (_, id) in &done[..done.len() - KEEP_FINISHED] {
            if let Some(j) = jobs.remove(id) {
                let _ = std::fs::remove_dir_all(&j.dir);
            }
        }
    }
}
