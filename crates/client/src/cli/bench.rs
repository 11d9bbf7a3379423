//! `oneiro bench ...`: the workloads timed against the peers (../shared/peers), one JSON
//! line each. They run in this process on the chosen device, without a daemon.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::{Args, Subcommand};
use oneiro_daemon::device::DeviceSpec;

use super::files::read_corpus;

#[derive(Subcommand, Debug)]
#[allow(clippy::enum_variant_names)] // the names are the peers' workload names
pub enum BenchCommand {
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
pub struct BenchArgs {
    /// CPU threads (the peers use 2).
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Timed steps (text-train: batches; text-generate: characters) [30 / 400].
    #[arg(long)]
    steps: Option<usize>,
}

#[derive(Args, Debug)]
pub struct SizedBenchArgs {
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

pub fn run(cmd: &BenchCommand, device: DeviceSpec) -> Result<()> {
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
    let device = oneiro_trainer::run::device_name(&dev);
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
