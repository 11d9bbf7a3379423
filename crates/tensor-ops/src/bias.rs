//! Per-channel bias of a convolution's output, `y[n, c, h, w] = x[n, c, h, w] + b[c]`, alone
//! or fused with a (leaky) ReLU.
//!
//! Written by hand because candle's `broadcast_add` backward reduces the gradient to the
//! bias with a generic strided `sum_keepdim` over dims (0, 2, 3), which on the VAE's
//! training step took 10% of the time (profiled: `Map1::map` of `ReduceSum`); here it is
//! one contiguous pass per channel plane. The fused bias + activation also saves the two
//! extra full passes (and the saved intermediate) of a separate activation op and its
//! backward. Off the CPU or outside f32: candle's ops.

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Storage, Tensor, bail};

/// `x (B, C, H, W) + b (C)` broadcast over batch and space; differentiable in both.
pub fn add_channel_bias(x: &Tensor, b: &Tensor) -> Result<Tensor> {
    let c = check_bias(x, b)?;
    if is_cpu_f32(x, b) {
        x.contiguous()?.apply_op2(&b.contiguous()?, ChannelBias)
    } else {
        x.broadcast_add(&b.reshape((1, c, 1, 1))?)
    }
}

/// `y = z if z > 0 else negative_slope * z` with `z = x (B, C, H, W) + b (C)` broadcast over
/// batch and space, in one pass (`negative_slope = 0`: plain ReLU); differentiable in both.
/// The gradient at `z = 0` is `negative_slope` (0 for ReLU), as in PyTorch.
/// `negative_slope` must be finite and non-negative.
pub fn add_channel_bias_relu(x: &Tensor, b: &Tensor, negative_slope: f32) -> Result<Tensor> {
    let c = check_bias(x, b)?;
    if !(negative_slope.is_finite() && negative_slope >= 0.0) {
        bail!("add_channel_bias_relu: negative slope {negative_slope} must be finite and >= 0")
    }
    if is_cpu_f32(x, b) {
        x.contiguous()?.apply_op2(
            &b.contiguous()?,
            ChannelBiasAct {
                slope: negative_slope,
            },
        )
    } else {
        bias_act_composed(x, b, c, negative_slope)
    }
}

/// [`add_channel_bias_relu`] composed of candle's ops: the fallback and the reference.
/// `where(z > 0)` rather than `relu` / `maximum`, whose gradients at `z = 0` (1, and a
/// half split) differ from the CPU kernel's.
fn bias_act_composed(x: &Tensor, b: &Tensor, c: usize, slope: f32) -> Result<Tensor> {
    act_composed(&x.broadcast_add(&b.reshape((1, c, 1, 1))?)?, slope)
}

/// The (leaky) ReLU of the CPU kernels as candle's ops, for the composed fallbacks.
pub(crate) fn act_composed(z: &Tensor, slope: f32) -> Result<Tensor> {
    let neg = if slope == 0.0 {
        z.zeros_like()?
    } else {
        (z * slope as f64)?
    };
    z.gt(0f64)?.where_cond(z, &neg)
}

/// The channel count of `x`, checked against `b`.
fn check_bias(x: &Tensor, b: &Tensor) -> Result<usize> {
    let (_, c, _, _) = x.dims4()?;
    if b.dims() != [c] {
        bail!(
            "channel bias of shape {:?} for {c} channels of {:?}",
            b.dims(),
            x.dims()
        )
    }
    Ok(c)
}

fn is_cpu_f32(x: &Tensor, b: &Tensor) -> bool {
    x.device().is_cpu() && b.device().is_cpu() && x.dtype() == DType::F32 && b.dtype() == DType::F32
}

