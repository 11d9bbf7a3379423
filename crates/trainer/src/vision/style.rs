//! Neural style transfer (Gatys et al., SPEC §3): the pixels of a generated image are
//! optimised with L-BFGS so that its VGG19 features keep the content image's content
//! (block5_conv2) and take on the style image's Gram matrices (block1..5_conv1), with a
//! total-variation term for smoothness.
//!
//! The image is optimised in the book's space, RGB pixels 0–255 (so the total-variation
//! term means what it meant); the network's own preprocessing (Caffe BGR-mean or
//! torchvision mean/std) is applied inside the forward pass. The content features and
//! the style Gram matrices are computed once.

use candle_core::{DType, Device, Tensor, Var};
use oneiro_models::{Preprocessing, Vgg19};

use super::lbfgs::{Objective, minimize};
use super::planes::Planes;
use crate::{Error, Result};

pub const CONTENT_LAYER: &str = "block5_conv2";
pub const STYLE_LAYERS: [&str; 5] = [
    "block1_conv1",
    "block2_conv1",
    "block3_conv1",
    "block4_conv1",
    "block5_conv1",
];

#[derive(Clone, Debug, PartialEq)]
pub struct StyleOptions {
    pub content_weight: f32,
    /// Shared by the style layers: each gets `style_weight / layers`.
    pub style_weight: f32,
    pub total_variation_weight: f32,
    /// Rounds of L-BFGS, each restarted from the last image (an image per round).
    pub rounds: usize,
    /// L-BFGS iterations per round.
    pub iterations: usize,
    /// Height both images are resized to; the width keeps the content image's aspect.
    pub height: usize,
    pub content_layer: String,
    pub style_layers: Vec<String>,
}

impl Default for StyleOptions {
    fn default() -> Self {
        Self {
            content_weight: 0.025,
            style_weight: 1.0,
            total_variation_weight: 1e-4,
            rounds: 20,
            iterations: 15,
            height: 400,
            content_layer: CONTENT_LAYER.into(),
            style_layers: STYLE_LAYERS.iter().map(|s| s.to_string()).collect(),
        }
    }
}

/// The book's loss weights were tuned on Keras' Caffe VGG19, fed 0–255 BGR pixels minus
/// the means. Feature maps of a ReLU network grow linearly with its input's scale, so a
/// network fed torchvision's normalisation (pixels / 255 / std ≈ pixels / 57.6) sees
/// inputs 57.6× smaller: its content term (squared features) shrinks by 57.6², its style
/// term (squared Gram matrices) by 57.6⁴, and the total-variation term (on the 0–255
/// pixels) not at all. Measured on one seeded VGG19 and the same pictures, Caffe vs
/// torchvision scaling: style term 1.065e8 vs 7.68 (1.39e7×; 57.63⁴ = 1.10e7); with the
/// weights scaled as [`StyleOptions::book_weights_for`] does, 8.47e7 vs 1.065e8, and after
/// two rounds the parts (content, style, variation) are 7.5e5, 9.5e5, 8.1e4 vs 1.07e6,
/// 1.15e6, 9.4e4: the same balance.
pub const IMAGENET_INPUT_SCALE: f64 = 255.0 * (0.229 + 0.224 + 0.225) / 3.0;

impl StyleOptions {
    /// The book's weights for a network fed `preprocessing`: as they are for Caffe
    /// scaling; for the others the content weight × s² and the style weight × s⁴, with
    /// `s` how much smaller their inputs are (see [`IMAGENET_INPUT_SCALE`]), so that a
    /// network answering like the Caffe one up to input scale keeps the book's balance.
    /// Returns the scale factors applied (content, style).
    pub fn book_weights_for(preprocessing: Preprocessing) -> (f64, f64) {
        let s = match preprocessing {
            Preprocessing::Caffe => 1.0,
            Preprocessing::Imagenet => IMAGENET_INPUT_SCALE,
            // [-1, 1]: pixels / 127.5.
            Preprocessing::Inception => 127.5,
        };
        (s * s, s.powi(4))
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::invalid(m));
        for (name, w) in [
            ("content weight", self.content_weight),
            ("style weight", self.style_weight),
            ("total variation weight", self.total_variation_weight),
        ] {
            if !(w.is_finite() && w >= 0.0) {
                return bad(format!("{name} {w} must be a number >= 0"));
            }
        }
        if self.content_weight == 0.0 && self.style_weight == 0.0 {
            return bad(
                "content and style weights are both 0: nothing ties the image to either picture"
                    .into(),
            );
        }
        if self.rounds == 0 || self.rounds > 1000 {
            return bad(format!("rounds {} must be 1..=1000", self.rounds));
        }
        if self.iterations == 0 || self.iterations > 1000 {
            return bad(format!("iterations {} must be 1..=1000", self.iterations));
        }
        if !(16..=4096).contains(&self.height) {
            return bad(format!("height {} must be 16..=4096 pixels", self.height));
        }
        if self.style_weight > 0.0 && self.style_layers.is_empty() {
            return bad("a style weight without style layers".into());
        }
        for l in std::iter::once(&self.content_layer).chain(&self.style_layers) {
            Vgg19::resolve(l).map_err(|e| Error::invalid(e.to_string()))?;
        }
        Ok(())
    }
}

