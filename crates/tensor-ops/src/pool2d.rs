//! 2-D max and average pooling with any kernel, stride and padding, differentiable in the
//! input.
//!
//! Written by hand because candle 0.11's `max_pool2d` / `avg_pool2d` have a backward only
//! when the kernel equals the stride and there is no padding, while InceptionV3 (DeepDream
//! backpropagates to the image) needs overlapping 3×3 stride-2 max pools and padded 3×3
//! stride-1 average pools. On the CPU in f32 each pool is one loop over the planes, with a
//! second loop as its backward; elsewhere it is composed of candle ops that have a backward
//! ([`max_pool2d_composed`], [`avg_pool2d_composed`]).

use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor, bail};

/// Window size, stride and padding of [`max_pool2d`] and [`avg_pool2d`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pool2dParams {
    /// `(kh, kw)`.
    pub kernel: (usize, usize),
    /// `(sh, sw)`.
    pub stride: (usize, usize),
    /// top, bottom, left, right
    pub padding: [usize; 4],
}

impl Pool2dParams {
    /// A square `kernel`, the same `stride` on both axes and `pad` on every side.
    pub fn new(kernel: usize, stride: usize, pad: usize) -> Self {
        Self {
            kernel: (kernel, kernel),
            stride: (stride, stride),
            padding: [pad; 4],
        }
    }
}

/// Max pooling of `x (N, C, H, W)`: `(N, C, OH, OW)` with
/// `OH = (H + top + bottom - kh) / sh + 1` (likewise `OW`). Padding positions never win the
/// max (PyTorch semantics). Gradient goes to the first maximum in window scan order
/// (row-major) on ties, like PyTorch. On the CPU kernel a NaN in a window wins (PyTorch
/// propagates NaN); the composed path off the CPU does not promise that.
pub fn max_pool2d(x: &Tensor, p: Pool2dParams) -> Result<Tensor> {
    let g = geom("max_pool2d", x.dims(), p)?;
    if x.device().is_cpu() && x.dtype() == DType::F32 {
        x.contiguous()?.apply_op1(MaxPool(g))
    } else {
        max_pool2d_composed(x, p)
    }
}

/// Average pooling of `x (N, C, H, W)`, output size as [`max_pool2d`].
/// `count_include_pad = true` divides by `kh * kw` always (PyTorch default); `false`
/// divides by the number of real (unpadded) pixels in the window (TensorFlow/Keras
/// "same").
pub fn avg_pool2d(x: &Tensor, p: Pool2dParams, count_include_pad: bool) -> Result<Tensor> {
    let g = geom("avg_pool2d", x.dims(), p)?;
    if x.device().is_cpu() && x.dtype() == DType::F32 {
        x.contiguous()?.apply_op1(AvgPool {
            g,
            count_include_pad,
        })
    } else {
        avg_pool2d_composed(x, p, count_include_pad)
    }
}

/// [`max_pool2d`] composed of candle ops (any device, float dtypes): the input padded with
/// `-inf`, one strided `index_select` sub-grid per window offset, combined by
/// "`where(candidate > best)`" so that ties keep the first maximum, as the CPU kernel does.
pub fn max_pool2d_composed(x: &Tensor, p: Pool2dParams) -> Result<Tensor> {
    let g = geom("max_pool2d", x.dims(), p)?;
    if !x.dtype().is_float() {
        bail!("max_pool2d: float input expected, got {:?}", x.dtype())
    }
    let [pt, pb, pl, pr] = p.padding;
    let xp = if p.padding == [0; 4] {
        x.clone()
    } else {
        // Zero-pad, then add a constant that is 0 on the image and -inf on the padding: the
        // gradient of the sum is the identity on the image.
        let (hp, wp) = (g.h + pt + pb, g.w + pl + pr);
        let mut mask = vec![f32::NEG_INFINITY; hp * wp];
        for r in pt..pt + g.h {
            mask[r * wp + pl..r * wp + pl + g.w].fill(0.0);
        }
        let mask = Tensor::from_vec(mask, (1, 1, hp, wp), x.device())?.to_dtype(x.dtype())?;
        x.pad_with_zeros(2, pt, pb)?
            .pad_with_zeros(3, pl, pr)?
            .broadcast_add(&mask)?
    };
    let mut best: Option<Tensor> = None;
    for_each_window_offset(&xp, &g, |cand| {
        best = Some(match best.take() {
            None => cand,
            Some(b) => cand.gt(&b)?.where_cond(&cand, &b)?,
        });
        Ok(())
    })?;
    Ok(best.expect("kernel is not empty"))
}

