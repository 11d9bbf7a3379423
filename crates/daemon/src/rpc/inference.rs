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
use crate::techniques::vae::{self, VaeWork};

impl OneiroService {
    pub(super) fn generate_rpc(
        &self,
        req: pb::GenerateRequest,
    ) -> Result<Response<EventStream<pb::GenerateChunk>>, Status> {
        self.admit()?;
        let permit = self.stream_permit()?;
        let generation = Generation::check(req)?;
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        self.worker.submit(generation.command(tx))?;
        Ok(Response::new(permitted(
            Box::pin(ReceiverStream::new(rx)),
            permit,
        )))
    }

    /// Runs a VAE request on the device: checks and decodes it off the async threads,
    /// then waits for the worker's answer.
    async fn vae_call<R: Send + 'static>(
        &self,
        model: String,
        check: impl FnOnce() -> Result<VaeWork<R>, ServiceError> + Send + 'static,
    ) -> Result<Response<R>, Status> {
        self.admit()?;
        validate_name(&model).map_err(ServiceError::from)?;
        let work = self.blocking(move |_, _| check()).await?;
        Ok(Response::new(vae::call(&self.worker, model, work).await?))
    }

    pub(super) async fn vae_grid_rpc(
        &self,
        req: pb::VaeGridRequest,
    ) -> Result<Response<pb::Image>, Status> {
        self.vae_call(req.model.clone(), move || vae::grid(&req))
            .await
    }

    pub(super) async fn vae_decode_rpc(
        &self,
        req: pb::VaeDecodeRequest,
    ) -> Result<Response<pb::VaeDecodeResponse>, Status> {
        self.vae_call(req.model.clone(), move || vae::decode(&req))
            .await
    }

    pub(super) async fn vae_encode_rpc(
        &self,
        req: pb::VaeEncodeRequest,
    ) -> Result<Response<pb::VaeEncodeResponse>, Status> {
        self.vae_call(req.model.clone(), move || vae::encode(&req))
            .await
    }

    pub(super) async fn vae_concept_rpc(
        &self,
        req: pb::VaeConceptRequest,
    ) -> Result<Response<pb::VaeConceptResponse>, Status> {
        self.vae_call(req.model.clone(), move || vae::concept(&req))
            .await
    }

    pub(super) async fn vae_morph_rpc(
        &self,
        req: pb::VaeMorphRequest,
    ) -> Result<Response<pb::VaeMorphResponse>, Status> {
        self.vae_call(req.model.clone(), move || vae::morph(&req))
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
