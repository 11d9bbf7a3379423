//! What a trained VAE serves (SPEC §4): the latent grid, decoding chosen points, encoding
//! images, concept vectors (class-mean differences) and latent interpolation.

use candle_core::{DType, Device, Tensor};
use oneiro_models::Vae;
use oneiro_models::vae::SIDE;

use crate::store::{ModelRecord, ModelStore};
use crate::{Error, Result, imageio};

/// Points decoded per forward pass.
const DECODE_BATCH: usize = 256;
/// The most latent points / images one request may ask for.
pub const MAX_POINTS: usize = 4096;

/// A loaded VAE, kept resident by the daemon.
pub struct VaeRunner {
    pub model: Vae,
    /// Mean latent code of each digit class (empty for a class never seen).
    pub class_means: Option<Vec<Vec<f32>>>,
}

/// The standard normal quantile function (inverse CDF).
///
/// Hand-written: it is the only special function needed, and the crates that offer it
/// (statrs) bring linear-algebra dependencies with them. Acklam's rational approximation
/// (relative error < 1.2e-9) is refined by one Halley step on `erfc`, itself from the
/// Numerical Recipes Chebyshev fit (< 1.2e-7), which keeps the result within ~1e-9.
pub fn normal_quantile(p: f64) -> f64 {
    assert!(p > 0.0 && p < 1.0, "quantile of {p}");
    const A: [f64; 6] = [
        -3.969_683_028_665_376e1,
        2.209_460_984_245_205e2,
        -2.759_285_104_469_687e2,
        1.383_577_518_672_69e2,
        -3.066_479_806_614_716e1,
        2.506_628_277_459_239,
    ];
    const B: [f64; 5] = [
        -5.447_609_879_822_406e1,
        1.615_858_368_580_409e2,
        -1.556_989_798_598_866e2,
        6.680_131_188_771_972e1,
        -1.328_068_155_288_572e1,
    ];
    const C: [f64; 6] = [
        -7.784_894_002_430_293e-3,
        -3.223_964_580_411_365e-1,
        -2.400_758_277_161_838,
        -2.549_732_539_343_734,
        4.374_664_141_464_968,
        2.938_163_982_698_783,
    ];
    const D: [f64; 4] = [
        7.784_695_709_041_462e-3,
        3.224_671_290_700_398e-1,
        2.445_134_137_142_996,
        3.754_408_661_907_416,
    ];
    let tail = |q: f64| {
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    };
    let x = if p < 0.02425 {
        tail((-2.0 * p.ln()).sqrt())
    } else if p > 1.0 - 0.02425 {
        -tail((-2.0 * (1.0 - p).ln()).sqrt())
    } else {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    };
    let e = 0.5 * erfc(-x / std::f64::consts::SQRT_2) - p;
    let u = e * (2.0 * std::f64::consts::PI).sqrt() * (x * x / 2.0).exp();
    x - u / (1.0 + x * u / 2.0)
}

fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let r = t
        * (-z * z - 1.265_512_23
            + t * (1.000_023_68
                + t * (0.374_091_96
                    + t * (0.096_784_18
                        + t * (-0.186_288_06
                            + t * (0.278_868_07
                                + t * (-1.135_203_98
                                    + t * (1.488_515_87
                                        + t * (-0.822_152_23 + t * 0.170_872_77)))))))))
            .exp();
    if x >= 0.0 { r } else { 2.0 - r }
}

/// The book's grid coordinates: `norm.ppf(linspace(0.05, 0.95, n))`.
pub fn grid_coordinates(n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let p = if n == 1 {
                0.5
            } else {
                0.05 + 0.9 * i as f64 / (n - 1) as f64
            };
            normal_quantile(p) as f32
        })
        .collect()
}

impl VaeRunner {
    pub fn new(model: Vae, class_means: Option<Vec<Vec<f32>>>) -> Self {
        Self { model, class_means }
    }

