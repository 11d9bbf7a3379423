//! A job's state as a plain value: its description (what `job.json` holds), the
//! transitions events and requests cause, and the replay history of its events. No
//! locks, channels or files here: [`super::Job`] wraps these and persists them.

use std::collections::VecDeque;

use oneiro_proto::v1 as pb;
use serde::{Deserialize, Serialize};
use tonic::Code;

use super::plan::TrainPlan;
use crate::convert;

/// Events kept for replay (besides the run's `accepted` and `started` events).
pub const HISTORY: usize = 256;

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

    pub fn to_proto(self) -> pb::JobState {
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

/// What `job.json` holds. Field names are the file format: renaming one breaks the
/// jobs of earlier releases.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobFile {
    pub id: String,
    pub model: String,
    pub options: TrainPlan,
    /// The model's progress this job aims at (epochs, or steps for a GAN).
    pub target_epoch: u32,
    pub stop_on_disconnect: bool,
    pub created_unix: i64,
    pub state: JobState,
    pub epoch: u32,
    pub step: u32,
    pub steps_per_epoch: u32,
    pub last_loss: Option<f32>,
    pub sequences_per_second: f32,
    pub message: String,
    /// gRPC code of a failure, for watchers.
    pub code: i32,
    pub updated_unix: i64,
}

impl JobFile {
    pub fn new(
        id: String,
        model: String,
        plan: TrainPlan,
        target: u32,
        stop_on_disconnect: bool,
        now: i64,
    ) -> Self {
        Self {
            id,
            model,
            options: plan,
            target_epoch: target,
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
        }
    }

    /// Takes in the progress an event reports. Returns whether the file should be
    /// written now (a state change or a checkpoint; batches are not worth a write).
    pub fn apply(&mut self, event: &pb::train_event::Event, now: i64) -> bool {
        use pb::train_event::Event;
        self.updated_unix = now;
        match event {
            Event::Started(s) => {
                self.state = JobState::Running;
                self.steps_per_epoch = s.steps_per_epoch;
                self.epoch = s.first_epoch;
                self.step = s.first_step;
                true
            }
            Event::Batch(b) => {
                self.epoch = b.epoch;
                self.step = b.step;
                self.last_loss = Some(b.loss);
                self.sequences_per_second = b.sequences_per_second;
                false
            }
            Event::EpochEnd(e) => {
                self.last_loss = Some(e.loss);
                false
            }
            Event::Checkpoint(_) | Event::Finished(_) | Event::Stopped(_) => true,
            Event::Accepted(_) | Event::Sample(_) | Event::Image(_) | Event::Gan(_) => false,
        }
    }

    pub fn finish(&mut self, state: JobState, message: String, code: Code, now: i64) {
        self.state = state;
        self.message = message;
        self.code = code as i32;
        self.updated_unix = now;
    }

    /// A job that was active when its daemon stopped: interrupted, resumable. Returns
    /// whether it changed.
    pub fn interrupt_after_restart(&mut self) -> bool {
        if !self.state.is_active() {
            return false;
        }
        self.state = JobState::Interrupted;
        self.message = "the daemon stopped while this job was active; resume it".into();
        true
    }

    /// The plan for another run that takes the model from `trained` to the target, or
    /// why the job cannot run again.
    pub fn resumed_plan(&self, trained: u32) -> Result<TrainPlan, String> {
        match self.state {
            JobState::Finished => return Err(format!("job {} has finished", self.id)),
            s if s.is_active() => {
                return Err(format!("job {} is already queued or running", self.id));
            }
            _ => {}
        }
        let target = self.target_epoch;
        let mut plan = self.options.clone();
        if trained >= target {
            return Err(format!(
                "model {:?} is already at {trained} {}; job {} aimed at {target}",
                self.model,
                plan.kind().unit().name(),
                self.id
            ));
        }
        plan.set_units(target - trained);
        Ok(plan)
    }

    /// Queues the job again with `plan`; false if it is active (someone else re-armed
    /// it first).
    pub fn rearm(&mut self, plan: TrainPlan, now: i64) -> bool {
        if self.state.is_active() {
            return false;
        }
        self.state = JobState::Queued;
        self.options = plan;
        self.message.clear();
        self.code = 0;
        self.updated_unix = now;
        true
    }

    pub fn info(&self) -> pb::JobInfo {
        pb::JobInfo {
            job_id: self.id.clone(),
            model: self.model.clone(),
            state: self.state.to_proto() as i32,
            target_epoch: self.target_epoch,
            epoch: self.epoch,
            step: self.step,
            steps_per_epoch: self.steps_per_epoch,
            last_loss: self.last_loss,
            sequences_per_second: self.sequences_per_second,
            message: self.message.clone(),
            created_unix: self.created_unix,
            updated_unix: self.updated_unix,
            kind: convert::model_kind(self.options.kind()) as i32,
            unit: convert::progress_unit(self.options.kind().unit()) as i32,
        }
    }
}

/// An event with its position in the job's history, so a watcher that falls behind
/// the live feed can fetch exactly what it missed.
pub type Numbered = (u64, pb::TrainEvent);

/// The events a watcher that attaches late is replayed: the current run's `accepted`
/// and `started` always, then the newest [`HISTORY`] others.
#[derive(Default)]
pub struct History {
    head: Vec<Numbered>,
    recent: VecDeque<Numbered>,
    next_seq: u64,
}