/// The generated image's size: the target height, and the content image's width scaled
/// alike (rounded down, as the book does).
pub fn target_size(
    content_height: usize,
    content_width: usize,
    height: usize,
) -> Result<(usize, usize)> {
    let width = content_width * height / content_height.max(1);
    if width == 0 {
        return Err(Error::invalid(format!(
            "a {content_height}x{content_width} content image is {width} pixels wide at height {height}"
        )));
    }
    Ok((height, width))
}

/// `F · Fᵀ` of features `(1, C, H, W)` seen as `C × (H·W)`.
pub fn gram(features: &Tensor) -> Result<Tensor> {
    let (_, c, h, w) = features.dims4()?;
    Ok(oneiro_tensor_ops::gram::gram(
        &features.reshape((c, h * w))?,
    )?)
}

/// `Σ (combination − target)²`.
pub fn content_loss(combination: &Tensor, target: &Tensor) -> Result<Tensor> {
    Ok((combination - target)?.sqr()?.sum_all()?)
}

/// `Σ (G_style − G_combination)² / (4 · 3² · (height · width)²)`: the book's constants,
/// 3 channels and the generated image's size, whatever the layer.
pub fn style_loss(
    style_gram: &Tensor,
    combination: &Tensor,
    height: usize,
    width: usize,
) -> Result<Tensor> {
    let size = (height * width) as f64;
    let norm = 4.0 * 9.0 * size * size;
    Ok(((style_gram - gram(combination)?)?.sqr()?.sum_all()? / norm)?)
}

/// `Σ (a + b)^1.25` with `a`, `b` the squared vertical and horizontal differences over
/// `i < H − 1, j < W − 1`, all channels.
pub fn total_variation_loss(x: &Tensor) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let base = x.narrow(2, 0, h - 1)?.narrow(3, 0, w - 1)?;
    let below = x.narrow(2, 1, h - 1)?.narrow(3, 0, w - 1)?;
    let right = x.narrow(2, 0, h - 1)?.narrow(3, 1, w - 1)?;
    let a = (&base - below)?.sqr()?;
    let b = (&base - right)?.sqr()?;
    Ok((a + b)?.powf(1.25)?.sum_all()?)
}

/// The weighted parts of one evaluation.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StyleLoss {
    pub content: f64,
    pub style: f64,
    pub total_variation: f64,
}

impl StyleLoss {
    pub fn total(&self) -> f64 {
        self.content + self.style + self.total_variation
    }
}

/// What a style transfer reports.
#[derive(Debug)]
pub enum StyleEvent<'a> {
    /// A round finished: the best image so far and its loss.
    Round {
        round: usize,
        loss: StyleLoss,
        iterations: u64,
        evaluations: usize,
        image: &'a Planes,
    },
}

/// The network, the targets and the loss of one style transfer.
pub struct Stylizer<'a> {
    net: &'a Vgg19,
    preprocessing: Preprocessing,
    /// Content layer first, then the style layers.
    taps: Vec<usize>,
    content_target: Tensor,
    style_grams: Vec<Tensor>,
    options: StyleOptions,
    height: usize,
    width: usize,
    device: Device,
}

