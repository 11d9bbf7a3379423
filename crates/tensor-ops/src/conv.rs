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
//! cached across calls, keyed by the tensor's id (bounded, least recently used first).
//!
//! On other devices and dtypes the functions fall back to candle's own ops.

use candle_core::{
    CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor, TensorId, bail,
};
use std::mem::MaybeUninit;
use std::sync::{Arc, Mutex};

use crate::par::SendPtr;
use crate::pool::{self, PoolVec};

mod winograd;

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

/// One convolution `y = conv(x, w)` in the terms every kernel here uses: `x` is
/// `(b, cin, h, w)`, `w` is `(cout, cin, kh, kw)`, `y` is `(b, cout, oh, ow)`, and
///
/// `y[b, co, i, j] = Σ x[b, ci, i·sh + a - pt, j·sw + c - pl] · w[co, ci, a, c]`
///
/// over taps `(a, c)` whose input pixel is inside the image. The output size is stored,
/// not derived: a transposed convolution is the data gradient of the convolution whose
/// *input* is its output, and `output_padding` makes that input larger than the padding
/// formula says (the extra rows are simply never reached).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Geom {
    b: usize,
    cin: usize,
    h: usize,
    w: usize,
    cout: usize,
    kh: usize,
    kw: usize,
    sh: usize,
    sw: usize,
    pt: usize,
    pl: usize,
    oh: usize,
    ow: usize,
}

impl Geom {
    fn taps(&self) -> usize {
        self.kh * self.kw
    }

    /// Length of an im2col column: taps × input channels.
    fn k(&self) -> usize {
        self.taps() * self.cin
    }

    fn p_in(&self) -> usize {
        self.h * self.w
    }

    fn p_out(&self) -> usize {
        self.oh * self.ow
    }

    /// A 1×1 kernel at stride 1 without padding: every output pixel is its input pixel's
    /// channels times the kernel.
    fn is_pointwise(&self) -> bool {
        (self.kh, self.kw, self.sh, self.sw, self.pt, self.pl) == (1, 1, 1, 1, 0, 0)
            && (self.oh, self.ow) == (self.h, self.w)
    }

    /// Whether the forward runs [`fwd_channels_last`] (see [`fwd`]).
    fn is_channels_last(&self) -> bool {
        !self.is_pointwise() && self.cin > SHIFTED_MAX_CIN && self.cout >= 16
    }
}

fn conv2d_geom(
    (b, cin, h, w): (usize, usize, usize, usize),
    (cout, cin_w, kh, kw): (usize, usize, usize, usize),
    p: Conv2dParams,
) -> Result<Geom> {
    let (sh, sw) = p.stride;
    let [pt, pb, pl, pr] = p.padding;
    if cin != cin_w {
        bail!("conv2d: input has {cin} channels, kernel expects {cin_w}")
    }
    if sh == 0 || sw == 0 || kh == 0 || kw == 0 {
        bail!("conv2d: zero stride ({sh}, {sw}) or kernel size ({kh}, {kw})")
    }
    if h + pt + pb < kh || w + pl + pr < kw {
        bail!("conv2d: kernel ({kh}, {kw}) larger than the padded input ({h}, {w}) + {p:?}")
    }
    Ok(Geom {
        b,
        cin,
        h,
        w,
        cout,
        kh,
        kw,
        sh,
        sw,
        pt,
        pl,
        oh: (h + pt + pb - kh) / sh + 1,
        ow: (w + pl + pr - kw) / sw + 1,
    })
}

/// The convolution whose data gradient is the transposed convolution: its input is the
/// transposed convolution's output and its weight is `w` as stored (`(C_in, C_out, ..)` of
/// the transposed convolution is `(cout, cin, ..)` of this one).
fn conv_transpose2d_geom(
    (b, cin_t, h, w): (usize, usize, usize, usize),
    (cin_w, cout_t, kh, kw): (usize, usize, usize, usize),
    p: ConvTranspose2dParams,
) -> Result<Geom> {
    let ConvTranspose2dParams {
        stride: s,
        padding: pad,
        output_padding: op,
    } = p;
    if cin_t != cin_w {
        bail!("conv_transpose2d: input has {cin_t} channels, kernel expects {cin_w}")
    }
    if s == 0 || kh == 0 || kw == 0 || h == 0 || w == 0 {
        bail!("conv_transpose2d: zero stride, kernel or input size in {p:?}, ({kh}, {kw})")
    }
    let full = |n: usize, k: usize| (n - 1) * s + k + op;
    if full(h, kh) <= 2 * pad || full(w, kw) <= 2 * pad {
        bail!("conv_transpose2d: padding {pad} leaves no output for input ({h}, {w})")
    }
    Ok(Geom {
        b,
        cin: cout_t,
        h: full(h, kh) - 2 * pad,
        w: full(w, kw) - 2 * pad,
        cout: cin_t,
        kh,
        kw,
        sh: s,
        sw: s,
        pt: pad,
        pl: pad,
        oh: h,
        ow: w,
    })
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
    /// The kernel's id where it is frozen: its packed forms may be cached ([`PACKED`]).
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

// ---------------------------------------------------------------------------------------
// The three products.
// ---------------------------------------------------------------------------------------

/// Rows per register tile of the kernel (see [`avx512::tile`]).
const MR: usize = 6;
/// Columns per packed panel: four 16-lane registers.
const NR: usize = 64;
/// Depth per kernel call: a `KC × 64` panel slice (32 KiB) stays in the 48 KiB L1d while
/// the row tiles stream past it.
const KC: usize = 128;
/// Output pixels per work item of the channels-last forward and of the scatter: the
/// item's input rows and output block stay in L2, and a 28×28 image still splits into a
/// few items for the threads.
const PB: usize = 384;
/// Output pixels per work item of the weight gradient, times its output channels: the
/// item's slice of `dy` (and the input rows it reads) stays in L2 while every panel of
/// the weight gradient passes over it.
const WGRAD_ITEM_FLOATS: usize = 1 << 16;

/// A buffer of a work item, kept by its thread for the next item: the items of one call
/// are many and small (a 28×28 layer has over a hundred), and taking them from the
/// shared [`pool`] made its lock a measurable cost. Contents are unspecified, as with
/// [`pool::take`] (NaN under `cfg(test)`).
///
/// The buffer keeps the longest length it was ever given and derefs to the first `len`
/// floats: sizing it down and up again by `Vec::resize` zero-filled the regrown part
/// every time (the calls of one step ask for different sizes in turn), ~4% of a VAE step.
struct Scratch {
    buf: Vec<f32>,
    len: usize,
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Vec<Vec<f32>>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn scratch(len: usize) -> Scratch {
    let mut buf = SCRATCH
        .with(|s| {
            // The smallest kept buffer that is long enough, else the longest.
            let mut s = s.borrow_mut();
            let i = (0..s.len())
                .filter(|&i| s[i].len() >= len)
                .min_by_key(|&i| s[i].len())
                .or_else(|| (0..s.len()).max_by_key(|&i| s[i].len()))?;
            Some(s.swap_remove(i))
        })
        .unwrap_or_default();
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
    if cfg!(test) {
        buf[..len].fill(f32::NAN);
    }
    Scratch { buf, len }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        SCRATCH.with(|s| s.borrow_mut().push(buf));
    }
}

impl std::ops::Deref for Scratch {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        &self.buf[..self.len]
    }
}

impl std::ops::DerefMut for Scratch {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.buf[..self.len]
    }
}

/// `[start, start + len)` blocks of about `max` items (multiples of [`MR`] but the last)
/// covering `0..n`, balanced so that the last block is not a sliver.
fn blocks(n: usize, max: usize) -> Vec<(usize, usize)> {
    if n == 0 {
        return Vec::new();
    }
    let count = n.div_ceil(max);
    let size = n.div_ceil(count).next_multiple_of(MR);
    (0..n).step_by(size).map(|s| (s, size.min(n - s))).collect()
}

/// A `k × n` matrix packed for the kernel: panels of [`NR`] columns (the last one
/// narrower), each `k` rows of its width rounded up to 16 (the rounding is zeros).
struct Packed {
    k: usize,
    n: usize,
    data: PoolVec,
}

/// One panel of a [`Packed`] matrix: columns `j0 .. j0 + n`, rows `wpad` floats apart.
#[derive(Clone, Copy)]
struct Panel<'a> {
    j0: usize,
    n: usize,
    wpad: usize,
    data: &'a [f32],
}

impl Packed {
    /// Packs the matrix whose element `(r, c)` is `src[r · rs + c · cs]`.
    fn new(k: usize, n: usize, src: &[f32], rs: usize, cs: usize) -> Self {
        if k > 0 && n > 0 {
            assert!(
                (k - 1) * rs + (n - 1) * cs < src.len(),
                "packed source out of bounds"
            );
        }
        let mut data = pool::take(k * n.next_multiple_of(16));
        // Panels are independent: pack them in parallel (the large weights are megabytes).
        // Panel j holds k rows of NR floats (the last one of its width rounded up to 16).
        crate::par::for_chunks_mut(&mut data, k * NR, |j, part| {
            let (j0, w) = (j * NR, NR.min(n - j * NR));
            let wpad = w.next_multiple_of(16);
            if cs > 1 && rs == 1 {
                // Columns lie along the source's rows: a transpose in 16 × 16 blocks (a
                // gather of one float per cache line was ~1% of a DeepDream step).
                assert!((j0 + w - 1) * cs + k <= src.len());
                // SAFETY: source rows j0 .. j0 + w of k floats (asserted), destination k
                // rows of wpad ≥ w floats; distinct buffers.
                unsafe {
                    transpose_raw(
                        src.as_ptr().add(j0 * cs),
                        cs,
                        (w, k),
                        part.as_mut_ptr(),
                        wpad,
                    )
                };
                for row in part.chunks_exact_mut(wpad) {
                    row[w..].fill(0.0);
                }
                return;
            }
            for (r, row) in part.chunks_exact_mut(wpad).enumerate() {
                let (row, tail) = row.split_at_mut(w);
                if cs == 1 {
                    row.copy_from_slice(&src[r * rs + j0..][..w]);
                } else {
                    for (c, x) in row.iter_mut().enumerate() {
                        *x = src[r * rs + (j0 + c) * cs];
                    }
                }
                tail.fill(0.0);
            }
        });
        Self { k, n, data }
    }

    fn panel(&self, j: usize) -> Panel<'_> {
        let j0 = j * NR;
        let n = NR.min(self.n - j0);
        let wpad = n.next_multiple_of(16);
        Panel {
            j0,
            n,
            wpad,
            data: &self.data[j0 * self.k..][..self.k * wpad],
        }
    }

    fn panels(&self) -> usize {
        self.n.div_ceil(NR)
    }
}

/// `c (m × n) = a (m × k, rows `a_rs` floats apart) · b (k × n)`: a plain matrix
/// product on the convolutions' kernel, blocks of rows × panels of `b` over the threads.
/// `b` is read as `b[r · rs + c · cs]` and packed first.
pub(crate) fn matmul(
    m: usize,
    a: &[f32],
    a_rs: usize,
    (k, n, b, rs, cs): (usize, usize, &[f32], usize, usize),
) -> Vec<f32> {
    if m == 0 || n == 0 || k == 0 {
        return vec![0f32; m * n];
    }
    // Written whole by the first depth block of every (row block, panel): no zeroing.
    let mut c: Vec<f32> = Vec::with_capacity(m * n);
    assert!((m - 1) * a_rs + k <= a.len(), "matmul lhs out of bounds");
    let bp = Packed::new(k, n, b, rs, cs);
    // Row blocks of a few tiles: enough items for both threads on a 64 × 64 product.
    let rows = (8 * MR).min(m.div_ceil(2).next_multiple_of(MR));
    let items: Vec<(usize, usize)> = (0..m)
        .step_by(rows)
        .flat_map(|i0| (0..bp.panels()).map(move |j| (i0, j)))
        .collect();
    let cp = SendPtr(c.as_mut_ptr());
    crate::par::for_each(&items, |&(i0, j)| {
        let (pn, mr) = (bp.panel(j), rows.min(m - i0));
        for k0 in (0..k).step_by(KC) {
            // SAFETY: rows i0 .. i0 + mr, columns pn.j0 .. pn.j0 + pn.n of c (m × n);
            // items cover disjoint (row block, panel) pairs.
            unsafe {
                gemm_panel(&Gemm {
                    m: mr,
                    n: pn.n,
                    kc: KC.min(k - k0),
                    a: Lhs::Strided(&a[i0 * a_rs + k0..], a_rs),
                    b: Rhs::Packed(&pn.data[k0 * pn.wpad..], pn.wpad),
                    c: cp.get().add(i0 * n + pn.j0),
                    c_rs: n,
                    acc: k0 > 0,
                })
            };
        }
    });
    // SAFETY: the items cover every row block × panel, each writing its columns at k0 = 0.
    unsafe { c.set_len(m * n) };
    c
}

/// The kernel `w (cout, cin, taps)` as `(cout, taps, cin)`: rows of the channels-last
/// im2col order.
fn taps_major(w: &[f32], g: &Geom) -> PoolVec {
    let (taps, cin) = (g.taps(), g.cin);
    let mut wt = pool::take(w.len());
    if !w.is_empty() {
        for (d, s) in wt
            .chunks_exact_mut(cin * taps)
            .zip(w.chunks_exact(cin * taps))
        {
            transpose(s, cin, taps, d);
        }
    }
    wt
}

/// The kernel packed for [`fwd_channels_last`].
fn pack_channels_last(g: &Geom, w: &[f32]) -> Packed {
    let wt = taps_major(w, g);
    Packed::new(g.k(), g.cout, &wt, 1, g.k())
}

/// The id of a kernel that tracks no gradient (frozen weights), whose packed forms
/// [`PACKED`] may keep: candle tensors are immutable and ids are never reused.
fn frozen_id(w: &Tensor) -> Option<TensorId> {
    (!w.track_op() && w.is_contiguous()).then(|| w.id())
}

/// A frozen kernel as one product sees it: its tensor's id, whether the product is the
/// data gradient (flipped kernel), and the kernel `(cout, cin, kh, kw)` as stored.
#[derive(Clone, Copy)]
struct WeightKey<'a> {
    id: TensorId,
    flipped: bool,
    w: &'a [f32],
}

/// Elements of a kernel compared on every cache hit ([`PackedCache`]).
const FINGERPRINT: usize = 64;

