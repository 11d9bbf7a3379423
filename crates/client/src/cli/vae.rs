//! `oneiro vae ...`: the convolutional VAE on MNIST (train, grid, encode, decode, concept,
//! morph).

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::{Args, Subcommand};
use oneiro_client::{Client, pb};

use super::files::{read, write};
use super::render::follow;

#[derive(Subcommand, Debug)]
pub enum VaeCommand {
    /// Train a VAE (created on first use) on MNIST: from the hub by default, or --data DIR
    /// with the classic IDX files.
    Train(VaeTrainArgs),
    /// The latent grid: decoded digits at standard-normal quantiles of the first two
    /// latent coordinates.
    Grid {
        #[arg(long, default_value = DEFAULT_MODEL)]
        model: String,
        /// Digits per side.
        #[arg(long, default_value_t = 15)]
        size: u32,
        #[arg(short, long, default_value = "grid.png")]
        output: PathBuf,
    },
    /// Latent coordinates (mean and log-variance) of images of any size.
    Encode {
        #[arg(long, default_value = DEFAULT_MODEL)]
        model: String,
        #[arg(required = true)]
        images: Vec<PathBuf>,
    },
    /// Decode one latent point, e.g. `decode 0.5 -1.2`.
    Decode {
        #[arg(long, default_value = DEFAULT_MODEL)]
        model: String,
        #[arg(required = true, allow_negative_numbers = true)]
        coordinates: Vec<f32>,
        #[arg(short, long, default_value = "decoded.png")]
        output: PathBuf,
    },
    /// Move an image along a concept vector: mean code of class --to minus class --from.
    Concept {
        #[arg(long, default_value = DEFAULT_MODEL)]
        model: String,
        #[arg(long)]
        from: u32,
        #[arg(long)]
        to: u32,
        #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
        amount: f32,
        /// The image to edit; without one, only the vector is printed.
        image: Option<PathBuf>,
        #[arg(short, long, default_value = "concept.png")]
        output: PathBuf,
    },
    /// Frames along the latent line between two images: an animated GIF when the
    /// output ends in .gif, else a directory of PNG frames.
    Morph {
        #[arg(long, default_value = DEFAULT_MODEL)]
        model: String,
        from: PathBuf,
        to: PathBuf,
        #[arg(long, default_value_t = 16)]
        frames: u32,
        /// Milliseconds per GIF frame.
        #[arg(long, default_value_t = 100)]
        frame_ms: u32,
        #[arg(short, long, default_value = "morph.gif")]
        output: PathBuf,
    },
}

const DEFAULT_MODEL: &str = "mnist-vae";

#[derive(Args, Debug)]
pub struct VaeTrainArgs {
    #[arg(long, default_value = DEFAULT_MODEL)]
    model: String,
    /// Directory with MNIST's IDX files (gzipped or not), read here and sent to the daemon.
    #[arg(long)]
    data: Option<PathBuf>,
    /// A directory of IDX files on the daemon's machine (under its --corpus-root).
    #[arg(long, conflicts_with = "data")]
    server_data: Option<String>,
    /// Hub dataset in MNIST's parquet layout, fetched by the daemon.
    #[arg(long, default_value = "ylecun/mnist", conflicts_with_all = ["data", "server_data"])]
    hub_repo: String,
    /// The daemon uses only its hub cache.
    #[arg(long, env = "ONEIRO_OFFLINE", value_parser = clap::builder::BoolishValueParser::new())]
    offline: bool,
    #[arg(long, default_value_t = 10)]
    epochs: u32,
    #[arg(long, default_value_t = 16)]
    batch_size: u32,
    /// RMSprop learning rate [default: the model's, else 0.001].
    #[arg(long)]
    learning_rate: Option<f32>,
    /// Seed of initialisation, shuffling and noise [default: the model's, else random].
    #[arg(long)]
    seed: Option<u64>,
    /// Use only the first N training images (0: all).
    #[arg(long, default_value_t = 0)]
    max_train_images: u32,
    /// Use only the first N test images for validation (0: all).
    #[arg(long, default_value_t = 0)]
    max_validation_images: u32,
    /// Side of the latent grid pictured after each epoch.
    #[arg(long, default_value_t = 15)]
    grid_size: u32,
    /// Skip the per-epoch grid.
    #[arg(long)]
    no_grid: bool,
    /// Write the per-epoch grids here.
    #[arg(long)]
    out_dir: Option<PathBuf>,
    /// Also checkpoint every N steps inside an epoch (0: at epoch ends only).
    #[arg(long, default_value_t = 0)]
    checkpoint_every: u32,
    /// Stop when the loss exceeds this factor of the best epoch loss (0: never) [4].
    #[arg(long)]
    divergence_factor: Option<f32>,
    /// Print the job id and return; the daemon trains on (needs --endpoint).
    #[arg(long)]
    pub detach: bool,
    /// Latent dimension, for a new model [2].
    #[arg(long)]
    latent_dim: Option<u32>,
    /// Weight of the KL term, for a new model [0.0005].
    #[arg(long)]
    kl_weight: Option<f32>,
}

