//! The matrix-product kernels every CPU op here runs on.
//!
//! - This module: one register-tiled kernel (6 rows × 64 columns of accumulators, AVX-512
//!   where the CPU has it, a portable loop otherwise) for one panel of a product, with the
//!   rhs packed into panels ([`Packed`]) or read in place as shifted windows; [`matmul`],
//!   a plain product on it for the dense layers and the Gram matrix; and the blocked
//!   transposes that reorder operands for it. The convolutions call [`gemm_panel`]
//!   directly, feeding it im2col rows without building the im2col.
//! - [`small`]: the LSTM recurrence's kernel for small, repeated products whose rhs is
//!   packed once per call (with the `gemm` crate behind it where it does not apply).

use crate::buffers::{self, PoolVec};
use crate::par::SendPtr;

#[cfg(target_arch = "x86_64")]
mod avx512;
pub(crate) mod small;
#[cfg(test)]
mod tests;

/// Rows per register tile of the kernel (see [`avx512::tile`]).
pub(crate) const MR: usize = 6;
/// Columns per packed panel: four 16-lane registers.
pub(crate) const NR: usize = 64;
/// Depth per kernel call: a `KC × 64` panel slice (32 KiB) stays in the 48 KiB L1d while
/// the row tiles stream past it.
pub(crate) const KC: usize = 128;

/// A `k × n` matrix packed for the kernel: panels of [`NR`] columns (the last one
/// narrower), each `k` rows of its width rounded up to 16 (the rounding is zeros).
pub(crate) struct Packed {
    pub(crate) k: usize,
    pub(crate) n: usize,
    pub(crate) data: PoolVec,
}

/// One panel of a [`Packed`] matrix: columns `j0 .. j0 + n`, rows `wpad` floats apart.
#[derive(Clone, Copy)]
pub(crate) struct Panel<'a> {
    pub(crate) j0: usize,
    pub(crate) n: usize,
    pub(crate) wpad: usize,
    pub(crate) data: &'a [f32],
}

impl Packed {
    /// Packs the matrix whose element `(r, c)` is `src[r · rs + c · cs]`.
    pub(crate) fn new(k: usize, n: usize, src: &[f32], rs: usize, cs: usize) -> Self {
        if k > 0 && n > 0 {
            assert!(
                (k - 1) * rs + (n - 1) * cs < src.len(),
                "packed source out of bounds"
            );
        }
        let mut data = buffers::take(k * n.next_multiple_of(16));
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

    pub(crate) fn panel(&self, j: usize) -> Panel<'_> {
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

    pub(crate) fn panels(&self) -> usize {
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
pub(crate) unsafe fn transpose_raw(
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

/// The lhs of a [`Gemm`]: row `i` starts at `a[i · rs]` (`Strided`) or is `rows[i]`
/// (`Rows`, for rows gathered from anywhere: the input pixels of one tap).
#[derive(Clone, Copy)]
pub(crate) enum Lhs<'a> {
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
pub(crate) enum Rhs<'a> {
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
pub(crate) struct Gemm<'a> {
    pub(crate) m: usize,
    pub(crate) n: usize,
    pub(crate) kc: usize,
    pub(crate) a: Lhs<'a>,
    pub(crate) b: Rhs<'a>,
    pub(crate) c: *mut f32,
    pub(crate) c_rs: usize,
    pub(crate) acc: bool,
}

/// Runs [`Gemm`] with the AVX-512 kernel where the CPU has it.
///
/// # Safety
/// `c[i · c_rs + j]` for `i < m`, `j < n` must be valid for reads and writes and not be
/// written by anyone else meanwhile. (`a` and `b` are checked.)
pub(crate) unsafe fn gemm_panel(g: &Gemm) {
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
