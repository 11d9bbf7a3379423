//! Convolutional VAE on MNIST (SPEC §4), with Keras' semantics in candle's NCHW layout.
//!
//! Encoder: Conv 32 3×3 same relu → Conv 64 3×3 same relu stride 2 → Conv 64 3×3 same relu
//! → Conv 64 3×3 same relu → Flatten → Dense 32 relu → Dense(latent) ×2 (z_mean, z_log_var).
//! Decoder: Dense(14·14·64) relu → reshape → ConvTranspose 32 3×3 same stride 2 relu →
//! Conv 1 3×3 same sigmoid. The decoder returns logits; the loss uses them directly (the
//! stable form of binary cross-entropy), `sigmoid` gives the image.
//!
//! Keras' `same` padding with stride 2 on an even input pads 0 before and 1 after; candle's
//! padding is symmetric, so that conv pads explicitly. Keys are PyTorch-style
//! (`encoder.conv1.weight` ...); the dense layer after the reshape maps to channel-major
//! order (a fixed permutation of Keras' units, which matters only for importing Keras
//! weights).

use candle_core::{D, DType, Device, Result, Tensor, Var, bail};
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
pub struct VaeConfig {
    /// Latent dimension [2].
    pub latent_dim: usize,
    /// Weight of the KL term [5e-4].
    pub kl_weight: f64,
}

impl Default for VaeConfig {
    fn default() -> Self {
        Self {
            latent_dim: 2,
            kl_weight: 5e-4,
        }
    }
}

impl VaeConfig {
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.latent_dim == 0 || self.latent_dim > 512 {
            return Err(format!(
                "latent dimension must be between 1 and 512, got {}",
                self.latent_dim
            ));
        }
        if !(self.kl_weight.is_finite() && self.kl_weight >= 0.0) {
            return Err(format!(
                "KL weight must be a finite number >= 0, got {}",
                self.kl_weight
            ));
        }
        Ok(())
    }
}

/// ln((1 − ε)/ε) for Keras' ε = 1e-7: the logit range of its binary cross-entropy.
const LOGIT_CLIP: f64 = 16.118_095_550_958_316;

/// Side of the square grey images the VAE reads and writes.
pub const SIDE: usize = 28;
const HALF: usize = 14;

pub struct Vae {
    pub config: VaeConfig,
    encoder: Encoder,
    decoder: Decoder,
}

struct Encoder {
    conv1: Layer,
    conv2: Layer,
    conv3: Layer,
    conv4: Layer,
    dense: Layer,
    z_mean: Layer,
    z_log_var: Layer,
}

struct Decoder {
    dense: Layer,
    deconv: Layer,
    conv: Layer,
}

/// What the encoder gives for a batch.
pub struct Encoded {
    pub z_mean: Tensor,
    pub z_log_var: Tensor,
}

/// One batch's loss, split as the training events report it.
pub struct VaeLoss {
    pub total: Tensor,
    pub reconstruction: Tensor,
    pub kl: Tensor,
}

fn glorot_fans(shape: &[usize], transpose: bool) -> (usize, usize) {
    match shape {
        [o, i, kh, kw] if transpose => (o * kh * kw, i * kh * kw),
        [o, i, kh, kw] => (i * kh * kw, o * kh * kw),
        [o, i] => (*i, *o),
        _ => (1, 1),
    }
}

/// `relu(conv(x) + b)` as one node on the CPU (ReLU's gradient at 0 is 0, as in
/// TensorFlow and PyTorch).
fn conv_relu(x: &Tensor, l: &Layer, p: Conv2dParams) -> Result<Tensor> {
    conv2d_bias_relu(x, &l.weight, &l.bias, p, 0.0)
}

