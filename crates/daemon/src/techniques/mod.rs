//! The five techniques as the daemon serves them. Each module owns its requests'
//! plans (decoding and checking a request off the async threads), its run on the device
//! (a [`Command`] for the worker) and its proto conversions.
//!
//! The three trainable kinds share one training path through [`TrainKind`]: the RPC
//! layer reads the options, resolves the data, ensures the model and creates the job
//! generically; [`training`] is the one command that runs any job's plan.

pub mod dream;
pub mod gan;
pub mod style;
pub mod text;
pub mod vae;

use std::any::Any;
use std::sync::Arc;

use oneiro_proto::v1 as pb;
use oneiro_trainer::events::{EventSink, Stop};
use oneiro_trainer::store::ModelKind;
use oneiro_trainer::vision::backbones::{Network, ResolvedWeights};
use oneiro_trainer::{ModelRecord, ModelStore, TrainEvent};
use tonic::Status;
use tracing::{info, info_span, warn};

use crate::config::DaemonConfig;
use crate::convert;
use crate::error::ServiceError;
use crate::jobs::{Job, JobData, JobState, TrainPlan};
use crate::metrics::Metrics;
use crate::worker::{Command, DeviceContext, Loaded, Outcome};

/// A count from the request, or the book's when unset (the range is checked already:
/// validate.rs).
pub(crate) fn count_or(v: Option<u32>, default: usize) -> usize {
    v.map_or(default, |v| v as usize)
}

/// The trainer's divergence factor from the wire's: 0 is proto3's "unset" (the default),
/// a negative factor switches the guard off (0 for the trainer).
pub(crate) fn divergence_factor(wire: f32, default: f32) -> f32 {
    if wire == 0.0 { default } else { wire.max(0.0) }
}

/// A training data set already loaded (and checked) by the RPC layer, handed to the
/// device with the job; a resumed job loads it again from its plan.
pub type Preloaded = Arc<dyn Any + Send + Sync>;

/// What a request's data resolved to.
pub struct ResolvedData<D, S> {
    pub data: Arc<D>,
    /// Where a resumed job finds the data again (`None`: it is saved with the job).
    pub source: S,
    /// What the job keeps of the request's data.
    pub kept: JobData,
}

/// A trainable technique: how a `Train` request of its kind becomes a job, and how the
/// job runs. The RPC layer drives these in order: `options`, `data`, `ensure_model`,
/// `plan`; the worker calls `train` (with the data, or `reload`ed for a resumed job).
pub trait TrainKind: 'static {
    const KIND: ModelKind;
    /// The trainer's options.
    type Options: Send + 'static;
    /// The loaded training data.
    type Data: Send + Sync + 'static;
    /// Where a resumed job reloads the data from.
    type Source: Send + 'static;

    /// The request's options over the book's defaults, validated.
    fn options(p: Option<&pb::TrainOptions>) -> Result<Self::Options, ServiceError>;

    /// Reads and checks the request's data (blocking: files, the hub), so that bad
    /// data fails the request rather than the job.
    fn data(
        req: &pb::TrainRequest,
        options: &Self::Options,
        config: &DaemonConfig,
    ) -> Result<ResolvedData<Self::Data, Self::Source>, ServiceError>;

    /// Loads the model the request names (checking requested settings against it) or
    /// creates it when asked to; also checks the data against the model.
    fn ensure_model(
        store: &ModelStore,
        req: &pb::TrainRequest,
        options: &Self::Options,
        data: &Self::Data,
    ) -> Result<ModelRecord, ServiceError>;

    /// The job's plan (saved in `job.json`) and the progress it aims at, in the kind's
    /// unit (epochs, or steps for the GAN).
    fn plan(options: Self::Options, source: Self::Source, record: &ModelRecord)
    -> (TrainPlan, u32);

    /// The data of a job whose data was not handed over (a resumed job).
    fn reload(job: &Job) -> oneiro_trainer::Result<Arc<Self::Data>>;

    /// Trains on the device.
    fn train(
        ctx: &mut DeviceContext,
        job: &Job,
        plan: &TrainPlan,
        data: &Self::Data,
        sink: &mut dyn EventSink,
    ) -> oneiro_trainer::Result<ModelRecord>;
}

/// The kind a `Train` request is for, from its data and its create-config; both must
/// agree. With neither, a character model (whose request then lacks its corpus).
pub fn requested_kind(req: &pb::TrainRequest) -> Result<ModelKind, ServiceError> {
    use pb::train_request::{CreateConfig, Data};
    let by_data = req.data.as_ref().map(|d| match d {
        Data::Text(_) => ModelKind::CharLstm,
        Data::Digits(_) => ModelKind::Vae,
        Data::Images(_) => ModelKind::Gan,
    });
    let by_config = req.create_config.as_ref().map(|c| match c {
        CreateConfig::CharLstm(_) => ModelKind::CharLstm,
        CreateConfig::Vae(_) => ModelKind::Vae,
        CreateConfig::Gan(_) => ModelKind::Gan,
    });
    match (by_data, by_config) {
        (Some(d), Some(c)) if d != c => Err(ServiceError::InvalidArgument(format!(
            "the request's data trains a {} model but its create-config is a {} model's",
            d.name(),
            c.name()
        ))),
        (Some(k), _) | (None, Some(k)) => Ok(k),
        (None, None) => Ok(ModelKind::CharLstm),
    }
}