/// [`avg_pool2d`] composed of candle ops (any device, float dtypes): zero padding, the sum
/// of one strided `index_select` sub-grid per window offset, divided by `kh * kw` or by the
/// per-window count of real pixels.
pub fn avg_pool2d_composed(x: &Tensor, p: Pool2dParams, count_include_pad: bool) -> Result<Tensor> {
    let g = geom("avg_pool2d", x.dims(), p)?;
    if !x.dtype().is_float() {
        bail!("avg_pool2d: float input expected, got {:?}", x.dtype())
    }
    let [pt, pb, pl, pr] = p.padding;
    let xp = x.pad_with_zeros(2, pt, pb)?.pad_with_zeros(3, pl, pr)?;
    let mut sum: Option<Tensor> = None;
    for_each_window_offset(&xp, &g, |cand| {
        sum = Some(match sum.take() {
            None => cand,
            Some(s) => (s + cand)?,
        });
        Ok(())
    })?;
    let sum = sum.expect("kernel is not empty");
    if count_include_pad || p.padding == [0; 4] {
        sum / (g.kh * g.kw) as f64
    } else {
        let mut count = Vec::with_capacity(g.oh * g.ow);
        for oy in 0..g.oh {
            let (r0, r1) = g.rows(oy);
            for ox in 0..g.ow {
                let (c0, c1) = g.cols(ox);
                count.push(((r1 - r0) * (c1 - c0)) as f32);
            }
        }
        let count = Tensor::from_vec(count, (1, 1, g.oh, g.ow), x.device())?.to_dtype(x.dtype())?;
        sum.broadcast_div(&count)
    }
}

/// Calls `f` with the `(N, C, OH, OW)` sub-grid of the padded input `xp` under each window
/// offset `(a, b)`, in row-major order.
fn for_each_window_offset(
    xp: &Tensor,
    g: &Geom,
    mut f: impl FnMut(Tensor) -> Result<()>,
) -> Result<()> {
    let dev = xp.device();
    let idx = |off: usize, s: usize, n: usize| {
        let v: Vec<u32> = (0..n).map(|i| (off + i * s) as u32).collect();
        Tensor::from_vec(v, n, dev)
    };
    for a in 0..g.kh {
        let rows = xp.index_select(&idx(a, g.sh, g.oh)?, 2)?;
        for b in 0..g.kw {
            f(rows.index_select(&idx(b, g.sw, g.ow)?, 3)?)?;
        }
    }
    Ok(())
}

/// One pooling in plane terms: window `(oy, ox)` covers padded rows `oy·sh .. oy·sh + kh`,
/// i.e. input rows `oy·sh - pt ..` clipped to the image (likewise columns).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Geom {
    h: usize,
    w: usize,
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
    /// The input rows `r0..r1` under output row `oy`; never empty (padding < kernel).
    fn rows(&self, oy: usize) -> (usize, usize) {
        let s = oy * self.sh;
        (
            s.saturating_sub(self.pt),
            (s + self.kh - self.pt).min(self.h),
        )
    }

    /// The input columns under output column `ox`.
    fn cols(&self, ox: usize) -> (usize, usize) {
        let s = ox * self.sw;
        (
            s.saturating_sub(self.pl),
            (s + self.kw - self.pl).min(self.w),
        )
    }

    fn plane_in(&self) -> usize {
        self.h * self.w
    }

    fn plane_out(&self) -> usize {
        self.oh * self.ow
    }
}