    pub fn load(store: &ModelStore, record: &ModelRecord, device: &Device) -> Result<Self> {
        let cfg = record.vae_config()?.clone();
        let (weights, _) = store.load_checkpoint(record, device)?;
        let model = Vae::from_tensors(cfg, &weights, device)
            .map_err(|e| Error::Corrupt(format!("model {:?}: {e}", record.name)))?;
        Ok(Self::new(model, record.class_means().map(<[_]>::to_vec)))
    }

    pub fn latent_dim(&self) -> usize {
        self.model.config.latent_dim
    }

    /// Device bytes the weights hold.
    pub fn resident_bytes(&self) -> u64 {
        self.model.parameter_count() as u64 * 4
    }

    fn device(&self) -> Device {
        self.model.vars()[0].device().clone()
    }

    fn check_point(&self, p: &[f32], what: &str) -> Result<()> {
        if p.len() != self.latent_dim() {
            return Err(Error::invalid(format!(
                "{what} has {} coordinates; this model's latent space has {}",
                p.len(),
                self.latent_dim()
            )));
        }
        if let Some(bad) = p.iter().find(|v| !v.is_finite()) {
            return Err(Error::invalid(format!(
                "{what} has a non-finite coordinate {bad}"
            )));
        }
        Ok(())
    }

    /// Decoded images (784 grey levels in [0, 1] each) of latent `points`.
    pub fn decode(&self, points: &[Vec<f32>]) -> Result<Vec<Vec<f32>>> {
        if points.is_empty() || points.len() > MAX_POINTS {
            return Err(Error::invalid(format!(
                "give 1 to {MAX_POINTS} latent points, not {}",
                points.len()
            )));
        }
        for (i, p) in points.iter().enumerate() {
            self.check_point(p, &format!("point {i}"))?;
        }
        let dev = self.device();
        let mut out = Vec::with_capacity(points.len());
        for chunk in points.chunks(DECODE_BATCH) {
            let flat: Vec<f32> = chunk.iter().flatten().copied().collect();
            let z = Tensor::from_vec(flat, (chunk.len(), self.latent_dim()), &dev)?;
            let img = self.model.decode(&z)?.flatten_from(1)?;
            out.extend(img.to_dtype(DType::F32)?.to_vec2::<f32>()?);
        }
        Ok(out)
    }

    /// Latent (mean, log-variance) of each image (784 grey levels in [0, 1]).
    pub fn encode(&self, images: &[Vec<f32>]) -> Result<Vec<(Vec<f32>, Vec<f32>)>> {
        if images.is_empty() || images.len() > MAX_POINTS {
            return Err(Error::invalid(format!(
                "give 1 to {MAX_POINTS} images, not {}",
                images.len()
            )));
        }
        let dev = self.device();
        let mut out = Vec::with_capacity(images.len());
        for chunk in images.chunks(DECODE_BATCH) {
            let flat: Vec<f32> = chunk.iter().flatten().copied().collect();
            if flat.len() != chunk.len() * SIDE * SIDE {
                return Err(Error::invalid("every image must have 28×28 grey levels"));
            }
            let x = Tensor::from_vec(flat, (chunk.len(), 1, SIDE, SIDE), &dev)?;
            let enc = self.model.encode(&x)?;
            let m = enc.z_mean.to_dtype(DType::F32)?.to_vec2::<f32>()?;
            let v = enc.z_log_var.to_dtype(DType::F32)?.to_vec2::<f32>()?;
            out.extend(m.into_iter().zip(v));
        }
        Ok(out)
    }

    /// The book's latent grid: `size`×`size` decoded digits at standard-normal quantiles,
    /// row i at second coordinate q[i], column j at first coordinate q[j] (further
    /// coordinates, for latent spaces over 2-D, at 0). Returns the mosaic's pixels.
    pub fn grid(&self, size: usize) -> Result<Vec<f32>> {
        if size == 0 || size > 64 {
            return Err(Error::invalid(format!(
                "grid size must be 1 to 64, got {size}"
            )));
        }
        let q = grid_coordinates(size);
        let mut points = Vec::with_capacity(size * size);
        for &yi in &q {
            for &xi in &q {
                let mut p = vec![0f32; self.latent_dim()];
                p[0] = xi;
                if p.len() > 1 {
                    p[1] = yi;
                }
                points.push(p);
            }
        }
        let tiles = self.decode(&points)?;
        Ok(imageio::tile(&tiles, size, size, SIDE, 1))
    }