impl<'a> Stylizer<'a> {
    /// `content` and `style`: pixel planes (0–255) at the generated image's size.
    pub fn new(
        net: &'a Vgg19,
        preprocessing: Preprocessing,
        content: &Planes,
        style: &Planes,
        options: &StyleOptions,
        device: &Device,
    ) -> Result<Self> {
        options.validate()?;
        if (content.height, content.width) != (style.height, style.width) {
            return Err(Error::invalid(format!(
                "content {}x{} and style {}x{} must be resized to one size first",
                content.height, content.width, style.height, style.width
            )));
        }
        let resolve = |n: &str| Vgg19::resolve(n).map_err(|e| Error::invalid(e.to_string()));
        let mut taps = vec![resolve(&options.content_layer)?];
        for l in &options.style_layers {
            taps.push(resolve(l)?);
        }
        let mut s = Self {
            net,
            preprocessing,
            taps,
            content_target: Tensor::zeros(1, DType::F32, device)?,
            style_grams: vec![],
            options: options.clone(),
            height: content.height,
            width: content.width,
            device: device.clone(),
        };
        // Targets once: the content's features, the style's Gram matrices.
        let c = s.features(&content.to_tensor(device)?)?;
        s.content_target = c[0].detach();
        let st = s.features(&style.to_tensor(device)?)?;
        s.style_grams = st[1..]
            .iter()
            .map(|f| gram(f).map(|g| g.detach()))
            .collect::<Result<_>>()?;
        Ok(s)
    }

    fn features(&self, pixels: &Tensor) -> Result<Vec<Tensor>> {
        let input = self.preprocessing.from_pixels(pixels)?;
        Ok(self.net.forward_taps(&input, &self.taps)?)
    }

    /// The total loss of pixels `x` `(1, 3, H, W)` and its weighted parts.
    pub fn loss(&self, x: &Tensor) -> Result<(Tensor, [Tensor; 3])> {
        let o = &self.options;
        let f = self.features(x)?;
        let content = (content_loss(&f[0], &self.content_target)? * o.content_weight as f64)?;
        let per_layer = o.style_weight as f64 / self.style_grams.len().max(1) as f64;
        let mut style = Tensor::zeros((), DType::F32, &self.device)?;
        for (g, feat) in self.style_grams.iter().zip(&f[1..]) {
            style = (style + (style_loss(g, feat, self.height, self.width)? * per_layer)?)?;
        }
        let tv = (total_variation_loss(x)? * o.total_variation_weight as f64)?;
        let total = ((&content + &style)? + &tv)?;
        Ok((total, [content, style, tv]))
    }

    fn parts(parts: &[Tensor; 3]) -> Result<StyleLoss> {
        let v = |t: &Tensor| -> Result<f64> { Ok(t.to_scalar::<f32>()? as f64) };
        Ok(StyleLoss {
            content: v(&parts[0])?,
            style: v(&parts[1])?,
            total_variation: v(&parts[2])?,
        })
    }

    /// The loss of `pixels` and its parts, without a gradient.
    pub fn loss_of(&self, pixels: &Planes) -> Result<StyleLoss> {
        let (_, parts) = self.loss(&pixels.to_tensor(&self.device)?)?;
        Self::parts(&parts)
    }

    /// The gradient of the total loss w.r.t. the pixels, with the loss.
    pub fn loss_and_gradient(&self, x: &Tensor) -> Result<(f64, Tensor)> {
        let var = Var::from_tensor(x)?;
        let (total, _) = self.loss(var.as_tensor())?;
        let grads = total.backward()?;
        let g = grads
            .get(&var)
            .cloned()
            .ok_or_else(|| Error::invalid("the loss does not depend on the image"))?;
        Ok((total.to_scalar::<f32>()? as f64, g))
    }

    /// The whole transfer from `initial` (the content image, in the book): `rounds` runs
    /// of L-BFGS, each from the previous round's best image.
    pub fn run(
        &self,
        initial: &Planes,
        on: &mut dyn FnMut(StyleEvent) -> Result<()>,
    ) -> Result<Planes> {
        let mut x: Vec<f64> = initial.data.iter().map(|&v| v as f64).collect();
        let mut objective = PixelObjective { s: self };
        let mut image = initial.clone();
        for round in 0..self.options.rounds {
            let m = minimize(&mut objective, x, self.options.iterations as u64, 10)?;
            if !m.value.is_finite() {
                return Err(Error::Diverged(format!(
                    "the style loss became {} in round {round}",
                    m.value
                )));
            }
            x = m.x;
            image = Planes {
                height: self.height,
                width: self.width,
                data: x.iter().map(|&v| v as f32).collect(),
            };
            let loss = self.loss_of(&image)?;
            on(StyleEvent::Round {
                round,
                loss,
                iterations: m.iterations,
                evaluations: m.evaluations,
                image: &image,
            })?;
        }
        Ok(image)
    }
}

/// The loss as a function of the flattened pixel planes, for L-BFGS.
struct PixelObjective<'s, 'a> {
    s: &'s Stylizer<'a>,
}

