//! Style-transfer requests: checked and prepared on the async side (decoding, resizing,
//! weights resolution), run on the device worker, streamed back.

use oneiro_proto::v1 as pb;
use oneiro_trainer::imageio;
use oneiro_trainer::vision::Planes;
use oneiro_trainer::vision::backbones::{Network, ResolvedWeights};
use oneiro_trainer::vision::style::{
    STYLE_LAYERS, StyleLoss, StyleOptions, pixels_from_rgb01, pixels_to_rgb01, target_size,
};

use oneiro_trainer::vision::style::{StyleEvent, Stylizer};
use tracing::info_span;

use super::backbone;
use crate::config::DaemonConfig;
use crate::error::ServiceError;
use crate::sources::{decode_image, resolve_weights};
use crate::worker::{Command, DeviceContext, Reply, stream_outcome, streaming_sender};

/// A style transfer ready for the device: both pictures as pixel planes at the generated
/// image's size.
pub struct StylePlan {
    pub content: Planes,
    pub style: Planes,
    pub options: StyleOptions,
    pub weights: ResolvedWeights,
    /// Where the loss weights come from, for the user.
    pub preset: String,
}

/// Checks a request and prepares everything but the network (blocking).
pub fn plan(req: pb::StyleRequest, config: &DaemonConfig) -> Result<StylePlan, ServiceError> {
    let d = StyleOptions::default();
    let mut options = StyleOptions {
        content_weight: req.content_weight.unwrap_or(d.content_weight),
        style_weight: req.style_weight.unwrap_or(d.style_weight),
        total_variation_weight: req
            .total_variation_weight
            .unwrap_or(d.total_variation_weight),
        rounds: req.rounds.map_or(d.rounds, |r| r as usize),
        iterations: req.iterations.map_or(d.iterations, |i| i as usize),
        height: req.height.map_or(d.height, |h| h as usize),
        content_layer: if req.content_layer.trim().is_empty() {
            d.content_layer
        } else {
            req.content_layer.trim().to_string()
        },
        style_layers: if req.style_layers.is_empty() {
            STYLE_LAYERS.iter().map(|s| s.to_string()).collect()
        } else {
            req.style_layers
                .iter()
                .map(|s| s.trim().to_string())
                .collect()
        },
    };
    options.validate()?;
    // The pictures first: a bad upload is refused before a hub download starts.
    let content = decode_image(&req.content_image, "content_image", config)?;
    let style = decode_image(&req.style_image, "style_image", config)?;
    let weights = resolve_weights(Network::Vgg19, req.weights, config)?;
    // The book's loss weights, scaled for the network's input where not given.
    let (content_scale, style_scale) = StyleOptions::book_weights_for(weights.preprocessing);
    let mut preset = Vec::new();
    if req.content_weight.is_none() && content_scale != 1.0 {
        options.content_weight = (d.content_weight as f64 * content_scale) as f32;
        preset.push(format!("content x{content_scale:.4}"));
    }
    if req.style_weight.is_none() && style_scale != 1.0 {
        options.style_weight = (d.style_weight as f64 * style_scale) as f32;
        preset.push(format!("style x{style_scale:.4e}"));
    }
    let preset = if preset.is_empty() {
        "the book's loss weights".to_string()
    } else {
        format!(
            "the book's loss weights scaled for {} input ({}), as for a network that answers like Keras' Caffe VGG19 up to input scale",
            weights.preprocessing.name(),
            preset.join(", ")
        )
    };
    let (h, w) = target_size(
        content.height() as usize,
        content.width() as usize,
        options.height,
    )?;
    if (h * w) as u64 > config.max_image_pixels {
        return Err(ServiceError::InvalidArgument(format!(
            "a {h}x{w} result is more than this daemon's limit of {} pixels (--max-image-pixels): ask for a smaller height",
            config.max_image_pixels
        )));
    }
    let resized = |img: &image::DynamicImage| {
        pixels_from_rgb01(&imageio::to_rgb(img, w as u32, h as u32), w, h)
    };
    Ok(StylePlan {
        content: resized(&content),
        style: resized(&style),
        options,
        weights,
        preset,
    })
}

pub fn loss(p: &StyleLoss) -> pb::StyleLoss {
    pb::StyleLoss {
        total: p.total(),
        content: p.content,
        style: p.style,
        total_variation: p.total_variation,
    }
}

/// Pixel planes (0–255) as a PNG for the wire.
pub fn png(p: &Planes) -> Result<pb::Image, ServiceError> {
    Ok(pb::Image {
        png: imageio::encode_png(&pixels_to_rgb01(p), p.width as u32, p.height as u32, 3)?,
        width: p.width as u32,
        height: p.height as u32,
    })
}

impl StylePlan {
    /// The command that runs the transfer on the device, streaming to `events`.
    pub fn command(self, events: Reply<pb::StyleEvent>) -> Command {
        let span = info_span!(
            "style",
            height = self.content.height,
            width = self.content.width,
            weights = %self.weights.origin
        );
        let uses = super::backbone_key(&self.weights);
        let e = events.clone();
        Command::new("style transfer", span, Some(uses), events, move |ctx| {
            self.run(ctx, &e)
        })
    }

    fn run(
        &self,
        ctx: &mut DeviceContext,
        events: &Reply<pb::StyleEvent>,
    ) -> Result<(), ServiceError> {
        use pb::style_event::Event;
        let net = backbone::<oneiro_models::Vgg19>(ctx, &self.weights)?;
        let o = &self.options;
        let stylizer = Stylizer::new(
            &net,
            self.weights.preprocessing,
            &self.content,
            &self.style,
            o,
            &ctx.device,
        )?;
        let send = streaming_sender(events, |e| pb::StyleEvent { event: Some(e) });
        let initial = stylizer.loss_of(&self.content)?;
        send(Event::Start(pb::StyleStart {
            weights: self.weights.describe(),
            pretrained: self.weights.weights.is_pretrained(),
            preprocessing: self.weights.preprocessing.describe().into(),
            width: self.content.width as u32,
            height: self.content.height as u32,
            content_weight: o.content_weight,
            style_weight: o.style_weight,
            total_variation_weight: o.total_variation_weight,
            initial_loss: Some(loss(&initial)),
            loss_weights: self.preset.clone(),
        }))?;
        let stopping = ctx.stopping.clone();
        let result = stylizer.run(&self.content, &mut |e| {
            if stopping.load(std::sync::atomic::Ordering::Relaxed) {
                return Err(oneiro_trainer::Error::Cancelled(
                    "the daemon is shutting down".into(),
                ));
            }
            let StyleEvent::Round {
                round,
                loss: parts,
                iterations,
                evaluations,
                image,
            } = e;
            let image = png(image).map_err(|e| oneiro_trainer::Error::invalid(e.to_string()))?;
            send(Event::Round(pb::StyleRound {
                round: round as u32,
                loss: Some(loss(&parts)),
                iterations: iterations as u32,
                evaluations: evaluations as u32,
                image: Some(image),
            }))
        });
        stream_outcome(result.map(|_| ()), events)
    }
}