/// Loads a stored model of any kind for serving (`LoadModel`, and each technique's
/// inference).
pub fn load_resident(
    store: &ModelStore,
    record: &ModelRecord,
    device: &candle_core::Device,
) -> Result<Loaded, ServiceError> {
    match record.kind() {
        ModelKind::CharLstm => text::load(store, record, device),
        ModelKind::Vae => vae::load(store, record, device),
        ModelKind::Gan => gan::load(store, record, device),
    }
}

/// The resident model `name` as a `T`, or the error naming its actual kind.
pub fn resident<T: Any + Send + Sync>(
    ctx: &mut DeviceContext,
    name: &str,
    wanted: ModelKind,
) -> Result<(Arc<T>, ModelRecord), ServiceError> {
    let (value, record) = ctx.model(name, load_resident)?;
    match value.downcast::<T>() {
        Ok(v) => Ok((v, record)),
        Err(_) => Err(oneiro_trainer::Error::FailedPrecondition(format!(
            "model {:?} is a {} model, not a {} model",
            name,
            record.kind().name(),
            wanted.name()
        ))
        .into()),
    }
}

/// The residency name of a loaded pretrained network (`@`: no model can have it).
pub fn backbone_key(w: &ResolvedWeights) -> String {
    format!("@{}", w.cache_key())
}

/// The pretrained network `weights` name as a `T`, loaded once and kept resident like
/// a model.
pub fn backbone<T: Any + Send + Sync>(
    ctx: &mut DeviceContext,
    weights: &ResolvedWeights,
) -> Result<Arc<T>, ServiceError> {
    let corrupt =
        |e: candle_core::Error| oneiro_trainer::Error::Corrupt(format!("{}: {e}", weights.origin));
    let value = ctx.shared(&backbone_key(weights), |device| {
        Ok(match weights.network {
            Network::InceptionV3 => {
                let eps = oneiro_models::inception_v3::INCEPTION_BN_EPS;
                let net = oneiro_models::InceptionV3::load(&weights.weights, eps, device)
                    .map_err(corrupt)?;
                let bytes = net.parameter_count() as u64 * 4;
                Loaded::new(net, bytes)
            }
            Network::Vgg19 => {
                let net = oneiro_models::Vgg19::load(&weights.weights, device).map_err(corrupt)?;
                let bytes = net.parameter_count() as u64 * 4;
                Loaded::new(net, bytes)
            }
        })
    })?;
    value.downcast::<T>().map_err(|_| {
        ServiceError::Internal(format!("{} is not the network asked for", weights.origin))
    })
}

/// A training job's outcome goes to the job itself.
impl Outcome for Arc<Job> {
    fn abandoned(&self) -> bool {
        // Cancelled while it waited.
        self.state() != JobState::Queued
    }

    fn fail(&self, e: ServiceError) {
        let status = Status::from(e);
        self.finish(
            JobState::Failed,
            status.message().to_string(),
            status.code(),
        );
    }
}

/// The command that runs `job` on a device, with its data when the RPC layer loaded it.
pub fn training(job: Arc<Job>, data: Option<Preloaded>) -> Command {
    let span = info_span!("train", job = %job.id, model = %job.model);
    let model = job.model.clone();
    let j = job.clone();
    Command::new("training", span, Some(model), job, move |ctx| {
        let plan = j.plan();
        match &plan {
            TrainPlan::Text(_) => run_training::<text::Text>(ctx, &j, &plan, data),
            TrainPlan::Vae { .. } => run_training::<vae::Vae>(ctx, &j, &plan, data),
            TrainPlan::Gan { .. } => run_training::<gan::Gan>(ctx, &j, &plan, data),
        }
        Ok(())
    })
}

