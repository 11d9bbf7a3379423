//! The daemon's validated settings (the CLI flags of `oneirod` map onto these).

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::device::DeviceSpec;

#[derive(Clone, Debug)]
pub struct DaemonConfig {
    /// Where models and checkpoints live.
    pub state_dir: PathBuf,
    pub device: DeviceSpec,
    /// Longest generation one request may ask for (characters).
    pub max_generate_length: u32,
    /// Largest request message decoded, in bytes (corpora travel inside requests).
    pub max_request_bytes: usize,
    /// Largest corpus, in bytes, whether sent or read from a server path.
    pub max_corpus_bytes: usize,
    /// Jobs waiting for the device worker before new ones get `ResourceExhausted`.
    pub queue_depth: usize,
    /// When set, every call must carry `authorization: Bearer <token>`.
    pub auth_token: Option<Secret>,
    /// How long a shutdown waits for trainings to checkpoint and streams to end.
    pub shutdown_timeout: Duration,
    /// Server streams (Train, Generate, WatchJob, ResumeJob) open at once.
    pub max_streams: usize,
    /// Where to serve Prometheus metrics (`/metrics`), if anywhere.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Bytes of model weights kept resident on the device; least recently used models
    /// are unloaded past it.
    pub memory_budget_bytes: usize,
    /// Serve TLS (rustls) with this certificate chain and private key (PEM files).
    pub tls: Option<TlsFiles>,
    /// Train requests may name corpus files under this directory (and nowhere else);
    /// `None` turns server-side corpora off.
    pub corpus_root: Option<PathBuf>,
    /// Where hub downloads (datasets, weights) are resolved: offline mode and cache.
    pub hub: oneiro_trainer::hub::HubOptions,
    /// Requests may name weights files (safetensors) under this directory; `None` allows
    /// only hub and random weights.
    pub weights_root: Option<PathBuf>,
    /// Largest image (width × height) DeepDream and style transfer accept.
    pub max_image_pixels: u64,
    /// What this engine is, as the state directory's lock tells other processes.
    pub role: crate::lock::Role,
}

#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A value that must never reach logs or `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl DaemonConfig {
    pub fn new(state_dir: PathBuf) -> Self {
        Self {
            state_dir,
            device: DeviceSpec::Auto,
            max_generate_length: 100_000,
            max_request_bytes: 64 << 20,
            max_corpus_bytes: 32 << 20,
            queue_depth: 16,
            auth_token: None,
            shutdown_timeout: Duration::from_secs(30),
            max_streams: 64,
            metrics_listen: None,
            memory_budget_bytes: 2 << 30,
            tls: None,
            corpus_root: None,
            hub: oneiro_trainer::hub::HubOptions::from_env(),
            weights_root: None,
            // 2048² pixels: a DeepDream iteration on the CPU at that size takes seconds;
            // larger is possible, but should be a deliberate setting.
            max_image_pixels: 1 << 22,
            role: crate::lock::Role::Daemon,
        }
    }
}

/// The default state directory: `$ONEIRO_HOME`, else the per-user data directory
/// (`~/.local/share/oneiro` on Linux). The embedded engine of the CLI and `oneirod` use
/// the same one, so a model trained by one is there for the other.
pub fn default_state_dir() -> PathBuf {
    if let Some(home) = std::env::var_os("ONEIRO_HOME") {
        return PathBuf::from(home);
    }
    directories::ProjectDirs::from("", "", "oneiro")
        .map(|d| d.data_dir().to_path_buf())
        .unwrap_or_else(|| PathBuf::from(".oneiro"))
}
