//! Small, repeated matrix products of the LSTM recurrence: `dst (m×n) [+]= lhs (m×k) · rhs (k×n)`
//! with `m` ≤ ~64, `k` and `n` in the hundreds, and the same `rhs` (a weight matrix) reused
//! for every time step.
//!
//! Written by hand because the `gemm` crate (0.19) has no AVX-512 kernels on stable Rust
//! (only AVX2/FMA, i.e. half the FMA width this CPU class has) and packs the rhs into its
//! own layout on every call: for a 64 × 512 × 128 product repeated 60 times per batch, that
//! re-packing alone was ~12% of a training step. Here the rhs is packed once (per forward
//! or backward call, or once per model for generation) into column panels, and an AVX-512
//! register-blocked kernel (6 rows × 64 columns of accumulators) streams each panel from L1.
//! Without AVX-512, or when `n` is not a multiple of 16, the products go to `gemm` as before.
//!
//! [`gemm_strided_lhs`] serves the weight gradient of the LSTM backward,
//! `dW = dgatesᵀ · hprev`, whose lhs is a transpose and whose rhs changes every call: the
//! same kernel, with the lhs read through strides and the rhs packed on the fly.

use ::gemm::Parallelism;

use crate::buffers::PoolVec;

/// Columns per panel: four 16-lane zmm registers.
const PANEL: usize = 64;
/// Rows per register tile: 6 × 4 accumulators + 4 rhs vectors + 1 broadcast = 29 of the
/// 32 zmm registers. Each step of k then issues 24 FMAs for 10 loads, enough to keep both
/// FMA ports busy; 6 also divides the 30-row halves of the generation wavefront (measured:
/// 4 rows is as fast on 64-row products and ~10% slower on 30-row ones).
const MR: usize = 6;
/// Depth per pass: a `KC × 64` panel slice is 32 KiB, which stays in a 48 KiB L1d while
/// every row tile of `lhs` streams past it.
pub(crate) const KC: usize = 128;

/// A `k × n` matrix packed once for [`gemm_packed`]: column panels of [`PANEL`] columns
/// (the last one may be narrower), each stored as `k` contiguous rows of the panel's width.
///
/// Contiguous panel rows matter: read from the row-major matrix, rows of a panel are `n`
/// floats apart, which for `n` = 512 maps the whole panel onto a few L1 sets and evicts it
/// between row tiles.
///
/// The storage comes from [`crate::buffers`]: the LSTM packs its weights afresh for every
/// forward and backward call.
#[derive(Clone, Debug)]
pub(crate) struct PackedRhs {
    k: usize,
    n: usize,
    data: PoolVec,
}

impl PackedRhs {
    /// Packs the `k × n` matrix whose element `(r, c)` is `src[r * rs + c * cs]`
    /// (`rs = n, cs = 1` for row-major; `rs = 1, cs = k` for the transpose of a row-major
    /// `n × k` matrix).
    ///
    /// # Panics
    /// If an addressed element is outside `src`.
    pub(crate) fn pack(k: usize, n: usize, src: &[f32], rs: usize, cs: usize) -> Self {
        if k > 0 && n > 0 {
            assert!(
                (k - 1) * rs + (n - 1) * cs < src.len(),
                "packed rhs source out of bounds"
            );
        }
        // Every element is written below: panels of w columns, k rows each, in order.
        let mut data = crate::buffers::take(k * n);
        let mut out = data.iter_mut();
        for j0 in (0..n).step_by(PANEL) {
            let w = PANEL.min(n - j0);
            for r in 0..k {
                // The range first: `zip` stops on it without taking another `out`.
                for (c, x) in (j0..j0 + w).zip(out.by_ref()) {
                    *x = src[r * rs + c * cs];
                }
            }
        }
        Self { k, n, data }
    }

    pub(crate) fn k(&self) -> usize {
        self.k
    }

    pub(crate) fn n(&self) -> usize {
        self.n
    }

    fn view(&self) -> Rhs {
        Rhs {
            ptr: self.data.as_ptr(),
            k: self.k,
            n: self.n,
            packed: true,
        }
    }
}

/// Where the rhs panels are: in a [`PackedRhs`] or in a row-major matrix.
#[derive(Clone, Copy)]
struct Rhs {
    ptr: *const f32,
    k: usize,
    n: usize,
    packed: bool,
}

