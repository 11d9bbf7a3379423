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
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    type PoolFn = fn(&Tensor, Pool2dParams) -> Result<Tensor>;

    fn avg_incl(x: &Tensor, p: Pool2dParams) -> Result<Tensor> {
        avg_pool2d(x, p, true)
    }
    fn avg_excl(x: &Tensor, p: Pool2dParams) -> Result<Tensor> {
        avg_pool2d(x, p, false)
    }
    fn avg_incl_composed(x: &Tensor, p: Pool2dParams) -> Result<Tensor> {
        avg_pool2d_composed(x, p, true)
    }
    fn avg_excl_composed(x: &Tensor, p: Pool2dParams) -> Result<Tensor> {
        avg_pool2d_composed(x, p, false)
    }

    /// Deterministic pseudo-random numbers in [-1, 1).
    fn noise(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect()
    }

    /// Distinct values `0.1 · k - n/20` in a shuffled order: maxima stay put under ±1e-2.
    fn separated(n: usize, seed: u64) -> Vec<f32> {
        let mut v: Vec<f32> = (0..n).map(|k| 0.1 * k as f32 - 0.05 * n as f32).collect();
        let r = noise(n, seed);
        for i in (1..n).rev() {
            let j = (((r[i] + 1.0) * 0.5 * (i + 1) as f32) as usize).min(i);
            v.swap(i, j);
        }
        v
    }

    /// The naive pool: `Some(index)` of each window's taps (None on padding), in scan
    /// order, for every output element in order.
    fn windows(dims: (usize, usize, usize, usize), p: Pool2dParams) -> Vec<Vec<Option<usize>>> {
        let (n, c, h, w) = dims;
        let (kh, kw) = p.kernel;
        let (sh, sw) = p.stride;
        let [pt, pb, pl, pr] = p.padding;
        let oh = (h + pt + pb - kh) / sh + 1;
        let ow = (w + pl + pr - kw) / sw + 1;
        let mut out = vec![];
        for plane in 0..n * c {
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut win = vec![];
                    for a in 0..kh {
                        for b in 0..kw {
                            let r = (oy * sh + a) as isize - pt as isize;
                            let q = (ox * sw + b) as isize - pl as isize;
                            let inside = r >= 0 && q >= 0 && r < h as isize && q < w as isize;
                            win.push(inside.then(|| plane * h * w + r as usize * w + q as usize));
                        }
                    }
                    out.push(win);
                }
            }
        }
        out
    }

    fn naive_max(x: &[f32], dims: (usize, usize, usize, usize), p: Pool2dParams) -> Vec<f32> {
        windows(dims, p)
            .iter()
            .map(|win| win.iter().flatten().map(|&i| x[i]).fold(f32::MIN, f32::max))
            .collect()
    }

    /// First-maximum gradient of the max pool.
    fn naive_max_grad(
        x: &[f32],
        dims: (usize, usize, usize, usize),
        p: Pool2dParams,
        dy: &[f32],
    ) -> Vec<f32> {
        let mut dx = vec![0f32; x.len()];
        for (o, win) in windows(dims, p).iter().enumerate() {
            let mut best: Option<usize> = None;
            for &i in win.iter().flatten() {
                if best.is_none_or(|b| x[i] > x[b]) {
                    best = Some(i);
                }
            }
            dx[best.unwrap()] += dy[o];
        }
        dx
    }

    fn naive_avg(
        x: &[f32],
        dims: (usize, usize, usize, usize),
        p: Pool2dParams,
        include_pad: bool,
    ) -> Vec<f32> {
        windows(dims, p)
            .iter()
            .map(|win| {
                let real: Vec<f32> = win.iter().flatten().map(|&i| x[i]).collect();
                let n = if include_pad { win.len() } else { real.len() };
                real.iter().sum::<f32>() / n as f32
            })
            .collect()
    }

    fn vec4(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }

    fn max_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    /// Valid parameter sets over kernels, strides and paddings for an input of `(h, w)`.
    fn param_grid(h: usize, w: usize) -> Vec<Pool2dParams> {
        let mut ps = vec![];
        for kernel in [(2, 2), (3, 3), (1, 3), (3, 1)] {
            for stride in [(1, 1), (2, 2), (3, 3), (1, 2), (3, 1)] {
                for pad in 0..=2 {
                    let (ph, pw) = (pad.min(kernel.0 - 1), pad.min(kernel.1 - 1));
                    let padding = [ph, ph, pw, pw];
                    if h + 2 * padding[0] >= kernel.0 && w + 2 * padding[2] >= kernel.1 {
                        ps.push(Pool2dParams {
                            kernel,
                            stride,
                            padding,
                        });
                    }
                }
            }
        }
        // Asymmetric padding.
        ps.push(Pool2dParams {
            kernel: (3, 3),
            stride: (2, 2),
            padding: [0, 1, 2, 0],
        });
        ps.push(Pool2dParams {
            kernel: (2, 3),
            stride: (1, 2),
            padding: [1, 0, 0, 2],
        });
        // Stride 1 (the separable box sum) with asymmetric padding.
        ps.push(Pool2dParams {
            kernel: (2, 3),
            stride: (1, 1),
            padding: [1, 0, 0, 2],
        });
        ps.push(Pool2dParams {
            kernel: (3, 2),
            stride: (1, 1),
            padding: [0, 2, 1, 0],
        });
        ps.sort_by_key(|p| format!("{p:?}"));
        ps.dedup();
        ps
    }

    #[test]
    fn forward_matches_reference_and_composed() -> Result<()> {
        let dev = Device::Cpu;
        for (i, dims) in [(1, 2, 7, 9), (2, 3, 8, 5), (1, 1, 3, 4)]
            .into_iter()
            .enumerate()
        {
            let (n, c, h, w) = dims;
            let xv = noise(n * c * h * w, i as u64 + 1);
            let x = Tensor::from_vec(xv.clone(), dims, &dev)?;
            for p in param_grid(h, w) {
                let want = naive_max(&xv, dims, p);
                assert_eq!(vec4(&max_pool2d(&x, p)?), want, "{dims:?} {p:?}");
                assert_eq!(vec4(&max_pool2d_composed(&x, p)?), want, "{dims:?} {p:?}");
                for incl in [true, false] {
                    let want = naive_avg(&xv, dims, p, incl);
                    let ours = vec4(&avg_pool2d(&x, p, incl)?);
                    let comp = vec4(&avg_pool2d_composed(&x, p, incl)?);
                    assert!(max_diff(&ours, &want) < 1e-6, "{dims:?} {p:?} {incl}");
                    assert!(max_diff(&comp, &want) < 1e-6, "{dims:?} {p:?} {incl}");
                }
            }
        }
        Ok(())
    }

    #[test]
    fn max_pool_propagates_nan() -> Result<()> {
        let dev = Device::Cpu;
        let mut xv = noise(2 * 7 * 9, 21);
        xv[3 * 9 + 4] = f32::NAN;
        let x = Tensor::from_vec(xv, (1, 2, 7, 9), &dev)?;
        for p in [Pool2dParams::new(3, 2, 0), Pool2dParams::new(2, 1, 1)] {
            let y = vec4(&max_pool2d(&x, p)?);
            let win = windows((1, 2, 7, 9), p);
            for (o, w) in win.iter().enumerate() {
                let has = w.contains(&Some(3 * 9 + 4));
                assert_eq!(y[o].is_nan(), has, "{p:?} output {o}");
            }
        }
        Ok(())
    }

    #[test]
    fn non_contiguous_input() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::from_vec(noise(2 * 3 * 5 * 6, 9), (2, 3, 5, 6), &dev)?.transpose(2, 3)?;
        let xc = x.contiguous()?;
        let p = Pool2dParams::new(3, 2, 1);
        assert_eq!(vec4(&max_pool2d(&x, p)?), vec4(&max_pool2d(&xc, p)?));
        assert_eq!(
            vec4(&avg_pool2d(&x, p, true)?),
            vec4(&avg_pool2d(&xc, p, true)?)
        );
        Ok(())
    }

    /// candle's own pools (kernel = stride, no padding). Forward everywhere; gradients only
    /// where the window tiles the input exactly, because candle's backward upsamples the
    /// output gradient to the input size (misplacing it when the size is not a multiple of
    /// the kernel), and candle's max-pool gradient is its `dy` divided by `kh·kw` (it
    /// scales by the mean of the "is a maximum" mask rather than dividing by the count of
    /// maxima), so ours is compared with `kh·kw` times it (finite differences above
    /// confirm ours).
    #[test]
    fn matches_candle_pools_when_kernel_equals_stride() -> Result<()> {
        let dev = Device::Cpu;
        for (dims, k) in [
            ((2, 3, 8, 9), (2, 2)),
            ((2, 3, 8, 9), (3, 3)),
            ((2, 3, 8, 9), (2, 3)),
            ((2, 3, 12, 12), (2, 2)),
            ((2, 3, 12, 12), (3, 3)),
            ((1, 2, 12, 12), (2, 3)),
        ] {
            let (n, c, h, w) = dims;
            let x = Var::from_tensor(&Tensor::from_vec(noise(n * c * h * w, 4), dims, &dev)?)?;
            let p = Pool2dParams {
                kernel: k,
                stride: k,
                padding: [0; 4],
            };
            let (oh, ow) = (h / k.0, w / k.1);
            let wy = Tensor::from_vec(noise(n * c * oh * ow, 5), (n, c, oh, ow), &dev)?;
            let tiles = h % k.0 == 0 && w % k.1 == 0;
            let theirs_max = x.as_tensor().max_pool2d(k)?;
            let theirs_avg = x.as_tensor().avg_pool2d(k)?;
            let g_max = (&theirs_max * &wy)?.sum_all()?.backward()?;
            let g_max = vec4(&(g_max.get(&x).unwrap() * (k.0 * k.1) as f64)?);
            let g_avg = (&theirs_avg * &wy)?.sum_all()?.backward()?;
            let g_avg = vec4(g_avg.get(&x).unwrap());
            for f in [max_pool2d as PoolFn, max_pool2d_composed] {
                let y = f(x.as_tensor(), p)?;
                assert_eq!(vec4(&y), vec4(&theirs_max), "{dims:?} {k:?}");
                let g = (y * &wy)?.sum_all()?.backward()?;
                if tiles {
                    assert!(max_diff(&vec4(g.get(&x).unwrap()), &g_max) < 1e-6);
                }
            }
            for f in [
                avg_incl as PoolFn,
                avg_excl,
                avg_incl_composed,
                avg_excl_composed,
            ] {
                let y = f(x.as_tensor(), p)?;
                assert!(max_diff(&vec4(&y), &vec4(&theirs_avg)) < 1e-6, "{k:?}");
                let g = (y * &wy)?.sum_all()?.backward()?;
                if tiles {
                    assert!(max_diff(&vec4(g.get(&x).unwrap()), &g_avg) < 1e-6);
                }
            }
        }
        Ok(())
    }

    /// The autograd gradient of `sum(f(x) * w)` against central differences (f64) of the
    /// same loss evaluated with the forward in f32.
    fn check_gradient(f: PoolFn, xv: &[f32], dims: (usize, usize, usize, usize), p: Pool2dParams) {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::from_vec(xv.to_vec(), dims, &dev).unwrap()).unwrap();
        let y = f(x.as_tensor(), p).unwrap();
        let wv = noise(y.elem_count(), 77);
        let w = Tensor::from_vec(wv.clone(), y.shape(), &dev).unwrap();
        let grads = (y * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let auto = vec4(grads.get(&x).unwrap());
        let loss = |v: Vec<f32>| -> f64 {
            let y = vec4(&f(&Tensor::from_vec(v, dims, &dev).unwrap(), p).unwrap());
            y.iter().zip(&wv).map(|(&a, &b)| a as f64 * b as f64).sum()
        };
        let eps = 1e-2f32;
        for i in 0..xv.len() {
            let mut plus = xv.to_vec();
            plus[i] += eps;
            let mut minus = xv.to_vec();
            minus[i] -= eps;
            let fd = (loss(plus) - loss(minus)) / (plus_minus_gap(xv[i], eps));
            assert!(
                (fd - auto[i] as f64).abs() < 1e-3,
                "{p:?} element {i}: finite difference {fd}, autograd {}",
                auto[i]
            );
        }
    }

    /// `(x + eps) - (x - eps)` as rounded in f32.
    fn plus_minus_gap(x: f32, eps: f32) -> f64 {
        (x + eps) as f64 - (x - eps) as f64
    }

    fn gradient_cases() -> Vec<((usize, usize, usize, usize), Pool2dParams)> {
        vec![
            ((1, 2, 7, 9), Pool2dParams::new(3, 2, 0)),
            ((1, 2, 7, 9), Pool2dParams::new(3, 1, 1)),
            ((1, 2, 7, 9), Pool2dParams::new(2, 1, 1)),
            ((2, 3, 8, 5), Pool2dParams::new(3, 2, 1)),
            (
                (1, 1, 6, 7),
                Pool2dParams {
                    kernel: (1, 3),
                    stride: (1, 2),
                    padding: [0, 0, 2, 1],
                },
            ),
            (
                (1, 1, 7, 6),
                Pool2dParams {
                    kernel: (3, 2),
                    stride: (3, 1),
                    padding: [1, 2, 0, 1],
                },
            ),
            (
                (2, 2, 5, 6),
                Pool2dParams {
                    kernel: (2, 3),
                    stride: (1, 1),
                    padding: [1, 0, 0, 2],
                },
            ),
        ]
    }

    #[test]
    fn max_pool_gradient_matches_finite_differences() {
        for (i, (dims, p)) in gradient_cases().into_iter().enumerate() {
            let xv = separated(dims.0 * dims.1 * dims.2 * dims.3, i as u64 + 3);
            for f in [max_pool2d as PoolFn, max_pool2d_composed] {
                check_gradient(f, &xv, dims, p);
            }
        }
    }

    #[test]
    fn avg_pool_gradient_matches_finite_differences() {
        for (i, (dims, p)) in gradient_cases().into_iter().enumerate() {
            let xv = noise(dims.0 * dims.1 * dims.2 * dims.3, i as u64 + 11);
            for f in [
                avg_incl as PoolFn,
                avg_excl,
                avg_incl_composed,
                avg_excl_composed,
            ] {
                check_gradient(f, &xv, dims, p);
            }
        }
    }

    #[test]
    fn max_pool_ties_go_to_first_maximum() -> Result<()> {
        let dev = Device::Cpu;
        // All equal, overlapping 2×2 windows at stride 1: window (i, j) picks pixel (i, j).
        let p = Pool2dParams::new(2, 1, 0);
        let x = Var::from_tensor(&Tensor::ones((1, 1, 3, 4), DType::F32, &dev)?)?;
        for f in [max_pool2d as PoolFn, max_pool2d_composed] {
            let g = f(x.as_tensor(), p)?.sum_all()?.backward()?;
            let want = [1., 1., 1., 0., 1., 1., 1., 0., 0., 0., 0., 0.];
            assert_eq!(vec4(g.get(&x).unwrap()), want);
        }
        // Negative ties with padding: the padding never wins, the first real pixel does.
        let dims = (2, 2, 5, 4);
        let xv: Vec<f32> = (0..80).map(|i| -((i % 3) as f32) - 1.0).collect();
        let dyv = noise(80, 3);
        for p in [Pool2dParams::new(3, 1, 1), Pool2dParams::new(3, 2, 2)] {
            let x = Var::from_tensor(&Tensor::from_vec(xv.clone(), dims, &dev)?)?;
            let want_y = naive_max(&xv, dims, p);
            let dy = Tensor::from_vec(dyv[..want_y.len()].to_vec(), (want_y.len(),), &dev)?;
            let want = naive_max_grad(&xv, dims, p, &dyv[..want_y.len()]);
            for f in [max_pool2d as PoolFn, max_pool2d_composed] {
                let y = f(x.as_tensor(), p)?;
                assert_eq!(vec4(&y), want_y);
                let g = (y.flatten_all()? * &dy)?.sum_all()?.backward()?;
                assert!(max_diff(&vec4(g.get(&x).unwrap()), &want) < 1e-6, "{p:?}");
            }
        }
        Ok(())
    }

    #[test]
    fn avg_pool_count_include_pad_settings() -> Result<()> {
        let dev = Device::Cpu;
        // A 2×2 image of ones, 3×3 windows at stride 1 with padding 1: every window holds
        // all four pixels and five padding positions.
        let x = Var::from_tensor(&Tensor::ones((1, 1, 2, 2), DType::F32, &dev)?)?;
        let p = Pool2dParams::new(3, 1, 1);
        for (f, y, dx) in [
            (avg_incl as PoolFn, 4. / 9., 4. / 9.),
            (avg_incl_composed, 4. / 9., 4. / 9.),
            (avg_excl, 1., 1.),
            (avg_excl_composed, 1., 1.),
        ] {
            let out = f(x.as_tensor(), p)?;
            assert!(max_diff(&vec4(&out), &[y; 4]) < 1e-6);
            let g = out.sum_all()?.backward()?;
            assert!(max_diff(&vec4(g.get(&x).unwrap()), &[dx; 4]) < 1e-6);
        }
        Ok(())
    }

    #[test]
    fn rejects_bad_shapes_and_params() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::zeros((1, 2, 4, 5), DType::F32, &dev)?;
        let err = |r: Result<Tensor>| r.unwrap_err().to_string();
        let e = err(max_pool2d(&x.flatten(0, 1)?, Pool2dParams::new(2, 2, 0)));
        assert!(e.contains("4-D"), "{e}");
        let e = err(avg_pool2d(&x, Pool2dParams::new(0, 1, 0), true));
        assert!(e.contains("zero kernel"), "{e}");
        let e = err(max_pool2d(&x, Pool2dParams::new(2, 0, 0)));
        assert!(e.contains("stride (0, 0)"), "{e}");
        let e = err(max_pool2d(&x, Pool2dParams::new(2, 1, 2)));
        assert!(
            e.contains("padding") && e.contains("smaller than the kernel"),
            "{e}"
        );
        let e = err(avg_pool2d_composed(&x, Pool2dParams::new(6, 1, 0), false));
        assert!(
            e.contains("input (4, 5)") && e.contains("kernel (6, 6)"),
            "{e}"
        );
        let p = Pool2dParams {
            kernel: (1, 3),
            stride: (1, 1),
            padding: [1, 1, 0, 0],
        };
        assert!(max_pool2d_composed(&x, p).is_err());
        let empty = Tensor::zeros((1, 1, 0, 3), DType::F32, &dev)?;
        let e = err(avg_pool2d(&empty, Pool2dParams::new(1, 1, 0), true));
        assert!(e.contains("empty input"), "{e}");
        Ok(())
    }
}