impl Vae {
    /// Every layer, asking `source` for each variable in checkpoint order.
    fn build(
        config: VaeConfig,
        mut source: impl FnMut(&str, &[usize]) -> Result<Var>,
    ) -> Result<Self> {
        let (latent, flat) = (config.latent_dim, 64 * HALF * HALF);
        let s = &mut source;
        let encoder = Encoder {
            conv1: Layer::new("encoder.conv1", &[32, 1, 3, 3], 32, s)?,
            conv2: Layer::new("encoder.conv2", &[64, 32, 3, 3], 64, s)?,
            conv3: Layer::new("encoder.conv3", &[64, 64, 3, 3], 64, s)?,
            conv4: Layer::new("encoder.conv4", &[64, 64, 3, 3], 64, s)?,
            dense: Layer::new("encoder.dense", &[32, flat], 32, s)?,
            z_mean: Layer::new("encoder.z_mean", &[latent, 32], latent, s)?,
            z_log_var: Layer::new("encoder.z_log_var", &[latent, 32], latent, s)?,
        };
        let decoder = Decoder {
            dense: Layer::new("decoder.dense", &[flat, latent], flat, s)?,
            // conv_transpose2d weights are (in, out, k, k).
            deconv: Layer::new("decoder.deconv", &[64, 32, 3, 3], 32, s)?,
            conv: Layer::new("decoder.conv", &[1, 32, 3, 3], 1, s)?,
        };
        Ok(Self {
            config,
            encoder,
            decoder,
        })
    }

    /// The layers in checkpoint order, which is also the optimizer's order.
    fn layers(&self) -> [&Layer; 10] {
        let (e, d) = (&self.encoder, &self.decoder);
        [
            &e.conv1,
            &e.conv2,
            &e.conv3,
            &e.conv4,
            &e.dense,
            &e.z_mean,
            &e.z_log_var,
            &d.dense,
            &d.deconv,
            &d.conv,
        ]
    }

    /// Keras initialisation: Glorot-uniform kernels, zero biases.
    pub fn new_random(config: VaeConfig, rng: &mut impl Rng, dev: &Device) -> Result<Self> {
        if let Err(e) = config.validate() {
            bail!("{e}")
        }
        Self::build(config, |key, shape| {
            let t = if key.ends_with(".bias") {
                Tensor::zeros(shape, DType::F32, dev)?
            } else {
                let (fan_in, fan_out) = glorot_fans(shape, key.contains("deconv"));
                let rows = shape[0];
                let cols: usize = shape[1..].iter().product();
                init::glorot_uniform((rows, cols), fan_in, fan_out, rng, dev)?.reshape(shape)?
            };
            Var::from_tensor(&t)
        })
    }

    /// From saved weights, checking every key and shape.
    pub fn from_tensors(
        config: VaeConfig,
        weights: &std::collections::HashMap<String, Tensor>,
        dev: &Device,
    ) -> Result<Self> {
        Self::build(config, params::saved(weights, dev))
    }

    pub fn tensors(&self) -> Vec<(String, Tensor)> {
        params::tensors(self.layers().into_iter().flat_map(Layer::named))
    }

    pub fn vars(&self) -> Vec<Var> {
        params::vars(self.layers())
    }

    pub fn parameter_count(&self) -> usize {
        params::count(self.layers())
    }

    /// `images` (B, 1, 28, 28) with pixels in [0, 1].
    pub fn encode(&self, images: &Tensor) -> Result<Encoded> {
        let (b, c, h, w) = images.dims4()?;
        if (c, h, w) != (1, SIDE, SIDE) {
            bail!(
                "the VAE takes (B, 1, 28, 28) images, got {:?}",
                images.dims()
            )
        }
        let e = &self.encoder;
        let same = Conv2dParams::same(3);
        let x = conv_relu(images, &e.conv1, same)?;
        // Keras `same` at stride 2 on 28: pad 0 before and 1 after on each axis.
        let down = Conv2dParams {
            stride: (2, 2),
            padding: [0, 1, 0, 1],
        };
        let x = conv_relu(&x, &e.conv2, down)?;
        let x = conv_relu(&x, &e.conv3, same)?;
        let x = conv_relu(&x, &e.conv4, same)?;
        let x = linear_relu(&x.reshape((b, ()))?, &e.dense.weight, &e.dense.bias, 0.0)?;
        Ok(Encoded {
            z_mean: linear(&x, &e.z_mean.weight, &e.z_mean.bias)?,
            z_log_var: linear(&x, &e.z_log_var.weight, &e.z_log_var.bias)?,
        })
    }