/// The bias gradient: `grad (B, C, H, W)` summed per channel in f64, one contiguous pass
/// per plane, the planes over the threads (on one thread it left the other core idle
/// for ~1% of a GAN step) and added per channel in plane order, so the result does not
/// depend on the thread count.
pub(crate) fn channel_sums(grad: &Tensor) -> Result<Tensor> {
    let (_, c, h, w) = grad.dims4()?;
    let grad = grad.contiguous()?;
    // Read in place (a copy into a Vec was a full extra pass per layer and step).
    let (storage, layout) = grad.storage_and_layout();
    let (Storage::Cpu(st), Some((start, end))) = (&*storage, layout.contiguous_offsets()) else {
        bail!("channel sums: not a contiguous CPU tensor")
    };
    let v = &st.as_slice::<f32>()?[start..end];
    let plane = (h * w).max(1);
    let mut plane_sums = vec![0f64; v.len().div_ceil(plane)];
    let per = CHUNK.div_ceil(plane);
    crate::par::for_chunks_mut(&mut plane_sums, per, |k, sums| {
        for (i, s) in sums.iter_mut().enumerate() {
            *s = v[(k * per + i) * plane..][..plane]
                .iter()
                .map(|&x| x as f64)
                .sum::<f64>();
        }
    });
    let mut sums = vec![0f64; c];
    for (i, s) in plane_sums.into_iter().enumerate() {
        sums[i % c] += s;
    }
    let sums: Vec<f32> = sums.into_iter().map(|s| s as f32).collect();
    Tensor::from_vec(sums, c, grad.device())
}

/// Floats per work item of the element-wise loops: big enough that the threads' hand-off
/// is noise, small enough that a 17×17×768 map still splits.
const CHUNK: usize = 1 << 14;

/// `f(bias(p), x)` for every element `x` of every plane `p` (`plane` floats each), over
/// the threads. (One thread did these passes in ~8% of a DeepDream step.) The result is
/// written once, without zeroing it first.
fn map_planes(
    x: &[f32],
    plane: usize,
    bias: impl Fn(usize) -> f32 + Sync,
    f: impl Fn(f32, f32) -> f32 + Sync,
) -> Vec<f32> {
    let mut y = Vec::with_capacity(x.len());
    if let Some(per) = CHUNK.checked_div(plane) {
        let per = per.max(1);
        crate::par::for_chunks_mut(
            &mut y.spare_capacity_mut()[..x.len()],
            per * plane,
            |item, y| {
                let x = &x[item * per * plane..][..y.len()];
                for (i, (y, x)) in y.chunks_mut(plane).zip(x.chunks(plane)).enumerate() {
                    let b = bias(item * per + i);
                    for (y, &v) in y.iter_mut().zip(x) {
                        y.write(f(b, v));
                    }
                }
            },
        );
    }
    // SAFETY: every element was written above (no plane means no element).
    unsafe { y.set_len(x.len()) };
    y
}

struct ChannelBias;

/// The `f32` elements of a contiguous CPU operand of custom op `what`.
pub(crate) fn contiguous_f32<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    let Some((start, end)) = l.contiguous_offsets() else {
        bail!("{what}: non-contiguous input")
    };
    Ok(&s.as_slice::<f32>()?[start..end])
}

fn slice<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    contiguous_f32(s, l, "channel bias")
}

impl CustomOp2 for ChannelBias {
    fn name(&self) -> &'static str {
        "channel-bias"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, b) = (slice(xs, xl)?, slice(bs, bl)?);
        let plane = xl.dims()[2] * xl.dims()[3];
        let c = b.len();
        let y = map_planes(x, plane, |i| b[i % c], |b, v| v + b);
        Ok((CpuStorage::F32(y), xl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dx = x.track_op().then(|| grad.clone());
        let db = if b.track_op() {
            Some(channel_sums(grad)?)
        } else {
            None
        };
        Ok((dx, db))
    }
}

/// [`add_channel_bias_relu`] on the CPU.
struct ChannelBiasAct {
    slope: f32,
}

impl CustomOp2 for ChannelBiasAct {
    fn name(&self) -> &'static str {
        "channel-bias-relu"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, b) = (slice(xs, xl)?, slice(bs, bl)?);
        let plane = xl.dims()[2] * xl.dims()[3];
        let c = b.len();
        let slope = self.slope;
        let y = map_planes(x, plane, |i| b[i % c], move |b, v| bias_act(v, b, slope));
        Ok((CpuStorage::F32(y), xl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        b: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dz = act_grad(res, grad, self.slope)?;
        let db = if b.track_op() {
            Some(channel_sums(&dz)?)
        } else {
            None
        };
        let dx = x.track_op().then_some(dz);
        Ok((dx, db))
    }
}