fn run_training<K: TrainKind>(
    ctx: &mut DeviceContext,
    job: &Job,
    plan: &TrainPlan,
    data: Option<Preloaded>,
) {
    if ctx.is_stopping() {
        job.request_stop(JobState::Interrupted, "the daemon is shutting down");
    }
    if let Some((state, why)) = job.stop_requested() {
        job.finish(state, why, tonic::Code::Cancelled);
        return;
    }
    let data = match data.map(|d| d.downcast::<K::Data>()) {
        Some(Ok(d)) => Ok(d),
        _ => K::reload(job),
    };
    let metrics = ctx.metrics.clone();
    let mut sink = JobSink {
        job,
        metrics: &metrics,
    };
    let result = data.and_then(|d| K::train(ctx, job, plan, &d, &mut sink));
    ctx.unload(&job.model);
    match result {
        Ok(r) => {
            info!(job = %job.id, model = %job.model, progress = r.progress_units(), "training finished");
            job.finish(JobState::Finished, String::new(), tonic::Code::Ok);
        }
        Err(oneiro_trainer::Error::Cancelled(_))
            if ctx
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

/// Publishes trainer events to the job (its watchers and its replay buffer), and stops
/// the run when the job is cancelled or the daemon shuts down.
struct JobSink<'a> {
    job: &'a Job,
    metrics: &'a Metrics,
}

impl EventSink for JobSink<'_> {
    fn send(&mut self, event: TrainEvent) -> Result<(), Stop> {
        if let TrainEvent::Batch { rate, .. } = &event {
            self.metrics.train_step(*rate);
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

/// Loads the model a training names, checking that the request's settings (`wanted`,
/// when it gave any) agree with the existing model's, or creates it with `new` when
/// asked to. `config` reads the kind's configuration (an error for another kind).
pub(crate) fn ensure_kind_model<C: PartialEq + std::fmt::Debug>(
    store: &ModelStore,
    req: &pb::TrainRequest,
    config: impl Fn(&ModelRecord) -> oneiro_trainer::Result<&C>,
    wanted: impl Fn(&C) -> Option<C>,
    new: impl FnOnce() -> Result<ModelRecord, ServiceError>,
    check: impl Fn(&ModelRecord) -> Result<(), ServiceError>,
) -> Result<ModelRecord, ServiceError> {
    match store.load(&req.model) {
        Ok(record) => {
            let existing = config(&record)?;
            if let Some(wanted) = wanted(existing)
                && wanted != *existing
            {
                return Err(ServiceError::InvalidArgument(format!(
                    "model {:?} exists with {:?}; the request asks for {:?} (delete the model or drop those settings)",
                    req.model, existing, wanted
                )));
            }
            check(&record)?;
            Ok(record)
        }
        Err(oneiro_trainer::Error::NotFound(_)) if req.create_if_missing => {
            let record = new()?;
            store.create(&record)?;
            Ok(record)
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pb::train_request::{CreateConfig, Data};

    fn request(data: Option<Data>, config: Option<CreateConfig>) -> pb::TrainRequest {
        pb::TrainRequest {
            model: "m".into(),
            data,
            create_config: config,
            ..Default::default()
        }
    }

    fn text() -> Data {
        Data::Text(pb::TextCorpus {
            source: Some(pb::text_corpus::Source::Text("abc".into())),
        })
    }

    #[test]
    fn the_data_decides_the_kind() {
        let digits = Data::Digits(Default::default());
        let images = Data::Images(Default::default());
        assert_eq!(
            requested_kind(&request(Some(text()), None)).unwrap(),
            ModelKind::CharLstm
        );
        assert_eq!(
            requested_kind(&request(Some(digits), None)).unwrap(),
            ModelKind::Vae
        );
        assert_eq!(
            requested_kind(&request(Some(images), None)).unwrap(),
            ModelKind::Gan
        );
    }

    #[test]
    fn a_create_config_alone_decides_the_kind() {
        let vae = CreateConfig::Vae(Default::default());
        let gan = CreateConfig::Gan(Default::default());
        assert_eq!(
            requested_kind(&request(None, Some(vae))).unwrap(),
            ModelKind::Vae
        );
        assert_eq!(
            requested_kind(&request(None, Some(gan))).unwrap(),
            ModelKind::Gan
        );
        assert_eq!(
            requested_kind(&request(None, None)).unwrap(),
            ModelKind::CharLstm
        );
    }

    #[test]
    fn data_and_create_config_of_different_kinds_are_refused() {
        let cases = [
            (
                text(),
                CreateConfig::Vae(Default::default()),
                "char-lstm",
                "vae",
            ),
            (
                text(),
                CreateConfig::Gan(Default::default()),
                "char-lstm",
                "gan",
            ),
            (
                Data::Digits(Default::default()),
                CreateConfig::Gan(Default::default()),
                "vae",
                "gan",
            ),
            (
                Data::Images(Default::default()),
                CreateConfig::CharLstm(Default::default()),
                "gan",
                "char-lstm",
            ),
        ];
        for (data, config, by_data, by_config) in cases {
            let err = requested_kind(&request(Some(data), Some(config))).unwrap_err();
            let status = Status::from(err);
            assert_eq!(status.code(), tonic::Code::InvalidArgument);
            assert!(
                status.message().contains(by_data) && status.message().contains(by_config),
                "{}",
                status.message()
            );
        }
    }

    #[test]
    fn data_and_create_config_of_the_same_kind_agree() {
        let ok = requested_kind(&request(
            Some(Data::Digits(Default::default())),
            Some(CreateConfig::Vae(Default::default())),
        ));
        assert_eq!(ok.unwrap(), ModelKind::Vae);
    }
}
