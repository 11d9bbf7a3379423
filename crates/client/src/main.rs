//! `oneiro`: the command-line client. With `--endpoint` it drives a (possibly remote)
//! `oneirod`; without, it starts the same engine in-process on a loopback port and
//! drives that, so one command needs no second process.

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use oneiro_client::{BearerToken, Client, corpus, pb};
use oneiro_daemon::DaemonConfig;
use oneiro_daemon::device::DeviceSpec;

mod dream_cli;
mod gan_cli;
mod style_cli;
mod vae_cli;

#[derive(Parser, Debug)]
#[command(
    name = "oneiro",
    version,
    about = "Train and sample generative models with the Oneiro engine"
)]
struct Cli {
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
    device: DeviceSpec,
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
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Character-level LSTM text generation.
    #[command(subcommand)]
    Text(TextCommand),
    /// Convolutional VAE on MNIST: training, latent grid, encode/decode, concept vectors.
    #[command(subcommand)]
    Vae(vae_cli::VaeCommand),
    /// DCGAN on CIFAR-10 frogs (or your images): adversarial training, samples.
    #[command(subcommand)]
    Gan(gan_cli::GanCommand),
    /// DeepDream on InceptionV3 (the book's defaults; weights from the hub on first use).
    Dream(dream_cli::DreamArgs),
    /// Neural style transfer on VGG19 with L-BFGS (the book's defaults).
    Style(style_cli::StyleArgs),
    /// The daemon's version, device and limits.
    Info,
    /// Training jobs on the daemon.
    #[command(subcommand)]
    Jobs(JobsCommand),
    /// Benchmarks, timed like ../shared/peers (one JSON line each).
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Subcommand, Debug)]
enum TextCommand {
    /// Train a model (created on first use) and print samples after every epoch.
    Train(TrainArgs),
    /// Generate text; characters are printed as they are drawn.
    Generate(GenerateArgs),
    /// List the models.
    List,
    /// Show one model.
    Describe { name: String },
    /// Delete a model and its checkpoints.
    Delete { name: String },
    /// Load a model onto the daemon's device ahead of use (models stay resident anyway).
    Load { name: String },
    /// Free a model's device memory.
    Unload { name: String },
}

#[derive(Subcommand, Debug)]
enum JobsCommand {
    /// Jobs with their state, progress and latest loss.
    List,
    /// Follow a job (its recent events first).
    Watch { job_id: String },
    /// Stop a job at its next step (a checkpoint is written first).
    Cancel { job_id: String },
    /// Continue an interrupted, cancelled or failed job from its last checkpoint.
    Resume {
        job_id: String,
        /// Print the job id and return instead of following it.
        #[arg(long)]
        detach: bool,
    },
}