/// The gradient `dz` before the (leaky) ReLU from its output `y` and output gradient
/// `dy` (contiguous f32 on the CPU): `y > 0` exactly where `z > 0` (the slope is >= 0), so
/// the output decides.
pub(crate) fn act_grad(y: &Tensor, dy: &Tensor, slope: f32) -> Result<Tensor> {
    y.apply_op2_no_bwd(&dy.contiguous()?, &ActGrad { slope })
}

/// `act(v + b)`: the one definition of the (leaky) ReLU that the standalone and the fused
/// (conv2d_bias_relu) kernels share, so both give the same bits.
///
/// Written as selects between values computed on both sides, so that the loops compile
/// to vector blends: as a branch on the sign (with the slope reloaded each element) they
/// stayed scalar and mispredicted on every other element (~1 ms per 400 K elements,
/// forward plus backward). Plain ReLU gives 0 below zero, not `0 · z` (NaN at −∞, −0
/// elsewhere), as candle's `relu` and PyTorch do.
#[inline(always)]
pub(crate) fn bias_act(v: f32, b: f32, slope: f32) -> f32 {
    let z = v + b;
    let neg = if slope == 0.0 { 0.0 } else { slope * z };
    if z > 0.0 { z } else { neg }
}

/// The (leaky) ReLU's derivative at `z`: 1 above 0, `slope` elsewhere.
#[inline(always)]
fn act_factor(z: f32, slope: f32) -> f32 {
    if z > 0.0 { 1.0 } else { slope }
}

/// `y ← act(y + b[channel])` in place over `(B, C, H, W)` planes of `plane` floats, over
/// the threads.
pub(crate) fn bias_act_in_place(y: &mut [f32], plane: usize, b: &[f32], slope: f32) {
    let (c, plane) = (b.len(), plane.max(1));
    let per = (CHUNK / plane).max(1);
    crate::par::for_chunks_mut(y, per * plane, move |k, chunk| {
        for (j, p) in chunk.chunks_mut(plane).enumerate() {
            let bias = b[(k * per + j) % c];
            for v in p {
                *v = bias_act(*v, bias, slope);
            }
        }
    });
}

/// `(y, dy) → dz` of [`ChannelBiasAct`]: `dy` where `y > 0`, `slope · dy` elsewhere.
struct ActGrad {
    slope: f32,
}

