//! `Train` for every trainable kind through one generic path, and the jobs it creates:
//! `WatchJob`, `CancelJob`, `ResumeJob` (`ListJobs` is one line in the trait impl).

use std::sync::Arc;

use oneiro_proto::v1 as pb;
use oneiro_trainer::store::{ModelKind, validate_name};
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Response, Status};

use super::{EventStream, OneiroService, STREAM_BUFFER, permitted};
use crate::error::ServiceError;
use crate::jobs::{Job, JobState};
use crate::techniques::{self, Preloaded, ResolvedData, TrainKind, gan::Gan, text::Text, vae::Vae};

impl OneiroService {
    pub(super) async fn train_rpc(
        &self,
        req: pb::TrainRequest,
    ) -> Result<Response<EventStream<pb::TrainEvent>>, Status> {
        self.admit()?;
        let permit = self.stream_permit()?;
        validate_name(&req.model).map_err(ServiceError::from)?;
        match techniques::requested_kind(&req)? {
            ModelKind::CharLstm => self.train_kind::<Text>(req, permit).await,
            ModelKind::Vae => self.train_kind::<Vae>(req, permit).await,
            ModelKind::Gan => self.train_kind::<Gan>(req, permit).await,
        }
    }

    /// Options, data, model, job, in that order: bad data fails the request before a
    /// new model is created, and nothing is queued for a request that fails.
    async fn train_kind<K: TrainKind>(
        &self,
        req: pb::TrainRequest,
        permit: OwnedSemaphorePermit,
    ) -> Result<Response<EventStream<pb::TrainEvent>>, Status> {
        let options = K::options(req.options.as_ref())?;
        if self.jobs.active_for(&req.model).is_some() {
            return Err(ServiceError::Busy(req.model).into());
        }
        let (model, stop_on_disconnect) = (req.model.clone(), req.stop_on_disconnect);
        // Resolving the data may take long (a hub download); a client that leaves
        // meanwhile drops this call, so the job is created only afterwards, in a short
        // step of its own: a job is never left queued with nothing to run it.
        let (data, plan, target, kept) = self
            .blocking(move |store, config| {
                let ResolvedData { data, source, kept } = K::data(&req, &options, config)?;
                let record = K::ensure_model(store, &req, &options, &data)?;
                let (plan, target) = K::plan(options, source, &record);
                Ok((data as Preloaded, plan, target, kept))
            })
            .await?;
        let jobs = self.jobs.clone();
        let job = self
            .blocking(move |_, _| jobs.create(&model, plan, target, stop_on_disconnect, &kept))
            .await?;
        if let Err(e) = self
            .worker
            .submit(techniques::training(job.clone(), Some(data)))
        {
            self.jobs.discard(&job);
            return Err(e.into());
        }
        Ok(Response::new(permitted(
            watch(job, stop_on_disconnect),
            permit,
        )))
    }

    pub(super) fn watch_job_rpc(
        &self,
        id: String,
    ) -> Result<Response<EventStream<pb::TrainEvent>>, Status> {
        let permit = self.stream_permit()?;
        let job = self.jobs.get(&id)?;
        Ok(Response::new(permitted(watch(job, false), permit)))
    }

    pub(super) fn cancel_job_rpc(&self, id: String) -> Result<Response<pb::JobInfo>, Status> {
        let job = self.jobs.get(&id)?;
        if !job.cancel_if_queued("cancelled by request")
            && !job.request_stop(JobState::Cancelled, "cancelled by request")
        {
            return Err(
                ServiceError::from(oneiro_trainer::Error::FailedPrecondition(format!(
                    "job {} is not queued or running",
                    job.id
                )))
                .into(),
            );
        }
        Ok(Response::new(job.info()))
    }

    pub(super) async fn resume_job_rpc(
        &self,
        id: String,
    ) -> Result<Response<EventStream<pb::TrainEvent>>, Status> {
        self.admit()?;
        let permit = self.stream_permit()?;
        let job = self.jobs.get(&id)?;
        if self.jobs.active_for(&job.model).is_some() {
            return Err(ServiceError::Busy(job.model.clone()).into());
        }
        let model = job.model.clone();
        let record = self.blocking(move |s, _| Ok(s.load(&model)?)).await?;
        self.jobs.rearm(&job, record.progress_units())?;
        if let Err(e) = self.worker.submit(techniques::training(job.clone(), None)) {
            job.finish(
                JobState::Interrupted,
                e.to_string(),
                tonic::Code::ResourceExhausted,
            );
            return Err(e.into());
        }
        Ok(Response::new(permitted(watch(job, false), permit)))
    }
}

/// Streams a job's events to one client: the replay, then the live feed; ends with the
/// job's failure status, if it failed. With `cancel_on_disconnect`, a client going away
/// cancels the job.
fn watch(job: Arc<Job>, cancel_on_disconnect: bool) -> EventStream<pb::TrainEvent> {
    let sub = job.subscribe();
    let (tx, rx) = mpsc::channel(STREAM_BUFFER);
    tokio::spawn(async move {
        let gone = |job: &Job| {
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