/// Bits of [`FINGERPRINT`] evenly spaced elements of `w`.
fn fingerprint(w: &[f32]) -> [u32; FINGERPRINT] {
    std::array::from_fn(|i| w.get(i * w.len() / FINGERPRINT).map_or(0, |v| v.to_bits()))
}

/// The most [`PACKED`] keeps, in bytes: a frozen VGG19 to `block5_conv2` packs ~160 MB
/// (forward and flipped), InceptionV3 to `Mixed_6c` less.
const PACKED_MAX_BYTES: usize = 256 << 20;

/// One cached packed kernel: `dims` are the product's `(cin, cout, kh, kw)`.
struct PackedEntry {
    id: TensorId,
    flipped: bool,
    dims: (usize, usize, usize, usize),
    addr: usize,
    len: usize,
    sample: [u32; FINGERPRINT],
    packed: Arc<Packed>,
}

impl PackedEntry {
    fn bytes(&self) -> usize {
        self.packed.data.len() * size_of::<f32>()
    }

    /// Whether this is `k`'s packed form for `g` with `rows` rows: the channels-last
    /// product's (`taps · cin`) or Winograd's transformed kernel (`36 · cin`). Which of
    /// the two a frozen 3×3 kernel takes depends on the map size, so one kernel can have
    /// both.
    fn is(&self, g: &Geom, k: &WeightKey<'_>, rows: usize) -> bool {
        self.id == k.id
            && self.flipped == k.flipped
            && self.dims == (g.cin, g.cout, g.kh, g.kw)
            && self.packed.k == rows
            && self.addr == k.w.as_ptr() as usize
            && self.len == k.w.len()
    }
}

/// Packed frozen kernels, least recently used first, at most [`PACKED_MAX_BYTES`].
/// Packing is `taps_major` and [`Packed::new`] over the whole kernel on every call: for a
/// 512 → 512 3×3 layer that is 9.4 MB transposed twice, ~24% of its forward at 16×24
/// pixels (measured with `perf`; cached, that forward took 5.7 instead of 10.7 ms), and
/// the data gradient flips the kernel first. A frozen network (style transfer's VGG,
/// DeepDream's Inception) passes the same kernels every step: cached, `oneiro bench
/// style-eval` went from 0.35 to 0.24 s and `dream-step` from 0.18 to 0.17 s. The id identifies the tensor; its storage address and a sample of its values
/// are checked as well, in case the storage is shared with a `Var` that `set` rewrote in
/// place (a detached copy of a trained weight).
struct PackedCache(Mutex<Vec<PackedEntry>>);

static PACKED: PackedCache = PackedCache(Mutex::new(Vec::new()));

/// Frozen kernels packed once and not cached yet, newest last. A kernel is cached the
/// second time it is packed: a frozen network passes the same tensors every step, while a
/// GAN's frozen discriminator detaches fresh tensors every step, which would otherwise
/// fill the cache with kernels no call asks for again.
static SEEN_ONCE: Mutex<Vec<(TensorId, bool)>> = Mutex::new(Vec::new());

/// How many once-packed kernels [`SEEN_ONCE`] remembers (ids only).
const SEEN_ONCE_MAX: usize = 4096;

/// Whether `k` was packed before; remembers it otherwise.
fn packed_before(k: &WeightKey<'_>) -> bool {
    let mut seen = SEEN_ONCE.lock().unwrap_or_else(|e| e.into_inner());
    let key = (k.id, k.flipped);
    if let Some(i) = seen.iter().position(|s| *s == key) {
        seen.remove(i);
        return true;
    }
    if seen.len() >= SEEN_ONCE_MAX {
        seen.remove(0);
    }
    seen.push(key);
    false
}

impl PackedCache {
    fn get(&self, g: &Geom, k: &WeightKey<'_>, rows: usize) -> Option<Arc<Packed>> {
        let mut v = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let i = v.iter().position(|e| e.is(g, k, rows))?;
        if v[i].sample != fingerprint(k.w) {
            v.remove(i);
            return None;
        }
        let e = v.remove(i);
        let p = e.packed.clone();
        v.push(e);
        Some(p)
    }

    fn put(&self, g: &Geom, k: &WeightKey<'_>, packed: Arc<Packed>) {
        let e = PackedEntry {
            id: k.id,
            flipped: k.flipped,
            dims: (g.cin, g.cout, g.kh, g.kw),
            addr: k.w.as_ptr() as usize,
            len: k.w.len(),
            sample: fingerprint(k.w),
            packed,
        };
        if e.bytes() > PACKED_MAX_BYTES {
            return;
        }
        let rows = e.packed.k;
        let mut v = self.0.lock().unwrap_or_else(|e| e.into_inner());
        v.retain(|o| !o.is(g, k, rows));
        v.push(e);
        let mut total: usize = v.iter().map(PackedEntry::bytes).sum();
        while total > PACKED_MAX_BYTES {
            total -= v.remove(0).bytes();
        }
    }
}

/// The packed kernel of `g` with `rows` rows (the channels-last product's form or
/// Winograd's transformed one), from [`PACKED`] where the kernel is frozen (`key`), else
/// from `make` (whose result is cached when the kernel is packed a second time). The
/// lock is not held while packing, which runs on the thread pool.
fn packed_weights(
    g: &Geom,
    key: Option<WeightKey<'_>>,
    rows: usize,
    make: impl FnOnce() -> Packed,
) -> Arc<Packed> {
    let Some(k) = key else {
        return Arc::new(make());
    };
    if let Some(p) = PACKED.get(g, &k, rows) {
        return p;
    }
    let p = Arc::new(make());
    if packed_before(&k) {
        PACKED.put(g, &k, p.clone());
    }
    p
}

/// `(B, C, P)` → `(B, P, C)`, into a pooled buffer.
fn to_channels_last(src: &[f32], b: usize, c: usize, p: usize) -> PoolVec {
    let mut dst = pool::take(b * c * p);
    if c * p > 0 {
        crate::par::for_chunks_mut(&mut dst, c * p, |i, d| {
            transpose(&src[i * c * p..][..c * p], c, p, d)
        });
    }
    dst
}

/// `src (rows × cols)` → `dst (cols × rows)`, both dense.
pub(crate) fn transpose(src: &[f32], rows: usize, cols: usize, dst: &mut [f32]) {
    assert!(src.len() >= rows * cols && dst.len() >= rows * cols);
    // SAFETY: the extents are asserted above.
    unsafe { transpose_raw(src.as_ptr(), cols, (rows, cols), dst.as_mut_ptr(), rows) }
}

/// `dst[j · dst_rs + i] = src[i · src_rs + j]` for `i < rows`, `j < cols`: 16 × 16 blocks
/// through registers where the CPU has AVX-512 (a scalar transpose took ~10% of a small
/// layer's forward), the ragged edges element by element.
///
/// # Safety
/// Every addressed element must be in bounds, and the two regions must not overlap.
unsafe fn transpose_raw(
    src: *const f32,
    src_rs: usize,
    (rows, cols): (usize, usize),
    dst: *mut f32,
    dst_rs: usize,
) {
    let (mut r16, mut c16) = (0, 0);
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512f") {
        (r16, c16) = (rows / 16 * 16, cols / 16 * 16);
        for i0 in (0..r16).step_by(16) {
            for j0 in (0..c16).step_by(16) {
                // SAFETY: the block is inside both matrices (caller's contract).
                unsafe {
                    avx512::transpose16(
                        src.add(i0 * src_rs + j0),
                        src_rs,
                        dst.add(j0 * dst_rs + i0),
                        dst_rs,
                    )
                };
            }
        }
    }
    // What the blocks left: the columns past c16 of the first r16 rows, then every column
    // of the remaining rows.
    for (i0, i1, j0) in [(0, r16, c16), (r16, rows, 0)] {
        for i in i0..i1 {
            for j in j0..cols {
                // SAFETY: i < rows, j < cols (caller's contract).
                unsafe { *dst.add(j * dst_rs + i) = *src.add(i * src_rs + j) };
            }
        }
    }
}

/// A run of im2col columns (channels-last order: column `tap · cin + ci`): `len`
/// channels from `ci` of tap `(a, c)`, at offset `off` in a block of columns.
#[derive(Clone, Copy, Debug)]
struct Run {
    off: usize,
    len: usize,
    a: usize,
    c: usize,
    ci: usize,
}

impl Geom {
    /// The runs of columns `k0 .. k0 + kc`.
    fn runs(&self, k0: usize, kc: usize) -> Vec<Run> {
        let mut runs = Vec::new();
        let mut k = k0;
        while k < k0 + kc {
            let (t, ci) = (k / self.cin, k % self.cin);
            let len = (self.cin - ci).min(k0 + kc - k);
            runs.push(Run {
                off: k - k0,
                len,
                a: t / self.kw,
                c: t % self.kw,
                ci,
            });
            k += len;
        }
        runs
    }

    /// The input pixel (`iy · w + ix`) that tap `(a, c)` of output pixel `(oy, ox)` reads,
    /// or `None` in the zero padding.
    #[inline]
    fn src(&self, oy: usize, ox: usize, a: usize, c: usize) -> Option<usize> {
        let iy = (oy * self.sh + a).checked_sub(self.pt)?;
        let ix = (ox * self.sw + c).checked_sub(self.pl)?;
        (iy < self.h && ix < self.w).then_some(iy * self.w + ix)
    }

    /// `(oy, ox)` of output pixels `p0, p0 + 1, …` (one division for the lot).
    fn pixels(&self, p0: usize) -> impl Iterator<Item = (usize, usize)> + '_ {
        let (mut oy, mut ox) = (p0 / self.ow, p0 % self.ow);
        std::iter::from_fn(move || {
            let here = (oy, ox);
            ox += 1;
            if ox == self.ow {
                (oy, ox) = (oy + 1, 0);
            }
            Some(here)
        })
    }
}

/// Rows `r < np` of `dst` (rows `ds` apart) get the im2col columns described by `runs`
/// (`kc` of them) of output pixels `p0 + r`, read from the channels-last image `xt`; the
/// row tails up to `pad_to` are zeroed.
#[allow(clippy::too_many_arguments)]
fn fill_cols(
    g: &Geom,
    xt: &[f32],
    (p0, np): (usize, usize),
    runs: &[Run],
    kc: usize,
    dst: &mut [f32],
    ds: usize,
    pad_to: usize,
) {
    for (r, (oy, ox)) in g.pixels(p0).take(np).enumerate() {
        let row = &mut dst[r * ds..][..pad_to];
        for run in runs {
            let out = &mut row[run.off..][..run.len];
            match g.src(oy, ox, run.a, run.c) {
                Some(q) => copy_run(out, &xt[q * g.cin + run.ci..][..run.len]),
                None => out.fill(0.0),
            }
        }
        row[kc..].fill(0.0);
    }
}

/// `dst.copy_from_slice(src)` without a `memcpy` call for the short runs of few-channel
/// inputs (one to a few floats per tap), where the call cost more than the copy.
/// (A plain loop is no help: the compiler turns it back into `memcpy`.)
#[inline]
fn copy_run(dst: &mut [f32], src: &[f32]) {
    macro_rules! fixed {
        ($($n:literal)*) => {
            match dst.len() {
                $($n => {
                    let d: &mut [f32; $n] = dst.try_into().expect("length matched");
                    *d = src[..$n].try_into().expect("source as long");
                })*
                _ => dst.copy_from_slice(src),
            }
        };
    }
    fixed!(0 1 2 3 4 5 6 7 8);
}

/// `dst.copy_from_slice(src)` for rows of a few dozen floats, in 8-float moves: a
/// `memcpy` call per output row cost more than the copy.
#[inline]
fn copy_short(dst: &mut [f32], src: &[f32]) {
    let mut d8 = dst.chunks_exact_mut(8);
    let mut s8 = src.chunks_exact(8);
    for (d, s) in (&mut d8).zip(&mut s8) {
        let d: &mut [f32; 8] = d.try_into().expect("chunk of 8");
        *d = s.try_into().expect("chunk of 8");
    }
    copy_run(d8.into_remainder(), s8.remainder());
}

/// The forward product.
fn fwd(g: &Geom, x: &[f32], w: &[f32], key: Option<WeightKey<'_>>) -> Vec<f32> {
    let len = g.b * g.cout * g.p_out();
    if len == 0 || g.k() == 0 {
        return vec![0.0; len];
    }
    // Every path writes every element of `y`, so it starts uninitialised: zeroing it was a
    // memset of every output (part of the ~4% memset of a DeepDream step).
    let mut out = Vec::with_capacity(len);
    let y = &mut out.spare_capacity_mut()[..len];
    // With few input channels, or few output channels, the product over shifted windows
    // of padded planes needs neither im2col nor transposes. With many of both, the
    // channels-last product is faster (measured 20–40% at 128 and 256 channels: there the
    // shifted form's lhs, the unpacked kernel, streams from L3, and it computes the
    // padded width's extra columns); its vector lanes are output channels, at least 16.
    // Before both, stride-1 5×5 and 3×3 kernels between many channels take Winograd's
    // transform, which needs 2.8× / 4× fewer multiplications (see `winograd::applies`).
    if winograd::applies(g, key.is_some()) {
        let u = packed_weights(g, key, winograd::transformed_rows(g), || {
            winograd::transform_kernel(g, w)
        });
        winograd::fwd(g, x, &u, y);
    } else if g.is_pointwise() {
        fwd_pointwise(g, x, w, y);
    } else if !g.is_channels_last() {
        fwd_shifted(g, x, w, y);
    } else {
        let wp = packed_weights(g, key, g.k(), || pack_channels_last(g, w));
        fwd_channels_last(g, x, &wp, y);
    }
    // SAFETY: the product wrote all `len` elements (each path's contract).
    unsafe { out.set_len(len) };
    out
}

/// Zero-padded input planes for the products with few input or output channels: with
/// stride `(sh, sw)`, phase plane `(py, px)` of channel `ci` holds the padded input's
/// pixels `(sh · i + py, sw · j + px)`, so that tap `(a, c)` of output pixel `(oy, ox)`
/// reads row `oy + a / sh`, column `ox + c / sw` of phase `(a % sh, c % sw)`. Computing
/// outputs for every column of the planes' width `wp` (the `wp - ow` extra columns are
/// thrown away) makes the im2col row of a tap over a run of output pixels one
/// contiguous window of a plane: the kernel reads it in place, and nothing is copied
/// per tap.
struct Planes {
    /// `(B, cin, sh, sw, hp, wp)`, then `kw + 15` zeros: windows read a whole vector,
    /// and those of the last output row reach that far past their plane (for outputs
    /// that are thrown away).
    data: PoolVec,
    wp: usize,
    plane: usize,
}