impl Objective for PixelObjective<'_, '_> {
    fn evaluate(&mut self, x: &[f64]) -> Result<(f64, Vec<f64>)> {
        let s = self.s;
        let v: Vec<f32> = x.iter().map(|&v| v as f32).collect();
        let t = Tensor::from_vec(v, (1, 3, s.height, s.width), &s.device)?;
        let (loss, g) = s.loss_and_gradient(&t)?;
        let g: Vec<f32> = g.flatten_all()?.to_vec1()?;
        Ok((loss, g.into_iter().map(f64::from).collect()))
    }
}

/// Pixel planes (0–255) from interleaved RGB in [0, 1].
pub fn pixels_from_rgb01(rgb: &[f32], width: usize, height: usize) -> Planes {
    Planes::from_interleaved(rgb, width, height, |v| v * 255.0)
}

/// Interleaved RGB in [0, 1] from pixel planes, clipped (the book's de-processing).
pub fn pixels_to_rgb01(p: &Planes) -> Vec<f32> {
    p.to_interleaved(|v| (v / 255.0).clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(v: &[f32], shape: (usize, usize, usize, usize)) -> Tensor {
        Tensor::from_slice(v, shape, &Device::Cpu).unwrap()
    }

    fn scalar(t: &Tensor) -> f64 {
        t.to_scalar::<f32>().unwrap() as f64
    }

    #[test]
    fn gram_and_the_three_losses_match_hand_computed_values() {
        // Features of 2 channels × 2×1 positions: F = [[1, 2], [3, 4]].
        let f = t(&[1.0, 2.0, 3.0, 4.0], (1, 2, 2, 1));
        let g = gram(&f).unwrap();
        assert_eq!(
            g.to_vec2::<f32>().unwrap(),
            vec![vec![5.0, 11.0], vec![11.0, 25.0]]
        );

        let target = t(&[0.0, 2.0, 3.0, 6.0], (1, 2, 2, 1));
        assert_eq!(scalar(&content_loss(&f, &target).unwrap()), 1.0 + 4.0);

        // Style: G_style = [[1, 0], [0, 1]]; Σ (G_s − G)² = 16 + 121 + 121 + 576 = 834,
        // over 4 · 9 · (2·3)² = 1296 for a 2×3 generated image.
        let gs = Tensor::eye(2, DType::F32, &Device::Cpu).unwrap();
        let s = scalar(&style_loss(&gs, &f, 2, 3).unwrap());
        assert!((s - 834.0 / 1296.0).abs() < 1e-6, "{s}");

        // Total variation on one channel of 2×3: [[0, 1, 3], [2, 2, 2]] (other channels 0).
        // (i, j) = (0, 0): a = (0 − 2)² = 4, b = (0 − 1)² = 1 → 5^1.25;
        // (0, 1): a = (1 − 2)² = 1, b = (1 − 3)² = 4 → 5^1.25.
        let mut v = vec![0.0; 18];
        v[..6].copy_from_slice(&[0.0, 1.0, 3.0, 2.0, 2.0, 2.0]);
        let tv = scalar(&total_variation_loss(&t(&v, (1, 3, 2, 3))).unwrap());
        let want = 2.0 * 5f64.powf(1.25);
        assert!((tv - want).abs() < 1e-4, "{tv} vs {want}");
    }

    #[test]
    fn book_weights_scale_with_the_input_scaling() {
        assert_eq!(
            StyleOptions::book_weights_for(Preprocessing::Caffe),
            (1.0, 1.0)
        );
        let (c, s) = StyleOptions::book_weights_for(Preprocessing::Imagenet);
        assert!((IMAGENET_INPUT_SCALE - 57.63).abs() < 0.01);
        assert!(
            (c - 3321.2).abs() < 0.1 && (s / 1.1030e7 - 1.0).abs() < 1e-3,
            "{c} {s}"
        );
    }

    #[test]
    fn target_size_keeps_the_content_aspect_and_rounds_down() {
        assert_eq!(target_size(600, 800, 400).unwrap(), (400, 533));
        assert_eq!(target_size(400, 300, 400).unwrap(), (400, 300));
        assert!(target_size(4000, 3, 400).is_err());
    }

    #[test]
    fn options_are_checked() {
        assert!(StyleOptions::default().validate().is_ok());
        let with = |f: &dyn Fn(&mut StyleOptions)| {
            let mut o = StyleOptions::default();
            f(&mut o);
            o.validate().unwrap_err().to_string()
        };
        assert!(
            with(&|o| {
                o.content_weight = 0.0;
                o.style_weight = 0.0;
            })
            .contains("both 0")
        );
        assert!(with(&|o| o.style_weight = f32::NAN).contains("style weight"));
        assert!(with(&|o| o.height = 0).contains("height"));
        assert!(with(&|o| o.height = 100_000).contains("height"));
        assert!(with(&|o| o.rounds = 0).contains("rounds"));
        assert!(with(&|o| o.content_layer = "block9_conv1".into()).contains("block9_conv1"));
    }

    fn picture(h: usize, w: usize, phase: f32) -> Planes {
        let mut rgb = Vec::new();
        for y in 0..h {
            for x in 0..w {
                let v = 0.5 + 0.45 * ((x as f32 * 0.7 + phase).sin() * (y as f32 * 0.5).cos());
                rgb.extend([v, 1.0 - v, (v * 3.0).fract()]);
            }
        }
        pixels_from_rgb01(&rgb, w, h)
    }

    fn tiny_options() -> StyleOptions {
        StyleOptions {
            height: 16,
            rounds: 3,
            iterations: 4,
            // Deep enough to reach a few layers, shallow enough for a 16-pixel image.
            content_layer: "block3_conv1".into(),
            style_layers: vec!["block1_conv1".into(), "block2_conv1".into()],
            ..Default::default()
        }
    }

    /// The analytic gradient of the whole loss (content, style, total variation) w.r.t.
    /// the pixels against central differences, on a seeded VGG19 and a 16×16 image.
    #[test]
    fn the_gradient_of_the_total_loss_matches_finite_differences() {
        let dev = Device::Cpu;
        let net = Vgg19::load(&oneiro_models::Weights::Seeded(2), &dev).unwrap();
        let (content, style) = (picture(16, 16, 0.0), picture(16, 16, 1.3));
        let opts = StyleOptions {
            // Balanced so that no part dominates the others at this size.
            content_weight: 1.0,
            style_weight: 1e4,
            total_variation_weight: 1e-2,
            ..tiny_options()
        };
        let s =
            Stylizer::new(&net, Preprocessing::Imagenet, &content, &style, &opts, &dev).unwrap();
        let x0 = picture(16, 16, 0.6);
        let (_, g) = s.loss_and_gradient(&x0.to_tensor(&dev).unwrap()).unwrap();
        let g: Vec<f32> = g.flatten_all().unwrap().to_vec1().unwrap();
        let parts = s.loss_of(&x0).unwrap();
        assert!(
            parts.content > 0.0 && parts.style > 0.0 && parts.total_variation > 0.0,
            "{parts:?}"
        );
        let eps = 0.5; // pixels (0–255)
        for &i in &[0usize, 37, 260, 511, 700] {
            let mut plus = x0.clone();
            plus.data[i] += eps;
            let mut minus = x0.clone();
            minus.data[i] -= eps;
            let fd = (s.loss_of(&plus).unwrap().total() - s.loss_of(&minus).unwrap().total())
                / (2.0 * eps as f64);
            let an = g[i] as f64;
            assert!(
                // The absolute part is the f32 rounding of a ~6e5 loss over a 1-pixel step.
                (fd - an).abs() <= 0.03 * an.abs().max(fd.abs()) + 0.2,
                "pixel {i}: finite difference {fd}, gradient {an}"
            );
        }
    }

    /// A small end-to-end run: every round lowers the total loss.
    #[test]
    fn rounds_lower_the_loss_monotonically() {
        let dev = Device::Cpu;
        let net = Vgg19::load(&oneiro_models::Weights::Seeded(5), &dev).unwrap();
        let (content, style) = (picture(16, 20, 0.0), picture(16, 20, 2.0));
        let opts = StyleOptions {
            style_weight: 1e4,
            ..tiny_options()
        };
        let s = Stylizer::new(&net, Preprocessing::Caffe, &content, &style, &opts, &dev).unwrap();
        let start = s.loss_of(&content).unwrap().total();
        let mut losses = vec![start];
        let out = s
            .run(&content, &mut |e| {
                let StyleEvent::Round { loss, image, .. } = e;
                assert_eq!((image.height, image.width), (16, 20));
                losses.push(loss.total());
                Ok(())
            })
            .unwrap();
        assert_eq!(losses.len(), 4);
        for w in losses.windows(2) {
            assert!(w[1] < w[0], "the loss goes down every round: {losses:?}");
        }
        assert_ne!(out.data, content.data);
        let e = Stylizer::new(
            &net,
            Preprocessing::Caffe,
            &content,
            &picture(16, 16, 0.0),
            &opts,
            &dev,
        );
        assert!(e.is_err());
    }
}
