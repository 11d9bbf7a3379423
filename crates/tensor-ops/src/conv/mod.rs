//! 2-D convolution and transposed convolution for the CPU, with their own backward.
//!
//! Written by hand because candle 0.11's CPU convolutions are the bottleneck of every
//! convolutional model we train on two threads:
//!
//! - its `conv_transpose2d` is a naive loop nest (no matrix product at all);
//! - its `conv2d` backward computes the weight gradient as a second convolution of
//!   transposed tensors (batch and channels swapped, so the "batch" it parallelises over is
//!   the channel count and the im2col is redone at full size), and it computes it — and the
//!   input gradient — whether or not anything needs them: a frozen discriminator or a
//!   frozen VGG still pays for every weight gradient;
//! - its matrix products go through the `gemm` crate, which has no AVX-512 kernels on
//!   stable Rust;
//! - padding is symmetric only, so a "same" 2×2-stride layer needs a separate pad op.
//!
//! Here a convolution and its two gradients are matrix products run by one AVX-512
//! register-tiled kernel (6 rows × 64 columns of accumulators; a portable loop without
//! AVX-512), fed without materialising an im2col:
//!
//! - with a 1×1 kernel at stride 1 without padding, output pixels are the lanes and the
//!   input planes are the product's rhs as they lie: `y_b = W · x_b`;
//! - with few input or output channels (≤ 64 in, or < 16 out: the VAE, the first and last
//!   layers of a GAN), output pixels are the vector lanes and the kernel reads the im2col
//!   rows in place as shifted windows of zero-padded input planes (one plane per stride
//!   phase), computing a few thrown-away columns of padding width instead of copying;
//! - with many of both, output channels are the lanes, activations are reordered to
//!   channels-last, and the kernel reads each output pixel's im2col row in place as a run
//!   of its input pixel's channels, one tap at a time;
//! - at stride 1 with a 5×5 or 3×3 kernel between ≥ 64 channels (a frozen 3×3 one over
//!   enough tiles), Winograd's F(2×2, 5×5) / F(4×4, 3×3): 36 products of transformed
//!   tiles × channels, 2.8× / 4× fewer multiplications than the direct sum, for the
//!   forward, the stride-1 data gradient and (as F(5×5, 2×2) / F(3×3, 4×4)) the weight
//!   gradient (the `winograd` module);
//! - the data gradient at stride 1 is the forward of `dy` with the flipped kernel; at
//!   larger strides it is `Wᵀ · dy` scattered back (col2im) into channels-last `dx`, which
//!   is also the transposed convolution's forward;
//! - the weight gradient is `dy · col(x)ᵀ` summed over the batch, `col(x)ᵀ` copied a
//!   cache-sized panel at a time from channels-last `x`; with few output channels it is
//!   dot products of `dy` with the shifted windows instead.
//!
//! The backward computes only the gradients asked for: one for an argument that does not
//! track one ([`Tensor::track_op`]) is skipped, so a frozen network backpropagates to its
//! input only, and a first layer computes no gradient for the data. A frozen kernel's
//! packed forms (for the channels-last forward and its flipped data gradient) are
//! cached across calls, keyed by the tensor's id (bounded, least recently used first;
//! [`packed_cache_bytes`] reports their memory, [`clear_packed_cache`] frees it).
//!
//! On other devices and dtypes the functions fall back to candle's own ops.
//!
//! Submodules: `geom` (the geometry and the operand layouts the kernel reads), `forward`
//! and `backward` (the products), `packed_cache` (frozen kernels' packed forms) and
//! `winograd`; the register-tiled kernel itself is `crate::gemm`'s, shared with the dense
//! layers and the Gram matrix.

use candle_core::{
    CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor, TensorId, bail,
};

use backward::{bwd_data, bwd_weight};
use forward::fwd;
use geom::{Geom, conv_transpose2d_geom, conv2d_geom};
use packed_cache::{WeightKey, frozen_id};

mod backward;
mod forward;
mod geom;
mod packed_cache;
#[cfg(test)]
mod tests;
mod winograd;

pub use packed_cache::{clear_packed_cache, packed_cache_bytes};

/// Stride and zero padding of [`conv2d`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dParams {
    /// `(sh, sw)`.
    pub stride: (usize, usize),
    /// `[top, bottom, left, right]`.
    pub padding: [usize; 4],
}