    /// Decoder logits (B, 1, 28, 28) for latent points `z` (B, latent).
    pub fn decode_logits(&self, z: &Tensor) -> Result<Tensor> {
        let d = &self.decoder;
        let b = z.dim(0)?;
        let x = linear_relu(z, &d.dense.weight, &d.dense.bias, 0.0)?;
        let x = x.reshape((b, 64, HALF, HALF))?;
        // Keras Conv2DTranspose(k=3, s=2, same) = padding 1, output_padding 1.
        let up = ConvTranspose2dParams {
            padding: 1,
            output_padding: 1,
            stride: 2,
        };
        let x = conv_transpose2d_bias_relu(&x, &d.deconv.weight, &d.deconv.bias, up, 0.0)?;
        let conv = conv2d(&x, &d.conv.weight, Conv2dParams::same(3))?;
        add_channel_bias(&conv, &d.conv.bias)
    }

    /// Decoded images in [0, 1].
    pub fn decode(&self, z: &Tensor) -> Result<Tensor> {
        candle_nn::ops::sigmoid(&self.decode_logits(z)?)
    }

    /// The book's sampling: `z = z_mean + exp(z_log_var) · ε`.
    pub fn sample(&self, enc: &Encoded, eps: &Tensor) -> Result<Tensor> {
        enc.z_mean.add(&(enc.z_log_var.exp()? * eps)?)
    }

    /// Per-sample binary cross-entropy averaged over pixels, plus
    /// `-kl_weight · mean(1 + log σ² − μ² − exp(log σ²))`, averaged over the batch.
    pub fn loss(&self, images: &Tensor, eps: &Tensor) -> Result<VaeLoss> {
        let enc = self.encode(images)?;
        let z = self.sample(&enc, eps)?;
        let logits = self.decode_logits(&z)?;
        self.loss_of(images, &enc, &logits)
    }

