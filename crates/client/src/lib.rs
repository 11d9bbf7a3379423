//! Client library for the Oneiro daemon: a thin, typed wrapper over the generated gRPC
//! client (`oneiro.v1`), usable against a local or remote `oneirod`.

use oneiro_proto::v1::oneiro_client::OneiroClient;
use tonic::Streaming;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

pub use oneiro_proto::v1 as pb;

#[cfg(feature = "cli")]
pub mod corpus;

/// Largest message sent or received (a training corpus travels in one request).
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid endpoint {0:?}: {1}")]
    Endpoint(String, String),
    #[error("cannot connect to {0}: {1}")]
    Connect(String, String),
    #[error(transparent)]
    Status(#[from] tonic::Status),
}

pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// Adds `authorization: Bearer <token>` to every call when a token is set.
#[derive(Clone, Default)]
pub struct BearerToken(Option<MetadataValue<Ascii>>);

impl BearerToken {
    pub fn new(token: &str) -> Result<Self> {
        let value = format!("Bearer {token}").parse().map_err(|_| {
            ClientError::Endpoint(
                "token".into(),
                "the token has characters a header cannot carry".into(),
            )
        })?;
        Ok(Self(Some(value)))
    }
}

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "BearerToken(***)"
        } else {
            "BearerToken(none)"
        })
    }
}

impl tonic::service::Interceptor for BearerToken {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

#[derive(Clone)]
pub struct Client {
    inner: OneiroClient<InterceptedService<Channel, BearerToken>>,
}

impl Client {
    /// Connects to `endpoint`, e.g. `http://127.0.0.1:50051`.
    pub async fn connect(endpoint: &str) -> Result<Self> {
        Self::connect_with_token(endpoint, BearerToken::default()).await
    }

    /// Connects, sending `token` with every call.
    pub async fn connect_with_token(endpoint: &str, token: BearerToken) -> Result<Self> {
        Self::connect_with(endpoint, token, None).await
    }

