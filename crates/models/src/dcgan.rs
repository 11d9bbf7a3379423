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

fn generator_layout(c: &GanConfig) -> Vec<(&'static str, Vec<usize>)> {
    let (s, g) = (c.generator_seed_channels, c.generator_channels);
    vec![
        ("generator.dense.weight", vec![s * 16 * 16, c.latent_dim]),
        ("generator.dense.bias", vec![s * 16 * 16]),
        ("generator.conv1.weight", vec![g, s, 5, 5]),
        ("generator.conv1.bias", vec![g]),
        // conv_transpose2d weights are (in, out, k, k).
        ("generator.deconv.weight", vec![g, g, 4, 4]),
        ("generator.deconv.bias", vec![g]),
        ("generator.conv2.weight", vec![g, g, 5, 5]),
        ("generator.conv2.bias", vec![g]),
        ("generator.conv3.weight", vec![g, g, 5, 5]),
        ("generator.conv3.bias", vec![g]),
        ("generator.conv_out.weight", vec![3, g, 7, 7]),
        ("generator.conv_out.bias", vec![3]),
    ]
}

fn discriminator_layout(c: &GanConfig) -> Vec<(&'static str, Vec<usize>)> {
    let d = c.discriminator_channels;
    vec![
        ("discriminator.conv1.weight", vec![d, 3, 3, 3]),
        ("discriminator.conv1.bias", vec![d]),
        ("discriminator.conv2.weight", vec![d, d, 4, 4]),
        ("discriminator.conv2.bias", vec![d]),
        ("discriminator.conv3.weight", vec![d, d, 4, 4]),
        ("discriminator.conv3.bias", vec![d]),
        ("discriminator.conv4.weight", vec![d, d, 4, 4]),
        ("discriminator.conv4.bias", vec![d]),
        ("discriminator.dense.weight", vec![1, d * 2 * 2]),
        ("discriminator.dense.bias", vec![1]),
    ]
}

/// One network's weights, in layout order.
pub struct Params {
    keys: Vec<&'static str>,
    vars: Vec<Var>,
}

impl Params {
    fn random(
        layout: Vec<(&'static str, Vec<usize>)>,
        rng: &mut impl Rng,
        dev: &Device,
    ) -> Result<Self> {
        let mut keys = Vec::new();
        let mut vars = Vec::new();
        for (key, shape) in layout {
            let t = if key.ends_with(".bias") {
                Tensor::zeros(shape.as_slice(), DType::F32, dev)?
            } else {
                // Keras' fans: for a transposed kernel (kh, kw, out, in) fan_in counts the
                // outputs; with equal in/out channels here the two agree anyway.
                let (fan_in, fan_out) = match shape.as_slice() {
                    [o, i, kh, kw] => (i * kh * kw, o * kh * kw),
                    [o, i] => (*i, *o),
                    _ => (1, 1),
                };
                let cols: usize = shape[1..].iter().product();
                init::glorot_uniform((shape[0], cols), fan_in, fan_out, rng, dev)?
                    .reshape(shape.as_slice())?
            };
            keys.push(key);
            vars.push(Var::from_tensor(&t)?);
        }
        Ok(Self { keys, vars })
    }

    fn from_tensors(
        layout: Vec<(&'static str, Vec<usize>)>,
        weights: &std::collections::HashMap<String, Tensor>,
        dev: &Device,
    ) -> Result<Self> {
        let mut keys = Vec::new();
        let mut vars = Vec::new();
        for (key, shape) in layout {
            let Some(t) = weights.get(key) else {
                bail!("weights lack `{key}`")
            };
            if t.dims() != shape.as_slice() {
                bail!("`{key}` has shape {:?}, expected {shape:?}", t.dims())
            }
            keys.push(key);
            vars.push(Var::from_tensor(&t.to_device(dev)?.to_dtype(DType::F32)?)?);
        }
        Ok(Self { keys, vars })
    }

    pub fn vars(&self) -> Vec<Var> {
        self.vars.clone()
    }

    pub fn tensors(&self) -> Vec<(String, Tensor)> {
        self.keys
            .iter()
            .zip(&self.vars)
            .map(|(k, v)| (k.to_string(), v.as_tensor().clone()))
            .collect()
    }

    pub fn parameter_count(&self) -> usize {
        self.vars.iter().map(|v| v.elem_count()).sum()
    }

    /// Weight `i`, or a detached copy of it when `frozen` (no gradient flows into it).
    fn get(&self, i: usize, frozen: bool) -> Tensor {
        let t = self.vars[i].as_tensor();
        if frozen { t.detach() } else { t.clone() }
    }
}

pub struct Dcgan {
    pub config: GanConfig,
    pub generator: Params,
    pub discriminator: Params,
}

impl Dcgan {
    pub fn new_random(config: GanConfig, rng: &mut impl Rng, dev: &Device) -> Result<Self> {
        if let Err(e) = config.validate() {
            bail!("{e}")
        }
        Ok(Self {
            generator: Params::random(generator_layout(&config), rng, dev)?,
            discriminator: Params::random(discriminator_layout(&config), rng, dev)?,
            config,
        })
    }

    /// From saved weights (both networks' keys in one map), checking every key and shape.
    pub fn from_tensors(
        config: GanConfig,
        weights: &std::collections::HashMap<String, Tensor>,
        dev: &Device,
    ) -> Result<Self> {
        Ok(Self {
            generator: Params::from_tensors(generator_layout(&config), weights, dev)?,
            discriminator: Params::from_tensors(discriminator_layout(&config), weights, dev)?,
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
        let x = linear_relu(z, &g.get(0, false), &g.get(1, false), s as f32)?;
        let x = x.reshape((b, self.config.generator_seed_channels, 16, 16))?;
        // Conv (weight i, bias i + 1) then the channel bias.
        let conv = |x: &Tensor, i: usize, p: Conv2dParams| {
            add_channel_bias(&conv2d(x, &g.get(i, false), p)?, &g.get(i + 1, false))
        };
        // The same and LeakyReLU, as one node.
        let conv_leaky = |x: &Tensor, i: usize, p: Conv2dParams| {
            conv2d_bias_relu(x, &g.get(i, false), &g.get(i + 1, false), p, s as f32)
        };
        let x = conv_leaky(&x, 2, Conv2dParams::same(5))?;
        let up = ConvTranspose2dParams {
            stride: 2,
            padding: 1,
            output_padding: 0,
        };
        let x = conv_transpose2d_bias_relu(&x, &g.get(4, false), &g.get(5, false), up, s as f32)?;
        let x = conv_leaky(&x, 6, Conv2dParams::same(5))?;
        let x = conv_leaky(&x, 8, Conv2dParams::same(5))?;
        conv(&x, 10, Conv2dParams::same(7))?.tanh()
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
        let conv_leaky = |x: &Tensor, i: usize, p: Conv2dParams| {
            conv2d_bias_relu(x, &d.get(i, frozen), &d.get(i + 1, frozen), p, s as f32)
        };
        let mut x = conv_leaky(images, 0, valid)?;
        for layer in 1..4 {
            x = conv_leaky(&x, 2 * layer, strided)?;
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
        linear(&x, &d.get(8, frozen), &d.get(9, frozen))
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