impl Conv2dParams {
    /// Stride 1 and `k / 2` zero padding on every side: the output keeps the input's size
    /// for an odd kernel size `k`.
    pub fn same(k: usize) -> Self {
        Self {
            stride: (1, 1),
            padding: [k / 2; 4],
        }
    }

    /// The same stride and padding on both axes.
    pub fn new(stride: usize, pad: usize) -> Self {
        Self {
            stride: (stride, stride),
            padding: [pad; 4],
        }
    }
}

/// Parameters of [`conv_transpose2d`] (PyTorch's, with dilation 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvTranspose2dParams {
    pub stride: usize,
    pub padding: usize,
    pub output_padding: usize,
}

/// `x (B, C_in, H, W)` convolved with `w (C_out, C_in, KH, KW)`: `(B, C_out, OH, OW)` with
/// `OH = (H + top + bottom - KH) / sh + 1` (likewise `OW`). No bias: add it with
/// `broadcast_add`. Differentiable in both arguments.
///
/// On the CPU in f32 this runs the kernels of this module; elsewhere it is candle's
/// `conv2d` after `pad_with_zeros`, which takes one stride for both axes (a different
/// stride per axis is an error there).
pub fn conv2d(x: &Tensor, w: &Tensor, p: Conv2dParams) -> Result<Tensor> {
    if is_cpu_f32(x, w) {
        let g = conv2d_geom(x.dims4()?, w.dims4()?, p)?;
        x.contiguous()?.apply_op2(
            &w.contiguous()?,
            ConvOp {
                g,
                wid: frozen_id(w),
                transposed: false,
            },
        )
    } else {
        conv2d_candle(x, w, p)
    }
}

/// `act(conv2d(x, w) + b)` with `act` the (leaky) ReLU of
/// [`add_channel_bias_relu`](crate::bias::add_channel_bias_relu) (`negative_slope = 0`:
/// ReLU): the same numbers as that composition, as one autograd node on the CPU. Why: each
/// node costs a full output tensor, and candle's backward zero-fills then adds every
/// node's gradient; fused, the convolution's own output and gradient never exist (the bias
/// and activation run in place on the product, the activation's backward feeds the
/// convolution's). Differentiable in all three; composed off the CPU or outside f32.
pub fn conv2d_bias_relu(
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    p: Conv2dParams,
    negative_slope: f32,
) -> Result<Tensor> {
    if !(is_cpu_f32(x, w) && is_cpu_f32(x, b)) {
        return crate::bias::add_channel_bias_relu(&conv2d(x, w, p)?, b, negative_slope);
    }
    let conv = ConvOp {
        g: conv2d_geom(x.dims4()?, w.dims4()?, p)?,
        wid: frozen_id(w),
        transposed: false,
    };
    conv_bias_act(x, w, b, conv, negative_slope)
}

/// `act(conv_transpose2d(x, w) + b)`: [`conv2d_bias_relu`] for the transposed
/// convolution (kernel `(C_in, C_out, KH, KW)`, bias `(C_out)`).
pub fn conv_transpose2d_bias_relu(
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    p: ConvTranspose2dParams,
    negative_slope: f32,
) -> Result<Tensor> {
    if !(is_cpu_f32(x, w) && is_cpu_f32(x, b)) {
        let y = conv_transpose2d(x, w, p)?;
        return crate::bias::add_channel_bias_relu(&y, b, negative_slope);
    }
    let conv = ConvOp {
        g: conv_transpose2d_geom(x.dims4()?, w.dims4()?, p)?,
        wid: frozen_id(w),
        transposed: true,
    };
    conv_bias_act(x, w, b, conv, negative_slope)
}

/// The fused op of [`conv2d_bias_relu`] and [`conv_transpose2d_bias_relu`] on the CPU.
fn conv_bias_act(x: &Tensor, w: &Tensor, b: &Tensor, conv: ConvOp, slope: f32) -> Result<Tensor> {
    let (what, cout) = if conv.transposed {
        ("conv_transpose2d_bias_relu", w.dim(1)?)
    } else {
        ("conv2d_bias_relu", w.dim(0)?)
    };
    if !(slope.is_finite() && slope >= 0.0) {
        bail!("{what}: negative slope {slope} must be finite and >= 0")
    }
    if b.dims() != [cout] {
        bail!(
            "{what}: bias of shape {:?} for a kernel of shape {:?}",
            b.dims(),
            w.dims()
        )
    }
    x.contiguous()?.apply_op3(
        &w.contiguous()?,
        &b.contiguous()?,
        ConvBiasAct { conv, slope },
    )
}

