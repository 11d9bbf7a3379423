//! The command line: global flags, the commands, and the session that runs one of them
//! against a daemon (remote, or the engine in-process).

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use oneiro_client::{BearerToken, Client};
use oneiro_daemon::DaemonConfig;
use oneiro_daemon::device::DeviceSpec;
use oneiro_daemon::lock::{self, Holder, Role};

pub mod bench;
mod dream;
mod files;
mod gan;
mod info;
mod jobs;
mod models;
mod render;
mod style;
mod text;
mod vae;

#[derive(Parser, Debug)]
#[command(
    name = "oneiro",
    version,
    about = "Train and sample generative models with the Oneiro engine"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug)]
pub struct GlobalArgs {
    /// Daemon to talk to, e.g. http://gpu-box:50051. Without it the engine runs
    /// in-process on this machine.
    #[arg(long, global = true, env = "ONEIRO_ENDPOINT")]
    endpoint: Option<String>,
    /// State directory of the in-process engine [default: $ONEIRO_HOME, else the
    /// per-user data directory, the same one `oneirod` uses].
    #[arg(long, global = true, env = "ONEIRO_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Device of the in-process engine: cpu, cuda:N or auto.
    #[arg(long, global = true, env = "ONEIRO_DEVICE", default_value = "auto")]
    pub device: DeviceSpec,
    /// Bearer token for a daemon started with one.
    #[arg(long, global = true, env = "ONEIRO_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// PEM certificate to trust for an https:// endpoint (e.g. a self-signed daemon's);
    /// without it the public web roots are used.
    #[arg(long, global = true, env = "ONEIRO_TLS_CA")]
    tls_ca: Option<PathBuf>,
    /// File holding the bearer token (instead of --token).
    #[arg(
        long,
        global = true,
        env = "ONEIRO_TOKEN_FILE",
        conflicts_with = "token"
    )]
    token_file: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Character-level LSTM text generation.
    #[command(subcommand)]
    Text(text::TextCommand),
    /// Convolutional VAE on MNIST: training, latent grid, encode/decode, concept vectors.
    #[command(subcommand)]
    Vae(vae::VaeCommand),
    /// DCGAN on CIFAR-10 frogs (or your images): adversarial training, samples.
    #[command(subcommand)]
    Gan(gan::GanCommand),
    /// DeepDream on InceptionV3 (the book's defaults; weights from the hub on first use).
    Dream(dream::DreamArgs),
    /// Neural style transfer on VGG19 with L-BFGS (the book's defaults).
    Style(style::StyleArgs),
    /// Models of every kind (text, VAE, GAN): list, describe, delete, load, unload.
    #[command(subcommand)]
    Models(models::ModelsCommand),
    /// The daemon's version, device and limits.
    Info(info::InfoArgs),
    /// Training jobs on the daemon.
    #[command(subcommand)]
    Jobs(jobs::JobsCommand),
    /// Benchmarks, timed like ../shared/peers (one JSON line each).
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

impl Command {
    /// Whether the command returns while the daemon goes on training.
    fn detaches(&self) -> bool {
        match self {
            Command::Text(text::TextCommand::Train(a)) => a.detach,
            Command::Vae(vae::VaeCommand::Train(a)) => a.detach,
            Command::Gan(gan::GanCommand::Train(a)) => a.detach,
            Command::Jobs(jobs::JobsCommand::Resume { detach, .. }) => *detach,
            _ => false,
        }
    }
}

