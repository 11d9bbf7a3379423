//! The book's DCGAN on 32×32 colour images (SPEC §5), in candle's NCHW layout.
//!
//! Generator: Dense(128·16·16) → LeakyReLU → (128, 16, 16) → Conv 256 5×5 same →
//! LeakyReLU → ConvTranspose 256 4×4 stride 2 same → LeakyReLU → Conv 256 5×5 same →
//! LeakyReLU → Conv 256 5×5 same → LeakyReLU → Conv 3 7×7 same → tanh.
//! Discriminator: Conv 128 3×3 valid → LeakyReLU → 3 × (Conv 128 4×4 stride 2 valid →
//! LeakyReLU) → Flatten → Dropout 0.4 → Dense 1; it returns the logit (the loss is the
//! stable binary cross-entropy of it; `sigmoid` gives the probability).
//!
//! LeakyReLU slope 0.3 (Keras 2's default, which the book used). Keras
//! `Conv2DTranspose(k=4, s=2, same)` is padding 1, output padding 0. Keys are
//! PyTorch-style (`generator.conv1.weight` ...).

use candle_core::{DType, Device, Result, Tensor, Var, bail};
use oneiro_tensor_ops::bias::add_channel_bias;
use oneiro_tensor_ops::conv::{
    Conv2dParams, ConvTranspose2dParams, conv_transpose2d_bias_relu, conv2d, conv2d_bias_relu,
};
use oneiro_tensor_ops::linear::{linear, linear_relu};
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::init;
use crate::params::{self, Layer};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GanConfig {
    /// Latent dimension [32].
    pub latent_dim: usize,
    /// Dropout rate before the discriminator's dense layer [0.4].
    pub dropout: f64,
    /// LeakyReLU slope [0.3].
    pub leaky_slope: f64,
    /// Channels of the generator's dense seed map and of its convolutions [128, 256], and
    /// of the discriminator's convolutions [128]: the book's widths; smaller ones make
    /// quick experiments and tests.
    #[serde(default = "default_seed_channels")]
    pub generator_seed_channels: usize,
    #[serde(default = "default_generator_channels")]
    pub generator_channels: usize,
    #[serde(default = "default_discriminator_channels")]
    pub discriminator_channels: usize,
}

fn default_seed_channels() -> usize {
    128
}
fn default_generator_channels() -> usize {
    256
}
fn default_discriminator_channels() -> usize {
    128
}

impl Default for GanConfig {
    fn default() -> Self {
        Self {
            latent_dim: 32,
            dropout: 0.4,
            leaky_slope: 0.3,
            generator_seed_channels: 128,
            generator_channels: 256,
            discriminator_channels: 128,
        }
    }
}

impl GanConfig {
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.latent_dim == 0 || self.latent_dim > 4096 {
            return Err(format!(
                "latent dimension must be between 1 and 4096, got {}",
                self.latent_dim
            ));
        }
        for (what, c) in [
            ("generator seed channels", self.generator_seed_channels),
            ("generator channels", self.generator_channels),
            ("discriminator channels", self.discriminator_channels),
        ] {
            if c == 0 || c > 4096 {
                return Err(format!("{what} must be between 1 and 4096, got {c}"));
            }
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(format!("dropout must be in [0, 1), got {}", self.dropout));
        }
        if !(self.leaky_slope.is_finite() && self.leaky_slope >= 0.0) {
            return Err(format!(
                "LeakyReLU slope must be a finite number >= 0, got {}",
                self.leaky_slope
            ));
        }
        Ok(())
    }
}

/// Side of the images the GAN makes and judges.
pub const SIDE: usize = 32;