impl Planes {
    fn new(g: &Geom, x: &[f32]) -> Self {
        let (sh, sw) = (g.sh, g.sw);
        let (hp, wp) = (g.oh + (g.kh - 1) / sh, g.ow + (g.kw - 1) / sw);
        let plane = hp * wp;
        let n = g.b * g.cin * sh * sw * plane;
        let mut data = pool::take(n + g.kw + 15);
        data[n..].fill(0.0);
        crate::par::for_chunks_mut(&mut data[..n], sh * sw * plane, |i, d| {
            let src = &x[i * g.p_in()..][..g.p_in()];
            // Only the padding is zeroed: clearing whole planes first cost as much as
            // the copy (~5% of a DeepDream step between them).
            for (phase, d) in d.chunks_exact_mut(plane).enumerate() {
                let (py, px) = (phase / sw, phase % sw);
                // Plane columns j whose input column sw · j + px - pl is in the image.
                let j0 = g.pl.saturating_sub(px).div_ceil(sw);
                let j1 = (g.w + g.pl).saturating_sub(px).div_ceil(sw).min(wp);
                for i in 0..hp {
                    let out = &mut d[i * wp..][..wp];
                    let iy = (sh * i + py).checked_sub(g.pt).filter(|&iy| iy < g.h);
                    let (Some(iy), true) = (iy, j0 < j1) else {
                        out.fill(0.0);
                        continue;
                    };
                    out[..j0].fill(0.0);
                    out[j1..].fill(0.0);
                    let row = &src[iy * g.w..][..g.w];
                    let ix0 = sw * j0 + px - g.pl;
                    if sw == 1 {
                        out[j0..j1].copy_from_slice(&row[ix0..ix0 + j1 - j0]);
                    } else {
                        for (j, o) in out[j0..j1].iter_mut().enumerate() {
                            *o = row[ix0 + j * sw];
                        }
                    }
                }
            }
        });
        Self { data, wp, plane }
    }

    /// Offset of tap `k = (ci · kh + a) · kw + c` (the kernel's own order) from the start
    /// of an image's planes.
    fn offsets(&self, g: &Geom) -> Vec<usize> {
        let mut offs = Vec::with_capacity(g.k());
        for ci in 0..g.cin {
            for a in 0..g.kh {
                for c in 0..g.kw {
                    let phase = (ci * g.sh + a % g.sh) * g.sw + c % g.sw;
                    offs.push(phase * self.plane + a / g.sh * self.wp + c / g.sw);
                }
            }
        }
        offs
    }

    /// Floats per image.
    fn image(&self, g: &Geom) -> usize {
        g.cin * g.sh * g.sw * self.plane
    }
}

/// `y (cout × pixels) = W (cout × k) · col (k × pixels)` over panels of 64 pixels of the
/// padded width, with `col` read from [`Planes`] in place. Writes every element of `y`
/// (as do the other forward products).
fn fwd_shifted(g: &Geom, x: &[f32], w: &[f32], y: &mut [MaybeUninit<f32>]) {
    let (k, cout, p_out) = (g.k(), g.cout, g.p_out());
    let planes = Planes::new(g, x);
    let (wp, grid) = (planes.wp, g.oh * planes.wp);
    let offs = planes.offsets(g);
    let items: Vec<(usize, usize, usize)> = (0..g.b)
        .flat_map(|b| {
            (0..grid)
                .step_by(NR)
                .map(move |q0| (b, q0, NR.min(grid - q0)))
        })
        .collect();
    let yp = SendPtr(y.as_mut_ptr().cast::<f32>());
    let y_len = y.len();
    crate::par::for_each(&items, |&(b, q0, nq)| {
        let base = &planes.data[b * planes.image(g) + q0..];
        let mut out = scratch(cout * NR);
        // With a few row tiles the whole depth goes in one call (fewer passes over the
        // output); with many, blocks of it whose windows stay in L1 while every tile
        // reads them.
        let depth = if cout <= 2 * MR { k } else { KC };
        for k0 in (0..k).step_by(depth) {
            let kc = depth.min(k - k0);
            // SAFETY: `out` holds cout rows of NR ≥ nq floats.
            unsafe {
                gemm_panel(&Gemm {
                    m: cout,
                    n: nq,
                    kc,
                    a: Lhs::Strided(&w[k0..], k),
                    b: Rhs::Shifted(base, &offs[k0..]),
                    c: out.as_mut_ptr(),
                    c_rs: NR,
                    acc: k0 > 0,
                })
            };
        }
        // The panel's pixels row by row, less the padded width's extra columns.
        let mut q = q0;
        while q < q0 + nq {
            let (oy, ox0) = (q / wp, q % wp);
            let ox1 = g.ow.min(ox0 + q0 + nq - q);
            if ox0 < ox1 {
                let d = b * cout * p_out + oy * g.ow + ox0;
                assert!(d + (cout - 1) * p_out + (ox1 - ox0) <= y_len);
                for co in 0..cout {
                    let src = &out[co * NR + q - q0..][..ox1 - ox0];
                    // SAFETY: in bounds (asserted); items write disjoint pixels.
                    let dst = unsafe {
                        std::slice::from_raw_parts_mut(yp.get().add(d + co * p_out), src.len())
                    };
                    copy_short(dst, src);
                }
            }
            q += (wp - ox0).min(q0 + nq - q);
        }
    });
}

/// `y_b (cout × pixels) = W (cout × cin) · x_b (cin × pixels)` per image, for a 1×1
/// kernel at stride 1 without padding: the rows of `x_b` are the kernel's rhs rows as
/// they lie (pixels in the lanes), so there is nothing to reorder or pad, and the product
/// writes straight into `y`. InceptionV3 has a dozen such layers with hundreds of input
/// channels, several reading the same input; through the channels-last product each
/// transposed its input and output (~9% of a DeepDream step).
fn fwd_pointwise(g: &Geom, x: &[f32], w: &[f32], y: &mut [MaybeUninit<f32>]) {
    let (cin, cout, p) = (g.cin, g.cout, g.p_in());
    // Items of up to PW_PANELS panels of pixels times a block of output channels: enough
    // items to keep the threads balanced (a 17×17 image has five panels), each sweeping its
    // slice of W once per panel.
    const PW_PANELS: usize = 4;
    let panels = p.div_ceil(NR);
    let pblocks: Vec<(usize, usize)> = (0..panels)
        .step_by(PW_PANELS)
        .map(|j| (j * NR, (PW_PANELS * NR).min(p - j * NR)))
        .collect();
    let want = 4 * crate::par::threads();
    let splits = want
        .div_ceil(g.b * pblocks.len())
        .min(cout.div_ceil(4 * MR))
        .max(1);
    let rows = cout.div_ceil(splits).next_multiple_of(MR);
    let items: Vec<(usize, usize, usize, usize, usize)> = (0..g.b)
        .flat_map(|b| {
            pblocks.iter().flat_map(move |&(q0, nq)| {
                (0..cout)
                    .step_by(rows)
                    .map(move |co0| (b, q0, nq, co0, rows.min(cout - co0)))
            })
        })
        .collect();
    let yp = SendPtr(y.as_mut_ptr().cast::<f32>());
    assert!(x.len() == g.b * cin * p && y.len() == g.b * cout * p && w.len() == cout * cin);
    crate::par::for_each(&items, |&(b, q0, nq, co0, m)| {
        let xb = &x[b * cin * p..][..cin * p];
        for q in (q0..q0 + nq).step_by(NR) {
            let n = NR.min(q0 + nq - q);
            for k0 in (0..cin).step_by(KC) {
                let kc = KC.min(cin - k0);
                // SAFETY: rows co0 .. co0 + m of image b, columns q .. q + n: inside y
                // (asserted); items write disjoint (channel block, pixel block) parts.
                unsafe {
                    gemm_panel(&Gemm {
                        m,
                        n,
                        kc,
                        a: Lhs::Strided(&w[co0 * cin + k0..], cin),
                        b: Rhs::Packed(&xb[k0 * p + q..], p),
                        c: yp.get().add((b * cout + co0) * p + q),
                        c_rs: p,
                        acc: k0 > 0,
                    })
                };
            }
        }
    });
}

/// Input channels up to which the forward uses [`fwd_shifted`].
const SHIFTED_MAX_CIN: usize = 64;

/// Zero channels for taps in the padding.
static ZEROS: [f32; KC] = [0.0; KC];

/// `y^T (pixels × cout) = col^T (pixels × k) · W^T (k × cout)` per block of output pixels,
/// from the channels-last input, for many input and output channels. The kernel reads
/// the rows of `col^T` where they are: for one tap and a block of channels, the row of an
/// output pixel is a run of its input pixel's channels (or zeros in the padding), so no
/// im2col is built; each kernel call covers one tap and up to [`KC`] channels.
fn fwd_channels_last(g: &Geom, x: &[f32], wp: &Packed, y: &mut [MaybeUninit<f32>]) {
    let (taps, cin, cout, p_out) = (g.taps(), g.cin, g.cout, g.p_out());
    assert_eq!(
        (wp.k, wp.n),
        (g.k(), cout),
        "packed kernel of another shape"
    );
    let xt = to_channels_last(x, g.b, cin, g.p_in());
    // Blocks small enough that every thread gets one: a batch of one 8×12 map is a single
    // block of PB pixels, which left the second core idle (two 48-pixel blocks: 2.9 →
    // 1.6 ms for 512 → 512 channels with packed kernels cached).
    let per_thread = (g.b * p_out).div_ceil(crate::par::threads());
    let pb = PB.min(per_thread.next_multiple_of(MR));
    let items: Vec<(usize, usize, usize)> = (0..g.b)
        .flat_map(|b| {
            blocks(p_out, pb)
                .into_iter()
                .map(move |(p0, np)| (b, p0, np))
        })
        .collect();
    let yp = SendPtr(y.as_mut_ptr().cast::<f32>());
    let y_len = y.len();
    crate::par::for_each(&items, |&(b, p0, np)| {
        let xt_b = &xt[b * g.p_in() * cin..][..g.p_in() * cin];
        let mut out = scratch(np * cout);
        // Input pixel of every (tap, output pixel) of the block.
        let mut src = vec![None; taps * np];
        for (r, (oy, ox)) in g.pixels(p0).take(np).enumerate() {
            for t in 0..taps {
                src[t * np + r] = g.src(oy, ox, t / g.kw, t % g.kw);
            }
        }
        let mut rows: Vec<&[f32]> = Vec::with_capacity(np);
        for t in 0..taps {
            for ci0 in (0..cin).step_by(KC) {
                let (k0, kc) = (t * cin + ci0, KC.min(cin - ci0));
                rows.clear();
                rows.extend(src[t * np..][..np].iter().map(|s| match s {
                    Some(q) => &xt_b[q * cin + ci0..][..kc],
                    None => &ZEROS[..kc],
                }));
                for j in 0..wp.panels() {
                    let pn = wp.panel(j);
                    // SAFETY: `out` holds np rows of cout floats, columns j0 .. j0 + n ≤
                    // cout written.
                    unsafe {
                        gemm_panel(&Gemm {
                            m: np,
                            n: pn.n,
                            kc,
                            a: Lhs::Rows(&rows),
                            b: Rhs::Packed(&pn.data[k0 * pn.wpad..], pn.wpad),
                            c: out.as_mut_ptr().add(pn.j0),
                            c_rs: cout,
                            acc: k0 > 0,
                        })
                    };
                }
            }
        }
        let base = b * cout * p_out + p0;
        assert!(base + (cout - 1) * p_out + np <= y_len);
        // SAFETY: rows co < cout of image b, columns p0 .. p0 + np: in bounds (asserted);
        // items write disjoint pixel ranges of y.
        unsafe { transpose_raw(out.as_ptr(), cout, (np, cout), yp.get().add(base), p_out) };
    });
}

/// The data gradient `dx` of `y = conv(x, w)` given `dy`.
fn bwd_data(g: &Geom, dy: &[f32], w: &[f32], key: Option<WeightKey<'_>>) -> Vec<f32> {
    if g.b * g.cin * g.p_in() == 0 || g.cout == 0 {
        return vec![0.0; g.b * g.cin * g.p_in()];
    }
    // At stride 1 the data gradient is the convolution of `dy` with the flipped kernel
    // (zero padding `k - 1 - pad`): no scatter, and the forward's choice of lanes.
    if g.sh == 1 && g.sw == 1 && g.pt < g.kh && g.pl < g.kw {
        let gg = Geom {
            b: g.b,
            cin: g.cout,
            h: g.oh,
            w: g.ow,
            cout: g.cin,
            kh: g.kh,
            kw: g.kw,
            sh: 1,
            sw: 1,
            pt: g.kh - 1 - g.pt,
            pl: g.kw - 1 - g.pl,
            oh: g.h,
            ow: g.w,
        };
        // A frozen kernel's flipped and packed form may be cached: then neither the flip
        // nor the packing is redone.
        if let Some(wp) = key
            .filter(|_| {
                gg.is_channels_last() && gg.b * gg.p_out() > 0 && !winograd::applies(&gg, true)
            })
            .and_then(|k| PACKED.get(&gg, &k, gg.k()))
        {
            let len = gg.b * gg.cout * gg.p_out();
            let mut out = Vec::with_capacity(len);
            fwd_channels_last(&gg, dy, &wp, &mut out.spare_capacity_mut()[..len]);
            // SAFETY: the product wrote all `len` elements.
            unsafe { out.set_len(len) };
            return out;
        }
        let taps = g.taps();
        let mut wf = pool::take(w.len());
        if taps == 1 {
            // A plain transpose, in blocks: the gather below reads one float per cache
            // line of a large 1×1 kernel.
            transpose(w, g.cout, g.cin, &mut wf);
            return fwd(&gg, dy, &wf, key);
        }
        // wf[ci, co, t'] = w[co, ci, taps - 1 - t'] (flipping both axes reverses the taps).
        crate::par::for_chunks_mut(&mut wf, g.cout * taps, |ci, d| {
            for co in 0..g.cout {
                let src = &w[(co * g.cin + ci) * taps..][..taps];
                for (o, &v) in d[co * taps..][..taps].iter_mut().zip(src.iter().rev()) {
                    *o = v;
                }
            }
        });
        return fwd(&gg, dy, &wf, key);
    }
    bwd_data_scatter(g, dy, w)
}