/// [`conv2d_bias_relu`] on the CPU.
struct ConvBiasAct {
    conv: ConvOp,
    slope: f32,
}

impl CustomOp3 for ConvBiasAct {
    fn name(&self) -> &'static str {
        "conv2d-bias-relu"
    }

    #[allow(clippy::too_many_arguments)]
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (y, shape) = self.conv.cpu_fwd(s1, l1, s2, l2)?;
        let CpuStorage::F32(mut y) = y else {
            bail!("conv2d_bias_relu: the product is not f32")
        };
        let Some((start, end)) = l3.contiguous_offsets() else {
            bail!("conv2d_bias_relu: non-contiguous bias")
        };
        let b = &s3.as_slice::<f32>()?[start..end];
        let dims = shape.dims();
        crate::bias::bias_act_in_place(&mut y, dims[2] * dims[3], b, self.slope);
        Ok((CpuStorage::F32(y), shape))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dz = crate::bias::act_grad(res, grad, self.slope)?;
        let db = if b.track_op() {
            Some(crate::bias::channel_sums(&dz)?)
        } else {
            None
        };
        // The convolution's backward ignores its output argument.
        let (dx, dw) = if x.track_op() || w.track_op() {
            self.conv.bwd(x, w, res, &dz)?
        } else {
            (None, None)
        };
        Ok((dx, dw, db))
    }
}

/// The transposed convolution of `x (B, C_in, H, W)` with `w (C_in, C_out, KH, KW)`:
/// `(B, C_out, OH, OW)` with `OH = (H - 1)·stride - 2·padding + KH + output_padding`
/// (likewise `OW`), as candle's and PyTorch's `conv_transpose2d` with dilation 1.
/// Differentiable in both arguments; candle's own op off the CPU or outside f32.
pub fn conv_transpose2d(x: &Tensor, w: &Tensor, p: ConvTranspose2dParams) -> Result<Tensor> {
    if is_cpu_f32(x, w) {
        let g = conv_transpose2d_geom(x.dims4()?, w.dims4()?, p)?;
        x.contiguous()?.apply_op2(
            &w.contiguous()?,
            ConvOp {
                g,
                wid: frozen_id(w),
                transposed: true,
            },
        )
    } else {
        conv_transpose2d_candle(x, w, p)
    }
}

/// [`conv2d`] composed of candle's ops (any device and dtype; equal strides only): the
/// fallback off the CPU, and the reference for tests and benchmarks.
pub fn conv2d_candle(x: &Tensor, w: &Tensor, p: Conv2dParams) -> Result<Tensor> {
    let (sh, sw) = p.stride;
    if sh != sw {
        bail!(
            "conv2d: stride ({sh}, {sw}) differs per axis, which candle's conv2d on {:?} cannot do",
            x.device()
        )
    }
    let [top, bottom, left, right] = p.padding;
    x.pad_with_zeros(2, top, bottom)?
        .pad_with_zeros(3, left, right)?
        .conv2d(w, 0, sh, 1, 1)
}

/// [`conv_transpose2d`] as candle's op: the fallback and the reference.
pub fn conv_transpose2d_candle(x: &Tensor, w: &Tensor, p: ConvTranspose2dParams) -> Result<Tensor> {
    x.conv_transpose2d(w, p.padding, p.output_padding, p.stride, 1)
}

fn is_cpu_f32(x: &Tensor, w: &Tensor) -> bool {
    x.device().is_cpu() && w.device().is_cpu() && x.dtype() == DType::F32 && w.dtype() == DType::F32
}

/// The three products, on contiguous f32 buffers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Prim {
    /// `(x, w) → y`.
    Fwd,
    /// `(dy, w) → dx`.
    Data,
    /// `(x, dy) → dw`.
    Weight,
}

