//! Short inference on resident models: `Generate` (streamed), the VAE's latent-space
//! calls and `GanSample`.

use oneiro_proto::v1 as pb;
use oneiro_trainer::store::validate_name;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Response, Status};

use super::{EventStream, OneiroService, STREAM_BUFFER, permitted};
use crate::error::ServiceError;
use crate::techniques::gan;
use crate::techniques::text::Generation;
use crate::techniques::vae::{self, VaeOp, VaeReply};

impl OneiroService {
    pub(super) fn generate_rpc(
        &self,
        req: pb::GenerateRequest,
    ) -> Result<Response<EventStream<pb::GenerateChunk>>, Status> {
        self.admit()?;
        let permit = self.stream_permit()?;
        let generation = Generation::check(req, self.config.max_generate_length)?;
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        self.worker.submit(generation.command(tx))?;
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
        let op = self.blocking(move |_, _| decode()).await?;
        let answer = vae::call(&self.worker, model, op).await?;
        pick(answer).map(Response::new).ok_or_else(|| {
            ServiceError::Internal("the worker answered another request kind".into()).into()
        })
    }

    pub(super) async fn vae_grid_rpc(
        &self,
        req: pb::VaeGridRequest,
    ) -> Result<Response<pb::Image>, Status> {
        let model = req.model.clone();
        self.vae_call(
            model,
            move || vae::op_from_grid(&req),
            |r| match r {
                VaeReply::Grid(i) => Some(i),
                _ => None,
            },
        )
        .await
    }

    pub(super) async fn vae_decode_rpc(
        &self,
        req: pb::VaeDecodeRequest,
    ) -> Result<Response<pb::VaeDecodeResponse>, Status> {
        let model = req.model.clone();
        self.vae_call(
            model,
            move || vae::op_from_decode(&req),
            |r| match r {
                VaeReply::Decode(d) => Some(d),
                _ => None,
            },
        )
        .await
    }

    pub(super) async fn vae_encode_rpc(
        &self,
        req: pb::VaeEncodeRequest,
    ) -> Result<Response<pb::VaeEncodeResponse>, Status> {
        let model = req.model.clone();
        self.vae_call(
            model,
            move || vae::op_from_encode(&req),
            |r| match r {
                VaeReply::Encode(e) => Some(e),
                _ => None,
            },
        )
        .await
    }

    pub(super) async fn vae_concept_rpc(
        &self,
        req: pb::VaeConceptRequest,
    ) -> Result<Response<pb::VaeConceptResponse>, Status> {
        let model = req.model.clone();
        self.vae_call(
            model,
            move || vae::op_from_concept(&req),
            |r| match r {
                VaeReply::Concept(c) => Some(c),
                _ => None,
            },
        )
        .await
    }

    pub(super) async fn vae_morph_rpc(
        &self,
        req: pb::VaeMorphRequest,
    ) -> Result<Response<pb::VaeMorphResponse>, Status> {
        let model = req.model.clone();
        self.vae_call(
            model,
            move || vae::op_from_morph(&req),
            |r| match r {
                VaeReply::Morph(m) => Some(m),
                _ => None,
            },
        )
        .await
    }

    pub(super) async fn gan_sample_rpc(
        &self,
        req: pb::GanSampleRequest,
    ) -> Result<Response<pb::Image>, Status> {
        self.admit()?;
        Ok(Response::new(gan::sample_on(&self.worker, req).await?))
    }
}
