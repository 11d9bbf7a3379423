//! `oneiro text ...`: the character-level LSTM (train, generate), plus the model commands
//! under their original `text` spellings.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Subcommand};
use oneiro_client::{Client, corpus, pb};

use super::files::read_corpus;
use super::models::{self, ModelsCommand};
use super::render::follow;

#[derive(Subcommand, Debug)]
pub enum TextCommand {
    /// Train a model (created on first use) and print samples after every epoch.
    Train(TrainArgs),
    /// Generate text; characters are printed as they are drawn.
    Generate(GenerateArgs),
    // `text list|describe|delete|load|unload` predate `oneiro models` and stay for the
    // scripts that use them.
    #[command(flatten)]
    Models(ModelsCommand),
}

#[derive(Args, Debug)]
pub struct TrainArgs {
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
    #[arg(long, env = "ONEIRO_OFFLINE", value_parser = clap::builder::BoolishValueParser::new())]
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
    pub detach: bool,
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
pub struct GenerateArgs {
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

pub async fn run(client: &mut Client, cmd: TextCommand) -> Result<()> {
    match cmd {
        TextCommand::Train(a) => train(client, a).await,
        TextCommand::Generate(a) => generate(client, a).await,
        TextCommand::Models(m) => models::run(client, m).await,
    }
}

async fn generate(client: &mut Client, a: GenerateArgs) -> Result<()> {
    let mut stream = client
        .generate(pb::GenerateRequest {
            model: a.model,
            seed_text: a.seed_text,
            temperature: Some(a.temperature),
            length: Some(a.length),
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
                maxlen: a.maxlen,
                step: a.step,
                hidden: a.hidden,
                lowercase: a.keep_case.then_some(false),
            },
        )),
        options: Some(pb::TrainOptions {
            epochs: Some(a.epochs),
            batch_size: Some(a.batch_size),
            learning_rate: a.learning_rate,
            validation_split: a.validation_split,
            seed: a.seed,
            sample_temperatures: a.temperatures,
            sample_length: Some(a.sample_length),
            no_samples: a.no_samples,
            checkpoint_every_steps: a.checkpoint_every,
            divergence_factor: super::divergence_factor(a.divergence_factor),
            ..Default::default()
        }),
        data: Some(pb::train_request::Data::Text(pb::TextCorpus {
            source: Some(source),
        })),
    };
    follow(client.train(req).await?, a.detach, None).await
}