/// Keras' Glorot-uniform kernels and zero biases. For a transposed kernel (kh, kw, out, in)
/// Keras' fan_in counts the outputs; with equal in/out channels here the two agree anyway.
fn fresh(key: &str, shape: &[usize], rng: &mut impl Rng, dev: &Device) -> Result<Var> {
    let t = if key.ends_with(".bias") {
        Tensor::zeros(shape, DType::F32, dev)?
    } else {
        let (fan_in, fan_out) = match shape {
            [o, i, kh, kw] => (i * kh * kw, o * kh * kw),
            [o, i] => (*i, *o),
            _ => (1, 1),
        };
        let cols: usize = shape[1..].iter().product();
        init::glorot_uniform((shape[0], cols), fan_in, fan_out, rng, dev)?.reshape(shape)?
    };
    Var::from_tensor(&t)
}

/// `v`, or a detached copy of it when `frozen` (no gradient flows into it).
fn weight(v: &Var, frozen: bool) -> Tensor {
    if frozen {
        v.detach()
    } else {
        v.as_tensor().clone()
    }
}

/// The generator's layers, under their checkpoint keys `generator.{field}.*`.
pub struct Generator {
    dense: Layer,
    conv1: Layer,
    deconv: Layer,
    conv2: Layer,
    conv3: Layer,
    conv_out: Layer,
}

/// The discriminator's layers, under their checkpoint keys `discriminator.{field}.*`.
pub struct Discriminator {
    conv1: Layer,
    conv2: Layer,
    conv3: Layer,
    conv4: Layer,
    dense: Layer,
}

impl Generator {
    fn build(c: &GanConfig, s: &mut impl FnMut(&str, &[usize]) -> Result<Var>) -> Result<Self> {
        let (seed, g) = (c.generator_seed_channels, c.generator_channels);
        let dense = seed * 16 * 16;
        Ok(Self {
            dense: Layer::new("generator.dense", &[dense, c.latent_dim], dense, s)?,
            conv1: Layer::new("generator.conv1", &[g, seed, 5, 5], g, s)?,
            // conv_transpose2d weights are (in, out, k, k).
            deconv: Layer::new("generator.deconv", &[g, g, 4, 4], g, s)?,
            conv2: Layer::new("generator.conv2", &[g, g, 5, 5], g, s)?,
            conv3: Layer::new("generator.conv3", &[g, g, 5, 5], g, s)?,
            conv_out: Layer::new("generator.conv_out", &[3, g, 7, 7], 3, s)?,
        })
    }

    /// The layers in checkpoint order, which is also the optimizer's order.
    fn layers(&self) -> [&Layer; 6] {
        [
            &self.dense,
            &self.conv1,
            &self.deconv,
            &self.conv2,
            &self.conv3,
            &self.conv_out,
        ]
    }

    pub fn vars(&self) -> Vec<Var> {
        params::vars(self.layers())
    }

    pub fn tensors(&self) -> Vec<(String, Tensor)> {
        params::tensors(self.layers().into_iter().flat_map(Layer::named))
    }

    pub fn parameter_count(&self) -> usize {
        params::count(self.layers())
    }
}

impl Discriminator {
    fn build(c: &GanConfig, s: &mut impl FnMut(&str, &[usize]) -> Result<Var>) -> Result<Self> {
        let d = c.discriminator_channels;
        Ok(Self {
            conv1: Layer::new("discriminator.conv1", &[d, 3, 3, 3], d, s)?,
            conv2: Layer::new("discriminator.conv2", &[d, d, 4, 4], d, s)?,
            conv3: Layer::new("discriminator.conv3", &[d, d, 4, 4], d, s)?,
            conv4: Layer::new("discriminator.conv4", &[d, d, 4, 4], d, s)?,
            dense: Layer::new("discriminator.dense", &[1, d * 2 * 2], 1, s)?,
        })
    }

    /// The layers in checkpoint order, which is also the optimizer's order.
    fn layers(&self) -> [&Layer; 5] {
        [
            &self.conv1,
            &self.conv2,
            &self.conv3,
            &self.conv4,
            &self.dense,
        ]
    }

    pub fn vars(&self) -> Vec<Var> {
        params::vars(self.layers())
    }

    pub fn tensors(&self) -> Vec<(String, Tensor)> {
        params::tensors(self.layers().into_iter().flat_map(Layer::named))
    }

