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

/// (key, shape) of every weight, in a fixed order.
fn layout(latent: usize) -> Vec<(&'static str, Vec<usize>)> {
    let flat = 64 * HALF * HALF;
    vec![
        ("encoder.conv1.weight", vec![32, 1, 3, 3]),
        ("encoder.conv1.bias", vec![32]),
        ("encoder.conv2.weight", vec![64, 32, 3, 3]),
        ("encoder.conv2.bias", vec![64]),
        ("encoder.conv3.weight", vec![64, 64, 3, 3]),
        ("encoder.conv3.bias", vec![64]),
        ("encoder.conv4.weight", vec![64, 64, 3, 3]),
        ("encoder.conv4.bias", vec![64]),
        ("encoder.dense.weight", vec![32, flat]),
        ("encoder.dense.bias", vec![32]),
        ("encoder.z_mean.weight", vec![latent, 32]),
        ("encoder.z_mean.bias", vec![latent]),
        ("encoder.z_log_var.weight", vec![latent, 32]),
        ("encoder.z_log_var.bias", vec![latent]),
        ("decoder.dense.weight", vec![flat, latent]),
        ("decoder.dense.bias", vec![flat]),
        // conv_transpose2d weights are (in, out, k, k).
        ("decoder.deconv.weight", vec![64, 32, 3, 3]),
        ("decoder.deconv.bias", vec![32]),
        ("decoder.conv.weight", vec![1, 32, 3, 3]),
        ("decoder.conv.bias", vec![1]),
    ]
}

pub struct Vae {
    pub config: VaeConfig,
    params: Vec<Var>,
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

impl Vae {
    /// Keras initialisation: Glorot-uniform kernels, zero biases.
    pub fn new_random(config: VaeConfig, rng: &mut impl Rng, dev: &Device) -> Result<Self> {
        if let Err(e) = config.validate() {
            bail!("{e}")
        }
        let mut params = Vec::new();
        for (key, shape) in layout(config.latent_dim) {
            let t = if key.ends_with(".bias") {
                Tensor::zeros(shape.as_slice(), DType::F32, dev)?
            } else {
                let (fan_in, fan_out) = glorot_fans(&shape, key.contains("deconv"));
                let rows = shape[0];
                let cols: usize = shape[1..].iter().product();
                init::glorot_uniform((rows, cols), fan_in, fan_out, rng, dev)?
                    .reshape(shape.as_slice())?
            };
            params.push(Var::from_tensor(&t)?);
        }
        Ok(Self { config, params })
    }

    /// From saved weights, checking every key and shape.
    pub fn from_tensors(
        config: VaeConfig,
        weights: &std::collections::HashMap<String, Tensor>,
        dev: &Device,
    ) -> Result<Self> {
        let mut params = Vec::new();
        for (key, shape) in layout(config.latent_dim) {
            let Some(t) = weights.get(key) else {
                bail!("weights lack `{key}`")
            };
            if t.dims() != shape.as_slice() {
                bail!("`{key}` has shape {:?}, expected {shape:?}", t.dims())
            }
            params.push(Var::from_tensor(&t.to_device(dev)?.to_dtype(DType::F32)?)?);
        }
        Ok(Self { config, params })
    }

    pub fn tensors(&self) -> Vec<(String, Tensor)> {
        layout(self.config.latent_dim)
            .into_iter()
            .zip(&self.params)
            .map(|((k, _), v)| (k.to_string(), v.as_tensor().clone()))
            .collect()
    }

    pub fn vars(&self) -> Vec<Var> {
        self.params.clone()
    }

    pub fn parameter_count(&self) -> usize {
        self.params.iter().map(|p| p.elem_count()).sum()
    }

    fn p(&self, i: usize) -> &Tensor {
        self.params[i].as_tensor()
    }

    fn conv(&self, x: &Tensor, w: usize, p: Conv2dParams) -> Result<Tensor> {
        add_channel_bias(&conv2d(x, self.p(w), p)?, self.p(w + 1))
    }

    /// `relu(conv(x) + b)` as one node on the CPU (ReLU's gradient at 0 is 0, as in
    /// TensorFlow and PyTorch).
    fn conv_relu(&self, x: &Tensor, w: usize, p: Conv2dParams) -> Result<Tensor> {
        conv2d_bias_relu(x, self.p(w), self.p(w + 1), p, 0.0)
    }

    fn dense(&self, x: &Tensor, w: usize) -> Result<Tensor> {
        linear(x, self.p(w), self.p(w + 1))
    }

    fn dense_relu(&self, x: &Tensor, w: usize) -> Result<Tensor> {
        linear_relu(x, self.p(w), self.p(w + 1), 0.0)
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
        let same = Conv2dParams::same(3);
        let x = self.conv_relu(images, 0, same)?;
        // Keras `same` at stride 2 on 28: pad 0 before and 1 after on each axis.
        let down = Conv2dParams {
            stride: (2, 2),
            padding: [0, 1, 0, 1],
        };
        let x = self.conv_relu(&x, 2, down)?;
        let x = self.conv_relu(&x, 4, same)?;
        let x = self.conv_relu(&x, 6, same)?;
        let x = self.dense_relu(&x.reshape((b, ()))?, 8)?;
        Ok(Encoded {
            z_mean: self.dense(&x, 10)?,
            z_log_var: self.dense(&x, 12)?,
        })
    }

    /// Decoder logits (B, 1, 28, 28) for latent points `z` (B, latent).
    pub fn decode_logits(&self, z: &Tensor) -> Result<Tensor> {
        let b = z.dim(0)?;
        let x = self.dense_relu(z, 14)?.reshape((b, 64, HALF, HALF))?;
        // Keras Conv2DTranspose(k=3, s=2, same) = padding 1, output_padding 1.
        let up = ConvTranspose2dParams {
            padding: 1,
            output_padding: 1,
            stride: 2,
        };
        let x = conv_transpose2d_bias_relu(&x, self.p(16), self.p(17), up, 0.0)?;
        self.conv(&x, 18, Conv2dParams::same(3))
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
