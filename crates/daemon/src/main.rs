//! `oneirod`: the long-running Oneiro daemon.

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use oneiro_daemon::device::DeviceSpec;
use oneiro_daemon::{DaemonConfig, config::default_state_dir};
use tracing_subscriber::EnvFilter;

/// Keeps models resident on a device and serves training and generation over gRPC.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Address to listen on. Loopback by default: expose it on purpose, not by accident.
    #[arg(long, env = "ONEIRO_LISTEN", default_value = "127.0.0.1:50051")]
    listen: SocketAddr,
    /// Where models and checkpoints are kept [default: $ONEIRO_HOME, else the per-user
    /// data directory, shared with the CLI's embedded engine].
    #[arg(long, env = "ONEIRO_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Device of the worker: cpu, cuda:N, or auto (a GPU when this build and the machine
    /// have one).
    #[arg(long, env = "ONEIRO_DEVICE", default_value = "auto")]
    device: DeviceSpec,
    /// Longest generation one request may ask for, in characters.
    #[arg(long, default_value_t = 100_000)]
    max_generate_length: u32,
    /// Largest request accepted, in MiB (a corpus travels inside the Train request).
    #[arg(long, default_value_t = 64)]
    max_request_mib: usize,
    /// Largest corpus accepted, in MiB.
    #[arg(long, default_value_t = 32)]
    max_corpus_mib: usize,
    /// Jobs that may wait for the device before new ones are refused (ResourceExhausted).
    #[arg(long, default_value_t = 16)]
    queue_depth: usize,
    /// CPU threads for tensor work [default: RAYON_NUM_THREADS, else one per core].
    #[arg(long, env = "ONEIRO_THREADS")]
    threads: Option<usize>,
    /// Require this bearer token on every call. Prefer --token-file: a value on the
    /// command line is visible to other users of the machine.
    #[arg(long, env = "ONEIRO_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// File holding the bearer token every call must carry.
    #[arg(long, env = "ONEIRO_TOKEN_FILE", conflicts_with = "token")]
    token_file: Option<PathBuf>,
    /// Server streams (training, watching, generation) open at once; more get
    /// RESOURCE_EXHAUSTED.
    #[arg(long, default_value_t = 64)]
    max_streams: usize,
    /// Serve Prometheus metrics on this address (http://ADDR/metrics). Unauthenticated:
    /// keep it on loopback or a private network.
    #[arg(long, env = "ONEIRO_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// MiB of model weights kept resident on the device; the least recently used
    /// models are unloaded past it.
    #[arg(long, default_value_t = 2048)]
    memory_budget_mib: usize,
    /// Let Train requests name corpus files under this directory (off by default: a
    /// client could otherwise read any file the daemon can).
    #[arg(long, env = "ONEIRO_CORPUS_ROOT")]
    corpus_root: Option<PathBuf>,
    /// Resolve hub datasets and weights from the local cache only (also HF_HUB_OFFLINE=1).
    #[arg(long)]
    offline: bool,
    /// The hub cache directory [HF_HUB_CACHE, $HF_HOME/hub, ~/.cache/huggingface/hub].
    #[arg(long, env = "ONEIRO_HUB_CACHE")]
    hub_cache: Option<PathBuf>,
    /// Let requests name weights files (safetensors) under this directory (off by
    /// default: hub and random weights only).
    #[arg(long, env = "ONEIRO_WEIGHTS_ROOT")]
    weights_root: Option<PathBuf>,
    /// Largest image (width × height) DeepDream and style transfer accept.
    #[arg(long, default_value_t = 1 << 22)]
    max_image_pixels: u64,
    /// Serve TLS with this PEM certificate chain (needs --tls-key).
    #[arg(long, env = "ONEIRO_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "ONEIRO_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Seconds a shutdown (SIGTERM, Ctrl-C) waits for trainings to checkpoint and
    /// streams to end.
    #[arg(long, default_value_t = 30)]
    shutdown_timeout_secs: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    oneiro_daemon::allocator::keep_freed_memory();
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_ansi(std::io::stdout().is_terminal())
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    if let Some(n) = args.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()?;
    }
    let mut config = DaemonConfig::new(args.state_dir.unwrap_or_else(default_state_dir));
    config.device = args.device;
    config.max_generate_length = args.max_generate_length;
    config.max_request_bytes = args.max_request_mib << 20;
    config.max_corpus_bytes = args.max_corpus_mib << 20;
    config.queue_depth = args.queue_depth;
    config.shutdown_timeout = std::time::Duration::from_secs(args.shutdown_timeout_secs);
    config.max_streams = args.max_streams;
    config.metrics_listen = args.metrics_listen;
    config.memory_budget_bytes = args.memory_budget_mib << 20;
    config.corpus_root = args.corpus_root;
    config.hub.offline |= args.offline;
    config.hub.cache_dir = args.hub_cache;
    config.weights_root = args.weights_root;
    config.max_image_pixels = args.max_image_pixels;
    if let (Some(cert), Some(key)) = (args.tls_cert, args.tls_key) {
        config.tls = Some(oneiro_daemon::config::TlsFiles { cert, key });
    }
    config.auth_token = match (args.token, args.token_file) {
        (Some(t), _) => Some(t),
        (None, Some(f)) => Some(
            std::fs::read_to_string(&f)
                .map_err(|e| anyhow::anyhow!("cannot read token file {}: {e}", f.display()))?
                .trim()
                .to_string(),
        ),
        (None, None) => None,
    }
    .map(|t| {
        if t.is_empty() {
            anyhow::bail!("the bearer token is empty")
        }
        Ok(oneiro_daemon::config::Secret::new(t))
    })
    .transpose()?;
    tracing::info!(state_dir = %config.state_dir.display(), "starting");
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    oneiro_daemon::serve(config, listener, shutdown_signal()).await
}

/// Ctrl-C or SIGTERM (what service managers send).
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing the SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}