/// Connects (starting the engine in-process without `--endpoint`), runs the command, and
/// shuts an in-process engine down.
pub async fn run(cli: Cli) -> Result<()> {
    let Cli { global: g, command } = cli;
    let token = match (&g.token, &g.token_file) {
        (Some(t), _) => BearerToken::new(t)?,
        (None, Some(f)) => {
            let t = std::fs::read_to_string(f)
                .with_context(|| format!("cannot read token file {}", f.display()))?;
            BearerToken::new(t.trim())?
        }
        (None, None) => BearerToken::default(),
    };
    let state_dir = || {
        g.state_dir
            .clone()
            .unwrap_or_else(oneiro_daemon::config::default_state_dir)
    };
    // Without an endpoint: the daemon that serves the state directory, if one does (two
    // engines on one directory would overwrite each other's checkpoints); else the engine
    // in-process, on a loopback port only we know.
    let local_daemon = match &g.endpoint {
        Some(_) => None,
        None => match lock::holder_of(&state_dir()) {
            Some(Holder {
                role: Role::Daemon,
                endpoint: Some(e),
                ..
            }) => {
                eprintln!(
                    "oneiro: {} is served by oneirod at {e}; talking to it",
                    state_dir().display()
                );
                Some(e)
            }
            _ => None,
        },
    };
    if command.detaches() && g.endpoint.is_none() && local_daemon.is_none() {
        bail!(
            "--detach needs --endpoint: without a daemon the engine stops when this command does"
        );
    }
    let (endpoint, embedded) = match g.endpoint.clone().or(local_daemon) {
        Some(e) => (e, None),
        None => {
            let mut config = DaemonConfig::new(state_dir());
            config.role = Role::Embedded;
            config.device = g.device;
            // This process is the user's own: weights files may be anywhere they can read.
            config.weights_root = Some(PathBuf::from("/"));
            let d = oneiro_daemon::spawn(config, ([127, 0, 0, 1], 0).into()).await?;
            (d.endpoint(), Some(d))
        }
    };
    let ca = match &g.tls_ca {
        Some(p) => Some(files::read(p)?),
        None => None,
    };
    let mut client = Client::connect_with(&endpoint, token, ca.as_deref()).await?;
    let in_process = embedded.is_some();
    let work = async {
        match command {
            Command::Text(t) => text::run(&mut client, t).await,
            Command::Vae(v) => vae::run(&mut client, v).await,
            Command::Gan(g) => gan::run(&mut client, g).await,
            Command::Dream(d) => dream::run(&mut client, d, in_process).await,
            Command::Style(s) => style::run(&mut client, s, in_process).await,
            Command::Models(m) => models::run(&mut client, m).await,
            Command::Info(i) => info::run(&mut client, i).await,
            Command::Jobs(j) => jobs::run(&mut client, j).await,
            Command::Bench(_) => unreachable!("handled before the runtime starts"),
        }
    };
    let result = match &embedded {
        // Ctrl-C with the engine in-process: let trainings checkpoint before exiting.
        Some(_) => tokio::select! {
            r = work => r,
            _ = tokio::signal::ctrl_c() => {
                eprintln!("interrupted: checkpointing; `oneiro jobs list` shows the job to resume");
                Ok(())
            }
        },
        None => work.await,
    };
    if let Some(d) = embedded {
        d.shutdown().await?;
    }
    result
}

/// The proto's encoding of the CLI's `--divergence-factor`: unset 0, off negative.
fn divergence_factor(f: Option<f32>) -> f32 {
    match f {
        Some(f) if f <= 0.0 => -1.0,
        Some(f) => f,
        None => 0.0,
    }
}

/// A proto enum's value name without its type prefix, lower-case: the spelling scripts
/// see in `--json` output and people see in tables ("char_lstm", "running").
fn enum_name(name: &str, prefix: &str) -> String {
    name.strip_prefix(prefix).unwrap_or(name).to_lowercase()
}

/// Prints one JSON document on stdout, pretty (people read it too; `jq` does not care).
fn print_json(v: &serde_json::Value) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// A float reported by the daemon as JSON, in its shortest decimal form: widening the
/// f32 directly would print 0.1 as 0.10000000149011612. Non-finite values become null.
fn json_f32(x: f32) -> serde_json::Value {
    x.to_string()
        .parse::<f64>()
        .ok()
        .and_then(serde_json::Number::from_f64)
        .map_or(serde_json::Value::Null, serde_json::Value::Number)
}