fn geom(name: &str, dims: &[usize], p: Pool2dParams) -> Result<Geom> {
    let &[_, _, h, w] = dims else {
        bail!("{name}: input must be 4-D (N, C, H, W), got shape {dims:?}")
    };
    let Pool2dParams {
        kernel: (kh, kw),
        stride: (sh, sw),
        padding,
    } = p;
    let [pt, pb, pl, pr] = padding;
    if kh == 0 || kw == 0 || sh == 0 || sw == 0 {
        bail!("{name}: zero kernel size ({kh}, {kw}) or stride ({sh}, {sw})")
    }
    if pt >= kh || pb >= kh || pl >= kw || pr >= kw {
        bail!(
            "{name}: padding {padding:?} (top, bottom, left, right) must be smaller than the kernel ({kh}, {kw})"
        )
    }
    if h == 0 || w == 0 {
        bail!("{name}: empty input ({h}, {w})")
    }
    if h + pt + pb < kh || w + pl + pr < kw {
        bail!(
            "{name}: input ({h}, {w}) padded by {padding:?} is smaller than the kernel ({kh}, {kw})"
        )
    }
    Ok(Geom {
        h,
        w,
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

fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout, g: &Geom, plane: usize) -> Result<&'a [f32]> {
    let Some((start, end)) = l.contiguous_offsets() else {
        bail!("pool2d: non-contiguous input")
    };
    let d = l.dims();
    if d.len() != 4 || d[2] * d[3] != plane {
        bail!("pool2d: shape {d:?} does not fit {g:?}")
    }
    Ok(&s.as_slice::<f32>()?[start..end])
}

/// `b` if it is larger or a NaN, else `a`: a running maximum that keeps the first of
/// equals and propagates NaN, as [`argmax`] does.
#[inline]
fn nan_max(a: f32, b: f32) -> f32 {
    if b > a || b.is_nan() { b } else { a }
}

/// The index (in the plane) of the first maximum of window `(oy, ox)`; a NaN wins.
#[inline]
fn argmax(g: &Geom, x: &[f32], oy: usize, ox: usize) -> usize {
    let ((r0, r1), (c0, c1)) = (g.rows(oy), g.cols(ox));
    let mut best = f32::NEG_INFINITY;
    let mut at = r0 * g.w + c0;
    for r in r0..r1 {
        for (c, &v) in x[r * g.w..][c0..c1].iter().enumerate() {
            if v > best || v.is_nan() {
                best = v;
                at = r * g.w + c0 + c;
            }
        }
    }
    at
}

/// [`max_pool2d`] on the CPU.
struct MaxPool(Geom);

impl CustomOp1 for MaxPool {
    fn name(&self) -> &'static str {
        "max-pool2d"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = &self.0;
        let x = f32_slice(s, l, g, g.plane_in())?;
        let (n, c) = (l.dims()[0], l.dims()[1]);
        let mut y = vec![0f32; n * c * g.plane_out()];
        // Separable: every input row's maxima under each window's columns, then those of
        // each window's rows, in scan order within both (so the value is the first
        // maximum's, as [`argmax`] finds it), a vectorisable pass along rows for the
        // second. (The window-by-window scan took ~2% of a DeepDream step.)
        crate::par::for_chunks_mut(&mut y, g.plane_out(), |i, y| {
            let x = &x[i * g.plane_in()..][..g.plane_in()];
            let hm = &mut vec![0f32; g.h * g.ow];
            for (row, out) in x.chunks_exact(g.w).zip(hm.chunks_exact_mut(g.ow)) {
                for (ox, o) in out.iter_mut().enumerate() {
                    let (c0, c1) = g.cols(ox);
                    *o = row[c0 + 1..c1].iter().fold(row[c0], |m, &v| nan_max(m, v));
                }
            }
            for (oy, out) in y.chunks_exact_mut(g.ow).enumerate() {
                let (r0, r1) = g.rows(oy);
                out.copy_from_slice(&hm[r0 * g.ow..][..g.ow]);
                for r in r0 + 1..r1 {
                    for (o, &v) in out.iter_mut().zip(&hm[r * g.ow..][..g.ow]) {
                        *o = nan_max(*o, v);
                    }
                }
            }
        });
        Ok((CpuStorage::F32(y), Shape::from((n, c, g.oh, g.ow))))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(x.apply_op2_no_bwd(
            &grad.contiguous()?,
            &MaxPoolGrad(self.0),
        )?))
    }
}

/// `(x, dy) → dx` of [`MaxPool`]: each window's `dy` added to its (recomputed) argmax.
struct MaxPoolGrad(Geom);

