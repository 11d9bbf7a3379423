//! Models of every kind: create, list, describe, delete, load and unload; and `Info`.

use oneiro_proto::v1 as pb;
use oneiro_trainer::store::validate_name;
use oneiro_trainer::{ModelRecord, ModelSpec};
use tonic::{Response, Status};
use tracing::info_span;

use super::OneiroService;
use crate::convert;
use crate::error::ServiceError;
use crate::techniques::{self, gan, text, vae};

/// A model's description for the wire.
pub fn model_info(r: &ModelRecord) -> pb::ModelInfo {
    let config = match &r.spec {
        ModelSpec::CharLstm { config, .. } => {
            pb::model_info::Config::CharLstm(text::char_lstm_to_proto(config))
        }
        ModelSpec::Vae { config, .. } => pb::model_info::Config::Vae(vae::vae_to_proto(config)),
        ModelSpec::Gan { config, .. } => pb::model_info::Config::Gan(gan::gan_to_proto(config)),
    };
    pb::ModelInfo {
        name: r.name.clone(),
        kind: convert::model_kind(r.kind()) as i32,
        config: Some(config),
        steps_trained: r.steps_trained(),
        classes_with_means: r
            .class_means()
            .map_or(0, |m| m.iter().filter(|c| !c.is_empty()).count() as u32),
        epochs_trained: r.epochs_trained,
        vocab_size: r.vocab().map_or(0, |v| v.len() as u32),
        parameters: r.parameters,
        loss_history: r.loss_history.clone(),
        val_loss_history: r.val_loss_history.clone(),
        updated_unix: r.updated_unix,
    }
}

impl OneiroService {
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

    pub(super) async fn info_rpc(
        &self,
        _: pb::InfoRequest,
    ) -> Result<Response<pb::InfoResponse>, Status> {
        use oneiro_trainer::vision::backbones::Network;
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
            backbones: [Network::InceptionV3, Network::Vgg19]
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

    pub(super) async fn create_model_rpc(
        &self,
        req: pb::CreateModelRequest,
    ) -> Result<Response<pb::ModelInfo>, Status> {
        use pb::create_model_request::Config;
        let info = self
            .blocking(move |s, _| {
                let record = match &req.config {
                    Some(Config::Gan(c)) => ModelRecord::new_gan(
                        &req.name,
                        gan::gan_config(Some(c), &Default::default()),
                    ),
                    Some(Config::Vae(c)) => ModelRecord::new_vae(
                        &req.name,
                        vae::vae_config(Some(c), &Default::default()),
                    ),
                    Some(Config::CharLstm(c)) => ModelRecord::new_char_lstm(
                        &req.name,
                        text::char_lstm_config(Some(c), &Default::default()),
                    ),
                    None => ModelRecord::new_char_lstm(&req.name, Default::default()),
                };
                s.create(&record)?;
                Ok(model_info(&record))
            })
            .await?;
        Ok(Response::new(info))
    }

    pub(super) async fn list_models_rpc(&self) -> Result<Response<pb::ListModelsResponse>, Status> {
        let models = self
            .blocking(|s, _| Ok(s.list()?.iter().map(model_info).collect()))
            .await?;
        Ok(Response::new(pb::ListModelsResponse { models }))
    }

    pub(super) async fn describe_model_rpc(
        &self,
        name: String,
    ) -> Result<Response<pb::ModelInfo>, Status> {
        let info = self
            .blocking(move |s, _| Ok(model_info(&s.load(&name)?)))
            .await?;
        Ok(Response::new(info))
    }

    pub(super) async fn delete_model_rpc(
        &self,
        name: String,
    ) -> Result<Response<pb::DeleteModelResponse>, Status> {
        validate_name(&name).map_err(ServiceError::from)?;
        if self.jobs.active_for(&name).is_some() {
            return Err(ServiceError::Busy(name).into());
        }
        self.blocking(move |s, _| Ok(s.delete(&name)?)).await?;
        Ok(Response::new(pb::DeleteModelResponse {}))
    }

    pub(super) async fn load_model_rpc(
        &self,
        model: String,
    ) -> Result<Response<pb::ResidencyResponse>, Status> {
        self.admit()?;
        validate_name(&model).map_err(ServiceError::from)?;
        let span = info_span!("load", model = %model);
        let was = self
            .worker
            .call("load", span, None, move |ctx| {
                let was = ctx.is_resident(&model);
                ctx.model(&model, techniques::load_resident)?;
                Ok(was)
            })
            .await?;
        Ok(Response::new(self.residency_response(was)))
    }

    pub(super) async fn unload_model_rpc(
        &self,
        model: String,
    ) -> Result<Response<pb::ResidencyResponse>, Status> {
        validate_name(&model).map_err(ServiceError::from)?;
        let span = info_span!("unload", model = %model);
        let was = self
            .worker
            .call_even_if_abandoned("unload", span, move |ctx| Ok(ctx.unload(&model)))
            .await?;
        Ok(Response::new(self.residency_response(was)))
    }
}