impl CustomOp2 for ActGrad {
    fn name(&self) -> &'static str {
        "channel-bias-relu-bwd"
    }

    fn cpu_fwd(
        &self,
        ys: &CpuStorage,
        yl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (y, dy) = (slice(ys, yl)?, slice(gs, gl)?);
        if y.len() != dy.len() {
            bail!(
                "channel bias relu backward: {:?} vs {:?}",
                yl.dims(),
                gl.dims()
            )
        }
        let slope = self.slope;
        let mut dz = Vec::with_capacity(y.len());
        crate::par::for_chunks_mut(
            &mut dz.spare_capacity_mut()[..y.len()],
            CHUNK,
            move |k, d| {
                let (y, dy) = (&y[k * CHUNK..][..d.len()], &dy[k * CHUNK..][..d.len()]);
                for (d, (&y, &g)) in d.iter_mut().zip(y.iter().zip(dy)) {
                    d.write(g * act_factor(y, slope));
                }
            },
        );
        // SAFETY: every element was written above.
        unsafe { dz.set_len(y.len()) };
        Ok((CpuStorage::F32(dz), yl.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn matches_broadcast_add_and_its_gradients() -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 1f32, (3, 4, 5, 7), &dev)?)?;
        let b = Var::from_tensor(&Tensor::randn(0f32, 1f32, 4, &dev)?)?;
        let w = Tensor::randn(0f32, 1f32, (3, 4, 5, 7), &dev)?;
        let ours = add_channel_bias(x.as_tensor(), b.as_tensor())?;
        let theirs = x
            .as_tensor()
            .broadcast_add(&b.as_tensor().reshape((1, 4, 1, 1))?)?;
        let d = (&ours - &theirs)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert_eq!(d, 0.0);
        let g1 = (ours * &w)?.sum_all()?.backward()?;
        let g2 = (theirs * &w)?.sum_all()?.backward()?;
        for v in [&x, &b] {
            let (a, c) = (g1.get(v).unwrap(), g2.get(v).unwrap());
            let d = (a - c)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(d < 1e-4, "{d}");
        }
        // A frozen bias gets no gradient.
        let frozen = b.as_tensor().detach();
        let g = add_channel_bias(x.as_tensor(), &frozen)?
            .sum_all()?
            .backward()?;
        assert!(g.get(&frozen).is_none() && g.get(&x).is_some());
        assert!(add_channel_bias(x.as_tensor(), &Tensor::zeros(3, DType::F32, &dev)?).is_err());
        Ok(())
    }

    /// `x` with `x + b` at least 0.1 away from 0 everywhere, so that ±1e-2 never crosses
    /// the kink.
    fn away_from_kink(b: &Tensor, dims: (usize, usize, usize, usize)) -> Result<Tensor> {
        let dev = b.device();
        let mag = (Tensor::rand(0f32, 1f32, dims, dev)? + 0.1)?;
        let sign = Tensor::rand(-1f32, 1f32, dims, dev)?.ge(0f64)?;
        let z = sign.where_cond(&mag, &mag.neg()?)?;
        z.broadcast_sub(&b.reshape((1, dims.1, 1, 1))?)
    }

    #[test]
    fn bias_relu_matches_composition_and_finite_differences() -> Result<()> {
        let dev = Device::Cpu;
        let dims = (2, 3, 4, 5);
        for slope in [0f32, 0.3] {
            let b = Var::from_tensor(&Tensor::randn(0f32, 1f32, 3, &dev)?)?;
            let x = Var::from_tensor(&away_from_kink(b.as_tensor(), dims)?)?;
            let w = Tensor::randn(0f32, 1f32, dims, &dev)?;
            let ours = add_channel_bias_relu(x.as_tensor(), b.as_tensor(), slope)?;
            let theirs = bias_act_composed(x.as_tensor(), b.as_tensor(), 3, slope)?;
            let d = (&ours - &theirs)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert_eq!(d, 0.0);
            let g1 = (&ours * &w)?.sum_all()?.backward()?;
            let g2 = (theirs * &w)?.sum_all()?.backward()?;
            for v in [&x, &b] {
                let (a, c) = (g1.get(v).unwrap(), g2.get(v).unwrap());
                let d = (a - c)?.abs()?.max_all()?.to_scalar::<f32>()?;
                assert!(d < 1e-4, "{d}");
            }
            // Central differences in f64 of the loss with the forward in f32.
            let wv = w.flatten_all()?.to_vec1::<f32>()?;
            let loss = |x: &Tensor, b: &Tensor| -> f64 {
                let y = add_channel_bias_relu(x, b, slope).unwrap();
                let y = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                y.iter().zip(&wv).map(|(&a, &b)| a as f64 * b as f64).sum()
            };
            let eps = 1e-2f32;
            for (is_x, v, shape) in [(true, &x, dims.into()), (false, &b, Shape::from(3))] {
                let auto = g1.get(v).unwrap().flatten_all()?.to_vec1::<f32>()?;
                let base = v.flatten_all()?.to_vec1::<f32>()?;
                for i in 0..base.len() {
                    let at = |d: f32| -> Result<Tensor> {
                        let mut p = base.clone();
                        p[i] += d;
                        Tensor::from_vec(p, shape.clone(), &dev)
                    };
                    let (plus, minus) = (at(eps)?, at(-eps)?);
                    let fd = if is_x {
                        loss(&plus, b.as_tensor()) - loss(&minus, b.as_tensor())
                    } else {
                        loss(x.as_tensor(), &plus) - loss(x.as_tensor(), &minus)
                    } / (2.0 * eps as f64);
                    assert!(
                        (fd - auto[i] as f64).abs() < 2e-3,
                        "slope {slope}, element {i}: finite difference {fd}, autograd {}",
                        auto[i]
                    );
                }
            }
            // A frozen bias gets no gradient; the input does.
            let frozen = b.as_tensor().detach();
            let g = add_channel_bias_relu(x.as_tensor(), &frozen, slope)?
                .sum_all()?
                .backward()?;
            assert!(g.get(&frozen).is_none() && g.get(&x).is_some());
        }
        let x = Tensor::zeros((1, 2, 3, 3), DType::F32, &dev)?;
        assert!(add_channel_bias_relu(&x, &Tensor::zeros(3, DType::F32, &dev)?, 0.0).is_err());
        assert!(add_channel_bias_relu(&x, &Tensor::zeros(2, DType::F32, &dev)?, -0.1).is_err());
        Ok(())
    }
}