impl CustomOp2 for MaxPoolGrad {
    fn name(&self) -> &'static str {
        "max-pool2d-bwd"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = &self.0;
        let x = f32_slice(xs, xl, g, g.plane_in())?;
        let dy = f32_slice(gs, gl, g, g.plane_out())?;
        if x.len() / g.plane_in() != dy.len() / g.plane_out() {
            bail!("max_pool2d backward: {:?} vs {:?}", xl.dims(), gl.dims())
        }
        let mut dx = vec![0f32; x.len()];
        crate::par::for_chunks_mut(&mut dx, g.plane_in(), |i, dx| {
            let x = &x[i * g.plane_in()..][..g.plane_in()];
            let dy = &dy[i * g.plane_out()..][..g.plane_out()];
            for oy in 0..g.oh {
                for ox in 0..g.ow {
                    dx[argmax(g, x, oy, ox)] += dy[oy * g.ow + ox];
                }
            }
        });
        Ok((CpuStorage::F32(dx), xl.shape().clone()))
    }
}

/// The divisor of window `(oy, ox)`.
#[inline]
fn count(g: &Geom, include_pad: bool, (r0, r1): (usize, usize), (c0, c1): (usize, usize)) -> f32 {
    if include_pad {
        (g.kh * g.kw) as f32
    } else {
        ((r1 - r0) * (c1 - c0)) as f32
    }
}

/// Per-row and per-column factors whose product is one over window `(oy, ox)`'s divisor:
/// the count of real pixels is (rows) × (columns).
fn divisors(g: &Geom, include_pad: bool) -> (Vec<f32>, Vec<f32>) {
    if include_pad {
        let all = 1.0 / (g.kh * g.kw) as f32;
        return (vec![all; g.oh], vec![1.0; g.ow]);
    }
    let rs = (0..g.oh)
        .map(|oy| {
            let (r0, r1) = g.rows(oy);
            1.0 / (r1 - r0) as f32
        })
        .collect();
    let cs = (0..g.ow)
        .map(|ox| {
            let (c0, c1) = g.cols(ox);
            1.0 / (c1 - c0) as f32
        })
        .collect();
    (rs, cs)
}

/// A stride-1 box sum, `dst[oy, ox] = rs[oy] · cs[ox] · Σ src[oy + a - pt, ox + c - pl]`
/// over `a < kh`, `c < kw` inside `src`, as two passes whose inner loops run along rows
/// and vectorise: the window's rows added into a zero-bordered row, then that row's
/// `kw` shifts added. (The per-window loop it replaces took ~5% of a DeepDream step
/// forward, as much again backward.)
struct BoxSum {
    src: (usize, usize),
    k: (usize, usize),
    pad: (usize, usize),
    dst: (usize, usize),
}

impl BoxSum {
    /// Every plane of `src` into the matching plane of `dst`.
    fn planes(&self, src: &[f32], dst: &mut [f32], rs: &[f32], cs: &[f32]) {
        let ((h, w), (kh, kw), (pt, pl), (oh, ow)) = (self.src, self.k, self.pad, self.dst);
        assert!(rs.len() == oh && cs.len() == ow);
        // The zero-bordered row: input column j at pl + j, output column ox reads
        // ox .. ox + kw.
        let len = (ow + kw - 1).max(pl + w);
        crate::par::for_chunks_mut(dst, oh * ow, |i, dst| {
            let src = &src[i * h * w..][..h * w];
            let row = &mut vec![0f32; len];
            for oy in 0..oh {
                let mid = &mut row[pl..pl + w];
                // Input rows oy - pt .. oy - pt + kh, clipped.
                let r0 = oy.saturating_sub(pt);
                let r1 = (oy + kh).saturating_sub(pt).min(h);
                match (r0..r1).next() {
                    None => mid.fill(0.0),
                    Some(r) => {
                        mid.copy_from_slice(&src[r * w..][..w]);
                        for r in r0 + 1..r1 {
                            for (m, &v) in mid.iter_mut().zip(&src[r * w..][..w]) {
                                *m += v;
                            }
                        }
                    }
                }
                let out = &mut dst[oy * ow..][..ow];
                out.copy_from_slice(&row[..ow]);
                for c in 1..kw {
                    for (o, &v) in out.iter_mut().zip(&row[c..c + ow]) {
                        *o += v;
                    }
                }
                let r = rs[oy];
                for (o, &c) in out.iter_mut().zip(cs) {
                    *o *= r * c;
                }
            }
        });
    }
}

/// [`avg_pool2d`] on the CPU.
struct AvgPool {
    g: Geom,
    count_include_pad: bool,
}

