//! A dense layer `y = act(x · wᵀ + b)` with PyTorch's weight layout (`w` is
//! `(out, in)`), optionally fused with a (leaky) ReLU.
//!
//! Written by hand because candle's autograd of `x.matmul(&w.t()?)?.broadcast_add(&b)`
//! pays three avoidable passes per step on the CPU, measured on the VAE's dense layers
//! (batch 16, 12,544 ↔ 32 and 2 → 12,544 units, 2 threads): the weight gradient comes out
//! as `xᵀ · dy`, the transpose of the weight, and is copied into the weight's layout by a
//! strided gather (1.1 ms of the encoder layer's 2.2 ms); the bias gradient is a strided
//! `sum` over the batch (0.63 ms for the decoder's 12,544 units); and the ReLU's backward
//! is three more element-wise ops. Here the weight gradient is computed in the weight's
//! own layout (`dyᵀ · x`), the bias gradient is one pass over the rows, the activation
//! is applied in place, and the three products run on the convolutions' AVX-512 kernel.
//! Off the CPU or outside f32: candle's ops.

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Storage, Tensor, bail};

use crate::gemm::matmul;

/// `x (n, in) · wᵀ + b` with `w (out, in)` and `b (out)`; differentiable in all three.
pub fn linear(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    dense(x, w, b, None)
}

/// `act(x (n, in) · wᵀ + b)` with `act(z) = z if z > 0 else negative_slope · z`
/// (`negative_slope = 0`: plain ReLU, gradient 0 at `z = 0` as in PyTorch);
/// differentiable in all three. `negative_slope` must be finite and non-negative.
pub fn linear_relu(x: &Tensor, w: &Tensor, b: &Tensor, negative_slope: f32) -> Result<Tensor> {
    if !(negative_slope.is_finite() && negative_slope >= 0.0) {
        bail!("linear_relu: negative slope {negative_slope} must be finite and >= 0")
    }
    dense(x, w, b, Some(negative_slope))
}

fn dense(x: &Tensor, w: &Tensor, b: &Tensor, slope: Option<f32>) -> Result<Tensor> {
    let (_, k) = x.dims2()?;
    let (m, kw) = w.dims2()?;
    if kw != k || b.dims() != [m] {
        bail!(
            "linear: input {:?}, weight {:?} and bias {:?} do not fit (weight is (out, in))",
            x.dims(),
            w.dims(),
            b.dims()
        )
    }
    let cpu_f32 = [x, w, b]
        .iter()
        .all(|t| t.device().is_cpu() && t.dtype() == DType::F32);
    if cpu_f32 {
        x.contiguous()?
            .apply_op3(&w.contiguous()?, &b.contiguous()?, Dense { slope })
    } else {
        composed(x, w, b, slope)
    }
}

/// The layer as candle's ops: the fallback off the CPU and the tests' reference.
/// `where(z > 0)` rather than `relu`, whose gradient at `z = 0` differs from the kernel's.
fn composed(x: &Tensor, w: &Tensor, b: &Tensor, slope: Option<f32>) -> Result<Tensor> {
    let z = x.matmul(&w.t()?)?.broadcast_add(b)?;
    match slope {
        None => Ok(z),
        Some(s) => crate::bias::act_composed(&z, s),
    }
}

struct Dense {
    slope: Option<f32>,
}

