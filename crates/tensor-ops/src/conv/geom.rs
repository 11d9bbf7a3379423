//! The convolution's geometry in the terms every kernel uses ([`Geom`]), and the layouts
//! the products read their operands in: im2col runs of channels-last pixels, zero-padded
//! phase planes, taps-major kernels and the blocks of pixels that work items take.

use candle_core::{Result, bail};

use super::forward::SHIFTED_MAX_CIN;
use super::{Conv2dParams, ConvTranspose2dParams};
use crate::buffers::{self, PoolVec};
use crate::gemm::{MR, transpose};

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
pub(super) struct Geom {
    pub(super) b: usize,
    pub(super) cin: usize,
    pub(super) h: usize,
    pub(super) w: usize,
    pub(super) cout: usize,
    pub(super) kh: usize,
    pub(super) kw: usize,
    pub(super) sh: usize,
    pub(super) sw: usize,
    pub(super) pt: usize,
    pub(super) pl: usize,
    pub(super) oh: usize,
    pub(super) ow: usize,
}

impl Geom {
    pub(super) fn taps(&self) -> usize {
        self.kh * self.kw
    }

    /// Length of an im2col column: taps × input channels.
    pub(super) fn k(&self) -> usize {
        self.taps() * self.cin
    }

    pub(super) fn p_in(&self) -> usize {
        self.h * self.w
    }

    pub(super) fn p_out(&self) -> usize {
        self.oh * self.ow
    }

    /// A 1×1 kernel at stride 1 without padding: every output pixel is its input pixel's
    /// channels times the kernel.
    pub(super) fn is_pointwise(&self) -> bool {
        (self.kh, self.kw, self.sh, self.sw, self.pt, self.pl) == (1, 1, 1, 1, 0, 0)
            && (self.oh, self.ow) == (self.h, self.w)
    }

    /// Whether the forward runs [`fwd_channels_last`](super::forward::fwd_channels_last)
    /// (see [`fwd`](super::forward::fwd)).
    pub(super) fn is_channels_last(&self) -> bool {
        !self.is_pointwise() && self.cin > SHIFTED_MAX_CIN && self.cout >= 16
    }
}

pub(super) fn conv2d_geom(
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
pub(super) fn conv_transpose2d_geom(
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

/// Output pixels per work item of the channels-last forward and of the scatter: the
/// item's input rows and output block stay in L2, and a 28×28 image still splits into a
/// few items for the threads.
pub(super) const PB: usize = 384;

/// `[start, start + len)` blocks of about `max` items (multiples of [`MR`] but the last)
/// covering `0..n`, balanced so that the last block is not a sliver.
pub(super) fn blocks(n: usize, max: usize) -> Vec<(usize, usize)> {
    if n == 0 {
        return Vec::new();
    }
    let count = n.div_ceil(max);
    let size = n.div_ceil(count).next_multiple_of(MR);
    (0..n).step_by(size).map(|s| (s, size.min(n - s))).collect()
}

/// The kernel `w (cout, cin, taps)` as `(cout, taps, cin)`: rows of the channels-last
/// im2col order.
pub(super) fn taps_major(w: &[f32], g: &Geom) -> PoolVec {
    let (taps, cin) = (g.taps(), g.cin);
    let mut wt = buffers::take(w.len());
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

/// `(B, C, P)` → `(B, P, C)`, into a pooled buffer.
pub(super) fn to_channels_last(src: &[f32], b: usize, c: usize, p: usize) -> PoolVec {
    let mut dst = buffers::take(b * c * p);
    if c * p > 0 {
        crate::par::for_chunks_mut(&mut dst, c * p, |i, d| {
            transpose(&src[i * c * p..][..c * p], c, p, d)
        });
    }
    dst
}

/// A run of im2col columns (channels-last order: column `tap · cin + ci`): `len`
/// channels from `ci` of tap `(a, c)`, at offset `off` in a block of columns.
#[derive(Clone, Copy, Debug)]
pub(super) struct Run {
    pub(super) off: usize,
    pub(super) len: usize,
    pub(super) a: usize,
    pub(super) c: usize,
    pub(super) ci: usize,
}

impl Geom {
    /// The runs of columns `k0 .. k0 + kc`.
    pub(super) fn runs(&self, k0: usize, kc: usize) -> Vec<Run> {
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
    pub(super) fn src(&self, oy: usize, ox: usize, a: usize, c: usize) -> Option<usize> {
        let iy = (oy * self.sh + a).checked_sub(self.pt)?;
        let ix = (ox * self.sw + c).checked_sub(self.pl)?;
        (iy < self.h && ix < self.w).then_some(iy * self.w + ix)
    }

    /// `(oy, ox)` of output pixels `p0, p0 + 1, …` (one division for the lot).
    pub(super) fn pixels(&self, p0: usize) -> impl Iterator<Item = (usize, usize)> + '_ {
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
pub(super) fn fill_cols(
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
pub(super) fn copy_short(dst: &mut [f32], src: &[f32]) {
    let mut d8 = dst.chunks_exact_mut(8);
    let mut s8 = src.chunks_exact(8);
    for (d, s) in (&mut d8).zip(&mut s8) {
        let d: &mut [f32; 8] = d.try_into().expect("chunk of 8");
        *d = s.try_into().expect("chunk of 8");
    }
    copy_run(d8.into_remainder(), s8.remainder());
}

/// Zero-padded input planes for the products with few input or output channels
/// (`fwd_shifted`, `bwd_weight_shifted`): with
/// stride `(sh, sw)`, phase plane `(py, px)` of channel `ci` holds the padded input's
/// pixels `(sh · i + py, sw · j + px)`, so that tap `(a, c)` of output pixel `(oy, ox)`
/// reads row `oy + a / sh`, column `ox + c / sw` of phase `(a % sh, c % sw)`. Computing
/// outputs for every column of the planes' width `wp` (the `wp - ow` extra columns are
/// thrown away) makes the im2col row of a tap over a run of output pixels one
/// contiguous window of a plane: the kernel reads it in place, and nothing is copied
/// per tap.
pub(super) struct Planes {
    /// `(B, cin, sh, sw, hp, wp)`, then `kw + 15` zeros: windows read a whole vector,
    /// and those of the last output row reach that far past their plane (for outputs
    /// that are thrown away).
    pub(super) data: PoolVec,
    pub(super) wp: usize,
    pub(super) plane: usize,
}

impl Planes {
    pub(super) fn new(g: &Geom, x: &[f32]) -> Self {
        let (sh, sw) = (g.sh, g.sw);
        let (hp, wp) = (g.oh + (g.kh - 1) / sh, g.ow + (g.kw - 1) / sw);
        let plane = hp * wp;
        let n = g.b * g.cin * sh * sw * plane;
        let mut data = buffers::take(n + g.kw + 15);
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
    pub(super) fn offsets(&self, g: &Geom) -> Vec<usize> {
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
    pub(super) fn image(&self, g: &Geom) -> usize {
        g.cin * g.sh * g.sw * self.plane
    }
}