    /// Connects with a token and, for `https://` endpoints, TLS that trusts `ca_pem`
    /// (a PEM certificate, e.g. a self-signed daemon's) or else the public web roots.
    pub async fn connect_with(
        endpoint: &str,
        token: BearerToken,
        ca_pem: Option<&[u8]>,
    ) -> Result<Self> {
        let mut ep = Endpoint::from_shared(endpoint.to_string())
            .map_err(|e| ClientError::Endpoint(endpoint.into(), e.to_string()))?;
        if endpoint.starts_with("https://") {
            // Two rustls providers are linked when the CLI embeds the engine (ring for
            // tonic, aws-lc-rs for the hub client): name one. Already set is fine.
            let _ = rustls::crypto::ring::default_provider().install_default();
            let tls = match ca_pem {
                Some(pem) => ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)),
                None => ClientTlsConfig::new().with_webpki_roots(),
            };
            ep = ep
                .tls_config(tls)
                .map_err(|e| ClientError::Endpoint(endpoint.into(), source_chain(&e)))?;
        }
        let channel = ep
            .connect()
            .await
            .map_err(|e| ClientError::Connect(endpoint.into(), source_chain(&e)))?;
        let inner = OneiroClient::with_interceptor(channel, token)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        Ok(Self { inner })
    }

    /// The generated client, for calls this wrapper does not cover.
    pub fn raw(&mut self) -> &mut OneiroClient<InterceptedService<Channel, BearerToken>> {
        &mut self.inner
    }

    pub async fn info(&mut self) -> Result<pb::InfoResponse> {
        Ok(self.inner.info(pb::InfoRequest {}).await?.into_inner())
    }

    pub async fn create_model(&mut self, req: pb::CreateModelRequest) -> Result<pb::ModelInfo> {
        Ok(self.inner.create_model(req).await?.into_inner())
    }

    pub async fn list_models(&mut self) -> Result<Vec<pb::ModelInfo>> {
        Ok(self
            .inner
            .list_models(pb::ListModelsRequest {})
            .await?
            .into_inner()
            .models)
    }

    pub async fn describe_model(&mut self, name: &str) -> Result<pb::ModelInfo> {
        Ok(self
            .inner
            .describe_model(pb::DescribeModelRequest { name: name.into() })
            .await?
            .into_inner())
    }

    pub async fn delete_model(&mut self, name: &str) -> Result<()> {
        self.inner
            .delete_model(pb::DeleteModelRequest { name: name.into() })
            .await?;
        Ok(())
    }

    /// Loads a trained model onto the daemon's device ahead of use.
    pub async fn load_model(&mut self, name: &str) -> Result<pb::ResidencyResponse> {
        Ok(self
            .inner
            .load_model(pb::LoadModelRequest { name: name.into() })
            .await?
            .into_inner())
    }

    /// Frees a model's device memory (it loads again on next use).
    pub async fn unload_model(&mut self, name: &str) -> Result<pb::ResidencyResponse> {
        Ok(self
            .inner
            .unload_model(pb::UnloadModelRequest { name: name.into() })
            .await?
            .into_inner())
    }

    /// Starts a training and returns its event stream.
    pub async fn train(&mut self, req: pb::TrainRequest) -> Result<Streaming<pb::TrainEvent>> {
        Ok(self.inner.train(req).await?.into_inner())
    }

    /// Re-attaches to a job: its recent events, then live ones.
    pub async fn watch_job(&mut self, job_id: &str) -> Result<Streaming<pb::TrainEvent>> {
        Ok(self
            .inner
            .watch_job(pb::WatchJobRequest {
                job_id: job_id.into(),
            })
            .await?
            .into_inner())
    }

    pub async fn cancel_job(&mut self, job_id: &str) -> Result<pb::JobInfo> {
        Ok(self
            .inner
            .cancel_job(pb::CancelJobRequest {
                job_id: job_id.into(),
            })
            .await?
            .into_inner())
    }

    pub async fn list_jobs(&mut self) -> Result<Vec<pb::JobInfo>> {
        Ok(self
            .inner
            .list_jobs(pb::ListJobsRequest {})
            .await?
            .into_inner()
            .jobs)
    }

    /// Continues a stopped job from its last checkpoint and follows it.
    pub async fn resume_job(&mut self, job_id: &str) -> Result<Streaming<pb::TrainEvent>> {
        Ok(self
            .inner
            .resume_job(pb::ResumeJobRequest {
                job_id: job_id.into(),
            })
            .await?
            .into_inner())
    }

    /// Starts a generation and returns its stream of text chunks.
    pub async fn generate(
        &mut self,
        req: pb::GenerateRequest,
    ) -> Result<Streaming<pb::GenerateChunk>> {
        Ok(self.inner.generate(req).await?.into_inner())
    }

    /// The VAE's latent grid as a PNG.
    pub async fn vae_grid(&mut self, req: pb::VaeGridRequest) -> Result<pb::Image> {
        Ok(self.inner.vae_grid(req).await?.into_inner())
    }

    pub async fn vae_decode(&mut self, req: pb::VaeDecodeRequest) -> Result<pb::VaeDecodeResponse> {
        Ok(self.inner.vae_decode(req).await?.into_inner())
    }

    pub async fn vae_encode(&mut self, req: pb::VaeEncodeRequest) -> Result<pb::VaeEncodeResponse> {
        Ok(self.inner.vae_encode(req).await?.into_inner())
    }

    pub async fn vae_concept(
        &mut self,
        req: pb::VaeConceptRequest,
    ) -> Result<pb::VaeConceptResponse> {
        Ok(self.inner.vae_concept(req).await?.into_inner())
    }

    pub async fn vae_morph(&mut self, req: pb::VaeMorphRequest) -> Result<pb::VaeMorphResponse> {
        Ok(self.inner.vae_morph(req).await?.into_inner())
    }

    /// A PNG grid of a GAN's generated images.
    pub async fn gan_sample(&mut self, req: pb::GanSampleRequest) -> Result<pb::Image> {
        Ok(self.inner.gan_sample(req).await?.into_inner())
    }

    /// DeepDream: the loss of every ascent iteration and each octave's image.
    pub async fn dream(&mut self, req: pb::DreamRequest) -> Result<Streaming<pb::DreamEvent>> {
        Ok(self.inner.dream(req).await?.into_inner())
    }

    /// Style transfer: each L-BFGS round's loss and image.
    pub async fn style(&mut self, req: pb::StyleRequest) -> Result<Streaming<pb::StyleEvent>> {
        Ok(self.inner.style(req).await?.into_inner())
    }

    /// Generates and collects the whole text.
    pub async fn generate_text(&mut self, req: pb::GenerateRequest) -> Result<String> {
        let mut stream = self.generate(req).await?;
        let mut out = String::new();
        while let Some(chunk) = stream.message().await? {
            out.push_str(&chunk.text);
        }
        Ok(out)
    }
}

/// "transport error: tcp connect error: Connection refused" rather than the first link.
fn source_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
