//! The AVX-512 forms of the kernel and of the 16 × 16 transpose (see the parent module).

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
            Rhs::Shifted(base, offs) => panel_with(g, ShiftedRows(base.as_ptr(), offs.as_ptr())),
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