fn fmt_vec(v: &[f32]) -> String {
    v.iter()
        .map(|x| format!("{x:.4}"))
        .collect::<Vec<_>>()
        .join(" ")
}

pub async fn run(client: &mut Client, cmd: VaeCommand) -> Result<()> {
    match cmd {
        VaeCommand::Train(a) => train(client, a).await,
        VaeCommand::Grid {
            model,
            size,
            output,
        } => {
            let img = client
                .vae_grid(pb::VaeGridRequest {
                    model,
                    size: Some(size),
                })
                .await?;
            write(&output, &img.png)?;
            println!("{}×{} grid: {}", img.width, img.height, output.display());
            Ok(())
        }
        VaeCommand::Encode { model, images } => {
            let bytes = images.iter().map(|p| read(p)).collect::<Result<Vec<_>>>()?;
            let r = client
                .vae_encode(pb::VaeEncodeRequest {
                    model,
                    images: bytes,
                })
                .await?;
            for (path, c) in images.iter().zip(r.codes) {
                println!(
                    "{}: mean [{}]  log_var [{}]",
                    path.display(),
                    fmt_vec(&c.mean),
                    fmt_vec(&c.log_var)
                );
            }
            Ok(())
        }
        VaeCommand::Decode {
            model,
            coordinates,
            output,
        } => {
            let r = client
                .vae_decode(pb::VaeDecodeRequest {
                    model,
                    points: vec![pb::LatentPoint {
                        values: coordinates,
                    }],
                })
                .await?;
            let Some(img) = r.images.first() else {
                bail!("the daemon returned no image")
            };
            write(&output, &img.png)?;
            println!("{}", output.display());
            Ok(())
        }
        VaeCommand::Concept {
            model,
            from,
            to,
            amount,
            image,
            output,
        } => {
            let bytes = image.as_deref().map(read).transpose()?.unwrap_or_default();
            let r = client
                .vae_concept(pb::VaeConceptRequest {
                    model,
                    from_class: from,
                    to_class: to,
                    vector: None,
                    amount: Some(amount),
                    image: bytes,
                })
                .await?;
            let v = r.vector.map(|v| v.values).unwrap_or_default();
            println!("concept {from} -> {to}: [{}]", fmt_vec(&v));
            if let Some(img) = r.image {
                write(&output, &img.png)?;
                println!("edited image (amount {amount}): {}", output.display());
            }
            Ok(())
        }
        VaeCommand::Morph {
            model,
            from,
            to,
            frames,
            frame_ms,
            output,
        } => {
            let gif = output
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("gif"));
            let r = client
                .vae_morph(pb::VaeMorphRequest {
                    model,
                    from_image: read(&from)?,
                    to_image: read(&to)?,
                    frames: Some(frames),
                    gif,
                    frame_ms: Some(frame_ms),
                })
                .await?;
            if gif {
                write(&output, &r.gif)?;
                println!("{} frames: {}", r.frames.len(), output.display());
            } else {
                for (i, f) in r.frames.iter().enumerate() {
                    write(&output.join(format!("frame{i:03}.png")), &f.png)?;
                }
                println!("{} frames in {}", r.frames.len(), output.display());
            }
            Ok(())
        }
    }
}

async fn train(client: &mut Client, a: VaeTrainArgs) -> Result<()> {
    use pb::digit_data::Source;
    let source = match (&a.data, &a.server_data) {
        (Some(dir), _) => {
            let m = oneiro_trainer::mnist::load_dir(dir)?;
            for (split, what) in [(&m.train, "training"), (&m.test, "test")] {
                if (split.rows, split.cols) != (28, 28) {
                    bail!(
                        "the {what} images in {} are {}×{}; the VAE takes 28×28",
                        dir.display(),
                        split.rows,
                        split.cols
                    );
                }
            }
            Source::Inline(pb::InlineDigits {
                train_images: m.train.images,
                train_labels: m.train.labels,
                test_images: m.test.images,
                test_labels: m.test.labels,
            })
        }
        (None, Some(dir)) => Source::ServerDir(dir.clone()),
        (None, None) => Source::Hub(pb::HubDataset {
            repo: a.hub_repo.clone(),
            revision: String::new(),
            offline: a.offline,
        }),
    };
    let req = pb::TrainRequest {
        model: a.model,
        create_if_missing: true,
        stop_on_disconnect: false,
        create_config: Some(pb::train_request::CreateConfig::Vae(pb::VaeConfig {
            latent_dim: a.latent_dim,
            kl_weight: a.kl_weight,
        })),
        options: Some(pb::TrainOptions {
            epochs: Some(a.epochs),
            batch_size: Some(a.batch_size),
            learning_rate: a.learning_rate,
            seed: a.seed,
            no_samples: a.no_grid,
            checkpoint_every_steps: a.checkpoint_every,
            divergence_factor: super::divergence_factor(a.divergence_factor),
            max_train_images: a.max_train_images,
            max_validation_images: a.max_validation_images,
            grid_size: Some(a.grid_size),
            ..Default::default()
        }),
        data: Some(pb::train_request::Data::Digits(pb::DigitData {
            source: Some(source),
        })),
    };
    follow(client.train(req).await?, a.detach, a.out_dir.as_deref()).await
}
