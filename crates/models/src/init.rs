//! Keras' weight initialisers (the book's models were initialised with these).

use candle_core::{Device, Result, Tensor};
use rand::Rng;
use rand_distr::{Distribution, StandardNormal, Uniform};

/// Glorot (Xavier) uniform: U(±√(6 / (fan_in + fan_out))).
pub fn glorot_uniform(
    shape: (usize, usize),
    fan_in: usize,
    fan_out: usize,
    rng: &mut impl Rng,
    dev: &Device,
) -> Result<Tensor> {
    let limit = (6.0 / (fan_in + fan_out) as f64).sqrt() as f32;
    let dist = Uniform::new_inclusive(-limit, limit).expect("finite limits");
    let data: Vec<f32> = (0..shape.0 * shape.1).map(|_| dist.sample(rng)).collect();
    Tensor::from_vec(data, shape, dev)
}

/// A `(rows, cols)` matrix with orthonormal columns (rows ≥ cols) or rows, from the QR
/// decomposition of a Gaussian matrix, like Keras' `Orthogonal` (gain 1).
/// Hand-written (modified Gram–Schmidt in f64): candle has no QR, and this runs once per model.
pub fn orthogonal(shape: (usize, usize), rng: &mut impl Rng, dev: &Device) -> Result<Tensor> {
    let (rows, cols) = shape;
    let (n, k) = (rows.max(cols), rows.min(cols));
    // k column vectors of length n.
    let mut q: Vec<Vec<f64>> = (0..k)
        .map(|_| (0..n).map(|_| StandardNormal.sample(rng)).collect())
        .collect();
    for j in 0..k {
        for i in 0..j {
            let dot: f64 = q[j].iter().zip(&q[i]).map(|(a, b)| a * b).sum();
            let qi = q[i].clone();
            q[j].iter_mut().zip(&qi).for_each(|(a, b)| *a -= dot * b);
        }
        let norm = q[j].iter().map(|a| a * a).sum::<f64>().sqrt();
        q[j].iter_mut().for_each(|a| *a /= norm);
    }
    let mut data = vec![0f32; rows * cols];
    for (j, col) in q.iter().enumerate() {
        for (i, &x) in col.iter().enumerate() {
            // rows ≥ cols: vectors are columns; otherwise they are rows.
            let at = if rows >= cols {
                i * cols + j
            } else {
                j * cols + i
            };
            data[at] = x as f32;
        }
    }
    Tensor::from_vec(data, shape, dev)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn orthogonal_matrices_have_orthonormal_columns_or_rows() -> Result<()> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        for shape in [(12, 3), (3, 12), (5, 5)] {
            let m = orthogonal(shape, &mut rng, &Device::Cpu)?;
            let gram = if shape.0 >= shape.1 {
                m.t()?.matmul(&m)?
            } else {
                m.matmul(&m.t()?)?
            };
            let k = shape.0.min(shape.1);
            let err = (gram - Tensor::eye(k, candle_core::DType::F32, &Device::Cpu)?)?
                .abs()?
                .max_all()?
                .to_scalar::<f32>()?;
            assert!(err < 1e-5, "{shape:?}: {err}");
        }
        Ok(())
    }

    #[test]
    fn glorot_stays_inside_its_limit() -> Result<()> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        let m = glorot_uniform((20, 30), 30, 20, &mut rng, &Device::Cpu)?;
        let limit = (6.0f32 / 50.0).sqrt();
        assert!(m.abs()?.max_all()?.to_scalar::<f32>()? <= limit);
        Ok(())
    }
}
