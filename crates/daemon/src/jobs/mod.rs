//! Training jobs: each training runs as a daemon-side job with an id, independent of the
//! client that started it. A job keeps its recent events for re-attaching watchers and
//! broadcasts new ones; its description and data are persisted under
//! `<state>/jobs/<id>/` so that jobs survive a daemon restart (a job that was queued or
//! running when the daemon stopped comes back as interrupted, and can be resumed).
//!
//! [`state`] is the plain state machine (tested on its own), [`store`] the files,
//! [`plan`] what a job trains; this module puts them behind locks and a broadcast.

pub mod plan;
pub mod state;
pub mod store;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use oneiro_proto::v1 as pb;
use tokio::sync::broadcast;
use tonic::{Code, Status};
use tracing::warn;

pub use plan::{JobData, TrainPlan};
pub use state::{JobState, Numbered};

use crate::error::ServiceError;
use state::{HISTORY, History, JobFile};
use store::JobDir;

/// Finished jobs kept on disk; older ones are forgotten.
const KEEP_FINISHED: usize = 200;

struct Inner {
    file: JobFile,
    history: History,
    /// Live while the job is queued or running.
    live: Option<broadcast::Sender<Numbered>>,
}

pub struct Job {
    pub id: String,
    pub model: String,
    dir: JobDir,
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
    fn new(dir: JobDir, file: JobFile, live: bool) -> Self {
        Self {
            id: file.id.clone(),
            model: file.model.clone(),
            dir,
            inner: Mutex::new(Inner {
                file,
                history: History::default(),
                live: live.then(|| broadcast::channel(HISTORY).0),
            }),
            stop: Mutex::new(None),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("job state poisoned")
    }

    fn persist(&self, file: &JobFile) {
        if let Err(e) = self.dir.write(file) {
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
        self.dir.corpus_path()
    }

    pub fn images_dir(&self) -> PathBuf {
        self.dir.images_dir()
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.data_dir()
    }

    pub fn info(&self) -> pb::JobInfo {
        self.lock().file.info()
    }

    pub fn target_epoch(&self) -> u32 {
        self.lock().file.target_epoch
    }

    /// Records and broadcasts one event, updating the job's progress figures.
    pub fn publish(&self, event: pb::train_event::Event) {
        let mut g = self.lock();
        let persist = g.file.apply(&event, now_unix());
        let numbered = g.history.push(pb::TrainEvent {
            job_id: self.id.clone(),
            event: Some(event),
        });
        if let Some(tx) = &g.live {
            let _ = tx.send(numbered);
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
        g.file.finish(state, message, code, now_unix());
        g.live = None;
        self.persist(&g.file);
    }

    pub fn subscribe(&self) -> Subscription {
        let g = self.lock();
        Subscription {
            replay: g.history.since(None),
            live: g.live.as_ref().map(|tx| tx.subscribe()),
        }
    }

    /// Events after `seq` still in the history (for a watcher that lagged behind).
    pub fn since(&self, seq: Option<u64>) -> Vec<Numbered> {
        self.lock().history.since(seq)
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

    /// Ends a job that has not started yet, at once; false if it already runs.
    pub fn cancel_if_queued(&self, reason: &str) -> bool {
        if self.state() != JobState::Queued {
            return false;
        }
        self.request_stop(JobState::Cancelled, reason);
        self.finish(JobState::Cancelled, reason.to_string(), Code::Cancelled);
        true
    }

    /// Queues a stopped job for another run of `plan`; false if it is active.
    fn rearm(&self, plan: TrainPlan) -> bool {
        let mut g = self.lock();
        if !g.file.rearm(plan, now_unix()) {
            return false;
        }
        *self.stop.lock().expect("job stop poisoned") = None;
        g.history.clear();
        g.live = Some(broadcast::channel(HISTORY).0);
        self.persist(&g.file);
        true
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
        let mut jobs = BTreeMap::new();
        for (job_dir, file) in store::scan(&dir)? {
            let mut file = match file {
                Ok(f) => f,
                Err(e) => {
                    warn!(path = %job_dir.path().display(), error = %e, "skipping unreadable job");
                    continue;
                }
            };
            let changed = file.interrupt_after_restart();
            let job = Job::new(job_dir, file, false);
            if changed {
                job.persist(&job.lock().file);
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
        plan: TrainPlan,
        target: u32,
        stop_on_disconnect: bool,
        data: &JobData,
    ) -> Result<Arc<Job>, ServiceError> {
        let id = format!("{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff);
        let dir = JobDir::new(self.dir.join(&id));
        let file = JobFile::new(
            id.clone(),
            model.to_string(),
            plan,
            target,
            stop_on_disconnect,
            now_unix(),
        );
        let job = Arc::new(Job::new(dir, file, true));
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
        if let Err(e) = job.dir.save_data(data) {
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
        job.dir.remove();
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

    /// Prepares a stopped job to run again for what it has left. `trained`: the
    /// model's progress in the plan's unit (steps for the GAN).
    pub fn rearm(&self, job: &Job, trained: u32) -> Result<(), ServiceError> {
        let plan = job
            .lock()
            .file
            .resumed_plan(trained)
            .map_err(oneiro_trainer::Error::FailedPrecondition)?;
        {
            // Under the table lock: no other job may become active on this model meanwhile.
            let table = self.lock();
            if table
                .values()
                .any(|j| j.model == job.model && j.id != job.id && j.state().is_active())
            {
                return Err(ServiceError::Busy(job.model.clone()));
            }
            if !job.rearm(plan) {
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
                j.dir.remove();
            }
        }
    }
}