impl Rhs {
    /// Start and row stride of the panel of columns `j0 .. j0 + w`.
    ///
    /// # Safety
    /// `j0 < n` and `w = min(PANEL, n - j0)`, with `j0` a multiple of [`PANEL`] when packed.
    unsafe fn panel(&self, j0: usize, w: usize) -> (*const f32, usize) {
        // SAFETY (of the offsets): packed panels before `j0` hold `j0 · k` floats, and a
        // row-major matrix has column `j0` at offset `j0`; both are inside the matrix.
        unsafe {
            if self.packed {
                (self.ptr.add(j0 * self.k), w)
            } else {
                (self.ptr.add(j0), self.n)
            }
        }
    }
}

/// `dst (m × n) [+]= lhs (m × k) · rhs (k × n)` with `rhs` row-major (rows of `n` contiguous
/// floats), `lhs` and `dst` row-major with row strides `lhs_rs` and `dst_rs`. Without
/// `accumulate`, `dst` is overwritten (its old contents are never read).
///
/// For an rhs reused across calls prefer [`PackedRhs`] and [`gemm_packed`].
///
/// # Safety
/// `lhs[i * lhs_rs + kk]` (i < m, kk < k), `rhs[kk * n + j]` (kk < k, j < n) and
/// `dst[i * dst_rs + j]` (i < m, j < n) must be in bounds of their allocations, and `dst`
/// must not overlap `lhs` or `rhs`.
#[allow(clippy::too_many_arguments)]
#[cfg_attr(not(test), allow(dead_code))] // the LSTM uses packed rhs only
pub(crate) unsafe fn gemm_rowmajor_acc(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: usize,
    accumulate: bool,
    lhs: *const f32,
    lhs_rs: usize,
    rhs: *const f32,
) {
    // SAFETY: forwarded from the caller.
    unsafe {
        run(
            m,
            dst,
            dst_rs,
            accumulate,
            lhs,
            lhs_rs,
            Rhs {
                ptr: rhs,
                k,
                n,
                packed: false,
            },
        )
    }
}

/// `dst (m × n) [+]= lhs (m × k) · rhs (k × n)` with `k` and `n` those of `rhs`; otherwise
/// as [`gemm_rowmajor_acc`].
///
/// # Safety
/// `lhs[i * lhs_rs + kk]` (i < m, kk < k) and `dst[i * dst_rs + j]` (i < m, j < n) must be
/// in bounds of their allocations, and `dst` must not overlap `lhs`.
pub(crate) unsafe fn gemm_packed(
    m: usize,
    dst: *mut f32,
    dst_rs: usize,
    accumulate: bool,
    lhs: *const f32,
    lhs_rs: usize,
    rhs: &PackedRhs,
) {
    // SAFETY: forwarded from the caller; `rhs.view()` describes `rhs.data` exactly.
    unsafe { run(m, dst, dst_rs, accumulate, lhs, lhs_rs, rhs.view()) }
}

