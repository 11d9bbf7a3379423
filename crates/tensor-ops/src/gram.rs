//! The Gram matrix `G = F · Fᵀ` of a `(C, N)` feature matrix (style losses), with its
//! backward `dF = (dG + dGᵀ) · F`.
//!
//! Written by hand because candle's `f.matmul(&f.t())` runs on the `gemm` crate's AVX2
//! kernel on rayon's pool (~7% of a style-transfer evaluation on the development VM) and
//! its backward builds two products plus a transposed copy of `Fᵀ`'s gradient. Here the
//! forward is one product on the convolutions' AVX-512 kernel and the backward one more.
//! Off the CPU or outside f32: candle's matmul.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor, bail};

use crate::gemm::matmul;

/// `f · fᵀ` for `f (C, N)`; differentiable.
pub fn gram(f: &Tensor) -> Result<Tensor> {
    let (_, _) = f.dims2()?;
    if f.device().is_cpu() && f.dtype() == DType::F32 {
        f.contiguous()?.apply_op1(Gram)
    } else {
        f.matmul(&f.t()?)
    }
}

fn slice<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    crate::bias::contiguous_f32(s, l, "gram")
}

struct Gram;

impl CustomOp1 for Gram {
    fn name(&self) -> &'static str {
        "gram"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (c, n) = l.shape().dims2()?;
        let f = slice(s, l)?;
        // G[i, j] = Σ_p F[i, p] · F[j, p]: the rhs element (p, j) is F[j · n + p]. Each
        // entry sums its products in the same order as its mirror: G is exactly symmetric.
        let g = matmul(c, f, n, (n, c, f, 1, n));
        Ok((CpuStorage::F32(g), Shape::from((c, c))))
    }

    fn bwd(&self, f: &Tensor, _g: &Tensor, dg: &Tensor) -> Result<Option<Tensor>> {
        let s = (dg + dg.t()?)?.contiguous()?;
        Ok(Some(s.apply_op2_no_bwd(&f.contiguous()?, &GramBackward)?))
    }
}

/// `(S (C, C), F (C, N)) → S · F`.
struct GramBackward;

impl CustomOp2 for GramBackward {
    fn name(&self) -> &'static str {
        "gram-bwd"
    }

    fn cpu_fwd(
        &self,
        ss: &CpuStorage,
        sl: &Layout,
        fs: &CpuStorage,
        fl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (c, n) = fl.shape().dims2()?;
        if sl.shape().dims2()? != (c, c) {
            bail!("gram backward: {:?} vs {:?}", sl.dims(), fl.dims())
        }
        let df = matmul(c, slice(ss, sl)?, c, (c, n, slice(fs, fl)?, n, 1));
        Ok((CpuStorage::F32(df), Shape::from((c, n))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn noise(len: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
            })
            .collect()
    }

    fn vec2(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    /// Forward and gradient against candle's `f.matmul(f.t())`, at shapes that cross the
    /// kernel's tiles (6 rows), panels (64 columns) and depth blocks (128).
    #[test]
    fn matches_candle_matmul() -> Result<()> {
        for &(c, n) in &[(1, 1), (3, 5), (7, 130), (64, 96), (70, 300), (130, 257)] {
            let f = Var::from_vec(noise(c * n, (c * n) as u64), (c, n), &Device::Cpu)?;
            let w = Tensor::from_vec(noise(c * c, 9), (c, c), &Device::Cpu)?;
            let ours = gram(f.as_tensor())?;
            let theirs = f.as_tensor().matmul(&f.as_tensor().t()?)?;
            let tol = 1e-5 * n as f32;
            for (a, b) in vec2(&ours).iter().zip(vec2(&theirs)) {
                assert!((a - b).abs() <= tol, "({c}, {n}): {a} vs {b}");
            }
            let g = vec2(&ours).chunks(c).enumerate().all(|(i, row)| {
                row.iter()
                    .enumerate()
                    .all(|(j, v)| *v == vec2(&ours)[j * c + i])
            });
            assert!(g, "({c}, {n}): not symmetric");
            let d_ours = (ours * &w)?.sum_all()?.backward()?;
            let d_theirs = (theirs * &w)?.sum_all()?.backward()?;
            let (a, b) = (
                vec2(d_ours.get(&f).unwrap()),
                vec2(d_theirs.get(&f).unwrap()),
            );
            for (a, b) in a.iter().zip(&b) {
                assert!(
                    (a - b).abs() <= 1e-5 * c as f32,
                    "({c}, {n}) grad: {a} vs {b}"
                );
            }
        }
        Ok(())
    }

    /// Central differences (f64 loss) against the autograd gradient of `Σ G ⊙ W`.
    #[test]
    fn gradient_matches_finite_differences() -> Result<()> {
        let (c, n) = (5, 7);
        let fv = noise(c * n, 3);
        let wv = noise(c * c, 4);
        let f = Var::from_vec(fv.clone(), (c, n), &Device::Cpu)?;
        let w = Tensor::from_vec(wv.clone(), (c, c), &Device::Cpu)?;
        let grads = (gram(f.as_tensor())? * &w)?.sum_all()?.backward()?;
        let auto = vec2(grads.get(&f).unwrap());
        let loss = |v: &[f32]| -> Result<f64> {
            let g = vec2(&gram(&Tensor::from_slice(v, (c, n), &Device::Cpu)?)?);
            Ok(g.iter().zip(&wv).map(|(&a, &b)| a as f64 * b as f64).sum())
        };
        let eps = 1e-2f32;
        for i in 0..fv.len() {
            let (mut plus, mut minus) = (fv.clone(), fv.clone());
            plus[i] += eps;
            minus[i] -= eps;
            let fd = (loss(&plus)? - loss(&minus)?) / ((plus[i] as f64) - (minus[i] as f64));
            assert!(
                (fd - auto[i] as f64).abs() < 1e-3,
                "element {i}: finite difference {fd}, autograd {}",
                auto[i]
            );
        }
        Ok(())
    }
}
