//! `oneiro dream`: DeepDream on InceptionV3, and the weight options every pretrained
//! network shares.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use oneiro_client::{Client, pb};

use super::files;
use super::render::{finish, progress_line};

/// Where a pretrained network's weights come from.
#[derive(Args, Debug)]
pub struct WeightsArgs {
    /// A safetensors file in timm's layout (with --endpoint: a path under the daemon's
    /// --weights-root).
    #[arg(long, conflicts_with_all = ["hub_weights", "random_weights"])]
    weights: Option<PathBuf>,
    /// A hub repository with model.safetensors [the network's default timm checkpoint].
    #[arg(long)]
    hub_weights: Option<String>,
    /// A seeded random network instead (NOT pretrained: for trying the pipeline offline).
    #[arg(long)]
    random_weights: bool,
    /// Input scaling, overriding what the weights imply: inception, imagenet or caffe.
    #[arg(long)]
    preprocessing: Option<String>,
}

impl WeightsArgs {
    pub fn to_proto(&self, seed: Option<u64>, embedded: bool) -> Result<pb::BackboneWeights> {
        use pb::backbone_weights::Source;
        let source = if let Some(path) = &self.weights {
            // The in-process engine reads files anywhere; a daemon only under its root.
            let p = if embedded {
                path.canonicalize()
                    .with_context(|| format!("weights file {}", path.display()))?
            } else {
                path.clone()
            };
            Some(Source::ServerFile(p.to_string_lossy().into_owned()))
        } else if self.random_weights {
            Some(Source::RandomSeed(seed.unwrap_or(0)))
        } else {
            self.hub_weights.clone().map(Source::HubRepo)
        };
        Ok(pb::BackboneWeights {
            source,
            preprocessing: self.preprocessing.clone().unwrap_or_default(),
        })
    }
}

#[derive(Args, Debug)]
pub struct DreamArgs {
    /// The image to dream on (PNG, JPEG or GIF, any size).
    image: PathBuf,
    #[arg(short, long, default_value = "dream.png")]
    output: PathBuf,
    /// Layers and coefficients, e.g. mixed2=0.2,mixed3=3 [the book's
    /// mixed2=0.2,mixed3=3,mixed4=2,mixed5=1.5].
    #[arg(long, value_delimiter = ',', value_parser = parse_layer)]
    layers: Vec<(String, f32)>,
    /// Two to four random layers with random coefficients (the book's exploration).
    #[arg(long, conflicts_with = "layers")]
    random_layers: bool,
    /// Seed for --random-layers and --random-weights.
    #[arg(long)]
    seed: Option<u64>,
    /// Scales processed, the original included [4: the original and three smaller, as
    /// in the book].
    #[arg(long)]
    octaves: Option<u32>,
    /// Size ratio between successive octaves [1.4].
    #[arg(long)]
    octave_scale: Option<f32>,
    /// Gradient-ascent step on the normalised gradient, pixels in [-1, 1] [0.01].
    #[arg(long)]
    step: Option<f32>,
    /// Ascent iterations per octave [20].
    #[arg(long)]
    iterations: Option<u32>,
    /// Stop an octave once the loss exceeds this [10].
    #[arg(long)]
    max_loss: Option<f32>,
    /// Also write each octave's image here (at_scale_HxW.png).
    #[arg(long)]
    save_octaves: Option<PathBuf>,
    #[command(flatten)]
    weights: WeightsArgs,
}

fn parse_layer(s: &str) -> Result<(String, f32), String> {
    let (name, w) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not LAYER=WEIGHT"))?;
    let w: f32 = w
        .trim()
        .parse()
        .map_err(|_| format!("{w:?} in {s:?} is not a number"))?;
    Ok((name.trim().to_string(), w))
}

pub async fn run(client: &mut Client, a: DreamArgs, embedded: bool) -> Result<()> {
    let image = files::read(&a.image)?;
    if a.random_layers && a.seed.is_none() && !a.weights.random_weights {
        eprintln!("note: --random-layers without --seed uses seed 0");
    }
    let req = pb::DreamRequest {
        image,
        layers: a
            .layers
            .iter()
            .map(|(name, weight)| pb::DreamLayer {
                name: name.clone(),
                weight: *weight,
            })
            .collect(),
        random_layers_seed: a.random_layers.then(|| a.seed.unwrap_or(0)),
        step: a.step,
        iterations: a.iterations,
        max_loss: a.max_loss,
        octaves: a.octaves,
        octave_scale: a.octave_scale,
        weights: Some(a.weights.to_proto(a.seed, embedded)?),
    };
    if let Some(dir) = &a.save_octaves {
        files::create_dir(dir)?;
    }
    let mut stream = client.dream(req).await?;
    let mut bar: Option<ProgressBar> = None;
    let mut iterations = 0;
    let mut last: Option<pb::Image> = None;
    while let Some(ev) = stream.message().await? {
        use pb::dream_event::Event;
        match ev.event {
            Some(Event::Start(s)) => {
                eprintln!("{}", s.weights);
                let layers: Vec<String> = s
                    .layers
                    .iter()
                    .map(|l| format!("{}={}", l.name, l.weight))
                    .collect();
                let sizes: Vec<String> = s
                    .octave_sizes
                    .iter()
                    .map(|i| format!("{}x{}", i.height, i.width))
                    .collect();
                eprintln!("layers {}; octaves {}", layers.join(","), sizes.join(" → "));
                iterations = a.iterations.unwrap_or(20) as u64;
                let b = ProgressBar::new(iterations * s.octave_sizes.len() as u64);
                b.set_style(ProgressStyle::with_template("{bar:30} {pos}/{len} {msg}")?);
                bar = Some(b);
            }
            Some(Event::Step(s)) => {
                if let Some(b) = &bar {
                    b.set_position(s.octave as u64 * iterations + s.iteration as u64 + 1);
                    b.set_message(format!("octave {} loss {:.3}", s.octave, s.loss));
                }
            }
            Some(Event::Octave(o)) => {
                let img = o.image.unwrap_or_default();
                let line = format!(
                    "octave {} at {}x{}{}",
                    o.octave,
                    img.height,
                    img.width,
                    if o.stopped_early {
                        " (stopped at max loss)"
                    } else {
                        ""
                    }
                );
                progress_line(bar.as_ref(), (o.octave as u64 + 1) * iterations, line);
                if let Some(dir) = &a.save_octaves {
                    let p = dir.join(format!("at_scale_{}x{}.png", img.height, img.width));
                    files::write(&p, &img.png)?;
                }
                last = Some(img);
            }
            None => {}
        }
    }
    finish(bar, last, &a.output, "dream")
}
