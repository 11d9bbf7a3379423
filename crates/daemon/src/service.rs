//! The `oneiro.v1.Oneiro` gRPC service.

use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;

use oneiro_proto::v1::{self as pb, oneiro_server::Oneiro};
use oneiro_trainer::store::validate_name;
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
use crate::worker::{Job, WorkerHandle};

pub type EventStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Replies buffered per stream before the worker waits for the client.
const STREAM_BUFFER: usize = 64;

pub struct OneiroService {
    config: DaemonConfig,
    store: Arc<ModelStore>,
    worker: WorkerHandle,
}

impl OneiroService {
    pub fn new(config: DaemonConfig, store: Arc<ModelStore>, worker: WorkerHandle) -> Self {
        Self {
            config,
            store,
            worker,
        }
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

    fn read_corpus(&self, req: &pb::TrainRequest) -> Result<String, ServiceError> {
        let invalid = ServiceError::InvalidArgument;
        let source = match &req.data {
            Some(pb::train_request::Data::Text(c)) => c.source.as_ref(),
            None => None,
        };
        let text = match source {
            Some(pb::text_corpus::Source::Text(t)) => t.clone(),
            Some(pb::text_corpus::Source::ServerPath(p)) => {
                let path = Path::new(p);
                let meta = std::fs::metadata(path)
                    .map_err(|e| invalid(format!("cannot read corpus {p:?}: {e}")))?;
                if meta.len() as usize > self.config.max_corpus_bytes {
                    return Err(invalid(format!(
                        "corpus {p:?} has {} bytes, over the limit of {}",
                        meta.len(),
                        self.config.max_corpus_bytes
                    )));
                }
                let bytes = std::fs::read(path)
                    .map_err(|e| invalid(format!("cannot read corpus {p:?}: {e}")))?;
                String::from_utf8(bytes).map_err(|e| {
                    invalid(format!(
                        "corpus {p:?} is not UTF-8 text (invalid byte at offset {})",
                        e.utf8_error().valid_up_to()
                    ))
                })?
            }
            None => {
                return Err(invalid(
                    "the request has no corpus: send text or a server path".into(),
                ));
            }
        };
        if text.len() > self.config.max_corpus_bytes {
            return Err(invalid(format!(
                "the corpus has {} bytes, over the limit of {}",
                text.len(),
                self.config.max_corpus_bytes
            )));
        }
        Ok(text)
    }
}

/// Creates the model when asked to, or checks that explicitly requested settings match
/// the existing model's.
fn ensure_model(store: &ModelStore, req: &pb::TrainRequest) -> Result<ModelRecord, ServiceError> {
    let requested = req
        .create_config
        .as_ref()
        .map(|pb::train_request::CreateConfig::CharLstm(c)| c);
    match store.load(&req.model) {
        Ok(record) => {
            if let Some(p) = requested {
                let wanted = convert::char_lstm_config(Some(p), &record.char_lstm);
                if wanted != record.char_lstm {
                    return Err(ServiceError::InvalidArgument(format!(
                        "model {:?} exists with {:?}; the request asks for {:?} (delete the model or drop those settings)",
                        req.model, record.char_lstm, wanted
                    )));
                }
            }
            Ok(record)
        }
        Err(oneiro_trainer::Error::NotFound(_)) if req.create_if_missing => {
            let config = convert::char_lstm_config(requested, &Default::default());
            let record = ModelRecord::new_char_lstm(&req.model, config);
            store.create(&record)?;
            Ok(record)
        }
        Err(e) => Err(e.into()),
    }
}

#[tonic::async_trait]
impl Oneiro for OneiroService {
    async fn info(
        &self,
        _: Request<pb::InfoRequest>,
    ) -> Result<Response<pb::InfoResponse>, Status> {
        Ok(Response::new(pb::InfoResponse {
            version: env!("CARGO_PKG_VERSION").into(),
            device: self.worker.device.clone(),
            dtype: "f32".into(),
            limits: Some(pb::Limits {
                max_generate_length: self.config.max_generate_length,
                max_request_bytes: self.config.max_request_bytes as u64,
                max_corpus_bytes: self.config.max_corpus_bytes as u64,
            }),
        }))
    }

    async fn create_model(
        &self,
        req: Request<pb::CreateModelRequest>,
    ) -> Result<Response<pb::ModelInfo>, Status> {
        let req = req.into_inner();
        let config = match &req.config {
            Some(pb::create_model_request::Config::CharLstm(c)) => {
                convert::char_lstm_config(Some(c), &Default::default())
            }
            None => Default::default(),
        };
        let info = self
            .with_store(move |s| {
                let record = ModelRecord::new_char_lstm(&req.name, config);
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
        if self.worker.is_training(&name) {
            return Err(ServiceError::Busy(name).into());
        }
        self.with_store(move |s| Ok(s.delete(&name)?)).await?;
        Ok(Response::new(pb::DeleteModelResponse {}))
    }

    type TrainStream = EventStream<pb::TrainEvent>;

    async fn train(
        &self,
        req: Request<pb::TrainRequest>,
    ) -> Result<Response<Self::TrainStream>, Status> {
        let req = req.into_inner();
        validate_name(&req.model).map_err(ServiceError::from)?;
        let options = convert::train_options(req.options.as_ref());
        options.validate().map_err(ServiceError::from)?;
        if self.worker.is_training(&req.model) {
            return Err(ServiceError::Busy(req.model).into());
        }
        let corpus = self.read_corpus(&req)?;
        let req = Arc::new(req);
        let r = req.clone();
        self.with_store(move |s| ensure_model(s, &r)).await?;
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let span = info_span!("train", model = %req.model);
        self.worker.submit(Job::Train {
            model: req.model.clone(),
            corpus,
            options,
            events: tx,
            span,
        })?;
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type GenerateStream = EventStream<pb::GenerateChunk>;

    async fn generate(
        &self,
        req: Request<pb::GenerateRequest>,
    ) -> Result<Response<Self::GenerateStream>, Status> {
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
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