    pub fn parameter_count(&self) -> usize {
        params::count(self.layers())
    }
}

pub struct Dcgan {
    pub config: GanConfig,
    pub generator: Generator,
    pub discriminator: Discriminator,
}

impl Dcgan {
    pub fn new_random(config: GanConfig, rng: &mut impl Rng, dev: &Device) -> Result<Self> {
        if let Err(e) = config.validate() {
            bail!("{e}")
        }
        let mut source = |key: &str, shape: &[usize]| fresh(key, shape, rng, dev);
        Ok(Self {
            generator: Generator::build(&config, &mut source)?,
            discriminator: Discriminator::build(&config, &mut source)?,
            config,
        })
    }

    /// From saved weights (both networks' keys in one map), checking every key and shape.
    pub fn from_tensors(
        config: GanConfig,
        weights: &std::collections::HashMap<String, Tensor>,
        dev: &Device,
    ) -> Result<Self> {
        let mut source = params::saved(weights, dev);
        Ok(Self {
            generator: Generator::build(&config, &mut source)?,
            discriminator: Discriminator::build(&config, &mut source)?,
            config,
        })
    }

    pub fn tensors(&self) -> Vec<(String, Tensor)> {
        let mut t = self.generator.tensors();
        t.extend(self.discriminator.tensors());
        t
    }

    pub fn parameter_count(&self) -> usize {
        self.generator.parameter_count() + self.discriminator.parameter_count()
    }

    /// Images in [-1, 1], (B, 3, 32, 32), for latents `z` (B, latent).
    pub fn generate(&self, z: &Tensor) -> Result<Tensor> {
        let g = &self.generator;
        let s = self.config.leaky_slope;
        let b = z.dim(0)?;
        let x = linear_relu(z, &g.dense.weight, &g.dense.bias, s as f32)?;
        let x = x.reshape((b, self.config.generator_seed_channels, 16, 16))?;
        // Conv, channel bias and LeakyReLU as one node.
        let conv_leaky = |x: &Tensor, l: &Layer, p: Conv2dParams| {
            conv2d_bias_relu(x, &l.weight, &l.bias, p, s as f32)
        };
        let x = conv_leaky(&x, &g.conv1, Conv2dParams::same(5))?;
        let up = ConvTranspose2dParams {
            stride: 2,
            padding: 1,
            output_padding: 0,
        };
        let x = conv_transpose2d_bias_relu(&x, &g.deconv.weight, &g.deconv.bias, up, s as f32)?;
        let x = conv_leaky(&x, &g.conv2, Conv2dParams::same(5))?;
        let x = conv_leaky(&x, &g.conv3, Conv2dParams::same(5))?;
        let out = &g.conv_out;
        let x = conv2d(&x, &out.weight, Conv2dParams::same(7))?;
        add_channel_bias(&x, &out.bias)?.tanh()
    }

    /// Discriminator logits (B, 1) for images (B, 3, 32, 32). `dropout`: a training pass
    /// (Keras' inverted dropout, mask from `rng`). `frozen`: no gradient reaches the
    /// discriminator's weights (the book's frozen discriminator in the GAN step); the
    /// images still get theirs.
    pub fn discriminate(
        &self,
        images: &Tensor,
        dropout: Option<&mut dyn rand::RngCore>,
        frozen: bool,
    ) -> Result<Tensor> {
        let (b, c, h, w) = images.dims4()?;
        if (c, h, w) != (3, SIDE, SIDE) {
            bail!(
                "the discriminator takes (B, 3, 32, 32) images, got {:?}",
                images.dims()
            )
        }
        let d = &self.discriminator;
        let s = self.config.leaky_slope;
        let valid = Conv2dParams::new(1, 0);
        let strided = Conv2dParams::new(2, 0);
        let conv_leaky = |x: &Tensor, l: &Layer, p: Conv2dParams| {
            let (w, b) = (weight(&l.weight, frozen), weight(&l.bias, frozen));
            conv2d_bias_relu(x, &w, &b, p, s as f32)
        };
        let mut x = conv_leaky(images, &d.conv1, valid)?;
        for l in [&d.conv2, &d.conv3, &d.conv4] {
            x = conv_leaky(&x, l, strided)?;
        }
        let mut x = x.reshape((b, ()))?;
        if let Some(rng) = dropout {
            let p = self.config.dropout;
            if p > 0.0 {
                let n = x.elem_count();
                let keep: Vec<f32> = (0..n)
                    .map(|_| {
                        if rng.random::<f64>() < p {
                            0.0
                        } else {
                            (1.0 / (1.0 - p)) as f32
                        }
                    })
                    .collect();
                let mask = Tensor::from_vec(keep, x.shape(), x.device())?;
                x = (x * mask)?;
            }
        }
        let (w, b) = (
            weight(&d.dense.weight, frozen),
            weight(&d.dense.bias, frozen),
        );
        linear(&x, &w, &b)
    }
}