impl CustomOp1 for AvgPool {
    fn name(&self) -> &'static str {
        "avg-pool2d"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = &self.g;
        let x = f32_slice(s, l, g, g.plane_in())?;
        let (n, c) = (l.dims()[0], l.dims()[1]);
        let mut y = vec![0f32; n * c * g.plane_out()];
        if (g.sh, g.sw) == (1, 1) {
            let (rs, cs) = divisors(g, self.count_include_pad);
            let k = BoxSum {
                src: (g.h, g.w),
                k: (g.kh, g.kw),
                pad: (g.pt, g.pl),
                dst: (g.oh, g.ow),
            };
            k.planes(x, &mut y, &rs, &cs);
            return Ok((CpuStorage::F32(y), Shape::from((n, c, g.oh, g.ow))));
        }
        crate::par::for_chunks_mut(&mut y, g.plane_out(), |i, y| {
            let x = &x[i * g.plane_in()..][..g.plane_in()];
            for oy in 0..g.oh {
                let rows = g.rows(oy);
                for ox in 0..g.ow {
                    let cols = g.cols(ox);
                    let mut s = 0f32;
                    for r in rows.0..rows.1 {
                        s += x[r * g.w..][cols.0..cols.1].iter().sum::<f32>();
                    }
                    y[oy * g.ow + ox] = s / count(g, self.count_include_pad, rows, cols);
                }
            }
        });
        Ok((CpuStorage::F32(y), Shape::from((n, c, g.oh, g.ow))))
    }

    fn bwd(&self, _x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&AvgPoolGrad {
            g: self.g,
            count_include_pad: self.count_include_pad,
        })?))
    }
}

/// `dy → dx` of [`AvgPool`]: each window's `dy / count` added to its real pixels.
struct AvgPoolGrad {
    g: Geom,
    count_include_pad: bool,
}

impl CustomOp1 for AvgPoolGrad {
    fn name(&self) -> &'static str {
        "avg-pool2d-bwd"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = &self.g;
        let dy = f32_slice(s, l, g, g.plane_out())?;
        let (n, c) = (l.dims()[0], l.dims()[1]);
        let mut dx = vec![0f32; n * c * g.plane_in()];
        if (g.sh, g.sw) == (1, 1) {
            // The transposed box filter is the box filter with the padding mirrored,
            // applied to `dy` over the divisors.
            let k = BoxSum {
                src: (g.oh, g.ow),
                k: (g.kh, g.kw),
                pad: (g.kh - 1 - g.pt, g.kw - 1 - g.pl),
                dst: (g.h, g.w),
            };
            let (rs, cs) = divisors(g, self.count_include_pad);
            if self.count_include_pad {
                // One divisor: applied after the sum, saving a pass.
                k.planes(dy, &mut dx, &vec![rs[0]; g.h], &vec![cs[0]; g.w]);
            } else {
                let mut scaled = vec![0f32; dy.len()];
                crate::par::for_chunks_mut(&mut scaled, g.plane_out(), |i, d| {
                    let s = &dy[i * g.plane_out()..][..g.plane_out()];
                    for (oy, (d, s)) in d
                        .chunks_exact_mut(g.ow)
                        .zip(s.chunks_exact(g.ow))
                        .enumerate()
                    {
                        for ((d, &s), &c) in d.iter_mut().zip(s).zip(&cs) {
                            *d = s * rs[oy] * c;
                        }
                    }
                });
                k.planes(&scaled, &mut dx, &vec![1.0; g.h], &vec![1.0; g.w]);
            }
            return Ok((CpuStorage::F32(dx), Shape::from((n, c, g.h, g.w))));
        }
        crate::par::for_chunks_mut(&mut dx, g.plane_in(), |i, dx| {
            let dy = &dy[i * g.plane_out()..][..g.plane_out()];
            for oy in 0..g.oh {
                let rows = g.rows(oy);
                for ox in 0..g.ow {
                    let cols = g.cols(ox);
                    let v = dy[oy * g.ow + ox] / count(g, self.count_include_pad, rows, cols);
                    for r in rows.0..rows.1 {
                        dx[r * g.w..][cols.0..cols.1]
                            .iter_mut()
                            .for_each(|d| *d += v);
                    }
                }
            }
        });
        Ok((CpuStorage::F32(dx), Shape::from((n, c, g.h, g.w))))
    }
}

#[cfg(test)]
mod tests;
