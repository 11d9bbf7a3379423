//! The two gradients of a convolution: the data gradient (the flipped kernel's forward at
//! stride 1, a scatter of `Wᵀ · dy` otherwise) and the weight gradient (a product with
//! channels-last im2col panels, Winograd's, or dot products for few output channels).

use super::forward::{fwd, fwd_channels_last};
use super::geom::{Geom, PB, Planes, Run, blocks, fill_cols, taps_major, to_channels_last};
use super::packed_cache::{PACKED, WeightKey};
use super::winograd;
use crate::buffers::{self, scratch};
use crate::gemm::{Gemm, KC, Lhs, MR, NR, Packed, Rhs, gemm_panel, transpose};
use crate::par::SendPtr;

/// Output pixels per work item of the weight gradient, times its output channels: the
/// item's slice of `dy` (and the input rows it reads) stays in L2 while every panel of
/// the weight gradient passes over it.
const WGRAD_ITEM_FLOATS: usize = 1 << 16;

/// The data gradient `dx` of `y = conv(x, w)` given `dy`.
pub(super) fn bwd_data(g: &Geom, dy: &[f32], w: &[f32], key: Option<WeightKey<'_>>) -> Vec<f32> {
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
        let mut wf = buffers::take(w.len());
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
    let mut dxt = buffers::take(g.b * p_in * cin);
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
pub(super) fn bwd_weight(g: &Geom, x: &[f32], dy: &[f32]) -> Vec<f32> {
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
            let mut acc = buffers::take(cout * k);
            acc.fill(0.0);
            let mut cols = buffers::take(KC * NR);
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
    let mut dyp = buffers::take(g.b * cout * gpad);
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
pub(super) mod dots {
    /// Windows per register tile at most (the tile for one row).
    pub(in crate::conv) const J_MAX: usize = 24;

    /// `acc[r · k + j] += Σ_{q < len} a[r · a_rs + q] · base[offs[j] + q]` for `r < m`,
    /// `j < k`; `len` is a multiple of 16 and `offs` holds `k` rounded up to [`J_MAX`]
    /// entries, each window in bounds.
    #[allow(clippy::too_many_arguments)]
    pub(in crate::conv) fn run(
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
    pub(in crate::conv) fn portable(
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
