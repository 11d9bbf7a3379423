//! Per-channel bias of a convolution's output, `y[n, c, h, w] = x[n, c, h, w] + b[c]`.
//!
//! Written by hand because candle's `broadcast_add` backward reduces the gradient to the
//! bias with a generic strided `sum_keepdim` over dims (0, 2, 3), which on the VAE's
//! training step took 10% of the time (profiled: `Map1::map` of `ReduceSum`); here it is
//! one contiguous pass per channel plane. Off the CPU or outside f32: candle's ops.

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor, bail};

/// `x (B, C, H, W) + b (C)` broadcast over batch and space; differentiable in both.
pub fn add_channel_bias(x: &Tensor, b: &Tensor) -> Result<Tensor> {
    let (_, c, _, _) = x.dims4()?;
    if b.dims() != [c] {
        bail!(
            "channel bias of shape {:?} for {c} channels of {:?}",
            b.dims(),
            x.dims()
        )
    }
    if x.device().is_cpu() && x.dtype() == DType::F32 && b.dtype() == DType::F32 {
        x.contiguous()?.apply_op2(&b.contiguous()?, ChannelBias)
    } else {
        x.broadcast_add(&b.reshape((1, c, 1, 1))?)
    }
}

struct ChannelBias;

fn slice<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    let Some((start, end)) = l.contiguous_offsets() else {
        bail!("channel bias: non-contiguous input")
    };
    Ok(&s.as_slice::<f32>()?[start..end])
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
        let mut y = Vec::with_capacity(x.len());
        for (i, chunk) in x.chunks(plane).enumerate() {
            let bias = b[i % c];
            y.extend(chunk.iter().map(|v| v + bias));
        }
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
            let (_, c, h, w) = grad.dims4()?;
            let g = grad.contiguous()?;
            let v = g.flatten_all()?.to_vec1::<f32>()?;
            let mut sums = vec![0f64; c];
            for (i, chunk) in v.chunks(h * w).enumerate() {
                sums[i % c] += chunk.iter().map(|&x| x as f64).sum::<f64>();
            }
            let sums: Vec<f32> = sums.into_iter().map(|s| s as f32).collect();
            Some(Tensor::from_vec(sums, c, grad.device())?)
        } else {
            None
        };
        Ok((dx, db))
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
}
