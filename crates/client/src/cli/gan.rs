//! `oneiro gan ...`: the DCGAN on CIFAR-10 frogs or the user's own images.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Subcommand};
use oneiro_client::{Client, pb};

use super::files::{folder_images, write};
use super::render::follow;

const DEFAULT_MODEL: &str = "frog-gan";

#[derive(Subcommand, Debug)]
pub enum GanCommand {
    /// Train a DCGAN (created on first use): CIFAR-10 class 6 (frog) from the hub by
    /// default, --data DIR with the binary batches, or --images DIR of your own pictures.
    Train(GanTrainArgs),
    /// A PNG grid of generated images.
    Sample {
        #[arg(long, default_value = DEFAULT_MODEL)]
        model: String,
        #[arg(long, default_value_t = 64)]
        count: u32,
        /// Seed of the latent points, for a reproducible grid.
        #[arg(long)]
        seed: Option<u64>,
        #[arg(short, long, default_value = "samples.png")]
        output: PathBuf,
    },
}

#[derive(Args, Debug)]
pub struct GanTrainArgs {
    #[arg(long, default_value = DEFAULT_MODEL)]
    model: String,
    /// CIFAR-10's binary batches (data_batch_*.bin), read here and sent to the daemon.
    #[arg(long)]
    data: Option<PathBuf>,
    /// A folder of PNG/JPEG/GIF images of any size (resized to 32×32), sent to the daemon.
    #[arg(long, conflicts_with = "data")]
    images: Option<PathBuf>,
    /// A directory on the daemon's machine (binary batches or images; under --corpus-root).
    #[arg(long, conflicts_with_all = ["data", "images"])]
    server_data: Option<String>,
    /// Hub dataset in CIFAR-10's parquet layout, fetched by the daemon.
    #[arg(long, default_value = "uoft-cs/cifar10")]
    hub_repo: String,
    /// The daemon uses only its hub cache.
    #[arg(long, env = "ONEIRO_OFFLINE", value_parser = clap::builder::BoolishValueParser::new())]
    offline: bool,
    /// CIFAR-10 class (6 is frog).
    #[arg(long, default_value_t = 6)]
    class: u32,
    #[arg(long, default_value_t = 10_000)]
    steps: u32,
    #[arg(long, default_value_t = 20)]
    batch_size: u32,
    /// Report, save pictures and checkpoint every N steps.
    #[arg(long, default_value_t = 100)]
    sample_every: u32,
    #[arg(long, default_value_t = 16)]
    sample_count: u32,
    #[arg(long)]
    discriminator_lr: Option<f32>,
    #[arg(long)]
    generator_lr: Option<f32>,
    #[arg(long)]
    seed: Option<u64>,
    /// Write the generated and real pictures here.
    #[arg(long)]
    out_dir: Option<PathBuf>,
    /// Print the job id and return; the daemon trains on (needs --endpoint).
    #[arg(long)]
    pub detach: bool,
    /// Latent dimension, for a new model [32].
    #[arg(long)]
    latent_dim: Option<u32>,
    /// Discriminator dropout, for a new model [0.4] (the book's advice against a
    /// discriminator that wins too easily: raise it).
    #[arg(long)]
    dropout: Option<f32>,
}

pub async fn run(client: &mut Client, cmd: GanCommand) -> Result<()> {
    match cmd {
        GanCommand::Train(a) => train(client, a).await,
        GanCommand::Sample {
            model,
            count,
            seed,
            output,
        } => {
            let img = client
                .gan_sample(pb::GanSampleRequest {
                    model,
                    count: Some(count),
                    seed,
                    latents: vec![],
                })
                .await?;
            write(&output, &img.png)?;
            println!("{}×{} grid: {}", img.width, img.height, output.display());
            Ok(())
        }
    }
}

async fn train(client: &mut Client, a: GanTrainArgs) -> Result<()> {
    use pb::image_data::Source;
    let source = match (&a.data, &a.images, &a.server_data) {
        (Some(dir), _, _) => {
            let set = oneiro_trainer::cifar::load_batches(dir, a.class.min(255) as u8)?;
            let images = (0..set.count)
                .map(|i| {
                    oneiro_trainer::imageio::encode_png(&set.interleaved(i), 32, 32, 3)
                        .map_err(anyhow::Error::from)
                })
                .collect::<Result<Vec<_>>>()?;
            Source::Inline(pb::InlineImages {
                images,
                names: vec![],
            })
        }
        (None, Some(dir), _) => Source::Inline(folder_images(dir)?),
        (None, None, Some(dir)) => Source::ServerDir(dir.clone()),
        (None, None, None) => Source::Hub(pb::HubDataset {
            repo: a.hub_repo.clone(),
            revision: String::new(),
            offline: a.offline,
        }),
    };
    let req = pb::TrainRequest {
        model: a.model,
        create_if_missing: true,
        stop_on_disconnect: false,
        create_config: Some(pb::train_request::CreateConfig::Gan(pb::GanConfig {
            latent_dim: a.latent_dim,
            dropout: a.dropout,
            ..Default::default()
        })),
        options: Some(pb::TrainOptions {
            steps: Some(a.steps),
            batch_size: Some(a.batch_size),
            sample_every: Some(a.sample_every),
            sample_count: Some(a.sample_count),
            discriminator_lr: a.discriminator_lr,
            generator_lr: a.generator_lr,
            seed: a.seed,
            ..Default::default()
        }),
        data: Some(pb::train_request::Data::Images(pb::ImageData {
            source: Some(source),
            class_label: Some(a.class),
        })),
    };
    follow(client.train(req).await?, a.detach, a.out_dir.as_deref()).await
}
