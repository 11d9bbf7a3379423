//! `oneiro style`: neural style transfer on VGG19 with L-BFGS.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use oneiro_client::{Client, pb};

use super::dream::WeightsArgs;
use super::files;
use super::render::{finish, progress_line};

#[derive(Args, Debug)]
pub struct StyleArgs {
    /// The picture whose content is kept.
    content: PathBuf,
    /// The picture whose style is taken.
    style: PathBuf,
    #[arg(short, long, default_value = "styled.png")]
    output: PathBuf,
    #[arg(long)]
    content_weight: Option<f32>,
    #[arg(long)]
    style_weight: Option<f32>,
    /// Total-variation weight.
    #[arg(long)]
    tv_weight: Option<f32>,
    /// L-BFGS rounds (an image per round) [20].
    #[arg(long)]
    rounds: Option<u32>,
    /// L-BFGS iterations per round [15].
    #[arg(long)]
    iterations: Option<u32>,
    /// Height of the result; the width keeps the content's aspect [400].
    #[arg(long)]
    height: Option<u32>,
    /// Content layer [block5_conv2].
    #[arg(long)]
    content_layer: Option<String>,
    /// Style layers, comma-separated [block1_conv1,...,block5_conv1].
    #[arg(long, value_delimiter = ',')]
    style_layers: Vec<String>,
    /// Also write each round's image here (round_NN.png).
    #[arg(long)]
    save_rounds: Option<PathBuf>,
    /// Seed of --random-weights.
    #[arg(long)]
    seed: Option<u64>,
    #[command(flatten)]
    weights: WeightsArgs,
}

fn describe(l: &pb::StyleLoss) -> String {
    format!(
        "loss {:.4e} (content {:.3e}, style {:.3e}, variation {:.3e})",
        l.total, l.content, l.style, l.total_variation
    )
}

pub async fn run(client: &mut Client, a: StyleArgs, embedded: bool) -> Result<()> {
    let req = pb::StyleRequest {
        content_image: files::read(&a.content)?,
        style_image: files::read(&a.style)?,
        content_weight: a.content_weight,
        style_weight: a.style_weight,
        total_variation_weight: a.tv_weight,
        rounds: a.rounds,
        iterations: a.iterations,
        height: a.height,
        content_layer: a.content_layer.clone().unwrap_or_default(),
        style_layers: a.style_layers.clone(),
        weights: Some(a.weights.to_proto(a.seed, embedded)?),
    };
    if let Some(dir) = &a.save_rounds {
        files::create_dir(dir)?;
    }
    let mut stream = client.style(req).await?;
    let mut bar: Option<ProgressBar> = None;
    let mut last: Option<pb::Image> = None;
    while let Some(ev) = stream.message().await? {
        use pb::style_event::Event;
        match ev.event {
            Some(Event::Start(s)) => {
                eprintln!("{}", s.weights);
                eprintln!("loss weights: {}", s.loss_weights);
                eprintln!(
                    "{}x{} (height x width), weights content {} style {} variation {}; start: {}",
                    s.height,
                    s.width,
                    s.content_weight,
                    s.style_weight,
                    s.total_variation_weight,
                    s.initial_loss.as_ref().map(describe).unwrap_or_default()
                );
                let b = ProgressBar::new(a.rounds.unwrap_or(20) as u64);
                b.set_style(ProgressStyle::with_template(
                    "{bar:30} round {pos}/{len} {msg}",
                )?);
                bar = Some(b);
            }
            Some(Event::Round(r)) => {
                let img = r.image.unwrap_or_default();
                let line = format!(
                    "round {}: {} after {} iterations, {} evaluations",
                    r.round,
                    r.loss.as_ref().map(describe).unwrap_or_default(),
                    r.iterations,
                    r.evaluations
                );
                progress_line(bar.as_ref(), r.round as u64 + 1, line);
                if let Some(dir) = &a.save_rounds {
                    let p = dir.join(format!("round_{:02}.png", r.round));
                    files::write(&p, &img.png)?;
                }
                last = Some(img);
            }
            None => {}
        }
    }
    finish(bar, last, &a.output, "transfer")
}