/// `dcol^T (pixels × k) = dy^T (pixels × cout) · W (cout × k)` per block of output pixels,
/// each block's columns added into the channels-last `dx` as they come out of the kernel.
fn bwd_data_scatter(g: &Geom, dy: &[f32], w: &[f32]) -> Vec<f32> {
    let (taps, k, cin, cout, p_out, p_in) = (g.taps(), g.k(), g.cin, g.cout, g.p_out(), g.p_in());
    let wt = taps_major(w, g);
    let wp = Packed::new(cout, k, &wt, k, 1);
    let runs: Vec<Vec<Run>> = (0..wp.panels())
        .map(|j| {
            let pn = wp.panel(j);
            g.runs(pn.j0, pn.n)
        })
        .collect();
    let mut dx = vec![0.0f32; g.b * cin * p_in];
    // Work items must not add into the same elements. Panels of whole 64-channel blocks
    // each touch one channel block, so items can split an image by channel block; other
    // panels straddle taps, and an image is one item.
    let groups = if cin.is_multiple_of(NR) { cin / NR } else { 1 };
    if groups == 1 {
        // One pass: each image's reorderings happen in its item, in thread scratch (every
        // pass over the batch costs the threads a wake-up and the caches a sweep).
        let all: Vec<usize> = (0..wp.panels()).collect();
        crate::par::for_chunks_mut(&mut dx, cin * p_in, |b, dx_b| {
            let dy_b = &dy[b * cout * p_out..][..cout * p_out];
            let mut dyt = scratch(p_out * cout);
            transpose(dy_b, cout, p_out, &mut dyt);
            let mut dxt = scratch(p_in * cin);
            dxt.fill(0.0);
            let dxt_ptr = SendPtr(dxt.as_mut_ptr());
            // SAFETY: dxt holds one image; nothing else touches it.
            unsafe { scatter_image(g, &dyt, &wp, &runs, &all, dxt_ptr) };
            transpose(&dxt, p_in, cin, dx_b);
        });
        return dx;
    }
    let dyt = to_channels_last(dy, g.b, cout, p_out);
    let mut dxt = pool::take(g.b * p_in * cin);
    crate::par::for_chunks_mut(&mut dxt, 1 << 14, |_, c| c.fill(0.0));
    let items: Vec<(usize, usize)> = (0..g.b)
        .flat_map(|b| (0..groups).map(move |cg| (b, cg)))
        .collect();
    let dxp = SendPtr(dxt.as_mut_ptr());
    crate::par::for_each(&items, |&(b, cg)| {
        let panels: Vec<usize> = (0..taps).map(|t| t * groups + cg).collect();
        let dyt_b = &dyt[b * p_out * cout..][..p_out * cout];
        // SAFETY: image b of dxt; items add into disjoint channel blocks of it (the
        // panels of block cg touch channels cg · 64 .. cg · 64 + 64 only).
        unsafe {
            scatter_image(
                g,
                dyt_b,
                &wp,
                &runs,
                &panels,
                SendPtr(dxp.get().add(b * p_in * cin)),
            )
        };
    });
    crate::par::for_chunks_mut(&mut dx, cin * p_in, |b, d| {
        transpose(&dxt[b * cin * p_in..][..cin * p_in], p_in, cin, d)
    });
    dx
}

/// Adds the columns `panels` of `dcol^T = dy^T · W` of one image into its channels-last
/// `dx`, a block of output pixels at a time.
///
/// # Safety
/// `dxt` must point to one image's `p_in × cin` floats, and no one else may touch the
/// channels these panels cover meanwhile.
unsafe fn scatter_image(
    g: &Geom,
    dyt: &[f32],
    wp: &Packed,
    runs: &[Vec<Run>],
    panels: &[usize],
    dxt: SendPtr<f32>,
) {
    let cout = g.cout;
    let mut dcol = scratch(PB.min(g.p_out()).next_multiple_of(MR) * NR);
    for (p0, np) in blocks(g.p_out(), PB) {
        for &j in panels {
            let pn = wp.panel(j);
            for k0 in (0..cout).step_by(KC) {
                let kc = KC.min(cout - k0);
                // SAFETY: dcol holds ≥ np rows of NR ≥ n floats.
                unsafe {
                    gemm_panel(&Gemm {
                        m: np,
                        n: pn.n,
                        kc,
                        a: Lhs::Strided(&dyt[p0 * cout + k0..], cout),
                        b: Rhs::Packed(&pn.data[k0 * pn.wpad..], pn.wpad),
                        c: dcol.as_mut_ptr(),
                        c_rs: NR,
                        acc: k0 > 0,
                    })
                };
            }
            for (r, (oy, ox)) in g.pixels(p0).take(np).enumerate() {
                let src = &dcol[r * NR..][..pn.n];
                for run in &runs[j] {
                    if let Some(q) = g.src(oy, ox, run.a, run.c) {
                        // SAFETY: q < p_in and ci + len ≤ cin: inside the image, in channels
                        // this call owns (caller's contract).
                        let dst = unsafe {
                            std::slice::from_raw_parts_mut(
                                dxt.get().add(q * g.cin + run.ci),
                                run.len,
                            )
                        };
                        for (o, &v) in dst.iter_mut().zip(&src[run.off..][..run.len]) {
                            *o += v;
                        }
                    }
                }
            }
        }
    }
}

/// The weight gradient `dW (cout × k) = Σ_b dy_b (cout × pixels) · col_b^T (pixels × k)`,
/// `col^T` in channels-last order built a `KC × 64` panel at a time; each thread sums its
/// share of the batch into its own copy, and the copies are added at the end.
fn bwd_weight(g: &Geom, x: &[f32], dy: &[f32]) -> Vec<f32> {
    let (taps, k, cin, cout, p_out, p_in) = (g.taps(), g.k(), g.cin, g.cout, g.p_out(), g.p_in());
    if winograd::applies(g, false) && g.b * p_out > 0 {
        return winograd::bwd_weight(g, x, dy);
    }
    let mut dw = vec![0.0f32; cout * k];
    if dw.is_empty() || g.b * p_out == 0 {
        return dw;
    }
    // A handful of output channels would waste most lanes of the product, and a single
    // input channel makes its channels-last im2col a copy per float (measured: the dot
    // products win there, and lose at three input channels).
    if cout < 16 || cin == 1 {
        bwd_weight_shifted(g, x, dy, &mut dw);
        return dw;
    }
    let runs: Vec<Vec<Run>> = (0..k)
        .step_by(NR)
        .map(|j0| g.runs(j0, NR.min(k - j0)))
        .collect();
    let span = (WGRAD_ITEM_FLOATS / cout)
        .max(1)
        .next_multiple_of(KC)
        .min(p_out);
    // With whole images per item, each item reorders its own image (in thread scratch,
    // saving a pass over the batch); otherwise the batch is reordered first.
    let xt = (span < p_out).then(|| to_channels_last(x, g.b, cin, p_in));
    let items: Vec<(usize, usize, usize)> = (0..g.b)
        .flat_map(|b| {
            (0..p_out)
                .step_by(span)
                .map(move |p0| (b, p0, span.min(p_out - p0)))
        })
        .collect();
    let shares = crate::par::threads().clamp(1, items.len());
    let per = items.len().div_ceil(shares);
    let sum = crate::par::map_reduce(
        items.len().div_ceil(per),
        |i| {
            let share = &items[i * per..items.len().min((i + 1) * per)];
            let mut acc = pool::take(cout * k);
            acc.fill(0.0);
            let mut cols = pool::take(KC * NR);
            let mut own = scratch(if xt.is_some() { 0 } else { p_in * cin });
            for &(b, p0, np) in share {
                let xt_b = match &xt {
                    Some(xt) => &xt[b * p_in * cin..][..p_in * cin],
                    None => {
                        transpose(&x[b * cin * p_in..][..cin * p_in], cin, p_in, &mut own);
                        &own[..]
                    }
                };
                let dy_b = &dy[b * cout * p_out..][..cout * p_out];
                for (j0, runs) in (0..k).step_by(NR).zip(&runs) {
                    let n = NR.min(k - j0);
                    let wpad = n.next_multiple_of(16);
                    for q0 in (p0..p0 + np).step_by(KC) {
                        let kc = KC.min(p0 + np - q0);
                        fill_cols(g, xt_b, (q0, kc), runs, n, &mut cols, wpad, wpad);
                        // SAFETY: acc holds cout rows of k floats, columns j0 .. j0 + n
                        // written.
                        unsafe {
                            gemm_panel(&Gemm {
                                m: cout,
                                n,
                                kc,
                                a: Lhs::Strided(&dy_b[q0..], p_out),
                                b: Rhs::Packed(&cols, wpad),
                                c: acc.as_mut_ptr().add(j0),
                                c_rs: k,
                                acc: true,
                            })
                        };
                    }
                }
            }
            acc
        },
        |mut a, b| {
            a.iter_mut().zip(b.iter()).for_each(|(x, y)| *x += y);
            a
        },
    )
    .expect("at least one share");
    // Channels-last columns back to the kernel's (ci, a, c) order.
    for (d, s) in dw.chunks_exact_mut(k).zip(sum.chunks_exact(k)) {
        transpose(s, taps, cin, d);
    }
    dw
}

/// The weight gradient for few output (or input) channels: `dW[co, k] = Σ_q dy[co, q] ·
/// col[k, q]` as dot products over output pixels (in the vector lanes), `col` read in
/// place from [`Planes`] and `dy` spread to the planes' width with zeros in the extra
/// columns.
fn bwd_weight_shifted(g: &Geom, x: &[f32], dy: &[f32], dw: &mut [f32]) {
    let (k, cout, p_out) = (g.k(), g.cout, g.p_out());
    let planes = Planes::new(g, x);
    let wp = planes.wp;
    let grid = g.oh * wp;
    let gpad = grid.next_multiple_of(16);
    let mut dyp = pool::take(g.b * cout * gpad);
    crate::par::for_chunks_mut(&mut dyp, gpad, |i, d| {
        let s = &dy[i * p_out..][..p_out];
        d.fill(0.0);
        for (oy, row) in s.chunks_exact(g.ow).enumerate() {
            d[oy * wp..][..g.ow].copy_from_slice(row);
        }
    });
    let mut offs = planes.offsets(g);
    // Whole tiles of taps: the padding taps read plane 0 and are thrown away.
    offs.resize(k.next_multiple_of(dots::J_MAX), 0);
    // Pixel spans of a few thousand: a tile's accumulators sum a span, then go to memory.
    let span = 4096.min(gpad);
    let items: Vec<(usize, usize)> = (0..g.b)
        .flat_map(|b| (0..gpad).step_by(span).map(move |q0| (b, q0)))
        .collect();
    let shares = crate::par::threads().clamp(1, items.len());
    let per = items.len().div_ceil(shares);
    let sum = crate::par::map_reduce(
        items.len().div_ceil(per),
        |i| {
            let share = &items[i * per..items.len().min((i + 1) * per)];
            let mut acc = vec![0.0f32; cout * k];
            for &(b, q0) in share {
                let q1 = (q0 + span).min(gpad);
                let base = &planes.data[b * planes.image(g) + q0..];
                let dyb = &dyp[b * cout * gpad..][..cout * gpad];
                dots::run(&dyb[q0..], gpad, cout, q1 - q0, base, &offs, k, &mut acc);
            }
            acc
        },
        |mut a, b| {
            a.iter_mut().zip(&b).for_each(|(x, y)| *x += y);
            a
        },
    )
    .expect("at least one share");
    dw.copy_from_slice(&sum);
}

/// Dot products of a few rows against many shifted windows, for [`bwd_weight_shifted`].
mod dots {
    /// Windows per register tile at most (the tile for one row).
    pub(super) const J_MAX: usize = 24;