    pub fn grid_png(&self, size: usize) -> Result<Vec<u8>> {
        let side = (size * SIDE) as u32;
        imageio::encode_png(&self.grid(size)?, side, side, 1)
    }

    /// `mean(class to) − mean(class from)` in latent space.
    pub fn concept_vector(&self, from: u32, to: u32) -> Result<Vec<f32>> {
        let means = self.class_means.as_ref().ok_or_else(|| {
            Error::FailedPrecondition(
                "this model has no class means yet (they are computed at the end of each training epoch)".into(),
            )
        })?;
        let get = |c: u32| -> Result<&Vec<f32>> {
            match means.get(c as usize) {
                Some(m) if m.len() == self.latent_dim() => Ok(m),
                Some(_) => Err(Error::FailedPrecondition(format!(
                    "class {c} had no images in the data the class means came from"
                ))),
                None => Err(Error::invalid(format!(
                    "class {c} does not exist (classes are 0 to {})",
                    means.len().saturating_sub(1)
                ))),
            }
        };
        let (a, b) = (get(from)?, get(to)?);
        Ok(b.iter().zip(a).map(|(b, a)| b - a).collect())
    }

    /// `image` moved along `vector` by `amount` in latent space (from its mean code).
    pub fn apply_concept(&self, image: &[f32], vector: &[f32], amount: f32) -> Result<Vec<f32>> {
        let (mean, _) = self.encode(&[image.to_vec()])?.remove(0);
        self.move_code(&mean, vector, amount)
    }

    /// The image decoded at `code + amount · vector`.
    pub fn move_code(&self, code: &[f32], vector: &[f32], amount: f32) -> Result<Vec<f32>> {
        self.check_point(vector, "the concept vector")?;
        if !amount.is_finite() {
            return Err(Error::invalid(format!(
                "amount must be finite, got {amount}"
            )));
        }
        let z: Vec<f32> = code
            .iter()
            .zip(vector)
            .map(|(m, v)| m + amount * v)
            .collect();
        Ok(self.decode(&[z])?.remove(0))
    }

    /// `frames` images along the straight latent line from `a`'s code to `b`'s, both ends
    /// included.
    pub fn morph(&self, a: &[f32], b: &[f32], frames: usize) -> Result<Vec<Vec<f32>>> {
        if !(2..=256).contains(&frames) {
            return Err(Error::invalid(format!(
                "frames must be 2 to 256, got {frames}"
            )));
        }
        let codes = self.encode(&[a.to_vec(), b.to_vec()])?;
        let (za, zb) = (&codes[0].0, &codes[1].0);
        let points: Vec<Vec<f32>> = (0..frames)
            .map(|i| {
                let t = i as f32 / (frames - 1) as f32;
                za.iter().zip(zb).map(|(a, b)| a + t * (b - a)).collect()
            })
            .collect();
        self.decode(&points)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_match_scipy() {
        // scipy.stats.norm.ppf at these points.
        for (p, want) in [
            (0.05, -1.6448536269514729),
            (0.5, 0.0),
            (0.8, 0.8416212335729143),
            (0.95, 1.6448536269514722),
            (1e-6, -4.753424308817091),
            (0.999, 3.090232306167813),
        ] {
            let got = normal_quantile(p);
            assert!((got - want).abs() < 1e-6, "ppf({p}) = {got}, want {want}");
        }
        let q = grid_coordinates(15);
        assert_eq!(q.len(), 15);
        assert!((q[0] + 1.644_853_6).abs() < 1e-5 && (q[7]).abs() < 1e-6);
        assert!(q.windows(2).all(|w| w[0] < w[1]));
    }
}
