//! DeepDream on InceptionV3 (SPEC §2): the request checked and prepared off the async
//! threads (image decoding, weights resolution, which may download), run on the device,
//! streamed back.

use oneiro_proto::v1 as pb;
use oneiro_trainer::imageio;
use oneiro_trainer::vision::Planes;
use oneiro_trainer::vision::backbones::{Network, ResolvedWeights};
use oneiro_trainer::vision::dream::{DreamEvent, DreamOptions, Dreamer, random_layers};
use tracing::info_span;

use super::backbone;
use crate::config::DaemonConfig;
use crate::error::ServiceError;
use crate::sources::{decode_image, resolve_weights};
use crate::worker::{Command, DeviceContext, Reply, stream_outcome, streaming_sender};

/// A dream ready for the device.
pub struct DreamPlan {
    pub image: Planes,
    pub options: DreamOptions,
    pub weights: ResolvedWeights,
}

fn invalid(msg: String) -> ServiceError {
    ServiceError::InvalidArgument(msg)
}

/// Checks a request and prepares everything but the network (blocking).
pub fn plan(req: pb::DreamRequest, config: &DaemonConfig) -> Result<DreamPlan, ServiceError> {
    let defaults = DreamOptions::default();
    let layers = match (req.random_layers_seed, req.layers.is_empty()) {
        (Some(_), false) => {
            return Err(invalid(
                "give either layers or random_layers_seed, not both".into(),
            ));
        }
        (Some(seed), true) => random_layers(seed),
        (None, true) => defaults.layers.clone(),
        (None, false) => req
            .layers
            .iter()
            .map(|l| (l.name.clone(), l.weight))
            .collect(),
    };
    let options = DreamOptions {
        layers,
        step: req.step.unwrap_or(defaults.step),
        iterations: req.iterations.map_or(defaults.iterations, |i| i as usize),
        max_loss: req.max_loss.unwrap_or(defaults.max_loss),
        octaves: req.octaves.map_or(defaults.octaves, |o| o as usize),
        octave_scale: req.octave_scale.unwrap_or(defaults.octave_scale),
    };
    options.validate()?;
    let img = decode_image(&req.image, "image", config)?;
    let (w, h) = (img.width(), img.height());
    let image = Planes::from_rgb01(&imageio::to_rgb(&img, w, h), w as usize, h as usize);
    let weights = resolve_weights(Network::InceptionV3, req.weights, config)?;
    Ok(DreamPlan {
        image,
        options,
        weights,
    })
}

/// An image for the wire.
pub fn png(p: &Planes) -> Result<pb::Image, ServiceError> {
    Ok(pb::Image {
        png: imageio::encode_png(&p.to_rgb01(), p.width as u32, p.height as u32, 3)?,
        width: p.width as u32,
        height: p.height as u32,
    })
}

impl DreamPlan {
    /// The command that dreams on the device, streaming to `events`.
    pub fn command(self, events: Reply<pb::DreamEvent>) -> Command {
        let span = info_span!(
            "dream",
            height = self.image.height,
            width = self.image.width,
            weights = %self.weights.origin
        );
        let uses = super::backbone_key(&self.weights);
        let e = events.clone();
        Command::new("dream", span, Some(uses), events, move |ctx| {
            self.run(ctx, &e)
        })
    }

    fn run(
        &self,
        ctx: &mut DeviceContext,
        events: &Reply<pb::DreamEvent>,
    ) -> Result<(), ServiceError> {
        use pb::dream_event::Event;
        let net = backbone::<oneiro_models::InceptionV3>(ctx, &self.weights)?;
        let dreamer = Dreamer::new(
            &net,
            self.weights.preprocessing,
            &self.options.layers,
            &ctx.device,
        )?;
        let o = &self.options;
        let send = streaming_sender(events, |e| pb::DreamEvent { event: Some(e) });
        let shapes = oneiro_trainer::vision::dream::octave_shapes(
            self.image.height,
            self.image.width,
            o.octaves,
            o.octave_scale,
        );
        send(Event::Start(pb::DreamStart {
            weights: self.weights.describe(),
            pretrained: self.weights.weights.is_pretrained(),
            preprocessing: self.weights.preprocessing.describe().into(),
            layers: o
                .layers
                .iter()
                .map(|(name, weight)| pb::DreamLayer {
                    name: name.clone(),
                    weight: *weight,
                })
                .collect(),
            octave_sizes: shapes
                .iter()
                .map(|&(h, w)| pb::Image {
                    png: vec![],
                    width: w as u32,
                    height: h as u32,
                })
                .collect(),
        }))?;
        let stopping = ctx.stopping.clone();
        let result = dreamer.dream(&self.image, o, &mut |e| {
            if stopping.load(std::sync::atomic::Ordering::Relaxed) {
                return Err(oneiro_trainer::Error::Cancelled(
                    "the daemon is shutting down".into(),
                ));
            }
            match e {
                DreamEvent::Step {
                    octave,
                    iteration,
                    loss,
                } => send(Event::Step(pb::DreamStep {
                    octave: octave as u32,
                    iteration: iteration as u32,
                    loss,
                })),
                DreamEvent::Octave {
                    octave,
                    image,
                    stopped_early,
                } => {
                    let image =
                        png(image).map_err(|e| oneiro_trainer::Error::invalid(e.to_string()))?;
                    send(Event::Octave(pb::DreamOctave {
                        octave: octave as u32,
                        image: Some(image),
                        stopped_early,
                    }))
                }
            }
        });
        stream_outcome(result.map(|_| ()), events)
    }
}