    /// `acc[r · k + j] += Σ_{q < len} a[r · a_rs + q] · base[offs[j] + q]` for `r < m`,
    /// `j < k`; `len` is a multiple of 16 and `offs` holds `k` rounded up to [`J_MAX`]
    /// entries, each window in bounds.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn run(
        a: &[f32],
        a_rs: usize,
        m: usize,
        len: usize,
        base: &[f32],
        offs: &[usize],
        k: usize,
        acc: &mut [f32],
    ) {
        assert!(len.is_multiple_of(16) && offs.len() >= k.next_multiple_of(J_MAX));
        assert!(m == 0 || (m - 1) * a_rs + len <= a.len());
        assert!(offs.iter().all(|&o| o + len <= base.len()) && acc.len() >= m * k);
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F; extents are asserted above.
            unsafe { avx512::run(a, a_rs, m, len, base, offs, k, acc) };
            return;
        }
        portable(a, a_rs, m, len, base, offs, k, acc);
    }

    /// [`run`] in plain Rust, for CPUs without AVX-512.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn portable(
        a: &[f32],
        a_rs: usize,
        m: usize,
        len: usize,
        base: &[f32],
        offs: &[usize],
        k: usize,
        acc: &mut [f32],
    ) {
        for r in 0..m {
            let row = &a[r * a_rs..][..len];
            for j in 0..k {
                let win = &base[offs[j]..][..len];
                acc[r * k + j] += row.iter().zip(win).map(|(x, y)| x * y).sum::<f32>();
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    mod avx512 {
        use std::arch::x86_64::*;

        use super::J_MAX;

        /// # Safety
        /// The CPU must have AVX-512F and the operands must satisfy [`super::run`]'s
        /// assertions.
        #[allow(clippy::too_many_arguments)]
        #[target_feature(enable = "avx512f")]
        pub(super) unsafe fn run(
            a: &[f32],
            a_rs: usize,
            m: usize,
            len: usize,
            base: &[f32],
            offs: &[usize],
            k: usize,
            acc: &mut [f32],
        ) {
            let mut r0 = 0;
            while r0 < m {
                let rows = (m - r0).min(4);
                for j0 in (0..k).step_by(J_MAX) {
                    let a = a[r0 * a_rs..].as_ptr();
                    let o = &offs[j0..j0 + J_MAX];
                    let out = &mut acc[r0 * k..];
                    let cols = (k - j0).min(J_MAX);
                    // SAFETY: rows r0 .. r0 + rows ≤ m of `a` and the windows of `o` hold
                    // `len` floats (asserted by the caller).
                    unsafe {
                        match rows {
                            1 => tile::<1, 24>(a, a_rs, len, base.as_ptr(), o, out, k, j0, cols),
                            2 => tile::<2, 12>(a, a_rs, len, base.as_ptr(), o, out, k, j0, cols),
                            3 => tile::<3, 8>(a, a_rs, len, base.as_ptr(), o, out, k, j0, cols),
                            _ => tile::<4, 6>(a, a_rs, len, base.as_ptr(), o, out, k, j0, cols),
                        }
                    }
                }
                r0 += rows;
            }
        }

        /// Rows `r < R` against windows `j0 .. j0 + cols` (`J` at a time, `J` dividing
        /// [`J_MAX`]): `R · J` accumulators, `R + J` loads per 16 pixels.
        ///
        /// # Safety
        /// As [`run`]; `out` holds R rows of `k` from which columns `j0 .. j0 + cols` are
        /// updated.
        #[allow(clippy::too_many_arguments)]
        #[inline]
        #[target_feature(enable = "avx512f")]
        unsafe fn tile<const R: usize, const J: usize>(
            a: *const f32,
            a_rs: usize,
            len: usize,
            base: *const f32,
            offs: &[usize],
            out: &mut [f32],
            k: usize,
            j0: usize,
            cols: usize,
        ) {
            for jj in (0..cols).step_by(J) {
                let mut win = [std::ptr::null(); J];
                for (j, w) in win.iter_mut().enumerate() {
                    // SAFETY: offs holds J_MAX windows, in bounds (caller's contract).
                    *w = unsafe { base.add(offs[jj + j]) };
                }
                let mut sum = [[_mm512_setzero_ps(); J]; R];
                for q in (0..len).step_by(16) {
                    let mut av = [_mm512_setzero_ps(); R];
                    for (r, v) in av.iter_mut().enumerate() {
                        // SAFETY: row r < R, pixels q .. q + 16 ≤ len.
                        *v = unsafe { _mm512_loadu_ps(a.add(r * a_rs + q)) };
                    }
                    for (j, &w) in win.iter().enumerate() {
                        // SAFETY: window j holds len floats.
                        let xv = unsafe { _mm512_loadu_ps(w.add(q)) };
                        for (s, &v) in sum.iter_mut().zip(&av) {
                            s[j] = _mm512_fmadd_ps(v, xv, s[j]);
                        }
                    }
                }
                for (r, row) in sum.iter().enumerate() {
                    for (j, &v) in row.iter().enumerate().take(cols - jj) {
                        out[r * k + j0 + jj + j] += _mm512_reduce_add_ps(v);
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// The kernel.
// ---------------------------------------------------------------------------------------

/// The lhs of a [`Gemm`]: row `i` starts at `a[i · rs]` (`Strided`) or is `rows[i]`
/// (`Rows`, for rows gathered from anywhere: the input pixels of one tap).
#[derive(Clone, Copy)]
enum Lhs<'a> {
    Strided(&'a [f32], usize),
    Rows(&'a [&'a [f32]]),
}

impl Lhs<'_> {
    /// Start of row `i`.
    fn row(&self, i: usize) -> *const f32 {
        match *self {
            // Not dereferenced unless the row holds `kc > 0` elements (checked).
            Lhs::Strided(a, rs) => a.as_ptr().wrapping_add(i * rs),
            Lhs::Rows(rows) => rows[i].as_ptr(),
        }
    }
}

/// The rhs of a [`Gemm`]: row `p` starts at `b[p · rs]` (`Packed`: a panel) or at
/// `base[offs[p]]` (`Shifted`: windows of zero-padded input planes, each row a tap's
/// view of a run of output pixels). The last vector of a row is read under a mask, so
/// only the `n` columns need be readable: a panel can end where its buffer does.
#[derive(Clone, Copy)]
enum Rhs<'a> {
    Packed(&'a [f32], usize),
    Shifted(&'a [f32], &'a [usize]),
}

impl Rhs<'_> {
    /// Start of row `p`.
    fn row(&self, p: usize) -> *const f32 {
        match *self {
            // Not dereferenced unless rows hold `kc > 0` elements (checked).
            Rhs::Packed(b, rs) => b.as_ptr().wrapping_add(p * rs),
            Rhs::Shifted(base, offs) => base.as_ptr().wrapping_add(offs[p]),
        }
    }
}

/// `c (m × n) [+]= a (m × kc) · b (kc × n)` for one panel of `n ≤ 64` columns; `c` is
/// row-major with stride `c_rs` and only its `n` columns are written. Without `acc` the
/// old `c` is never read.
struct Gemm<'a> {
    m: usize,
    n: usize,
    kc: usize,
    a: Lhs<'a>,
    b: Rhs<'a>,
    c: *mut f32,
    c_rs: usize,
    acc: bool,
}

/// Runs [`Gemm`] with the AVX-512 kernel where the CPU has it.
///
/// # Safety
/// `c[i · c_rs + j]` for `i < m`, `j < n` must be valid for reads and writes and not be
/// written by anyone else meanwhile. (`a` and `b` are checked.)
unsafe fn gemm_panel(g: &Gemm) {
    if g.m == 0 || g.n == 0 {
        return;
    }
    assert!(g.n <= NR);
    if g.kc > 0 {
        match g.a {
            Lhs::Strided(a, rs) => assert!((g.m - 1) * rs + g.kc <= a.len()),
            Lhs::Rows(rows) => assert!(rows.len() >= g.m && rows.iter().all(|r| r.len() >= g.kc)),
        }
        let n = g.n;
        match g.b {
            Rhs::Packed(b, rs) => assert!(rs >= n && (g.kc - 1) * rs + n <= b.len()),
            Rhs::Shifted(base, offs) => {
                assert!(offs.len() >= g.kc && offs[..g.kc].iter().all(|&o| o + n <= base.len()))
            }
        }
    }
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512F; operand extents are checked above, `c`'s is the
        // caller's contract.
        unsafe { avx512::panel(g) };
        return;
    }
    // SAFETY: as above.
    unsafe { gemm_portable(g) }
}

/// The same product in plain Rust, for CPUs without AVX-512.
///
/// # Safety
/// As [`gemm_panel`], whose checks must have passed.
unsafe fn gemm_portable(g: &Gemm) {
    let mut row = [0.0f32; NR];
    for i in 0..g.m {
        let row = &mut row[..g.n];
        row.fill(0.0);
        let a = g.a.row(i);
        for p in 0..g.kc {
            // SAFETY: row i of a holds kc elements, row p of b n (checked by the caller).
            let (x, b) = unsafe { (*a.add(p), std::slice::from_raw_parts(g.b.row(p), g.n)) };
            for (s, &bv) in row.iter_mut().zip(b) {
                *s += x * bv;
            }
        }
        for (j, &s) in row.iter().enumerate() {
            // SAFETY: i < m, j < n: the caller's contract.
            unsafe {
                let c = g.c.add(i * g.c_rs + j);
                *c = if g.acc { *c + s } else { s };
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{Gemm, MR, Rhs};

    /// Where the kernel finds row `p` of the rhs.
    trait RhsRows: Copy {
        /// # Safety
        /// `p` must be a row the [`Gemm`] checks covered.
        unsafe fn row(self, p: usize) -> *const f32;
    }

    #[derive(Clone, Copy)]
    struct PackedRows(*const f32, usize);

    impl RhsRows for PackedRows {
        #[inline(always)]
        unsafe fn row(self, p: usize) -> *const f32 {
            // SAFETY: the caller's contract.
            unsafe { self.0.add(p * self.1) }
        }
    }

    #[derive(Clone, Copy)]
    struct ShiftedRows(*const f32, *const usize);

    impl RhsRows for ShiftedRows {
        #[inline(always)]
        unsafe fn row(self, p: usize) -> *const f32 {
            // SAFETY: the caller's contract.
            unsafe { self.0.add(*self.1.add(p)) }
        }
    }

    /// Every row tile of [`Gemm`] against its panel.
    ///
    /// # Safety
    /// The CPU must have AVX-512F and `g` must satisfy [`super::gemm_panel`]'s checks and
    /// contract.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn panel(g: &Gemm) {
        // SAFETY: forwarded.
        unsafe {
            match g.b {
                Rhs::Packed(b, rs) => panel_with(g, PackedRows(b.as_ptr(), rs)),
                Rhs::Shifted(base, offs) => {
                    panel_with(g, ShiftedRows(base.as_ptr(), offs.as_ptr()))
                }
            }
        }
    }

    /// # Safety
    /// As [`panel`], with `b` describing `g.b`.
    #[target_feature(enable = "avx512f")]
    unsafe fn panel_with<B: RhsRows>(g: &Gemm, b: B) {
        let nv = g.n.div_ceil(16);
        let tail = g.n - 16 * (nv - 1);
        let mask: __mmask16 = if tail == 16 { !0 } else { (1 << tail) - 1 };
        let mut i0 = 0;
        while i0 < g.m {
            let mr = MR.min(g.m - i0);
            let mut a = [std::ptr::null(); MR];
            for (r, p) in a.iter_mut().enumerate().take(mr) {
                *p = g.a.row(i0 + r);
            }
            let a = &a;
            // SAFETY: rows i0 .. i0 + mr < m of c and a, kc rows of b, n columns: in bounds
            // by the caller's checks; mr is 1..=MR and nv 1..=4 (n ≤ 64).
            unsafe {
                let c = g.c.add(i0 * g.c_rs);
                macro_rules! go {
                    ($($r:literal),*) => {
                        match (mr, nv) {
                            $(
                                ($r, 4) => tile::<$r, 4, B>(g.kc, a, b, c, g.c_rs, g.acc, mask),
                                ($r, 3) => tile::<$r, 3, B>(g.kc, a, b, c, g.c_rs, g.acc, mask),
                                ($r, 2) => tile::<$r, 2, B>(g.kc, a, b, c, g.c_rs, g.acc, mask),
                                ($r, 1) => tile::<$r, 1, B>(g.kc, a, b, c, g.c_rs, g.acc, mask),
                            )*
                            _ => unreachable!("tile {mr}×{nv}"),
                        }
                    };
                }
                const _: () = assert!(MR == 6);
                go!(6, 5, 4, 3, 2, 1);
            }
            i0 += mr;
        }
    }

    /// `dst[j · dst_rs + i] = src[i · src_rs + j]` for `i, j < 16`: the textbook
    /// in-register transpose (32-bit, 64-bit and two 128-bit interleaving stages).
    ///
    /// # Safety
    /// The CPU must have AVX-512F and both 16 × 16 blocks must be in bounds.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn transpose16(src: *const f32, src_rs: usize, dst: *mut f32, dst_rs: usize) {
        let mut r = [_mm512_setzero_ps(); 16];
        for (i, v) in r.iter_mut().enumerate() {
            // SAFETY: row i < 16 of the block (caller's contract).
            *v = unsafe { _mm512_loadu_ps(src.add(i * src_rs)) };
        }
        // t[2i], t[2i+1]: rows 2i and 2i+1 interleaved by element, per 128-bit lane.
        let mut t = [_mm512_setzero_ps(); 16];
        for i in 0..8 {
            t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
            t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
        }
        // u[4g + c], lane l: rows 4g .. 4g + 4 of column 4l + c.
        let pd = _mm512_castps_pd;
        let ps = _mm512_castpd_ps;
        let mut u = [_mm512_setzero_ps(); 16];
        for g in 0..4 {
            let (a0, a1, b0, b1) = (t[4 * g], t[4 * g + 1], t[4 * g + 2], t[4 * g + 3]);
            u[4 * g] = ps(_mm512_unpacklo_pd(pd(a0), pd(b0)));
            u[4 * g + 1] = ps(_mm512_unpackhi_pd(pd(a0), pd(b0)));
            u[4 * g + 2] = ps(_mm512_unpacklo_pd(pd(a1), pd(b1)));
            u[4 * g + 3] = ps(_mm512_unpackhi_pd(pd(a1), pd(b1)));
        }
        // Column 4l + c gathers lane l of u[c], u[4 + c], u[8 + c], u[12 + c]: a 4 × 4
        // transpose of 128-bit lanes.
        for c in 0..4 {
            let (a, b, cc, d) = (u[c], u[4 + c], u[8 + c], u[12 + c]);
            let v0 = _mm512_shuffle_f32x4::<0x44>(a, b);
            let v1 = _mm512_shuffle_f32x4::<0xEE>(a, b);
            let v2 = _mm512_shuffle_f32x4::<0x44>(cc, d);
            let v3 = _mm512_shuffle_f32x4::<0xEE>(cc, d);
            let cols = [
                _mm512_shuffle_f32x4::<0x88>(v0, v2),
                _mm512_shuffle_f32x4::<0xDD>(v0, v2),
                _mm512_shuffle_f32x4::<0x88>(v1, v3),
                _mm512_shuffle_f32x4::<0xDD>(v1, v3),
            ];
            for (l, v) in cols.into_iter().enumerate() {
                // SAFETY: row 4l + c < 16 of the destination block (caller's contract).
                unsafe { _mm512_storeu_ps(dst.add((4 * l + c) * dst_rs), v) };
            }
        }
    }

    /// `c (R × 16·V) [+]= a (R × kc) · b (kc × 16·V)` in `R · V` zmm accumulators; the
    /// last vector of each `b` and `c` row is loaded (and stored) under `mask`. 6 × 4 accumulators,
    /// 4 `b` vectors and a broadcast fill 29 of the 32 registers, and each step of `kc`
    /// issues 24 FMAs for 10 loads, which keeps both FMA ports busy.
    ///
    /// # Safety
    /// The CPU must have AVX-512F; `a[i][p]`, and the unmasked `b.row(p)[j]` and
    /// `c[i · c_rs + j]` must be in bounds for i < R, p < kc.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn tile<const R: usize, const V: usize, B: RhsRows>(
        kc: usize,
        a: &[*const f32; MR],
        b: B,
        c: *mut f32,
        c_rs: usize,
        acc: bool,
        mask: __mmask16,
    ) {
        let mut sum = [[_mm512_setzero_ps(); V]; R];
        for p in 0..kc {
            // SAFETY: p < kc: in bounds by the contract.
            let row = unsafe { b.row(p) };
            let mut bv = [_mm512_setzero_ps(); V];
            for (v, x) in bv.iter_mut().enumerate() {
                // SAFETY: the lanes under the mask are in bounds by the contract (masked-off
                // lanes are not read).
                *x = unsafe {
                    if v + 1 == V {
                        _mm512_maskz_loadu_ps(mask, row.add(16 * v))
                    } else {
                        _mm512_loadu_ps(row.add(16 * v))
                    }
                };
            }
            for (i, row) in sum.iter_mut().enumerate() {
                // SAFETY: i < R, p < kc: in bounds by the contract.
                let x = _mm512_set1_ps(unsafe { *a[i].add(p) });
                for (s, &bb) in row.iter_mut().zip(&bv) {
                    *s = _mm512_fmadd_ps(x, bb, *s);
                }
            }
        }
        for (i, row) in sum.iter().enumerate() {
            for (v, &s) in row.iter().enumerate() {
                let m = if v + 1 == V { mask } else { !0 };
                // SAFETY: i < R; the lanes under `m` are in bounds by the contract.
                unsafe {
                    let p = c.add(i * c_rs + 16 * v);
                    let s = if acc {
                        _mm512_add_ps(_mm512_maskz_loadu_ps(m, p), s)
                    } else {
                        s
                    };
                    _mm512_mask_storeu_ps(p, m, s);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn values(len: usize, seed: u64) -> Vec<f32> {
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(17);
        (0..len)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((state >> 33) as f32 / (1u64 << 31) as f32) - 0.5
            })
            .collect()
    }

    fn random(shape: (usize, usize, usize, usize), seed: u64) -> Tensor {
        let n = shape.0 * shape.1 * shape.2 * shape.3;
        Tensor::from_vec(values(n, seed), shape, &Device::Cpu).unwrap()
    }

    fn to_f64(t: &Tensor) -> Vec<f64> {
        t.flatten_all()
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    /// Visits every (input, weight, output) index triple of the convolution `g`, straight
    /// from the formula in [`Geom`]'s documentation: the reference for all three products.
    fn each_term(g: &Geom, mut f: impl FnMut(usize, usize, usize)) {
        for b in 0..g.b {
            for co in 0..g.cout {
                for oy in 0..g.oh {
                    for ox in 0..g.ow {
                        let yi = ((b * g.cout + co) * g.oh + oy) * g.ow + ox;
                        for ci in 0..g.cin {
                            for a in 0..g.kh {
                                for c in 0..g.kw {
                                    let iy = (oy * g.sh + a) as isize - g.pt as isize;
                                    let ix = (ox * g.sw + c) as isize - g.pl as isize;
                                    if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize
                                    {
                                        continue;
                                    }
                                    let xi =
                                        ((b * g.cin + ci) * g.h + iy as usize) * g.w + ix as usize;
                                    let wi = ((co * g.cin + ci) * g.kh + a) * g.kw + c;
                                    f(xi, wi, yi);
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    fn direct_fwd(g: &Geom, x: &[f64], w: &[f64]) -> Vec<f64> {
        let mut y = vec![0.0; g.b * g.cout * g.p_out()];
        each_term(g, |xi, wi, yi| y[yi] += x[xi] * w[wi]);
        y
    }

    fn direct_data(g: &Geom, dy: &[f64], w: &[f64]) -> Vec<f64> {
        let mut dx = vec![0.0; g.b * g.cin * g.p_in()];
        each_term(g, |xi, wi, yi| dx[xi] += dy[yi] * w[wi]);
        dx
    }

    fn direct_weight(g: &Geom, x: &[f64], dy: &[f64]) -> Vec<f64> {
        let mut dw = vec![0.0; g.cout * g.k()];
        each_term(g, |xi, wi, yi| dw[wi] += x[xi] * dy[yi]);
        dw
    }

    /// Largest difference, asserted below `tol · (1 + largest |reference|)`.
    fn assert_close(got: &[f64], want: &[f64], tol: f64, what: &str) {
        assert_eq!(got.len(), want.len(), "{what}: lengths");
        let scale = 1.0 + want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let (i, d) = got
            .iter()
            .zip(want)
            .map(|(a, b)| (a - b).abs())
            .enumerate()
            .fold(
                (0, 0.0),
                |(bi, bd), (i, d)| if d > bd { (i, d) } else { (bi, bd) },
            );
        assert!(
            d <= tol * scale,
            "{what}: [{i}] {} vs {} (diff {d:e}, scale {scale})",
            got[i],
            want[i]
        );
        // A kernel that wrote nothing would pass a loose comparison with a zero reference.
        assert!(
            want.iter().any(|v| v.abs() > 1e-3),
            "{what}: degenerate reference"
        );
    }

    /// `(b, cin, cout, h, w, kh, kw, stride, padding)`: odd sizes, both strides, paddings 0
    /// to 3 (asymmetric too), 1×7 / 7×1 kernels. Between them they take every path: the
    /// shifted-planes forward (few input or output channels, stride 1 and 2) and the
    /// channels-last one (128 input channels, and the 70-channel gather below); several
    /// panels, masked panel tails and k-blocks; data gradients by gather (stride 1) and
    /// scatter (whole images, and channel-block items at 128 channels); weight gradients by
    /// dot products (few output channels, one input channel) and by product, one with
    /// several items per image; and the pointwise product of 1×1 kernels.
    type ConvCase = (
        usize,
        usize,
        usize,
        usize,
        usize,
        usize,
        usize,
        (usize, usize),
        [usize; 4],
    );
    const CONV_CASES: &[ConvCase] = &[
        (1, 1, 1, 7, 9, 3, 3, (1, 1), [1, 1, 1, 1]),
        (3, 5, 4, 7, 9, 3, 3, (2, 2), [1, 1, 1, 1]),
        (3, 5, 20, 7, 9, 4, 4, (2, 2), [0, 1, 0, 1]),
        (1, 5, 17, 9, 7, 5, 5, (1, 1), [2, 2, 2, 2]),
        (3, 1, 32, 7, 9, 7, 7, (1, 1), [3, 3, 3, 3]),
        (1, 5, 16, 7, 9, 1, 7, (1, 1), [0, 0, 3, 3]),
        (3, 5, 16, 7, 9, 7, 1, (1, 1), [3, 3, 0, 0]),
        (1, 5, 3, 9, 7, 1, 1, (1, 1), [0, 0, 0, 0]),
        (3, 5, 24, 7, 9, 3, 3, (1, 1), [3, 3, 3, 3]),
        (3, 5, 2, 9, 7, 5, 5, (2, 2), [2, 2, 2, 2]),
        (1, 5, 6, 7, 9, 3, 3, (1, 1), [0, 1, 0, 1]),
        (2, 128, 20, 5, 6, 3, 3, (2, 2), [1, 0, 1, 0]),
        (2, 20, 70, 20, 17, 3, 3, (1, 1), [1, 1, 1, 1]),
        (1, 3, 520, 20, 17, 3, 3, (1, 1), [1, 1, 1, 1]),
        (2, 32, 64, 28, 28, 3, 3, (2, 2), [0, 1, 0, 1]),
        // 1×1 at stride 1 (the pointwise product, forward and data gradient): a panel
        // and a ragged tail over 143 pixels, depth over a k-block, one short panel,
        // and few channels.
        (2, 150, 70, 13, 11, 1, 1, (1, 1), [0, 0, 0, 0]),
        (1, 200, 40, 5, 7, 1, 1, (1, 1), [0, 0, 0, 0]),
        (3, 20, 7, 9, 9, 1, 1, (1, 1), [0, 0, 0, 0]),
        // Channels-last both ways with two kernel panels, the second ragged.
        (2, 70, 80, 6, 5, 3, 3, (1, 1), [1, 1, 1, 1]),
        // Winograd both ways (forward and the flipped data gradient): 5×5 always, 3×3
        // where the kernel is trained (the gradient tests); partial tiles, asymmetric
        // padding, a depth block and a ragged panel.
        (1, 64, 64, 7, 9, 5, 5, (1, 1), [2, 2, 2, 2]),
        (2, 144, 80, 6, 5, 5, 5, (1, 1), [0, 3, 1, 2]),
        (2, 80, 144, 6, 5, 3, 3, (1, 1), [0, 1, 1, 0]),
    ];

    /// Unequal strides, which candle cannot run: checked against the direct loop only.
    const UNEQUAL_STRIDES: &[ConvCase] = &[
        (1, 5, 16, 8, 9, 3, 3, (1, 2), [1, 1, 1, 1]),
        (2, 3, 5, 9, 8, 4, 3, (2, 1), [0, 1, 2, 0]),
    ];

    /// `(b, cin, cout, h, w, k, stride, padding, output_padding)`.
    type ConvTCase = (
        usize,
        usize,
        usize,
        usize,
        usize,
        usize,
        usize,
        usize,
        usize,
    );
    const CONVT_CASES: &[ConvTCase] = &[
        (1, 1, 1, 7, 9, 3, 2, 1, 0),
        (3, 5, 4, 7, 9, 3, 2, 1, 1),
        (3, 5, 20, 7, 9, 4, 2, 1, 0),
        (2, 5, 17, 7, 9, 4, 2, 1, 1),
        (2, 16, 128, 4, 5, 4, 2, 1, 0),
        (1, 5, 3, 7, 9, 3, 1, 0, 0),
        (1, 5, 20, 7, 9, 3, 1, 1, 0),
        (1, 3, 5, 4, 4, 3, 2, 0, 1),
        (2, 64, 32, 14, 14, 3, 2, 1, 1),
    ];

    fn conv_setup(case: &ConvCase, seed: u64) -> (Tensor, Tensor, Conv2dParams) {
        let &(b, cin, cout, h, w, kh, kw, stride, padding) = case;
        (
            random((b, cin, h, w), seed),
            random((cout, cin, kh, kw), seed + 1),
            Conv2dParams { stride, padding },
        )
    }

    fn convt_setup(case: &ConvTCase, seed: u64) -> (Tensor, Tensor, ConvTranspose2dParams) {
        let &(b, cin, cout, h, w, k, stride, padding, output_padding) = case;
        (
            random((b, cin, h, w), seed),
            random((cin, cout, k, k), seed + 1),
            ConvTranspose2dParams {
                stride,
                padding,
                output_padding,
            },
        )
    }

    /// f32 sums over `k` terms of magnitude ≤ 1/4.
    fn tol(k: usize) -> f64 {
        2e-6 * (k as f64).sqrt().max(1.0)
    }

    #[test]
    fn conv2d_forward_matches_candle_and_the_direct_loop() -> Result<()> {
        for (i, case) in CONV_CASES.iter().chain(UNEQUAL_STRIDES).enumerate() {
            let (x, w, p) = conv_setup(case, 10 + i as u64);
            let g = conv2d_geom(x.dims4()?, w.dims4()?, p)?;
            let ours = conv2d(&x, &w, p)?;
            assert_eq!(ours.dims4()?, (g.b, g.cout, g.oh, g.ow), "{case:?}");
            let direct = direct_fwd(&g, &to_f64(&x), &to_f64(&w));
            assert_close(
                &to_f64(&ours),
                &direct,
                tol(g.k()),
                &format!("{case:?} direct"),
            );
            if p.stride.0 == p.stride.1 {
                let candle = conv2d_candle(&x.to_dtype(DType::F64)?, &w.to_dtype(DType::F64)?, p)?;
                assert_eq!(candle.dims4()?, ours.dims4()?);
                assert_close(
                    &to_f64(&ours),
                    &to_f64(&candle),
                    tol(g.k()),
                    &format!("{case:?} candle"),
                );
            }
        }
        Ok(())
    }

    fn max_diff(a: &[f64], b: &[f64]) -> f64 {
        a.iter().zip(b).fold(0.0, |m, (x, y)| m.max((x - y).abs()))
    }

    /// The Winograd forward and weight gradient against the direct sums, both kernel
    /// sizes: sizes that end in partial tiles, paddings 0–3 (asymmetric too), batch 1, and
    /// channels across a depth block with a ragged last panel. Their error stays within
    /// the direct f32 sum's bound (printed: the figures quoted in `winograd`'s docs).
    #[test]
    fn winograd_forward_matches_the_direct_sum() -> Result<()> {
        let cases: &[ConvCase] = &[
            (1, 16, 16, 7, 9, 5, 5, (1, 1), [2, 2, 2, 2]),
            (2, 32, 16, 8, 8, 5, 5, (1, 1), [0, 3, 1, 2]),
            (1, 16, 32, 5, 6, 3, 3, (1, 1), [1, 1, 1, 1]),
            (2, 16, 16, 11, 4, 3, 3, (1, 1), [0, 0, 2, 3]),
            (1, 144, 80, 9, 10, 5, 5, (1, 1), [2, 2, 2, 2]),
            (1, 144, 80, 9, 10, 3, 3, (1, 1), [1, 1, 1, 1]),
            // 144 tiles: two depth blocks of the weight gradient, the second partial.
            (1, 16, 16, 24, 23, 5, 5, (1, 1), [2, 2, 2, 2]),
            // More depth blocks (one per image) than threads: each thread's sum is
            // written by its first block and added to by the others.
            (9, 16, 16, 6, 5, 3, 3, (1, 1), [1, 1, 1, 1]),
        ];
        for (i, case) in cases.iter().enumerate() {
            let (x, w, p) = conv_setup(case, 200 + i as u64);
            let g = conv2d_geom(x.dims4()?, w.dims4()?, p)?;
            let xv = x.flatten_all()?.to_vec1::<f32>()?;
            let wv = w.flatten_all()?.to_vec1::<f32>()?;
            let len = g.b * g.cout * g.p_out();
            let mut y = Vec::with_capacity(len);
            let u = winograd::transform_kernel(&g, &wv);
            winograd::fwd(&g, &xv, &u, &mut y.spare_capacity_mut()[..len]);
            // SAFETY: the forward writes every element.
            unsafe { y.set_len(len) };
            let got: Vec<f64> = y.iter().map(|&v| f64::from(v)).collect();
            let direct = direct_fwd(&g, &to_f64(&x), &to_f64(&w));
            eprintln!("{case:?}: max error {:e}", max_diff(&got, &direct));
            assert_close(&got, &direct, tol(g.k()), &format!("{case:?}"));
            // The weight gradient for some output gradient.
            let r = random((g.b, g.cout, g.oh, g.ow), 300 + i as u64);
            let dw = winograd::bwd_weight(&g, &xv, &r.flatten_all()?.to_vec1::<f32>()?);
            let got: Vec<f64> = dw.iter().map(|&v| f64::from(v)).collect();
            let direct = direct_weight(&g, &to_f64(&x), &to_f64(&r));
            eprintln!(
                "{case:?}: max weight-gradient error {:e}",
                max_diff(&got, &direct)
            );
            assert_close(
                &got,
                &direct,
                tol(g.b * g.p_out()),
                &format!("{case:?} weight gradient"),
            );
        }
        Ok(())
    }

    /// Which forwards take Winograd's transform: stride-1 5×5 kernels always, 3×3 ones
    /// while trained or over enough tiles, and only between ≥ 64 channels in whole
    /// registers.
    #[test]
    fn winograd_is_chosen_where_it_pays() -> Result<()> {
        let geom = |cin, cout, k, s| {
            conv2d_geom(
                (2, cin, 16, 16),
                (cout, cin, k, k),
                Conv2dParams {
                    stride: (s, s),
                    padding: [k / 2; 4],
                },
            )
        };
        assert!(winograd::applies(&geom(256, 256, 5, 1)?, false));
        assert!(winograd::applies(&geom(128, 256, 5, 1)?, true));
        assert!(winograd::applies(&geom(64, 64, 3, 1)?, false));
        // Frozen 3×3: only with at least 64 tiles (2 images of 4 × 4 tiles here).
        assert!(!winograd::applies(&geom(64, 64, 3, 1)?, true));
        let big = conv2d_geom((2, 64, 32, 32), (64, 64, 3, 3), Conv2dParams::same(3))?;
        assert!(winograd::applies(&big, true));
        assert!(!winograd::applies(&geom(256, 256, 5, 2)?, false));
        assert!(!winograd::applies(&geom(32, 64, 3, 1)?, false));
        assert!(!winograd::applies(&geom(64, 72, 5, 1)?, false));
        assert!(!winograd::applies(&geom(64, 64, 7, 1)?, false));
        Ok(())
    }

    #[test]
    fn conv_transpose2d_forward_matches_candle_and_the_direct_loop() -> Result<()> {
        for (i, case) in CONVT_CASES.iter().enumerate() {
            let (x, w, p) = convt_setup(case, 40 + i as u64);
            let ours = conv_transpose2d(&x, &w, p)?;
            let candle =
                conv_transpose2d_candle(&x.to_dtype(DType::F64)?, &w.to_dtype(DType::F64)?, p)?;
            assert_eq!(ours.dims4()?, candle.dims4()?, "{case:?}");
            let g = conv_transpose2d_geom(x.dims4()?, w.dims4()?, p)?;
            let terms = g.cout * g.taps();
            assert_close(
                &to_f64(&ours),
                &to_f64(&candle),
                tol(terms),
                &format!("{case:?} candle"),
            );
            let direct = direct_data(&g, &to_f64(&x), &to_f64(&w));
            assert_close(
                &to_f64(&ours),
                &direct,
                tol(terms),
                &format!("{case:?} direct"),
            );
        }
        Ok(())
    }

    /// Gradients of `Σ f(x, w) · r` for both arguments, from our op and from candle's (in
    /// f64) on the same values.
    fn grads_of(
        f: &dyn Fn(&Tensor, &Tensor) -> Result<Tensor>,
        x: &Tensor,
        w: &Tensor,
        seed: u64,
    ) -> Result<(Vec<f64>, Vec<f64>)> {
        let (xv, wv) = (Var::from_tensor(x)?, Var::from_tensor(w)?);
        let y = f(xv.as_tensor(), wv.as_tensor())?;
        let r = random(y.dims4()?, seed).to_dtype(y.dtype())?;
        let grads = (y * r)?.sum_all()?.backward()?;
        Ok((
            to_f64(grads.get(xv.as_tensor()).expect("input gradient")),
            to_f64(grads.get(wv.as_tensor()).expect("weight gradient")),
        ))
    }

    /// Output and input gradient of `conv2d(x, w)` with `w` frozen (the product under
    /// test) and, for reference, candle's forward and autograd input gradient.
    fn frozen_vs_candle(x: &Tensor, w: &Tensor, p: Conv2dParams) -> Result<[Vec<f64>; 4]> {
        // candle's own conv2d backward fills in the kernel's gradient regardless.
        let run = |f: &dyn Fn(&Tensor, &Tensor, Conv2dParams) -> Result<Tensor>, ours: bool| {
            let xv = Var::from_tensor(x)?;
            let y = f(xv.as_tensor(), w, p)?;
            let r = random(y.dims4()?, 9);
            let grads = (&y * r)?.sum_all()?.backward()?;
            let dx = to_f64(grads.get(xv.as_tensor()).expect("input gradient"));
            assert!(
                !ours || grads.get(w).is_none(),
                "a frozen kernel got a gradient"
            );
            Result::Ok((to_f64(&y), dx))
        };
        let (y, dx) = run(&conv2d, true)?;
        let (y_want, dx_want) = run(&conv2d_candle, false)?;
        Ok([y, y_want, dx, dx_want])
    }

    /// Frozen kernels on the channels-last path come from [`PACKED`] after the first
    /// call: repeated calls give bit-identical results, kernels of the same shape are not
    /// mixed up, and a detached `Var` whose storage `set` rewrote is packed anew.
    #[test]
    fn frozen_kernels_are_cached_without_confusion() -> Result<()> {
        let p = Conv2dParams::same(3);
        for (i, &(b, cin, cout, h, w)) in [
            (1, 65, 70, 7, 9),
            (2, 130, 97, 5, 11),
            (1, 96, 129, 9, 4),
            (2, 67, 64, 3, 13),
            // Winograd's transformed kernel, cached (72 tiles).
            (2, 64, 80, 24, 23),
        ]
        .iter()
        .enumerate()
        {
            let seed = 100 + 10 * i as u64;
            let x = random((b, cin, h, w), seed);
            let w1 = random((cout, cin, 3, 3), seed + 1);
            let w2 = random((cout, cin, 3, 3), seed + 2);
            let t = tol(9 * cin.max(cout));
            let mut first = None;
            for (j, wt) in [&w1, &w2, &w1, &w1].into_iter().enumerate() {
                let [y, y_want, dx, dx_want] = frozen_vs_candle(&x, wt, p)?;
                let what = format!("{:?} call {j}", (b, cin, cout, h, w));
                assert_close(&y, &y_want, t, &format!("{what} y"));
                assert_close(&dx, &dx_want, t, &format!("{what} dx"));
                if j == 0 {
                    first = Some((y, dx));
                } else if j >= 2 {
                    assert!(first.as_ref() == Some(&(y, dx)), "{what}: not identical");
                }
            }
            let v = Var::from_tensor(&w1)?;
            let d = v.as_tensor().detach();
            // Rewritten in place between calls: the cached form (from the second call) must
            // not serve the third.
            for wt in [&w1, &w2, &w1, &w2] {
                v.set(wt)?;
                let [y, y_want, dx, dx_want] = frozen_vs_candle(&x, &d, p)?;
                assert_close(&y, &y_want, t, "detached var y");
                assert_close(&dx, &dx_want, t, "detached var dx");
            }
        }
        Ok(())
    }

    /// One frozen 3×3 kernel at map sizes on both sides of Winograd's tile threshold, in
    /// an order that caches each form first (as DeepDream's octaves or a new batch size
    /// do): each call finds its own packed form, never the other one.
    #[test]
    fn frozen_kernels_keep_their_two_packed_forms_apart() -> Result<()> {
        let p = Conv2dParams::same(3);
        let w = random((80, 96, 3, 3), 400);
        let small = random((1, 96, 6, 7), 401);
        let large = random((2, 96, 24, 23), 402);
        let (gs, gl) = (
            conv2d_geom(small.dims4()?, w.dims4()?, p)?,
            conv2d_geom(large.dims4()?, w.dims4()?, p)?,
        );
        assert!(!winograd::applies(&gs, true) && gs.is_channels_last());
        assert!(winograd::applies(&gl, true));
        for x in [&small, &small, &large, &large, &small, &large] {
            let [y, y_want, dx, dx_want] = frozen_vs_candle(x, &w, p)?;
            let t = tol(9 * 96);
            assert_close(&y, &y_want, t, &format!("{:?} y", x.dims()));
            assert_close(&dx, &dx_want, t, &format!("{:?} dx", x.dims()));
        }
        Ok(())
    }

    /// Against the direct loop always, and against candle's autograd where it runs: its
    /// conv2d backward fails when the two axes need different output padding in its
    /// transposed convolution (stride 2 over a 10 × 9 padded input, say).
    #[test]
    fn gradients_match_candle_autograd_and_the_direct_loop() -> Result<()> {
        let mut candle_checked = 0;
        for (i, case) in CONV_CASES.iter().enumerate() {
            let (x, w, p) = conv_setup(case, 70 + i as u64);
            let g = conv2d_geom(x.dims4()?, w.dims4()?, p)?;
            let (dx, dw) = grads_of(&|x, w| conv2d(x, w, p), &x, &w, 5)?;
            let t = tol(g.cout * g.taps() + g.b * g.p_out());
            let r = to_f64(&random((g.b, g.cout, g.oh, g.ow), 5));
            let (x64, w64) = (to_f64(&x), to_f64(&w));
            assert_close(&dx, &direct_data(&g, &r, &w64), t, &format!("{case:?} dx"));
            assert_close(
                &dw,
                &direct_weight(&g, &x64, &r),
                t,
                &format!("{case:?} dw"),
            );
            let (x64, w64) = (x.to_dtype(DType::F64)?, w.to_dtype(DType::F64)?);
            if let Ok((rdx, rdw)) = grads_of(&|x, w| conv2d_candle(x, w, p), &x64, &w64, 5) {
                assert_close(&dx, &rdx, t, &format!("{case:?} dx vs candle"));
                assert_close(&dw, &rdw, t, &format!("{case:?} dw vs candle"));
                candle_checked += 1;
            }
        }
        assert!(
            candle_checked >= CONV_CASES.len() - 3,
            "candle ran {candle_checked} cases"
        );
        for (i, case) in CONVT_CASES.iter().enumerate() {
            let (x, w, p) = convt_setup(case, 90 + i as u64);
            let g = conv_transpose2d_geom(x.dims4()?, w.dims4()?, p)?;
            let (dx, dw) = grads_of(&|x, w| conv_transpose2d(x, w, p), &x, &w, 6)?;
            let t = tol(g.k() + g.b * g.p_in());
            let r = to_f64(&random((g.b, g.cin, g.h, g.w), 6));
            let (x64, w64) = (to_f64(&x), to_f64(&w));
            assert_close(&dx, &direct_fwd(&g, &r, &w64), t, &format!("{case:?} dx"));
            assert_close(
                &dw,
                &direct_weight(&g, &r, &x64),
                t,
                &format!("{case:?} dw"),
            );
            let (x64, w64) = (x.to_dtype(DType::F64)?, w.to_dtype(DType::F64)?);
            let (rdx, rdw) = grads_of(&|x, w| conv_transpose2d_candle(x, w, p), &x64, &w64, 6)?;
            assert_close(&dx, &rdx, t, &format!("{case:?} dx vs candle"));
            assert_close(&dw, &rdw, t, &format!("{case:?} dw vs candle"));
        }
        Ok(())
    }

    #[test]
    fn backward_products_match_the_direct_loop_for_unequal_strides() -> Result<()> {
        for (i, case) in UNEQUAL_STRIDES.iter().enumerate() {
            let (x, w, p) = conv_setup(case, 110 + i as u64);
            let g = conv2d_geom(x.dims4()?, w.dims4()?, p)?;
            let (dx, dw) = grads_of(&|x, w| conv2d(x, w, p), &x, &w, 7)?;
            let r = to_f64(&random((g.b, g.cout, g.oh, g.ow), 7));
            let (x64, w64) = (to_f64(&x), to_f64(&w));
            assert_close(
                &dx,
                &direct_data(&g, &r, &w64),
                tol(g.k()),
                &format!("{case:?} dx"),
            );
            assert_close(
                &dw,
                &direct_weight(&g, &x64, &r),
                tol(g.b * g.p_out()),
                &format!("{case:?} dw"),
            );
        }
        Ok(())
    }

    /// Central differences of `L = Σ f(x, w) · r`, computed in f64 from the f32 outputs.
    /// `L` is linear in each argument, so the difference quotient is exact for any step and
    /// a large one keeps f32 rounding out of it: what remains checks the backward's index
    /// arithmetic (the reference comparisons above share candle's).
    fn check_finite_differences(
        f: &dyn Fn(&Tensor, &Tensor) -> Result<Tensor>,
        x: &Tensor,
        w: &Tensor,
        what: &str,
    ) -> Result<()> {
        let (dx, dw) = grads_of(f, x, w, 3)?;
        let r = to_f64(&random(f(x, w)?.dims4()?, 3));
        let loss = |x: &Tensor, w: &Tensor| -> Result<f64> {
            Ok(to_f64(&f(x, w)?).iter().zip(&r).map(|(a, b)| a * b).sum())
        };
        let step = 0.5f32;
        for (arg, grad, name) in [(0, &dx, "x"), (1, &dw, "w")] {
            let base = if arg == 0 { x } else { w };
            let vals = base.flatten_all()?.to_vec1::<f32>()?;
            let n = vals.len();
            // Ends, middle and a spread in between: padding borders and interiors.
            let mut picks: Vec<usize> = (0..12).map(|i| i * (n - 1) / 11).collect();
            picks.push(n / 2 + 1);
            picks.dedup();
            for idx in picks.into_iter().filter(|&i| i < n) {
                let shifted = |d: f32| -> Result<Tensor> {
                    let mut v = vals.clone();
                    v[idx] += d;
                    Tensor::from_vec(v, base.shape(), &Device::Cpu)
                };
                let (plus, minus) = (shifted(step)?, shifted(-step)?);
                let (lp, lm) = if arg == 0 {
                    (loss(&plus, w)?, loss(&minus, w)?)
                } else {
                    (loss(x, &plus)?, loss(x, &minus)?)
                };
                let fd = (lp - lm) / (2.0 * step as f64);
                assert!(
                    (fd - grad[idx]).abs() <= 1e-4 * (1.0 + fd.abs()),
                    "{what}: d/d{name}[{idx}] analytic {} vs finite difference {fd}",
                    grad[idx]
                );
            }
        }
        Ok(())
    }

    #[test]
    fn gradients_match_finite_differences() -> Result<()> {
        let small_conv: &[ConvCase] = &[
            (2, 3, 4, 7, 9, 3, 3, (2, 2), [0, 1, 0, 1]),
            (1, 2, 18, 6, 7, 3, 3, (1, 1), [1, 1, 1, 1]),
            (2, 2, 16, 5, 8, 1, 7, (1, 1), [0, 0, 3, 3]),
            (1, 3, 2, 8, 5, 7, 1, (1, 1), [3, 3, 0, 0]),
            (2, 4, 3, 9, 7, 4, 3, (1, 2), [1, 2, 0, 1]),
            // Winograd forward and data gradient.
            (1, 64, 64, 5, 6, 5, 5, (1, 1), [2, 1, 2, 3]),
        ];
        for (i, case) in small_conv.iter().enumerate() {
            let (x, w, p) = conv_setup(case, 130 + i as u64);
            check_finite_differences(&|x, w| conv2d(x, w, p), &x, &w, &format!("{case:?}"))?;
        }
        let small_convt: &[ConvTCase] = &[
            (2, 3, 4, 4, 5, 3, 2, 1, 1),
            (1, 4, 17, 3, 4, 4, 2, 1, 0),
            (1, 18, 3, 5, 4, 3, 1, 1, 0),
        ];
        for (i, case) in small_convt.iter().enumerate() {
            let (x, w, p) = convt_setup(case, 150 + i as u64);
            check_finite_differences(
                &|x, w| conv_transpose2d(x, w, p),
                &x,
                &w,
                &format!("{case:?}"),
            )?;
        }
        Ok(())
    }

    /// The fused op is the composition `add_channel_bias_relu(conv2d(..))` (both checked by
    /// finite differences above) as one node: the same f32 arithmetic, so the output and all
    /// three gradients must be bit-identical, with any subset of the arguments tracked.
    #[test]
    fn fused_bias_relu_equals_the_composition() -> Result<()> {
        let cases: &[ConvCase] = &[
            (2, 3, 4, 7, 9, 3, 3, (2, 2), [0, 1, 0, 1]),
            (1, 2, 70, 6, 7, 3, 3, (1, 1), [1, 1, 1, 1]),
            (2, 80, 16, 5, 8, 1, 7, (1, 1), [0, 0, 3, 3]),
            (1, 16, 8, 9, 9, 1, 1, (1, 1), [0, 0, 0, 0]),
            (2, 4, 3, 9, 7, 4, 3, (1, 2), [1, 2, 0, 1]),
        ];
        for (i, case) in cases.iter().enumerate() {
            let (x, w, p) = conv_setup(case, 170 + i as u64);
            let b = Tensor::from_vec(values(case.2, 190 + i as u64), case.2, &Device::Cpu)?;
            let r = random(conv2d(&x, &w, p)?.dims4()?, 7);
            for slope in [0.0f32, 0.3] {
                for tracked in [
                    [true, true, true],
                    [true, false, true],
                    [false, true, false],
                ] {
                    let arg = |t: &Tensor, on: bool| -> Result<Tensor> {
                        Ok(if on {
                            Var::from_tensor(t)?.as_tensor().clone()
                        } else {
                            t.copy()?
                        })
                    };
                    let (xv, wv, bv) = (
                        arg(&x, tracked[0])?,
                        arg(&w, tracked[1])?,
                        arg(&b, tracked[2])?,
                    );
                    let fused = conv2d_bias_relu(&xv, &wv, &bv, p, slope)?;
                    let composed =
                        crate::bias::add_channel_bias_relu(&conv2d(&xv, &wv, p)?, &bv, slope)?;
                    let what = format!("{case:?} slope {slope} tracked {tracked:?}");
                    assert_eq!(to_f64(&fused), to_f64(&composed), "{what}: forward");
                    let gf = (&fused * &r)?.sum_all()?.backward()?;
                    let gc = (&composed * &r)?.sum_all()?.backward()?;
                    for (t, on, name) in [
                        (&xv, tracked[0], "x"),
                        (&wv, tracked[1], "w"),
                        (&bv, tracked[2], "b"),
                    ] {
                        match (gf.get(t), gc.get(t)) {
                            (Some(f), Some(c)) if on => {
                                assert_eq!(to_f64(f), to_f64(c), "{what}: d/d{name}")
                            }
                            (None, None) if !on => {}
                            (f, c) => panic!(
                                "{what}: d/d{name} fused {:?} composed {:?}",
                                f.is_some(),
                                c.is_some()
                            ),
                        }
                    }
                }
            }
        }
        assert!(
            conv2d_bias_relu(
                &random((1, 2, 5, 5), 1),
                &random((3, 2, 3, 3), 2),
                &Tensor::zeros(4, DType::F32, &Device::Cpu)?,
                Conv2dParams::same(3),
                0.0
            )
            .is_err()
        );
        Ok(())
    }

    /// The transposed form: bit-identical to `add_channel_bias_relu(conv_transpose2d(..))`
    /// in output and gradients (the VAE's 3×3 stride-2 case and a 4×4 one like the GAN's).
    #[test]
    fn fused_transposed_bias_relu_equals_the_composition() -> Result<()> {
        let cases = [
            ((2, 6, 5, 5), (6, 4, 3, 3), (2, 1, 1)),
            ((1, 3, 4, 3), (3, 5, 4, 4), (2, 1, 0)),
        ];
        for (i, (xd, wd, (stride, padding, output_padding))) in cases.into_iter().enumerate() {
            let p = ConvTranspose2dParams {
                stride,
                padding,
                output_padding,
            };
            let x = Var::from_tensor(&random(xd, 300 + i as u64))?;
            let w = Var::from_tensor(&random(wd, 310 + i as u64))?;
            let b = Var::from_tensor(&Tensor::from_vec(values(wd.1, 320), wd.1, &Device::Cpu)?)?;
            for slope in [0.0f32, 0.3] {
                let fused = conv_transpose2d_bias_relu(&x, &w, &b, p, slope)?;
                let composed =
                    crate::bias::add_channel_bias_relu(&conv_transpose2d(&x, &w, p)?, &b, slope)?;
                assert_eq!(to_f64(&fused), to_f64(&composed), "case {i}: forward");
                let r = random(fused.dims4()?, 7);
                let gf = (&fused * &r)?.sum_all()?.backward()?;
                let gc = (&composed * &r)?.sum_all()?.backward()?;
                for (t, name) in [(&x, "x"), (&w, "w"), (&b, "b")] {
                    let (f, c) = (gf.get(t).unwrap(), gc.get(t).unwrap());
                    assert_eq!(to_f64(f), to_f64(c), "case {i} slope {slope}: d/d{name}");
                }
            }
        }
        Ok(())
    }

    #[test]
    fn arguments_without_a_gradient_get_none() -> Result<()> {
        type F = dyn Fn(&Tensor, &Tensor) -> Result<Tensor>;
        type Dims = (usize, usize, usize, usize);
        let cp = Conv2dParams {
            stride: (2, 2),
            padding: [0, 1, 0, 1],
        };
        let tp = ConvTranspose2dParams {
            stride: 2,
            padding: 1,
            output_padding: 1,
        };
        // (ours, candle's, input shape, kernel shape)
        let ops: [(&F, &F, Dims, Dims); 2] = [
            (
                &move |x, w| conv2d(x, w, cp),
                &move |x, w| conv2d_candle(x, w, cp),
                (2, 5, 9, 9),
                (20, 5, 3, 3),
            ),
            (
                &move |x, w| conv_transpose2d(x, w, tp),
                &move |x, w| conv_transpose2d_candle(x, w, tp),
                (2, 5, 5, 4),
                (5, 20, 3, 3),
            ),
        ];
        for (i, (ours, candle, xs, ws)) in ops.into_iter().enumerate() {
            let (x, w) = (random(xs, 170 + i as u64), random(ws, 180 + i as u64));
            let (rdx, rdw) = grads_of(
                candle,
                &x.to_dtype(DType::F64)?,
                &w.to_dtype(DType::F64)?,
                9,
            )?;
            // A frozen kernel: the input gradient only.
            let xv = Var::from_tensor(&x)?;
            let y = ours(xv.as_tensor(), &w)?;
            let r = random(y.dims4()?, 9);
            let grads = (&y * &r)?.sum_all()?.backward()?;
            assert!(
                grads.get(&w).is_none(),
                "op {i}: a gradient for the frozen kernel"
            );
            let dx = to_f64(grads.get(xv.as_tensor()).expect("input gradient"));
            assert_close(&dx, &rdx, 1e-5, &format!("op {i} dx"));
            // Data without a gradient: the kernel gradient only.
            let wv = Var::from_tensor(&w)?;
            let y = ours(&x, wv.as_tensor())?;
            let grads = (&y * &r)?.sum_all()?.backward()?;
            assert!(grads.get(&x).is_none(), "op {i}: a gradient for the data");
            let dw = to_f64(grads.get(wv.as_tensor()).expect("kernel gradient"));
            assert_close(&dw, &rdw, 1e-5, &format!("op {i} dw"));
        }
        Ok(())
    }

    #[test]
    fn strided_inputs_give_the_contiguous_result() -> Result<()> {
        // A (B, C, W, H) tensor transposed to (B, C, H, W), and a kernel likewise.
        let x = random((2, 5, 9, 7), 190).transpose(2, 3)?;
        let w = random((16, 5, 3, 3), 191).transpose(2, 3)?;
        assert!(!x.is_contiguous() && !w.is_contiguous());
        let p = Conv2dParams::same(3);
        let got = to_f64(&conv2d(&x, &w, p)?);
        let want = to_f64(&conv2d(&x.contiguous()?, &w.contiguous()?, p)?);
        assert_eq!(got, want);
        Ok(())
    }

    #[test]
    fn bad_shapes_are_errors() {
        let x = random((1, 3, 5, 5), 1);
        assert!(conv2d(&x, &random((4, 2, 3, 3), 2), Conv2dParams::same(3)).is_err());
        assert!(conv2d(&x, &random((4, 3, 7, 3), 2), Conv2dParams::new(1, 0)).is_err());
        assert!(conv2d(&x, &random((4, 3, 3, 3), 2), Conv2dParams::new(0, 1)).is_err());
        let tp = ConvTranspose2dParams {
            stride: 1,
            padding: 4,
            output_padding: 0,
        };
        assert!(conv_transpose2d(&x, &random((3, 2, 3, 3), 2), tp).is_err());
        assert!(
            conv_transpose2d(
                &x,
                &random((2, 2, 3, 3), 2),
                ConvTranspose2dParams { padding: 0, ..tp }
            )
            .is_err()
        );
    }

    #[test]
    fn params_constructors() {
        assert_eq!(
            Conv2dParams::same(5),
            Conv2dParams {
                stride: (1, 1),
                padding: [2; 4]
            }
        );
        assert_eq!(
            Conv2dParams::new(2, 1),
            Conv2dParams {
                stride: (2, 2),
                padding: [1; 4]
            }
        );
    }

    #[test]
    fn transposes_of_ragged_shapes() {
        for rows in [1, 5, 16, 17, 33, 48] {
            for cols in [1, 3, 16, 31, 64] {
                let src = values(rows * cols, (rows * 64 + cols) as u64);
                let mut dst = vec![f32::NAN; rows * cols];
                transpose(&src, rows, cols, &mut dst);
                for i in 0..rows {
                    for j in 0..cols {
                        assert_eq!(
                            dst[j * rows + i],
                            src[i * cols + j],
                            "{rows}x{cols} [{i}][{j}]"
                        );
                    }
                }
            }
        }
    }

    /// The dot-product kernel of the few-output-channel weight gradient (AVX-512 where
    /// present, and the portable one) against f64 sums, for every row count up to a
    /// few tiles and window counts around its tile widths.
    #[test]
    fn dot_kernel_matches_f64_sums() {
        let len = 48;
        let base = values(600, 5);
        for m in 1..=9 {
            for k in [1, 5, 8, 13, 24, 25, 50] {
                let a_rs = len + 7;
                let a = values(m * a_rs, (m * 31 + k) as u64);
                let mut offs: Vec<usize> = (0..k).map(|j| (j * 37) % (600 - len)).collect();
                offs.resize(k.next_multiple_of(dots::J_MAX), 0);
                let init = values(m * k, 77);
                let want: Vec<f64> = (0..m * k)
                    .map(|i| {
                        let (r, j) = (i / k, i % k);
                        init[i] as f64
                            + (0..len)
                                .map(|q| a[r * a_rs + q] as f64 * base[offs[j] + q] as f64)
                                .sum::<f64>()
                    })
                    .collect();
                for portable in [false, true] {
                    let mut acc = init.clone();
                    if portable {
                        dots::portable(&a, a_rs, m, len, &base, &offs, k, &mut acc);
                    } else {
                        dots::run(&a, a_rs, m, len, &base, &offs, k, &mut acc);
                    }
                    let got: Vec<f64> = acc.iter().map(|&v| v as f64).collect();
                    assert_close(
                        &got,
                        &want,
                        1e-5,
                        &format!("m={m} k={k} portable={portable}"),
                    );
                }
            }
        }
    }

    /// The kernel (AVX-512 where present, and the portable one) against a naive product,
    /// for every tile shape, masked widths, row strides wider than `kc` and accumulation
    /// over a NaN-free but nonzero `c`; columns past `n` must stay untouched.
    #[test]
    fn kernel_matches_the_naive_product() {
        for m in [1, 5, 6, 7, 13] {
            for n in [1usize, 3, 16, 17, 40, 64] {
                for kc in [0, 1, 9, 130] {
                    for acc in [false, true] {
                        let wpad = n.next_multiple_of(16);
                        let a_rs = kc + 3;
                        let a = values(m * a_rs, (m * 100 + n * 7 + kc) as u64);
                        let b = values(kc.max(1) * wpad, (m + n * 11 + kc * 5) as u64);
                        let c_rs = n + 5;
                        let init = values(m * c_rs, 99);
                        let mut want = init.clone();
                        for i in 0..m {
                            for j in 0..n {
                                let s: f64 = (0..kc)
                                    .map(|p| a[i * a_rs + p] as f64 * b[p * wpad + j] as f64)
                                    .sum();
                                let old = if acc { init[i * c_rs + j] as f64 } else { 0.0 };
                                want[i * c_rs + j] = (old + s) as f32;
                            }
                        }
                        for portable in [false, true] {
                            let mut c = init.clone();
                            let gm = Gemm {
                                m,
                                n,
                                kc,
                                a: Lhs::Strided(&a, a_rs),
                                b: Rhs::Packed(&b, wpad),
                                c: c.as_mut_ptr(),
                                c_rs,
                                acc,
                            };
                            // SAFETY: c holds m rows of c_rs ≥ n floats.
                            unsafe {
                                if portable {
                                    gemm_portable(&gm)
                                } else {
                                    gemm_panel(&gm)
                                }
                            };
                            for (idx, (g, e)) in c.iter().zip(&want).enumerate() {
                                assert!(
                                    (g - e).abs() <= 1e-5 * (1.0 + kc as f32).sqrt(),
                                    "m={m} n={n} kc={kc} acc={acc} portable={portable} [{idx}]: {g} vs {e}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}