impl CustomOp3 for Dense {
    fn name(&self) -> &'static str {
        "linear"
    }

    #[allow(clippy::too_many_arguments)]
    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, k) = xl.shape().dims2()?;
        let m = wl.shape().dims()[0];
        let f32s = crate::bias::contiguous_f32;
        let (x, w, b) = (
            f32s(xs, xl, "linear")?,
            f32s(ws, wl, "linear")?,
            f32s(bs, bl, "linear")?,
        );
        let mut y = x_wt(n, k, m, x, w);
        let slope = self.slope;
        crate::par::for_chunks_mut(
            &mut y,
            ROWS_FLOATS.next_multiple_of(m.max(1)),
            move |_, rows| {
                for row in rows.chunks_mut(m) {
                    match slope {
                        Some(s) => row
                            .iter_mut()
                            .zip(b)
                            .for_each(|(v, &b)| *v = crate::bias::bias_act(*v, b, s)),
                        None => row.iter_mut().zip(b).for_each(|(v, &b)| *v += b),
                    }
                }
            },
        );
        Ok((CpuStorage::F32(y), Shape::from((n, m))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dz = match self.slope {
            Some(s) => crate::bias::act_grad(res, grad, s)?,
            None => grad.contiguous()?,
        };
        let db = b.track_op().then(|| column_sums(&dz)).transpose()?;
        let on_cpu = [&dz, x, w]
            .iter()
            .all(|t| t.device().is_cpu() && t.dtype() == DType::F32);
        if !on_cpu {
            // `dzᵀ · x` lands in the weight's (out, in) layout; candle's product reads
            // `dzᵀ` through its strides.
            let dx = x.track_op().then(|| dz.matmul(w)).transpose()?;
            let dw = w.track_op().then(|| dz.t()?.matmul(x)).transpose()?;
            return Ok((dx, dw, db));
        }
        let ((n, m), k) = (dz.dims2()?, x.dim(1)?);
        let dev = x.device();
        let dx = if x.track_op() {
            let v = with_f32(&dz, |dz| with_f32(w, |w| matmul(n, dz, m, (m, k, w, k, 1))))??;
            Some(Tensor::from_vec(v, (n, k), dev)?)
        } else {
            None
        };
        let dw = if w.track_op() {
            // dW = dzᵀ · x, in the weight's (out, in) layout.
            let v = with_f32(&dz, |dz| {
                let mut dzt = crate::buffers::take(m * n);
                crate::gemm::transpose(dz, n, m, &mut dzt);
                with_f32(x, |x| matmul(m, &dzt, n, (n, k, x, k, 1)))
            })??;
            Some(Tensor::from_vec(v, (m, k), dev)?)
        } else {
            None
        };
        Ok((dx, dw, db))
    }
}

/// `x (n × k) · wᵀ` for `w (m × k)`, on the convolutions' AVX-512 kernel (candle's CPU
/// product runs the `gemm` crate's AVX2 kernels: the VAE's encoder layer took 0.25 ms
/// forward where PyTorch takes 0.11). The kernel packs its right operand from strided
/// reads, so the cheaper form is taken: `x · wᵀ` packs `w` (m·k reads); `(w · xᵀ)ᵀ`
/// packs `x` (n·k) and transposes the n·m result.
fn x_wt(n: usize, k: usize, m: usize, x: &[f32], w: &[f32]) -> Vec<f32> {
    if n * k + n * m < m * k {
        let yt = matmul(m, w, k, (k, n, x, 1, k));
        let mut y = vec![0f32; n * m];
        crate::gemm::transpose(&yt, m, n, &mut y);
        y
    } else {
        matmul(n, x, k, (k, m, w, 1, k))
    }
}

/// `f` of the elements of a contiguous f32 CPU tensor.
fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    let (Storage::Cpu(st), Some((start, end))) = (&*storage, layout.contiguous_offsets()) else {
        bail!("linear: expected a contiguous CPU tensor")
    };
    Ok(f(&st.as_slice::<f32>()?[start..end]))
}

/// Floats per work item of the bias and activation pass.
const ROWS_FLOATS: usize = 1 << 14;