/// Mean binary cross-entropy of `logits` against `targets` in the stable form
/// `max(x, 0) − x·t + log(1 + exp(−|x|))`: finite and exact for saturated logits.
pub fn bce_with_logits(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let t = (logits.relu()? - (logits * targets)?)?;
    (t + (logits.abs()?.neg()?.exp()? + 1.0)?.log()?)?.mean_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn gan() -> Dcgan {
        Dcgan::new_random(
            GanConfig::default(),
            &mut ChaCha8Rng::seed_from_u64(0),
            &Device::Cpu,
        )
        .unwrap()
    }

    #[test]
    fn shapes_and_parameter_counts_follow_the_book() -> Result<()> {
        let m = gan();
        let z = Tensor::randn(0f32, 1f32, (2, 32), &Device::Cpu)?;
        let img = m.generate(&z)?;
        assert_eq!(img.dims(), &[2, 3, 32, 32]);
        let v = img.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(v <= 1.0);
        assert_eq!(m.discriminate(&img, None, false)?.dims(), &[2, 1]);
        // Keras' summary of the book's models: generator 6,264,579, discriminator 790,913.
        assert_eq!(m.generator.parameter_count(), 6_264_579);
        assert_eq!(m.discriminator.parameter_count(), 790_913);
        Ok(())
    }

    #[test]
    fn stable_bce_is_finite_and_exact_at_saturation() -> Result<()> {
        let dev = Device::Cpu;
        let logits = Tensor::new(&[[100f32], [-100.0], [0.0]], &dev)?;
        let t = Tensor::new(&[[0f32], [0.0], [1.0]], &dev)?;
        // Per row: 100 (confidently wrong), ~0 (confidently right), ln 2.
        let want = (100.0 + 3.7e-44f64 + std::f64::consts::LN_2) / 3.0;
        let got = bce_with_logits(&logits, &t)?.to_scalar::<f32>()? as f64;
        assert!((got - want).abs() < 1e-4, "{got} vs {want}");
        let v = Var::from_tensor(&logits)?;
        let g = bce_with_logits(v.as_tensor(), &t)?.backward()?;
        let g = g.get(&v).unwrap().flatten_all()?.to_vec1::<f32>()?;
        // d/dx = (sigmoid(x) - t) / n.
        assert!(
            (g[0] - 1.0 / 3.0).abs() < 1e-6 && g[1].abs() < 1e-6 && (g[2] + 1.0 / 6.0).abs() < 1e-6
        );
        Ok(())
    }

    #[test]
    fn a_frozen_discriminator_gets_no_gradient_but_passes_one_on() -> Result<()> {
        let m = gan();
        let z = Tensor::randn(0f32, 1f32, (2, 32), &Device::Cpu)?;
        let logits = m.discriminate(&m.generate(&z)?, None, true)?;
        let grads = logits.sum_all()?.backward()?;
        for v in m.discriminator.vars() {
            assert!(grads.get(v.as_tensor()).is_none());
        }
        for v in m.generator.vars() {
            assert!(grads.get(v.as_tensor()).is_some());
        }
        Ok(())
    }
}