/// `dst (m × n) [+]= lhs (m × k) · rhs (k × n)` where element `(i, kk)` of `lhs` is
/// `lhs[i * lhs_rs + kk * lhs_cs]` (any strides; `lhs_rs = 1` reads a transpose) and `rhs`
/// is row-major with row stride `rhs_rs`; `dst` as in [`gemm_rowmajor_acc`].
///
/// Made for the weight gradient of the LSTM, `dgatesᵀ (4H × k) · hprev (k × H)` over a
/// run of steps (`k` about [`KC`]), where neither operand is reused across calls (the
/// `gemm` crate took twice as long for it, AVX2 only and packing both operands). The rhs
/// is copied, [`KC`] rows at a time, into contiguous panels: read in place, panel rows
/// `H` floats apart fold onto half of the L1 sets (measured 5–10% slower). The lhs is
/// read in place: for a transpose (`lhs_rs = 1`) the 6 values a register tile
/// broadcasts for one step of `k` share a cache line, and copying them into a k-major
/// tile layout first (24-byte pieces) cost more than it saved (measured ~25% slower at
/// `k` = 128).
///
/// # Safety
/// `lhs[i * lhs_rs + kk * lhs_cs]` (i < m, kk < k), `rhs[kk * rhs_rs + j]` (kk < k, j < n)
/// and `dst[i * dst_rs + j]` (i < m, j < n) must be in bounds of their allocations, and
/// `dst` must not overlap `lhs` or `rhs`.
pub(crate) unsafe fn gemm_strided_lhs(
    (m, n, k): (usize, usize, usize),
    dst: *mut f32,
    dst_rs: usize,
    accumulate: bool,
    (lhs, lhs_rs, lhs_cs): (*const f32, usize, usize),
    (rhs, rhs_rs): (*const f32, usize),
) {
    if m == 0 || n == 0 {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if n.is_multiple_of(16) && has_avx512() {
        let mut scratch = crate::buffers::take(KC.min(k) * n);
        // SAFETY: the CPU has AVX-512F (checked above) and n is a multiple of 16; the
        // scratch holds one packed rhs block; operand bounds are the caller's contract.
        unsafe {
            avx512::run_strided_lhs(
                (m, n, k),
                dst,
                dst_rs,
                accumulate,
                (lhs, lhs_rs, lhs_cs),
                (rhs, rhs_rs),
                &mut scratch,
            )
        };
        return;
    }
    // SAFETY: forwarded from the caller; `gemm` takes arbitrary strides.
    unsafe {
        ::gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs as isize,
            accumulate,
            lhs,
            lhs_cs as isize,
            lhs_rs as isize,
            rhs,
            1,
            rhs_rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            Parallelism::None,
        )
    }
}