impl History {
    /// Numbers and keeps one event.
    pub fn push(&mut self, event: pb::TrainEvent) -> Numbered {
        use pb::train_event::Event;
        let numbered = (self.next_seq, event);
        self.next_seq += 1;
        if matches!(
            numbered.1.event,
            Some(Event::Accepted(_) | Event::Started(_))
        ) {
            self.head.push(numbered.clone());
        } else {
            if self.recent.len() == HISTORY {
                self.recent.pop_front();
            }
            self.recent.push_back(numbered.clone());
        }
        numbered
    }

    /// Forgets the previous run's events (numbering goes on).
    pub fn clear(&mut self) {
        self.head.clear();
        self.recent.clear();
    }

    /// The events after `seq` (all with `None`), in order.
    pub fn since(&self, seq: Option<u64>) -> Vec<Numbered> {
        self.head
            .iter()
            .chain(self.recent.iter())
            .filter(|(s, _)| seq.is_none_or(|l| *s > l))
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oneiro_trainer::text::TextTrainOptions;
    use pb::train_event::Event;

    fn file() -> JobFile {
        let plan = TrainPlan::Text(TextTrainOptions {
            epochs: 5,
            ..Default::default()
        });
        JobFile::new("j1".into(), "m".into(), plan, 5, false, 100)
    }

    fn event(e: Event) -> pb::TrainEvent {
        pb::TrainEvent {
            job_id: "j1".into(),
            event: Some(e),
        }
    }

    fn batch(step: u32) -> Event {
        Event::Batch(pb::BatchProgress {
            epoch: 1,
            step,
            loss: 2.5,
            sequences_per_second: 10.0,
            ..Default::default()
        })
    }

    #[test]
    fn a_new_job_is_queued_and_active() {
        let f = file();
        assert_eq!(f.state, JobState::Queued);
        assert!(f.state.is_active());
        assert_eq!(f.info().state, pb::JobState::Queued as i32);
    }

    #[test]
    fn started_runs_the_job_and_is_persisted_but_batches_are_not() {
        let mut f = file();
        let started = Event::Started(pb::TrainStarted {
            first_epoch: 2,
            first_step: 7,
            steps_per_epoch: 40,
            ..Default::default()
        });
        assert!(f.apply(&started, 101));
        assert_eq!(
            (f.state, f.epoch, f.step, f.steps_per_epoch),
            (JobState::Running, 2, 7, 40)
        );
        assert!(!f.apply(&batch(8), 102));
        assert_eq!((f.step, f.last_loss, f.updated_unix), (8, Some(2.5), 102));
        assert!(f.apply(&Event::Checkpoint(Default::default()), 103));
    }

    #[test]
    fn finishing_records_the_state_the_message_and_the_code() {
        let mut f = file();
        f.finish(JobState::Failed, "diverged".into(), Code::Aborted, 200);
        assert_eq!(f.state, JobState::Failed);
        assert!(!f.state.is_active());
        assert_eq!(
            (f.message.as_str(), f.code),
            ("diverged", Code::Aborted as i32)
        );
    }

    #[test]
    fn a_restart_interrupts_only_active_jobs() {
        let mut running = file();
        running.state = JobState::Running;
        assert!(running.interrupt_after_restart());
        assert_eq!(running.state, JobState::Interrupted);
        let mut done = file();
        done.state = JobState::Finished;
        assert!(!done.interrupt_after_restart());
        assert_eq!(done.state, JobState::Finished);
    }

    #[test]
    fn a_resumed_job_trains_only_what_is_left() {
        let mut f = file();
        f.state = JobState::Interrupted;
        let plan = f.resumed_plan(3).unwrap();
        assert_eq!(plan.units(), 2);
        assert!(
            f.resumed_plan(5)
                .unwrap_err()
                .contains("already at 5 epochs")
        );
        f.state = JobState::Finished;
        assert!(f.resumed_plan(3).unwrap_err().contains("has finished"));
        f.state = JobState::Running;
        assert!(
            f.resumed_plan(3)
                .unwrap_err()
                .contains("already queued or running")
        );
    }

    #[test]
    fn rearming_queues_a_stopped_job_once() {
        let mut f = file();
        f.finish(
            JobState::Cancelled,
            "by request".into(),
            Code::Cancelled,
            150,
        );
        let plan = f.resumed_plan(1).unwrap();
        assert!(f.rearm(plan.clone(), 160));
        assert_eq!(
            (f.state, f.message.as_str(), f.code),
            (JobState::Queued, "", 0)
        );
        assert_eq!(f.options.units(), 4);
        assert!(!f.rearm(plan, 161), "an active job is not re-armed twice");
    }

    #[test]
    fn the_history_keeps_the_head_and_the_newest_events() {
        let mut h = History::default();
        h.push(event(Event::Accepted(Default::default())));
        h.push(event(Event::Started(Default::default())));
        for i in 0..HISTORY as u32 + 10 {
            h.push(event(batch(i)));
        }
        let all = h.since(None);
        assert_eq!(all.len(), 2 + HISTORY);
        assert!(matches!(all[0].1.event, Some(Event::Accepted(_))));
        assert!(matches!(all[1].1.event, Some(Event::Started(_))));
        // The oldest batches fell out; numbering is continuous.
        assert_eq!(all[2].0, 12);
        assert_eq!(all.last().unwrap().0, HISTORY as u64 + 11);
        let newer = h.since(Some(HISTORY as u64 + 9));
        assert_eq!(
            newer.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
            [HISTORY as u64 + 10, HISTORY as u64 + 11]
        );
        h.clear();
        assert!(h.since(None).is_empty());
        assert_eq!(h.push(event(batch(0))).0, HISTORY as u64 + 12);
    }
}