/// A [`Prim`] as a candle op without backward: what the backward passes are made of.
struct Raw {
    g: Geom,
    prim: Prim,
    /// The kernel's id where it is frozen: its packed forms may be cached
    /// ([`PACKED`](packed_cache::PACKED)).
    wid: Option<TensorId>,
}

fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout, len: usize, what: &str) -> Result<&'a [f32]> {
    let Some((start, end)) = l.contiguous_offsets() else {
        bail!("conv: {what} must be contiguous")
    };
    if end - start != len {
        bail!(
            "conv: {what} has {} elements, the geometry wants {len}",
            end - start
        )
    }
    Ok(&s.as_slice::<f32>()?[start..end])
}

impl CustomOp2 for Raw {
    fn name(&self) -> &'static str {
        match self.prim {
            Prim::Fwd => "conv2d-fwd",
            Prim::Data => "conv2d-bwd-data",
            Prim::Weight => "conv2d-bwd-weight",
        }
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = &self.g;
        let x_len = g.b * g.cin * g.p_in();
        let y_len = g.b * g.cout * g.p_out();
        let w_len = g.cout * g.k();
        let (out, shape) = match self.prim {
            Prim::Fwd => {
                let x = f32_slice(s1, l1, x_len, "input")?;
                let w = f32_slice(s2, l2, w_len, "kernel")?;
                let key = self.wid.map(|id| WeightKey {
                    id,
                    flipped: false,
                    w,
                });
                (fwd(g, x, w, key), Shape::from((g.b, g.cout, g.oh, g.ow)))
            }
            Prim::Data => {
                let dy = f32_slice(s1, l1, y_len, "output gradient")?;
                let w = f32_slice(s2, l2, w_len, "kernel")?;
                let key = self.wid.map(|id| WeightKey {
                    id,
                    flipped: true,
                    w,
                });
                (bwd_data(g, dy, w, key), Shape::from((g.b, g.cin, g.h, g.w)))
            }
            Prim::Weight => {
                let x = f32_slice(s1, l1, x_len, "input")?;
                let dy = f32_slice(s2, l2, y_len, "output gradient")?;
                (
                    bwd_weight(g, x, dy),
                    Shape::from((g.cout, g.cin, g.kh, g.kw)),
                )
            }
        };
        Ok((CpuStorage::F32(out), shape))
    }
}

/// [`conv2d`] (`transposed: false`) or [`conv_transpose2d`] on the CPU, for the
/// convolution `g`: a transposed convolution is the convolution's data gradient, so the
/// two share the three products with the roles of the forward and the data gradient
/// swapped. `wid`: the kernel's id when it is frozen (its packed form may be cached).
struct ConvOp {
    g: Geom,
    wid: Option<TensorId>,
    transposed: bool,
}

impl ConvOp {
    /// The products computing this op's output and its input's gradient.
    fn prims(&self) -> (Prim, Prim) {
        if self.transposed {
            (Prim::Data, Prim::Fwd)
        } else {
            (Prim::Fwd, Prim::Data)
        }
    }
}

impl CustomOp2 for ConvOp {
    fn name(&self) -> &'static str {
        if self.transposed {
            "conv-transpose2d"
        } else {
            "conv2d"
        }
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let raw = Raw {
            g: self.g,
            prim: self.prims().0,
            wid: self.wid,
        };
        raw.cpu_fwd(s1, l1, s2, l2)
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = self.g;
        let grad = grad.contiguous()?;
        // candle calls this when either argument tracks a gradient; an argument that does
        // not (data, frozen weights) is not asked for one, and its product is skipped.
        let dx = if x.track_op() {
            let raw = Raw {
                g,
                prim: self.prims().1,
                wid: frozen_id(w),
            };
            Some(grad.apply_op2_no_bwd(w, &raw)?)
        } else {
            None
        };
        let dw = if w.track_op() {
            let raw = Raw {
                g,
                prim: Prim::Weight,
                wid: None,
            };
            // The weight gradient takes the convolution's input and output gradient: for
            // a transposed convolution, `grad` plays the input and `x` the output gradient.
            let (input, dy) = if self.transposed {
                (&grad, x)
            } else {
                (x, &grad)
            };
            Some(input.apply_op2_no_bwd(dy, &raw)?)
        } else {
            None
        };
        Ok((dx, dw))
    }
}