/// Whether this CPU runs the AVX-512 kernel (`std` caches the CPUID answer, so this is a
/// load and a test).
fn has_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// # Safety
/// As [`gemm_rowmajor_acc`], with the rhs described by `rhs`.
unsafe fn run(
    m: usize,
    dst: *mut f32,
    dst_rs: usize,
    accumulate: bool,
    lhs: *const f32,
    lhs_rs: usize,
    rhs: Rhs,
) {
    if m == 0 || rhs.n == 0 {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if rhs.n.is_multiple_of(16) && has_avx512() {
        // SAFETY: the CPU has AVX-512F (checked above); bounds are the caller's contract.
        unsafe { avx512::run(m, dst, dst_rs, accumulate, lhs, lhs_rs, rhs) };
        return;
    }
    // SAFETY: forwarded from the caller.
    unsafe { run_portable(m, dst, dst_rs, accumulate, lhs, lhs_rs, rhs) }
}

/// The portable path: one `gemm` call per panel (a single call for a row-major rhs).
///
/// # Safety
/// As [`run`].
unsafe fn run_portable(
    m: usize,
    dst: *mut f32,
    dst_rs: usize,
    accumulate: bool,
    lhs: *const f32,
    lhs_rs: usize,
    rhs: Rhs,
) {
    let panel = if rhs.packed { PANEL } else { rhs.n };
    for j0 in (0..rhs.n).step_by(panel) {
        let w = panel.min(rhs.n - j0);
        // SAFETY: `j0 < n`, `w = min(panel, n - j0)`, `j0` a multiple of PANEL when packed;
        // the panel, the lhs rows and the dst columns `j0 .. j0 + w` are in bounds by the
        // caller's contract.
        unsafe {
            let (b, b_rs) = rhs.panel(j0, w);
            ::gemm::gemm(
                m,
                w,
                rhs.k,
                dst.add(j0),
                1,
                dst_rs as isize,
                accumulate,
                lhs,
                1,
                lhs_rs as isize,
                b,
                1,
                b_rs as isize,
                1.0,
                1.0,
                false,
                false,
                false,
                Parallelism::None,
            );
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{KC, MR, PANEL, Rhs};

    /// The blocked product: k in passes of [`KC`], then column panels, then row tiles, so
    /// that a `KC × 64` slice of one panel is reused by every row tile while it is in L1.
    ///
    /// # Safety
    /// The CPU must have AVX-512F, `rhs.n` must be a multiple of 16, and the operands must
    /// satisfy the bounds of [`super::gemm_rowmajor_acc`].
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn run(
        m: usize,
        dst: *mut f32,
        dst_rs: usize,
        accumulate: bool,
        lhs: *const f32,
        lhs_rs: usize,
        rhs: Rhs,
    ) {
        let (k, n) = (rhs.k, rhs.n);
        if k == 0 {
            if !accumulate {
                for i in 0..m {
                    // SAFETY: row i < m of dst has n elements in bounds.
                    unsafe { std::ptr::write_bytes(dst.add(i * dst_rs), 0, n) };
                }
            }
            return;
        }
        for k0 in (0..k).step_by(KC) {
            let kc = KC.min(k - k0);
            // Later passes add to what the first one wrote.
            let acc = accumulate || k0 > 0;
            for j0 in (0..n).step_by(PANEL) {
                let w = PANEL.min(n - j0);
                // SAFETY: j0 < n, w = min(PANEL, n - j0), j0 a multiple of PANEL.
                let (b, b_rs) = unsafe { rhs.panel(j0, w) };
                // SAFETY: rows k0 .. k0 + kc of the panel are in bounds (k0 + kc ≤ k).
                let b = unsafe { b.add(k0 * b_rs) };
                let mut i0 = 0;
                while i0 < m {
                    let mr = MR.min(m - i0);
                    // SAFETY: rows i0 .. i0 + mr (end ≤ m), lhs columns k0 .. k0 + kc (end ≤ k),
                    // panel rows k0 .. k0 + kc and dst columns j0 .. j0 + w (end ≤ n) are in
                    // bounds by the caller's contract; mr is 1..=MR, and w is 16, 32, 48 or
                    // 64 because n is a multiple of 16.
                    unsafe {
                        let a = lhs.add(i0 * lhs_rs + k0);
                        let c = dst.add(i0 * dst_rs + j0);
                        tile_dispatch(mr, w / 16, kc, (a, lhs_rs, 1), b, b_rs, c, dst_rs, acc);
                    }
                    i0 += mr;
                }
            }
        }
    }

    /// The product behind [`super::gemm_strided_lhs`]. For every [`KC`] steps of `k`:
    /// the rhs block goes to `scratch` as `kc × 64` panels (the last one narrower), as
    /// in [`super::PackedRhs`]; then every panel meets every row tile of the lhs, read in
    /// place with its strides, the panel staying in L1.
    ///
    /// # Safety
    /// The CPU must have AVX-512F, `n` must be a multiple of 16, `scratch` must hold
    /// `min(KC, k) · n` floats, and the operands must satisfy the bounds of
    /// [`super::gemm_strided_lhs`].
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn run_strided_lhs(
        (m, n, k): (usize, usize, usize),
        dst: *mut f32,
        dst_rs: usize,
        accumulate: bool,
        (lhs, lhs_rs, lhs_cs): (*const f32, usize, usize),
        (rhs, rhs_rs): (*const f32, usize),
        scratch: &mut [f32],
    ) {
        if k == 0 {
            if !accumulate {
                for i in 0..m {
                    // SAFETY: row i < m of dst has n elements in bounds.
                    unsafe { std::ptr::write_bytes(dst.add(i * dst_rs), 0, n) };
                }
            }
            return;
        }
        let bpack = &mut scratch[..KC.min(k) * n];
        for k0 in (0..k).step_by(KC) {
            let kc = KC.min(k - k0);
            // Later passes add to what the first one wrote.
            let acc = accumulate || k0 > 0;
            for j0 in (0..n).step_by(PANEL) {
                let w = PANEL.min(n - j0);
                for p in 0..kc {
                    let out = &mut bpack[j0 * kc + p * w..][..w];
                    // SAFETY: row k0 + p < k, columns j0 .. j0 + w ≤ n, in bounds by the
                    // contract.
                    let src = unsafe { rhs.add((k0 + p) * rhs_rs + j0) };
                    // A constant length where possible: a `memcpy` call per row cost
                    // more than the copy.
                    if let Ok(out) = <&mut [f32; PANEL]>::try_from(&mut *out) {
                        // SAFETY: as above, with w = PANEL.
                        *out = unsafe { src.cast::<[f32; PANEL]>().read_unaligned() };
                    } else {
                        // SAFETY: as above.
                        out.copy_from_slice(unsafe { std::slice::from_raw_parts(src, w) });
                    }
                }
            }
            for j0 in (0..n).step_by(PANEL) {
                let w = PANEL.min(n - j0);
                let mut i0 = 0;
                while i0 < m {
                    let mr = MR.min(m - i0);
                    // SAFETY: lhs rows i0 .. i0 + mr ≤ m and columns k0 .. k0 + kc ≤ k, and
                    // dst rows i0 .. i0 + mr and columns j0 .. j0 + w ≤ n, are in bounds by
                    // the contract; the panel (kc rows of w floats) lies inside `bpack` as
                    // packed above; mr is 1..=MR and w a multiple of 16 in 16..=64 because
                    // n is a multiple of 16.
                    unsafe {
                        tile_dispatch(
                            mr,
                            w / 16,
                            kc,
                            (lhs.add(i0 * lhs_rs + k0 * lhs_cs), lhs_rs, lhs_cs),
                            bpack.as_ptr().add(j0 * kc),
                            w,
                            dst.add(i0 * dst_rs + j0),
                            dst_rs,
                            acc,
                        )
                    };
                    i0 += mr;
                }
            }
        }
    }

    /// Picks the tile kernel for `mr` rows (1..=MR) and `nv` zmm columns (1..=4).
    ///
    /// # Safety
    /// As [`tile`].
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f")]
    unsafe fn tile_dispatch(
        mr: usize,
        nv: usize,
        kc: usize,
        (a, a_rs, a_cs): (*const f32, usize, usize),
        b: *const f32,
        b_rs: usize,
        c: *mut f32,
        c_rs: usize,
        acc: bool,
    ) {
        macro_rules! go {
            ($($r:literal),*) => {
                match (mr, nv) {
                    $(
                        ($r, 4) => tile::<$r, 4>(kc, a, a_rs, a_cs, b, b_rs, c, c_rs, acc),
                        ($r, 3) => tile::<$r, 3>(kc, a, a_rs, a_cs, b, b_rs, c, c_rs, acc),
                        ($r, 2) => tile::<$r, 2>(kc, a, a_rs, a_cs, b, b_rs, c, c_rs, acc),
                        ($r, 1) => tile::<$r, 1>(kc, a, a_rs, a_cs, b, b_rs, c, c_rs, acc),
                    )*
                    _ => unreachable!("tile {mr}×{nv}"),
                }
            };
        }
        // The row counts 1..=MR, spelled out.
        const _: () = assert!(MR == 6);
        // SAFETY: forwarded from the caller.
        unsafe { go!(6, 5, 4, 3, 2, 1) }
    }

    /// `c (R × 16·V) [+]= a (R × kc) · b (kc × 16·V)`, accumulating in `R · V` zmm
    /// registers; `a` has element `(i, p)` at `a[i * a_rs + p * a_cs]`, `b` and `c` are
    /// row-major with the given row strides.
    ///
    /// # Safety
    /// The CPU must have AVX-512F; `a[i * a_rs + p * a_cs]`, `b[p * b_rs + j]` and
    /// `c[i * c_rs + j]` must be in bounds for i < R, p < kc, j < 16·V.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn tile<const R: usize, const V: usize>(
        kc: usize,
        a: *const f32,
        a_rs: usize,
        a_cs: usize,
        b: *const f32,
        b_rs: usize,
        c: *mut f32,
        c_rs: usize,
        acc: bool,
    ) {
        let mut sum = [[_mm512_setzero_ps(); V]; R];
        for p in 0..kc {
            let mut bv = [_mm512_setzero_ps(); V];
            for (v, x) in bv.iter_mut().enumerate() {
                // SAFETY: p < kc and 16·v + 15 < 16·V, in bounds by the contract.
                *x = unsafe { _mm512_loadu_ps(b.add(p * b_rs + 16 * v)) };
            }
            for (i, row) in sum.iter_mut().enumerate() {
                // SAFETY: i < R and p < kc, in bounds by the contract.
                let x = _mm512_set1_ps(unsafe { *a.add(i * a_rs + p * a_cs) });
                for (s, &bb) in row.iter_mut().zip(&bv) {
                    *s = _mm512_fmadd_ps(x, bb, *s);
                }
            }
        }
        for (i, row) in sum.iter().enumerate() {
            for (v, &s) in row.iter().enumerate() {
                // SAFETY: i < R and 16·v + 15 < 16·V, in bounds by the contract.
                unsafe {
                    let p = c.add(i * c_rs + 16 * v);
                    let s = if acc {
                        _mm512_add_ps(_mm512_loadu_ps(p), s)
                    } else {
                        s
                    };
                    _mm512_storeu_ps(p, s);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