#[derive(Args, Debug)]
struct TrainArgs {
    /// Model name (1-64 characters of A-Z a-z 0-9 . _ -).
    #[arg(long)]
    model: String,
    /// UTF-8 text file to train on [default: the book's Nietzsche corpus, downloaded once].
    #[arg(long)]
    corpus: Option<PathBuf>,
    /// A corpus file on the daemon's machine instead of one sent from here.
    #[arg(long, conflicts_with = "corpus")]
    server_corpus: Option<String>,
    /// Never download the default corpus.
    #[arg(long, env = "ONEIRO_OFFLINE")]
    offline: bool,
    #[arg(long, default_value_t = 1)]
    epochs: u32,
    #[arg(long, default_value_t = 128)]
    batch_size: u32,
    /// RMSprop learning rate [default: the model's, else 0.01].
    #[arg(long)]
    learning_rate: Option<f32>,
    /// Fraction of windows held out to report a validation loss.
    #[arg(long, default_value_t = 0.0)]
    validation_split: f32,
    /// Seed of initialisation, shuffling and samples [default: the model's, else random].
    #[arg(long)]
    seed: Option<u64>,
    /// Temperatures of the per-epoch samples.
    #[arg(long, value_delimiter = ',', default_values_t = vec![0.2f32, 0.5, 1.0, 1.2])]
    temperatures: Vec<f32>,
    /// Characters per sample.
    #[arg(long, default_value_t = 400)]
    sample_length: u32,
    /// Skip the per-epoch samples.
    #[arg(long)]
    no_samples: bool,
    /// Also checkpoint every N steps inside an epoch (0: at epoch ends only).
    #[arg(long, default_value_t = 0)]
    checkpoint_every: u32,
    /// Stop when the loss exceeds this factor of the best epoch loss (0: never) [4].
    #[arg(long)]
    divergence_factor: Option<f32>,
    /// Print the job id and return; the daemon trains on (needs --endpoint).
    #[arg(long)]
    detach: bool,
    /// Window length, for a new model [60].
    #[arg(long)]
    maxlen: Option<u32>,
    /// Window stride, for a new model [3].
    #[arg(long)]
    step: Option<u32>,
    /// LSTM units, for a new model [128].
    #[arg(long)]
    hidden: Option<u32>,
    /// Keep the corpus' case, for a new model (the book lower-cases).
    #[arg(long)]
    keep_case: bool,
}

#[derive(Args, Debug)]
struct GenerateArgs {
    #[arg(long)]
    model: String,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.5, allow_negative_numbers = true)]
    temperature: f32,
    /// Characters to generate.
    #[arg(long, default_value_t = 400)]
    length: u32,
    /// Text to continue [default: a window of the training corpus].
    #[arg(long, default_value = "")]
    seed_text: String,
    /// RNG seed, for reproducible output.
    #[arg(long)]
    seed: Option<u64>,
}

#[derive(Subcommand, Debug)]
#[allow(clippy::enum_variant_names)] // the names are the peers' workload names
enum BenchCommand {
    /// One training step of the book's text model (batch 128, maxlen 60, LSTM 128).
    TextTrain(BenchArgs),
    /// The book's generation loop (400 characters, 60-character windows).
    TextGenerate(BenchArgs),
    /// One training step of the book's VAE (batch 16, 28×28, latent 2).
    VaeTrain(BenchArgs),
    /// One adversarial step of the book's DCGAN (batch 20, 32×32, latent 32).
    GanTrain(BenchArgs),
    /// One DeepDream ascent step on InceptionV3 up to mixed5 (seeded random weights).
    DreamStep(SizedBenchArgs),
    /// One style-transfer loss and gradient evaluation on VGG19 (seeded random weights).
    StyleEval(SizedBenchArgs),
    /// Corpus preparation: characters, windows and peak memory.
    TextPrepare {
        #[arg(long)]
        corpus: PathBuf,
    },
}

#[derive(Args, Debug)]
struct BenchArgs {
    /// CPU threads (the peers use 2).
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Timed steps (text-train: batches; text-generate: characters) [30 / 400].
    #[arg(long)]
    steps: Option<usize>,
}

#[derive(Args, Debug)]
struct SizedBenchArgs {
    #[command(flatten)]
    common: BenchArgs,
    /// Image size HEIGHTxWIDTH [dream-step 299x299, style-eval 128x192].
    #[arg(long, value_parser = parse_size)]
    size: Option<(usize, usize)>,
}

fn parse_size(s: &str) -> Result<(usize, usize), String> {
    let (h, w) = s
        .split_once('x')
        .ok_or_else(|| format!("{s:?} is not HEIGHTxWIDTH"))?;
    let p = |v: &str| {
        v.trim()
            .parse::<usize>()
            .ok()
            .filter(|&n| (1..=8192).contains(&n))
            .ok_or_else(|| format!("{v:?} in {s:?} is not a size from 1 to 8192"))
    };
    Ok((p(h)?, p(w)?))
}