/// `Σ_rows dz (n, m)` → `(m)`, added in f64 in row order (one pass over `dz`; the
/// result does not depend on the thread count).
fn column_sums(dz: &Tensor) -> Result<Tensor> {
    let (_, m) = dz.dims2()?;
    let mut sums = vec![0f64; m];
    with_f32(dz, |v| {
        for row in v.chunks(m.max(1)) {
            for (s, &g) in sums.iter_mut().zip(row) {
                *s += g as f64;
            }
        }
    })?;
    let sums: Vec<f32> = sums.into_iter().map(|s| s as f32).collect();
    Tensor::from_vec(sums, m, dz.device())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn max_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
        (a - b)?.abs()?.max_all()?.to_scalar::<f32>()
    }

    /// Forward and all three gradients against candle's composition, for each activation,
    /// on shapes like the VAE's (wide in, wide out) and a batch of one.
    #[test]
    fn matches_candles_composition_and_its_gradients() -> Result<()> {
        let dev = Device::Cpu;
        // (3, 7, 12544): an output of several work items of the bias pass.
        for (n, k, m) in [
            (5, 37, 3),
            (1, 4, 9),
            (16, 300, 32),
            (3, 2, 1000),
            (3, 7, 12544),
        ] {
            for slope in [None, Some(0.0), Some(0.2)] {
                let x = Var::from_tensor(&Tensor::randn(0f32, 1f32, (n, k), &dev)?)?;
                let w = Var::from_tensor(&Tensor::randn(0f32, 0.3f32, (m, k), &dev)?)?;
                let b = Var::from_tensor(&Tensor::randn(0f32, 1f32, m, &dev)?)?;
                let r = Tensor::randn(0f32, 1f32, (n, m), &dev)?;
                let ours = dense(x.as_tensor(), w.as_tensor(), b.as_tensor(), slope)?;
                let theirs = composed(x.as_tensor(), w.as_tensor(), b.as_tensor(), slope)?;
                let tol = 1e-5
                    * (k as f32).sqrt()
                    * (1.0 + theirs.abs()?.max_all()?.to_scalar::<f32>()?);
                assert!(
                    max_diff(&ours, &theirs)? <= tol,
                    "forward {n}×{k}→{m} {slope:?}"
                );
                let g1 = (ours * &r)?.sum_all()?.backward()?;
                let g2 = (theirs * &r)?.sum_all()?.backward()?;
                for (v, what) in [(&x, "x"), (&w, "w"), (&b, "b")] {
                    let (a, c) = (g1.get(v).unwrap(), g2.get(v).unwrap());
                    assert_eq!(a.dims(), v.dims());
                    assert!(a.is_contiguous());
                    let tol = 1e-5
                        * (n.max(m) as f32).sqrt()
                        * (1.0 + c.abs()?.max_all()?.to_scalar::<f32>()?);
                    assert!(max_diff(a, c)? <= tol, "d{what} {n}×{k}→{m} {slope:?}");
                }
            }
        }
        Ok(())
    }

    /// Central differences of `Σ y · r` in f32 against the analytic gradients, away from
    /// the kink.
    #[test]
    fn gradients_match_finite_differences() -> Result<()> {
        let dev = Device::Cpu;
        let (n, k, m) = (3, 5, 4);
        let xv: Vec<f32> = (0..n * k)
            .map(|i| ((i * 7 % 11) as f32 - 5.0) / 4.0)
            .collect();
        let wv: Vec<f32> = (0..m * k)
            .map(|i| ((i * 5 % 13) as f32 - 6.0) / 7.0)
            .collect();
        let bv: Vec<f32> = (0..m).map(|i| i as f32 * 0.3 - 0.45).collect();
        let r = Tensor::from_vec(
            (0..n * m).map(|i| (i % 5) as f32 - 2.0).collect::<Vec<_>>(),
            (n, m),
            &dev,
        )?;
        let loss = |xv: &[f32], wv: &[f32], bv: &[f32]| -> Result<f64> {
            let y = linear_relu(
                &Tensor::from_slice(xv, (n, k), &dev)?,
                &Tensor::from_slice(wv, (m, k), &dev)?,
                &Tensor::from_slice(bv, m, &dev)?,
                0.1,
            )?;
            Ok((y * &r)?.sum_all()?.to_scalar::<f32>()? as f64)
        };
        let (x, w, b) = (
            Var::from_slice(&xv, (n, k), &dev)?,
            Var::from_slice(&wv, (m, k), &dev)?,
            Var::from_slice(&bv, m, &dev)?,
        );
        let g = (linear_relu(x.as_tensor(), w.as_tensor(), b.as_tensor(), 0.1)? * &r)?
            .sum_all()?
            .backward()?;
        let h = 1e-2f32;
        // The test's premise: no pre-activation within a step of the kink.
        let z = composed(x.as_tensor(), w.as_tensor(), b.as_tensor(), None)?;
        let nearest = z.abs()?.min_all()?.to_scalar::<f32>()?;
        assert!(
            nearest > 4.0 * h,
            "pre-activation {nearest} too near 0 for steps of {h}"
        );
        for which in 0..3 {
            let analytic = g
                .get([&x, &w, &b][which])
                .unwrap()
                .flatten_all()?
                .to_vec1::<f32>()?;
            for (i, &a) in analytic.iter().enumerate() {
                let mut p = [xv.clone(), wv.clone(), bv.clone()];
                let mut q = p.clone();
                p[which][i] += h;
                q[which][i] -= h;
                let fd =
                    (loss(&p[0], &p[1], &p[2])? - loss(&q[0], &q[1], &q[2])?) / (2.0 * h as f64);
                assert!(
                    (fd - a as f64).abs() < 2e-3,
                    "param {which} [{i}]: fd {fd} vs {a}"
                );
            }
        }
        Ok(())
    }

    #[test]
    fn frozen_parts_get_no_gradient_and_bad_shapes_are_named() -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 1f32, (2, 3), &dev)?)?;
        let w = Tensor::randn(0f32, 1f32, (4, 3), &dev)?;
        let b = Tensor::zeros(4, DType::F32, &dev)?;
        let g = linear(x.as_tensor(), &w, &b)?.sum_all()?.backward()?;
        assert!(g.get(&w).is_none() && g.get(&b).is_none() && g.get(&x).is_some());
        let e = linear(x.as_tensor(), &w.t()?, &b).unwrap_err().to_string();
        assert!(e.contains("(out, in)"), "{e}");
        let e = linear(x.as_tensor(), &w, &Tensor::zeros(3, DType::F32, &dev)?)
            .unwrap_err()
            .to_string();
        assert!(e.contains("bias [3]"), "{e}");
        let e = linear_relu(x.as_tensor(), &w, &b, f32::NAN)
            .unwrap_err()
            .to_string();
        assert!(e.contains("negative slope NaN"), "{e}");
        Ok(())
    }

    /// Transposed and narrowed operands give what their contiguous copies give, and their
    /// gradients reach the original variables.
    #[test]
    fn strided_operands_are_read_as_their_values() -> Result<()> {
        let dev = Device::Cpu;
        let xt = Var::from_tensor(&Tensor::randn(0f32, 1f32, (6, 4), &dev)?)?;
        let wt = Var::from_tensor(&Tensor::randn(0f32, 1f32, (6, 5), &dev)?)?;
        let bb = Var::from_tensor(&Tensor::randn(0f32, 1f32, 8, &dev)?)?;
        let (x, w, b) = (
            xt.as_tensor().t()?,
            wt.as_tensor().t()?,
            bb.as_tensor().narrow(0, 2, 5)?,
        );
        assert!(!x.is_contiguous() && !w.is_contiguous());
        let ours = linear_relu(&x, &w, &b, 0.1)?;
        let theirs = composed(
            &x.contiguous()?,
            &w.contiguous()?,
            &b.contiguous()?,
            Some(0.1),
        )?;
        assert!(max_diff(&ours, &theirs)? < 1e-5);
        let g = ours.sum_all()?.backward()?;
        let h = theirs.sum_all()?.backward()?;
        for v in [&xt, &wt, &bb] {
            assert!(max_diff(g.get(v).unwrap(), h.get(v).unwrap())? < 1e-5);
        }
        Ok(())
    }

    /// Plain ReLU is 0 below zero even at −∞ (not `0 · −∞`), as candle's `relu`; the
    /// leaky one keeps −∞.
    #[test]
    fn relu_of_minus_infinity_is_zero() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::ones((1, 2), DType::F32, &dev)?;
        let w = Tensor::ones((2, 2), DType::F32, &dev)?;
        let b = Tensor::new(&[f32::NEG_INFINITY, -5.0], &dev)?;
        let y = linear_relu(&x, &w, &b, 0.0)?.to_vec2::<f32>()?;
        assert_eq!(y, [[0.0, 0.0]]);
        assert!(y[0].iter().all(|v| v.is_sign_positive()));
        let y = linear_relu(&x, &w, &b, 0.5)?.to_vec2::<f32>()?;
        assert_eq!(y, [[f32::NEG_INFINITY, -1.5]]);
        Ok(())
    }
}
