//! The forward product `y = conv(x, w)` and its four paths: Winograd's transform, the
//! pointwise product, shifted windows of padded planes and the channels-last product
//! (which also serves a stride-1 data gradient with a cached flipped kernel).

use std::mem::MaybeUninit;

use super::geom::{Geom, PB, Planes, blocks, copy_short, taps_major, to_channels_last};
use super::packed_cache::{WeightKey, packed_weights};
use super::winograd;
use crate::buffers::scratch;
use crate::gemm::{Gemm, KC, Lhs, MR, NR, Packed, Rhs, gemm_panel, transpose_raw};
use crate::par::SendPtr;

/// The forward product.
pub(super) fn fwd(g: &Geom, x: &[f32], w: &[f32], key: Option<WeightKey<'_>>) -> Vec<f32> {
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

/// The kernel packed for [`fwd_channels_last`].
fn pack_channels_last(g: &Geom, w: &[f32]) -> Packed {
    let wt = taps_major(w, g);
    Packed::new(g.k(), g.cout, &wt, 1, g.k())
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
pub(super) const SHIFTED_MAX_CIN: usize = 64;

/// Zero channels for taps in the padding.
static ZEROS: [f32; KC] = [0.0; KC];

/// `y^T (pixels × cout) = col^T (pixels × k) · W^T (k × cout)` per block of output pixels,
/// from the channels-last input, for many input and output channels. The kernel reads
/// the rows of `col^T` where they are: for one tap and a block of channels, the row of an
/// output pixel is a run of its input pixel's channels (or zeros in the padding), so no
/// im2col is built; each kernel call covers one tap and up to [`KC`] channels.
pub(super) fn fwd_channels_last(g: &Geom, x: &[f32], wp: &Packed, y: &mut [MaybeUninit<f32>]) {
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