fn main() -> std::process::ExitCode {
    oneiro_daemon::allocator::keep_freed_memory();
    match real_main() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", describe(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

/// A gRPC status as its message and code; anything else with its causes.
fn describe(e: &anyhow::Error) -> String {
    let status = e
        .downcast_ref::<oneiro_client::ClientError>()
        .and_then(|c| match c {
            oneiro_client::ClientError::Status(s) => Some(s),
            _ => None,
        })
        .or_else(|| e.downcast_ref::<tonic::Status>());
    match status {
        Some(s) => format!("{} ({:?})", s.message(), s.code()),
        None => format!("{e:#}"),
    }
}

fn real_main() -> Result<()> {
    let cli = Cli::parse();
    if let Command::Bench(b) = &cli.command {
        return bench(b, cli.device);
    }
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(cli))
}

async fn run(cli: Cli) -> Result<()> {
    let detach = match &cli.command {
        Command::Text(TextCommand::Train(a)) => a.detach,
        Command::Vae(vae_cli::VaeCommand::Train(a)) => a.detach,
        Command::Gan(gan_cli::GanCommand::Train(a)) => a.detach,
        Command::Jobs(JobsCommand::Resume { detach, .. }) => *detach,
        _ => false,
    };
    if detach && cli.endpoint.is_none() {
        bail!(
            "--detach needs --endpoint: without a daemon the engine stops when this command does"
        );
    }
    let token = match (&cli.token, &cli.token_file) {
        (Some(t), _) => BearerToken::new(t)?,
        (None, Some(f)) => {
            let t = std::fs::read_to_string(f)
                .with_context(|| format!("cannot read token file {}", f.display()))?;
            BearerToken::new(t.trim())?
        }
        (None, None) => BearerToken::default(),
    };
    // Without an endpoint: the engine in-process, on a loopback port only we know.
    let (endpoint, embedded) = match &cli.endpoint {
        Some(e) => (e.clone(), None),
        None => {
            let mut config = DaemonConfig::new(
                cli.state_dir
                    .clone()
                    .unwrap_or_else(oneiro_daemon::config::default_state_dir),
            );
            config.device = cli.device;
            // This process is the user's own: weights files may be anywhere they can read.
            config.weights_root = Some(PathBuf::from("/"));
            let d = oneiro_daemon::spawn(config, ([127, 0, 0, 1], 0).into()).await?;
            (d.endpoint(), Some(d))
        }
    };
    let ca = match &cli.tls_ca {
        Some(p) => Some(std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?),
        None => None,
    };
    let mut client = Client::connect_with(&endpoint, token, ca.as_deref()).await?;
    let work = async {
        match cli.command {
            Command::Text(t) => text(&mut client, t).await,
            Command::Vae(v) => vae_cli::run(&mut client, v).await,
            Command::Gan(g) => gan_cli::run(&mut client, g).await,
            Command::Dream(d) => dream_cli::run(&mut client, d, embedded.is_some()).await,
            Command::Style(s) => style_cli::run(&mut client, s, embedded.is_some()).await,
            Command::Jobs(j) => jobs(&mut client, j).await,
            Command::Info => {
                let i = client.info().await?;
                let l = i.limits.unwrap_or_default();
                println!(
                    "oneirod {} on {} ({}){}",
                    i.version,
                    i.device,
                    i.dtype,
                    if i.auth_required {
                        ", token required"
                    } else {
                        ""
                    }
                );
                println!(
                    "limits: generate ≤ {} chars, request ≤ {} bytes, corpus ≤ {} bytes, queue {}",
                    l.max_generate_length, l.max_request_bytes, l.max_corpus_bytes, l.queue_depth
                );
                println!(
                    "now: {} queued, {} training jobs active",
                    i.queued, i.active_jobs
                );
                for b in &i.backbones {
                    println!(
                        "{}: default weights {}, input {}",
                        b.network, b.default_weights, b.preprocessing
                    );
                }
                Ok(())
            }
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

/// Prints a job's events: progress bar, epoch lines, samples, the outcome. Pictures
/// (the VAE's latent grid) are written under `images` when given.
async fn follow(
    mut stream: tonic::Streaming<pb::TrainEvent>,
    detach: bool,
    images: Option<&std::path::Path>,
) -> Result<()> {
    let mut bar: Option<ProgressBar> = None;
    let mut total_epochs = 0;
    let style = ProgressStyle::with_template("epoch {prefix} [{bar:30}] {pos}/{len} {msg}")
        .expect("valid template")
        .progress_chars("=> ");
    use pb::train_event::Event;
    while let Some(ev) = stream.message().await? {
        match ev.event {
            Some(Event::Accepted(a)) => {
                eprintln!("job {} training {}", ev.job_id, a.model);
                if detach {
                    println!("{}", ev.job_id);
                    return Ok(());
                }
            }
            Some(Event::Started(s)) => {
                total_epochs = s.first_epoch + s.epochs - 1;
                let resumed = if s.first_step > 0 {
                    format!(
                        ", resuming epoch {} at step {}",
                        s.first_epoch, s.first_step
                    )
                } else {
                    String::new()
                };
                if s.vocab_size == 0 {
                    eprintln!(
                        "training {} on {}: {} images ({} for validation), {} steps per epoch{resumed}",
                        s.model,
                        s.device,
                        s.train_sequences,
                        s.validation_sequences,
                        s.steps_per_epoch
                    );
                } else {
                    eprintln!(
                        "training {} on {}: {} sequences ({} held out), vocabulary {}, {} steps per epoch{resumed}",
                        s.model,
                        s.device,
                        s.train_sequences,
                        s.validation_sequences,
                        s.vocab_size,
                        s.steps_per_epoch
                    );
                }
            }
            Some(Event::Batch(b)) => {
                let p = bar.get_or_insert_with(|| {
                    let p = ProgressBar::new(b.steps_per_epoch as u64).with_style(style.clone());
                    p.set_prefix(format!("{}/{}", b.epoch, total_epochs));
                    p.enable_steady_tick(Duration::from_millis(200));
                    p
                });
                p.set_position(b.step as u64);
                p.set_message(format!(
                    "loss {:.4}  {:.0} seq/s",
                    b.loss, b.sequences_per_second
                ));
            }
            Some(Event::EpochEnd(e)) => {
                if let Some(p) = bar.take() {
                    p.finish_and_clear();
                }
                let mut val = e
                    .val_loss
                    .map(|v| format!("  val_loss {v:.4}"))
                    .unwrap_or_default();
                if let (Some(r), Some(k)) = (e.reconstruction_loss, e.kl_loss) {
                    val.push_str(&format!("  (reconstruction {r:.4} + KL {k:.5}"));
                    if let (Some(vr), Some(vk)) = (e.val_reconstruction_loss, e.val_kl_loss) {
                        val.push_str(&format!("; validation {vr:.4} + {vk:.5}"));
                    }
                    val.push(')');
                }
                println!(
                    "epoch {}/{}  loss {:.4}{}  ({:.1}s)",
                    e.epoch, total_epochs, e.loss, val, e.seconds
                );
            }
            Some(Event::Sample(s)) => {
                println!(
                    "--- temperature {}\n{}{}\n",
                    s.temperature, s.seed_text, s.text
                );
            }
            Some(Event::Gan(g)) => {
                if let Some(p) = bar.take() {
                    p.finish_and_clear();
                }
                println!(
                    "step {:>6}  discriminator loss {:.4} (right {:.0}%)  adversarial loss {:.4}  lr {:.2e}/{:.2e}",
                    g.step,
                    g.discriminator_loss,
                    100.0 * g.discriminator_accuracy,
                    g.adversarial_loss,
                    g.discriminator_lr,
                    g.generator_lr
                );
                if !g.warning.is_empty() {
                    eprintln!("warning: {}", g.warning);
                }
                if let Some(dir) = images {
                    std::fs::create_dir_all(dir)
                        .with_context(|| format!("cannot create {}", dir.display()))?;
                    for (what, png) in [("generated", &g.generated_png), ("real", &g.real_png)] {
                        let path = dir.join(format!("step{:06}-{what}.png", g.step));
                        std::fs::write(&path, png)
                            .with_context(|| format!("cannot write {}", path.display()))?;
                    }
                }
            }
            Some(Event::Image(i)) => match images {
                Some(dir) => {
                    std::fs::create_dir_all(dir)
                        .with_context(|| format!("cannot create {}", dir.display()))?;
                    let slug: String = i
                        .caption
                        .chars()
                        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
                        .collect();
                    let path = dir.join(format!("epoch{:04}-{slug}.png", i.epoch));
                    std::fs::write(&path, &i.png)
                        .with_context(|| format!("cannot write {}", path.display()))?;
                    println!("{}: {}", i.caption, path.display());
                }
                None => {
                    tracing::info!(caption = %i.caption, bytes = i.png.len(), "picture (not saved)")
                }
            },
            Some(Event::Checkpoint(c)) => {
                tracing::info!(checkpoint = %c.checkpoint, step = c.step, "checkpoint written")
            }
            Some(Event::Finished(f)) if f.epochs_trained == 0 => {
                // A GAN job counts steps, reported by its progress events.
                println!(
                    "done: final adversarial loss {:.4} ({:.1}s)",
                    f.final_loss, f.seconds
                );
            }
            Some(Event::Finished(f)) => {
                println!(
                    "done: {} epochs trained, final loss {:.4} ({:.1}s)",
                    f.epochs_trained, f.final_loss, f.seconds
                );
            }
            Some(Event::Stopped(s)) => {
                if let Some(p) = bar.take() {
                    p.abandon();
                }
                let state = pb::JobState::try_from(s.state)
                    .map(|s| s.as_str_name())
                    .unwrap_or("?");
                eprintln!("job {} stopped ({state}): {}", ev.job_id, s.reason);
            }
            None => {}
        }
    }
    Ok(())
}

async fn jobs(client: &mut Client, cmd: JobsCommand) -> Result<()> {
    match cmd {
        JobsCommand::List => {
            let jobs = client.list_jobs().await?;
            if jobs.is_empty() {
                println!("no jobs");
            }
            for j in jobs {
                let state = pb::JobState::try_from(j.state)
                    .map(|s| {
                        s.as_str_name()
                            .trim_start_matches("JOB_STATE_")
                            .to_lowercase()
                    })
                    .unwrap_or_default();
                let loss = j.last_loss.map_or("-".into(), |l| format!("{l:.4}"));
                println!(
                    "{}  {:<12} {:<20} epoch {}/{} step {}/{}  loss {}  {}",
                    j.job_id,
                    state,
                    j.model,
                    j.epoch,
                    j.target_epoch,
                    j.step,
                    j.steps_per_epoch,
                    loss,
                    j.message
                );
            }
            Ok(())
        }
        JobsCommand::Watch { job_id } => {
            follow(client.watch_job(&job_id).await?, false, None).await
        }
        JobsCommand::Cancel { job_id } => {
            let j = client.cancel_job(&job_id).await?;
            println!(
                "cancelling {} (stops at its next step, after a checkpoint)",
                j.job_id
            );
            Ok(())
        }
        JobsCommand::Resume { job_id, detach } => {
            follow(client.resume_job(&job_id).await?, detach, None).await
        }
    }
}

async fn text(client: &mut Client, cmd: TextCommand) -> Result<()> {
    match cmd {
        TextCommand::Train(a) => train(client, a).await,
        TextCommand::Generate(a) => {
            let mut stream = client
                .generate(pb::GenerateRequest {
                    model: a.model,
                    seed_text: a.seed_text,
                    temperature: Some(a.temperature),
                    length: a.length,
                    seed: a.seed,
                })
                .await?;
            let mut out = std::io::stdout().lock();
            while let Some(chunk) = stream.message().await? {
                if !chunk.seed_text.is_empty() {
                    eprintln!("seed: {:?}", chunk.seed_text);
                }
                out.write_all(chunk.text.as_bytes())?;
                out.flush()?;
            }
            writeln!(out)?;
            Ok(())
        }
        TextCommand::List => {
            let models = client.list_models().await?;
            if models.is_empty() {
                println!("no models yet: `oneiro text train --model NAME` creates one");
            }
            for m in models {
                let loss = m
                    .loss_history
                    .last()
                    .map_or("-".to_string(), |l| format!("{l:.4}"));
                println!(
                    "{:<24} epochs {:>4}  loss {:>8}  vocab {:>4}  params {}",
                    m.name, m.epochs_trained, loss, m.vocab_size, m.parameters
                );
            }
            Ok(())
        }
        TextCommand::Describe { name } => {
            let m = client.describe_model(&name).await?;
            println!("{m:#?}");
            Ok(())
        }
        TextCommand::Load { name } => {
            let r = client.load_model(&name).await?;
            println!(
                "{name} loaded; resident: {} ({} of {} bytes)",
                r.resident_models.join(", "),
                r.resident_bytes,
                r.memory_budget_bytes
            );
            Ok(())
        }
        TextCommand::Unload { name } => {
            let r = client.unload_model(&name).await?;
            println!(
                "{name} {}; resident: {}",
                if r.was_resident {
                    "unloaded"
                } else {
                    "was not loaded"
                },
                r.resident_models.join(", ")
            );
            Ok(())
        }
        TextCommand::Delete { name } => {
            client.delete_model(&name).await?;
            println!("deleted {name}");
            Ok(())
        }
    }
}

async fn train(client: &mut Client, a: TrainArgs) -> Result<()> {
    let source = match (&a.corpus, &a.server_corpus) {
        (_, Some(p)) => pb::text_corpus::Source::ServerPath(p.clone()),
        (Some(path), None) => pb::text_corpus::Source::Text(read_corpus(path)?),
        (None, None) => {
            let path = corpus::nietzsche(&corpus::cache_dir(), a.offline)?;
            pb::text_corpus::Source::Text(read_corpus(&path)?)
        }
    };
    let req = pb::TrainRequest {
        model: a.model.clone(),
        create_if_missing: true,
        stop_on_disconnect: false,
        create_config: Some(pb::train_request::CreateConfig::CharLstm(
            pb::CharLstmConfig {
                maxlen: a.maxlen.unwrap_or(0),
                step: a.step.unwrap_or(0),
                hidden: a.hidden.unwrap_or(0),
                lowercase: a.keep_case.then_some(false),
            },
        )),
        options: Some(pb::TrainOptions {
            epochs: a.epochs,
            batch_size: a.batch_size,
            learning_rate: a.learning_rate,
            validation_split: a.validation_split,
            seed: a.seed,
            sample_temperatures: a.temperatures,
            sample_length: a.sample_length,
            no_samples: a.no_samples,
            checkpoint_every_steps: a.checkpoint_every,
            divergence_factor: divergence_factor(a.divergence_factor),
            ..Default::default()
        }),
        data: Some(pb::train_request::Data::Text(pb::TextCorpus {
            source: Some(source),
        })),
    };
    follow(client.train(req).await?, a.detach, None).await
}

/// The proto's encoding of the CLI's `--divergence-factor`: unset 0, off negative.
fn divergence_factor(f: Option<f32>) -> f32 {
    match f {
        Some(f) if f <= 0.0 => -1.0,
        Some(f) => f,
        None => 0.0,
    }
}

fn read_corpus(path: &std::path::Path) -> Result<String> {
    let bytes =
        std::fs::read(path).with_context(|| format!("cannot read corpus {}", path.display()))?;
    String::from_utf8(bytes).map_err(|e| {
        anyhow::anyhow!(
            "corpus {} is not UTF-8 text (invalid byte at offset {})",
            path.display(),
            e.utf8_error().valid_up_to()
        )
    })
}

fn bench(cmd: &BenchCommand, device: DeviceSpec) -> Result<()> {
    use oneiro_trainer::bench;
    let dev = device.open().map_err(anyhow::Error::msg)?;
    let threads = match cmd {
        BenchCommand::TextTrain(a)
        | BenchCommand::TextGenerate(a)
        | BenchCommand::VaeTrain(a)
        | BenchCommand::GanTrain(a) => a.threads,
        BenchCommand::DreamStep(a) | BenchCommand::StyleEval(a) => a.common.threads,
        BenchCommand::TextPrepare { .. } => 1,
    };
    if threads == 0 {
        bail!("--threads must be at least 1");
    }
    // candle sizes its own thread use from the same variable as rayon; set both before
    // any thread exists.
    // SAFETY: single-threaded at this point (no runtime, no pool started yet).
    unsafe { std::env::set_var("RAYON_NUM_THREADS", threads.to_string()) };
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()?;
    let device = oneiro_trainer::text_train::device_name(&dev);
    let version = env!("CARGO_PKG_VERSION");
    let line = match cmd {
        BenchCommand::TextTrain(a) => {
            let s = bench::text_train(&dev, a.steps.unwrap_or(30))?;
            serde_json::json!({"workload": "text-train", "seconds_per_batch": s, "sequences_per_s": 128.0 / s,
                "peer": "oneiro", "version": version, "threads": threads, "device": device})
        }
        BenchCommand::TextGenerate(a) => {
            let s = bench::text_generate(&dev, a.steps.unwrap_or(400))?;
            serde_json::json!({"workload": "text-generate", "seconds_per_char": s, "chars_per_s": 1.0 / s,
                "peer": "oneiro", "version": version, "threads": threads, "device": device})
        }
        BenchCommand::VaeTrain(a) => {
            let s = bench::vae_train(&dev, a.steps.unwrap_or(50))?;
            serde_json::json!({"workload": "vae-train", "seconds_per_batch": s, "images_per_s": 16.0 / s,
                "peer": "oneiro", "version": version, "threads": threads, "device": device})
        }
        BenchCommand::GanTrain(a) => {
            let s = bench::gan_train(&dev, a.steps.unwrap_or(5))?;
            serde_json::json!({"workload": "gan-train", "seconds_per_step": s, "steps_per_s": 1.0 / s,
                "peer": "oneiro", "version": version, "threads": threads, "device": device})
        }
        BenchCommand::DreamStep(a) => {
            let (h, w) = a.size.unwrap_or((299, 299));
            let s = bench::dream_step(&dev, h, w, a.common.steps.unwrap_or(3))?;
            serde_json::json!({"workload": "dream-step", "size": format!("{h}x{w}"), "seconds_per_step": s,
                "peer": "oneiro", "version": version, "threads": threads, "device": device})
        }
        BenchCommand::StyleEval(a) => {
            let (h, w) = a.size.unwrap_or((128, 192));
            let s = bench::style_eval(&dev, h, w, a.common.steps.unwrap_or(3))?;
            serde_json::json!({"workload": "style-eval", "size": format!("{h}x{w}"), "seconds_per_eval": s,
                "peer": "oneiro", "version": version, "threads": threads, "device": device})
        }
        BenchCommand::TextPrepare { corpus } => {
            let text = read_corpus(corpus)?;
            let (chars, windows, peak) = bench::text_prepare(&text)?;
            serde_json::json!({"workload": "text-prepare", "characters": chars, "windows": windows,
                "peak_rss_bytes": peak, "peer": "oneiro", "version": version})
        }
    };
    println!("{line}");
    Ok(())
}