    /// The loss of decoder `logits` for `images`, with the encoding they came from.
    pub fn loss_of(&self, images: &Tensor, enc: &Encoded, logits: &Tensor) -> Result<VaeLoss> {
        // Keras' binary cross-entropy clips probabilities to [1e-7, 1 − 1e-7], i.e. logits
        // to ±ln((1 − 1e-7)/1e-7), with no gradient past the clip. Kept: without it one
        // saturated pixel costs its whole logit, and the book's exp(z_log_var) noise scale
        // turns rare outliers into loss spikes of 10⁵ (measured on MNIST and synthetic
        // digits), where Keras caps each pixel at 16.1.
        let logits = logits.flatten_from(1)?.clamp(-LOGIT_CLIP, LOGIT_CLIP)?;
        let target = images.flatten_from(1)?;
        // Stable BCE from logits: max(x, 0) − x·t + log(1 + exp(−|x|)).
        let bce = ((logits.relu()? - (&logits * &target)?)?
            + (logits.abs()?.neg()?.exp()? + 1.0)?.log()?)?;
        let reconstruction = bce.mean(D::Minus1)?;
        let (mu, lv) = (&enc.z_mean, &enc.z_log_var);
        let kl_terms = (((lv + 1.0)? - mu.sqr()?)? - lv.exp()?)?;
        let kl = (kl_terms.mean(D::Minus1)? * (-self.config.kl_weight))?;
        Ok(VaeLoss {
            total: (&reconstruction + &kl)?.mean_all()?,
            reconstruction: reconstruction.mean_all()?,
            kl: kl.mean_all()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oneiro_tensor_ops::{RmsProp, RmsPropConfig};
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn vae(latent: usize) -> Vae {
        Vae::new_random(
            VaeConfig {
                latent_dim: latent,
                ..Default::default()
            },
            &mut ChaCha8Rng::seed_from_u64(0),
            &Device::Cpu,
        )
        .unwrap()
    }

    #[test]
    fn shapes_follow_the_book() -> Result<()> {
        let m = vae(2);
        let x = Tensor::rand(0f32, 1f32, (3, 1, 28, 28), &Device::Cpu)?;
        let enc = m.encode(&x)?;
        assert_eq!(enc.z_mean.dims(), &[3, 2]);
        assert_eq!(m.decode(&enc.z_mean)?.dims(), &[3, 1, 28, 28]);
        // Keras' count for the same layers: encoder convs 320 + 18,496 + 36,928 + 36,928,
        // dense 401,440, heads 66 + 66; decoder dense 37,632, deconv 18,464, conv 289.
        assert_eq!(m.parameter_count(), 494_244 + 56_385);
        assert!(
            m.encode(&Tensor::zeros((1, 1, 27, 28), DType::F32, &Device::Cpu)?)
                .is_err()
        );
        Ok(())
    }

    #[test]
    fn the_loss_matches_its_formula_and_training_lowers_it() -> Result<()> {
        let m = vae(2);
        let x = (Tensor::rand(0f32, 1f32, (4, 1, 28, 28), &Device::Cpu)?
            .ge(0.7)?
            .to_dtype(DType::F32))?;
        let eps = Tensor::zeros((4, 2), DType::F32, &Device::Cpu)?;
        let l = m.loss(&x, &eps)?;
        // Recompute from the decoded probabilities (eps = 0: z = z_mean).
        let enc = m.encode(&x)?;
        let p = m.decode(&enc.z_mean)?.flatten_from(1)?.to_vec2::<f32>()?;
        let t = x.flatten_from(1)?.to_vec2::<f32>()?;
        let mut bce = 0f64;
        for (pr, tr) in p.iter().zip(&t) {
            for (&pi, &ti) in pr.iter().zip(tr) {
                let pi = pi.clamp(1e-7, 1.0 - 1e-7) as f64;
                bce -= ti as f64 * pi.ln() + (1.0 - ti as f64) * (1.0 - pi).ln();
            }
        }
        let bce = bce / (4.0 * 784.0);
        let got = l.reconstruction.to_scalar::<f32>()? as f64;
        assert!((got - bce).abs() < 1e-4, "{got} vs {bce}");
        let mu = enc.z_mean.to_vec2::<f32>()?;
        let lv = enc.z_log_var.to_vec2::<f32>()?;
        let kl: f64 = mu
            .iter()
            .zip(&lv)
            .map(|(m, v)| {
                -5e-4
                    * m.iter()
                        .zip(v)
                        .map(|(&m, &v)| 1.0 + v as f64 - (m * m) as f64 - (v as f64).exp())
                        .sum::<f64>()
                    / 2.0
            })
            .sum::<f64>()
            / 4.0;
        assert!((l.kl.to_scalar::<f32>()? as f64 - kl).abs() < 1e-7);

        let mut opt = RmsProp::new(m.vars(), RmsPropConfig::default())?;
        let first = l.total.to_scalar::<f32>()?;
        for _ in 0..20 {
            let l = m.loss(&x, &eps)?;
            opt.step(&l.total.backward()?)?;
        }
        let last = m.loss(&x, &eps)?.total.to_scalar::<f32>()?;
        assert!(last < first - 0.02, "{first} -> {last}");
        Ok(())
    }

    #[test]
    fn saturated_pixels_cost_what_keras_charges() -> Result<()> {
        let m = vae(2);
        let dev = Device::Cpu;
        let images = Tensor::zeros((1, 1, 28, 28), DType::F32, &dev)?;
        let enc = Encoded {
            z_mean: Tensor::zeros((1, 2), DType::F32, &dev)?,
            z_log_var: Tensor::zeros((1, 2), DType::F32, &dev)?,
        };
        // Every pixel predicted "on" with a huge logit against an all-off target.
        let logits = Tensor::full(1e6f32, (1, 1, 28, 28), &dev)?;
        let l = m.loss_of(&images, &enc, &logits)?;
        let r = l.reconstruction.to_scalar::<f32>()?;
        // Keras: -ln(1e-7) per pixel (clipped probability), not the logit.
        assert!((r - 16.118_095).abs() < 1e-3, "{r}");
        let v = Var::from_tensor(&logits)?;
        let g = m
            .loss_of(&images, &enc, v.as_tensor())?
            .reconstruction
            .backward()?;
        let gl = g.get(&v).unwrap().abs()?.max_all()?.to_scalar::<f32>()?;
        assert_eq!(gl, 0.0, "no gradient past the clip, as in Keras");
        Ok(())
    }

    #[test]
    fn weights_round_trip() -> Result<()> {
        let m = vae(3);
        let saved = m.tensors().into_iter().collect();
        let back = Vae::from_tensors(m.config.clone(), &saved, &Device::Cpu)?;
        let z = Tensor::ones((2, 3), DType::F32, &Device::Cpu)?;
        let d = (m.decode(&z)? - back.decode(&z)?)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert_eq!(d, 0.0);
        assert!(Vae::from_tensors(VaeConfig::default(), &saved, &Device::Cpu).is_err());
        Ok(())
    }
}
