//! Winograd's minimal filtering for stride-1 convolutions with many input and output
//! channels (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2016).
//!
//! An output tile of `m × m` pixels of an `r × r` convolution is computed from a
//! `6 × 6` input tile as `Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A`: summed over input channels, the
//! elementwise product becomes 36 independent matrix products (tiles × cin)·(cin × cout),
//! each with `m² r² / 36` of the direct convolution's multiplications: F(2×2, 5×5) does
//! 2.8× fewer, F(4×4, 3×3) 4× fewer. The products run on the convolutions' own kernel;
//! the transforms are a few percent on top.
//!
//! Written by hand because neither candle nor any Rust crate we could find has a Winograd
//! convolution (oneDNN, which Keras and PyTorch use on this CPU, has one).
//!
//! Both tile sizes use the same six points `0, ±1, 1/2, −2, ∞`; the transforms are built
//! in `f64` at compile time, so the per-tile code sees constants and skips the zeros.
//! Rounding: about 10× the direct f32 sum's error (4.4e-5 against 1e-5-ish at 3,600
//! terms per output, `winograd_forward_matches_the_direct_sum`), well inside what
//! training tolerates; oneDNN and cuDNN make the same trade.

use std::borrow::Borrow;
use std::mem::MaybeUninit;

use super::geom::{Geom, to_channels_last};
use crate::buffers::scratch;
use crate::gemm::{Gemm, KC, Lhs, NR, Packed, Rhs, gemm_panel, transpose, transpose_raw};
use crate::par::SendPtr;

/// Side of a transformed tile.
const ALPHA: usize = 6;
/// Transformed elements per tile.
const XI: usize = ALPHA * ALPHA;
/// Channels per transform step: one AVX-512 register of lanes.
const LANES: usize = 16;
/// Tiles per work item, about: a block's transformed input and products are
/// `36 · tiles · channels` floats each.
const TILES_PER_ITEM: usize = 96;

/// The transforms of F(m, r), `m + r − 1 = 6`, for the correlation
/// `y_i = Σ_k g_k d_{i+k}`: `y = Aᵀ [(G g) ⊙ (Bᵀ d)]`.
struct Mats {
    /// `Bᵀ (6 × 6)`.
    bt: [[f32; ALPHA]; ALPHA],
    /// `G (6 × r)`, columns past `r` zero.
    g: [[f32; 5]; ALPHA],
    /// `Aᵀ (m × 6)`, rows past `m` zero.
    at: [[f32; ALPHA]; 5],
}

/// The finite interpolation points; the sixth is ∞. One point and one reciprocal
/// (2 and 1/2) balance the transforms' magnitudes (`G` has `p⁴` for r = 5): the largest
/// error of the Winograd test's 5×5 case at 144 channels was 8.1e-5 with `±2`, 4.5e-5 with
/// `±1/2`, 4.4e-5 with these.
const POINTS: [f64; ALPHA - 1] = [0.0, 1.0, -1.0, 0.5, -2.0];

/// Toom–Cook by evaluation at [`POINTS`] and ∞. The linear convolution `c = h ∗ g` of an
/// `m`-vector and an `r`-vector is `V⁻¹ [(V_m h) ⊙ (V_r g)]`, with `V_n` the `6 × n`
/// matrix evaluating a polynomial of `n` coefficients at the points (the ∞ row takes the
/// leading coefficient). The correlation is that map's transpose in `h`:
/// `Aᵀ = V_mᵀ`, `G = V_r`, `Bᵀ = V⁻ᵀ`.
const fn mats(r: usize) -> Mats {
    let m = ALPHA + 1 - r;
    // V (6 × 6), then its inverse by Gauss–Jordan with partial pivoting.
    let mut v = [[0.0f64; ALPHA]; ALPHA];
    let mut inv = [[0.0f64; ALPHA]; ALPHA];
    let mut j = 0;
    while j < ALPHA {
        let mut i = 0;
        while i < ALPHA {
            v[j][i] = eval(j, i, ALPHA);
            i += 1;
        }
        inv[j][j] = 1.0;
        j += 1;
    }
    let mut col = 0;
    while col < ALPHA {
        let mut piv = col;
        let mut r2 = col + 1;
        while r2 < ALPHA {
            if abs(v[r2][col]) > abs(v[piv][col]) {
                piv = r2;
            }
            r2 += 1;
        }
        let (tv, ti) = (v[col], inv[col]);
        v[col] = v[piv];
        inv[col] = inv[piv];
        v[piv] = tv;
        inv[piv] = ti;
        let p = v[col][col];
        let mut c = 0;
        while c < ALPHA {
            v[col][c] /= p;
            inv[col][c] /= p;
            c += 1;
        }
        let mut row = 0;
        while row < ALPHA {
            if row != col {
                let f = v[row][col];
                let mut c = 0;
                while c < ALPHA {
                    v[row][c] -= f * v[col][c];
                    inv[row][c] -= f * inv[col][c];
                    c += 1;
                }
            }
            row += 1;
        }
        col += 1;
    }
    let mut out = Mats {
        bt: [[0.0; ALPHA]; ALPHA],
        g: [[0.0; 5]; ALPHA],
        at: [[0.0; ALPHA]; 5],
    };
    let mut j = 0;
    while j < ALPHA {
        let mut i = 0;
        while i < ALPHA {
            out.bt[j][i] = inv[i][j] as f32;
            i += 1;
        }
        let mut k = 0;
        while k < r {
            out.g[j][k] = eval(j, k, r) as f32;
            k += 1;
        }
        let mut i = 0;
        while i < m {
            out.at[i][j] = eval(j, i, m) as f32;
            i += 1;
        }
        j += 1;
    }
    out
}

/// Row `j` (point `j`, or ∞ for the last), column `i` of the `6 × n` evaluation matrix.
const fn eval(j: usize, i: usize, n: usize) -> f64 {
    if j == ALPHA - 1 {
        return if i == n - 1 { 1.0 } else { 0.0 };
    }
    let mut p = 1.0;
    let mut e = 0;
    while e < i {
        p *= POINTS[j];
        e += 1;
    }
    p
}

const fn abs(x: f64) -> f64 {
    if x < 0.0 { -x } else { x }
}

// The forwards' F(2, 5) and F(4, 3), and the weight gradients' F(5, 2) and F(3, 4): the
// gradient of an r × r kernel is the correlation of each 6 × 6 input tile with the m × m
// output-gradient tile (filter m, r outputs).
const F2X5: Mats = mats(5);
const F4X3: Mats = mats(3);
const F5X2: Mats = mats(2);
const F3X4: Mats = mats(4);

/// The transforms with filter size `F` (2 to 5, outputs `7 − F`), as constants.
#[inline(always)]
fn mats_for<const F: usize>() -> &'static Mats {
    const { assert!(F >= 2 && F <= 5) };
    match F {
        5 => &F2X5,
        3 => &F4X3,
        2 => &F5X2,
        _ => &F3X4,
    }
}

/// Whether [`fwd`] computes the forward of `g` (and with it the stride-1 data gradient;
/// [`bwd_weight`] the weight gradient, asked with `frozen = false`): stride 1, a 5×5 or 3×3 kernel, channel
/// counts in whole registers and large enough that the products dominate. A frozen 3×3
/// kernel (VGG19, InceptionV3) is transformed once and cached, but its transformed form
/// is 4× the kernel and is read once per work item: on small maps (VGG19's 512-channel
/// blocks at 16×24) that costs more than the products save, so those need
/// [`FROZEN_MIN_TILES`] tiles.
pub(super) fn applies(g: &Geom, frozen: bool) -> bool {
    let m = ALPHA + 1 - g.kh.min(5);
    (g.sh, g.sw) == (1, 1)
        && g.kh == g.kw
        && (g.kh == 5
            || (g.kh == 3
                && (!frozen || g.b * g.oh.div_ceil(m) * g.ow.div_ceil(m) >= FROZEN_MIN_TILES)))
        && g.cin.is_multiple_of(LANES)
        && g.cout.is_multiple_of(LANES)
        && g.cin >= 64
        && g.cout >= 64
        && g.oh * g.ow > 0
}

/// Tiles a frozen 3×3 convolution needs to take [`fwd`] (see [`applies`]).
const FROZEN_MIN_TILES: usize = 64;

/// `a · b + c`, fused where the caller's CPU features allow it (`FMA`).
#[inline(always)]
fn madd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA { a.mul_add(b, c) } else { a * b + c }
}

type Lanes = [f32; LANES];

/// The padding's pixels.
static ZERO: Lanes = [0.0; LANES];

/// `out[k] += c · x` lane by lane, skipped for `c = 0` (a constant after inlining).
#[inline(always)]
fn axpy<const FMA: bool>(out: &mut Lanes, c: f32, x: &Lanes) {
    if c != 0.0 {
        for (o, &v) in out.iter_mut().zip(x) {
            *o = madd::<FMA>(c, v, *o);
        }
    }
}

/// `L X Lᵀ` for the `rows × cols` matrix `L` (the first `cols` entries of each row of
/// `l`) and the `cols × cols` matrix `X` of 16-lane vectors (`x[k·cols + c]`), element
/// `(i, j)` handed to `store(i·rows + j, value)`: every transform is one of these. After
/// inlining `l`, `rows` and `cols` are constants, so the loops unroll and zero entries
/// are skipped; accumulators are locals, so that they stay in registers.
#[inline(always)]
fn sandwich<const FMA: bool, const W: usize, T: Borrow<Lanes>>(
    l: &[[f32; W]],
    (rows, cols): (usize, usize),
    x: &[T],
    mut store: impl FnMut(usize, &Lanes),
) {
    let mut t = [[0.0; LANES]; XI];
    let l = &l[..rows];
    for (i, li) in l.iter().enumerate() {
        for c in 0..cols {
            let mut s = [0.0; LANES];
            for (k, &v) in li[..cols].iter().enumerate() {
                axpy::<FMA>(&mut s, v, x[k * cols + c].borrow());
            }
            t[i * cols + c] = s;
        }
    }
    for i in 0..rows {
        for (j, lj) in l.iter().enumerate() {
            let mut s = [0.0; LANES];
            for (k, &v) in lj[..cols].iter().enumerate() {
                axpy::<FMA>(&mut s, v, &t[i * cols + k]);
            }
            store(i * rows + j, &s);
        }
    }
}

/// `Bᵀ d B` of one 6×6 tile of 16 channels (`d[a·6 + c]`: row a, column c), element `ξ`
/// handed to `store(ξ, value)`.
#[inline(always)]
fn input_tile<const R: usize, const FMA: bool>(d: &[&Lanes; XI], store: impl FnMut(usize, &Lanes)) {
    sandwich::<FMA, ALPHA, _>(&mats_for::<R>().bt, (ALPHA, ALPHA), d, store)
}

/// `G g Gᵀ` of one r×r kernel for 16 output channels (`g[a·r + c]`).
#[inline(always)]
fn kernel_tile<const R: usize, const FMA: bool>(g: &[Lanes], out: &mut [Lanes; XI]) {
    sandwich::<FMA, 5, _>(&mats_for::<R>().g, (ALPHA, R), g, |i, v| out[i] = *v)
}

/// `Aᵀ M A` of one transformed tile of 16 channels: the `m × m` outputs (`out[p·m + q]`)
/// of F(m, R).
#[inline(always)]
fn output_tile<const R: usize, const FMA: bool>(mm: &[Lanes; XI], out: &mut [Lanes; 25]) {
    let m = ALPHA + 1 - R;
    sandwich::<FMA, ALPHA, _>(&mats_for::<R>().at, (m, ALPHA), mm, |i, v| out[i] = *v)
}

/// Whether the transforms may use FMA instructions (AVX-512 implies them).
fn fused() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Calls `$f::<F, FMA>(args)` with the filter size `$r` (2 to 5) as a constant, compiled
/// for AVX-512 with fused multiply-adds where the CPU has them ([`fast`]).
macro_rules! dispatch {
    ($r:expr, $f:ident($($a:expr),*)) => {{
        #[cfg(target_arch = "x86_64")]
        if fused() {
            // SAFETY: the CPU has AVX-512F and FMA.
            return unsafe {
                match $r {
                    5 => fast::$f::<5>($($a),*),
                    3 => fast::$f::<3>($($a),*),
                    2 => fast::$f::<2>($($a),*),
                    _ => fast::$f::<4>($($a),*),
                }
            };
        }
        match $r {
            5 => $f::<5, false>($($a),*),
            3 => $f::<3, false>($($a),*),
            2 => $f::<2, false>($($a),*),
            _ => $f::<4, false>($($a),*),
        }
    }};
}

/// The per-tile loops compiled for AVX-512 (the transforms are plain array code, which
/// the compiler vectorizes to the features of the function it lands in).
#[cfg(target_arch = "x86_64")]
mod fast {
    use super::Geom;

    /// # Safety
    /// The CPU must have AVX-512F and FMA.
    #[target_feature(enable = "avx512f,fma")]
    pub(super) unsafe fn kernel_row<const R: usize>(g: &Geom, w: &[f32], ci: usize, u: &mut [f32]) {
        super::kernel_row::<R, true>(g, w, ci, u)
    }

    /// # Safety
    /// As [`kernel_row`].
    #[target_feature(enable = "avx512f,fma")]
    pub(super) unsafe fn input_block<const R: usize>(
        g: &Geom,
        xt: &[f32],
        tiles: (usize, usize, usize),
        layout: super::XLayout,
        v: &mut [f32],
    ) {
        super::input_block::<R, true>(g, xt, tiles, layout, v)
    }

    /// # Safety
    /// As [`kernel_row`].
    #[target_feature(enable = "avx512f,fma")]
    pub(super) unsafe fn grad_block<const M: usize>(
        g: &Geom,
        dyt: &[f32],
        tiles: (usize, usize, usize),
        out: &mut [f32],
    ) {
        super::grad_block::<M, true>(g, dyt, tiles, out)
    }

    /// # Safety
    /// As [`kernel_row`].
    #[target_feature(enable = "avx512f,fma")]
    pub(super) unsafe fn weight_row<const M: usize>(
        g: &Geom,
        prod: &[f32],
        co: usize,
        dw_co: &mut [f32],
    ) {
        super::weight_row::<M, true>(g, prod, co, dw_co)
    }

    /// # Safety
    /// As [`kernel_row`].
    #[target_feature(enable = "avx512f,fma")]
    pub(super) unsafe fn output_block<const R: usize>(
        g: &Geom,
        prod: &[f32],
        tiles: (usize, usize, usize),
        strip: &mut [f32],
    ) {
        super::output_block::<R, true>(g, prod, tiles, strip)
    }
}

fn run_kernel_row(g: &Geom, w: &[f32], ci: usize, u: &mut [f32]) {
    dispatch!(g.kh, kernel_row(g, w, ci, u))
}

fn run_input_block(
    g: &Geom,
    xt: &[f32],
    tiles: (usize, usize, usize),
    layout: XLayout,
    v: &mut [f32],
) {
    dispatch!(g.kh, input_block(g, xt, tiles, layout, v))
}

fn run_grad_block(g: &Geom, dyt: &[f32], tiles: (usize, usize, usize), out: &mut [f32]) {
    dispatch!(ALPHA + 1 - g.kh, grad_block(g, dyt, tiles, out))
}

fn run_weight_row(g: &Geom, prod: &[f32], co: usize, dw_co: &mut [f32]) {
    dispatch!(ALPHA + 1 - g.kh, weight_row(g, prod, co, dw_co))
}

fn run_output_block(g: &Geom, prod: &[f32], tiles: (usize, usize, usize), strip: &mut [f32]) {
    dispatch!(g.kh, output_block(g, prod, tiles, strip))
}

/// Input channel `ci` of the kernel `w (cout, cin, r, r)` transformed, for every output
/// channel: `u[ξ · cout + co]`.
#[inline(always)]
fn kernel_row<const R: usize, const FMA: bool>(g: &Geom, w: &[f32], ci: usize, u: &mut [f32]) {
    let (cin, cout) = (g.cin, g.cout);
    let mut gk = [[0.0; LANES]; 25];
    let mut out = [[0.0; LANES]; XI];
    for co0 in (0..cout).step_by(LANES) {
        for (t, v) in gk[..R * R].iter_mut().enumerate() {
            for (l, x) in v.iter_mut().enumerate() {
                *x = w[((co0 + l) * cin + ci) * R * R + t];
            }
        }
        kernel_tile::<R, FMA>(&gk[..R * R], &mut out);
        for (xi, o) in out.iter().enumerate() {
            u[xi * cout + co0..][..LANES].copy_from_slice(o);
        }
    }
}

/// Rows of [`transform_kernel`]'s matrix for `g`.
pub(super) fn transformed_rows(g: &Geom) -> usize {
    XI * g.cin
}

/// The kernel `w (cout, cin, r, r)` transformed: the `36 · cin × cout` matrix whose rows
/// `ξ · cin ..` are `U_ξ[ci][co]`, packed for the products' rhs (and cacheable like the
/// direct products' packed kernels).
pub(super) fn transform_kernel(g: &Geom, w: &[f32]) -> Packed {
    let (cin, cout) = (g.cin, g.cout);
    let k = XI * cin;
    let mut u = Packed {
        k,
        n: cout,
        data: crate::buffers::take(k * cout),
    };
    let p = SendPtr(u.data.as_mut_ptr());
    // Element (row, co) of the packed matrix: panel co / NR, whose rows are its width
    // apart (cout is a multiple of 16, so no panel is padded).
    let at = |row: usize, co: usize| {
        let j0 = co / NR * NR;
        j0 * k + row * NR.min(cout - j0) + (co - j0)
    };
    crate::par::for_each_index(cin, |ci| {
        let mut t = vec![0.0; XI * cout];
        run_kernel_row(g, w, ci, &mut t);
        for (xi, row) in t.chunks_exact(cout).enumerate() {
            for co0 in (0..cout).step_by(NR) {
                let n = NR.min(cout - co0);
                // SAFETY: row ξ·cin + ci of panel co0 / NR lies inside the buffer; rows
                // of input channel `ci` are written by this index only.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        row[co0..].as_ptr(),
                        p.get().add(at(xi * cin + ci, co0)),
                        n,
                    )
                };
            }
        }
    });
    u
}

/// The forward of `g` (see [`applies`]) into `y (B, cout, oh, ow)`, every element written.
pub(super) fn fwd(g: &Geom, x: &[f32], u: &Packed, y: &mut [MaybeUninit<f32>]) {
    // Smaller channel counts are allowed (tests use them); these are not.
    assert!(
        (g.sh, g.sw, g.kw) == (1, 1, g.kh)
            && matches!(g.kh, 3 | 5)
            && g.cin.is_multiple_of(LANES)
            && g.cout.is_multiple_of(LANES),
        "winograd: unsupported geometry {g:?}"
    );
    let (cin, cout, r) = (g.cin, g.cout, g.kh);
    let m = ALPHA + 1 - r;
    let (th, tw) = (g.oh.div_ceil(m), g.ow.div_ceil(m));
    assert_eq!(
        (u.k, u.n),
        (XI * cin, cout),
        "transformed kernel of another shape"
    );
    let xt = to_channels_last(x, g.b, cin, g.p_in());
    // Work items: runs of whole tile rows of one image, whose outputs are a contiguous
    // run of pixels of every output plane.
    let per_thread = (g.b * th).div_ceil(crate::par::threads());
    let rows = (TILES_PER_ITEM / tw).clamp(1, per_thread.max(1));
    let items: Vec<(usize, usize, usize)> = (0..g.b)
        .flat_map(|b| {
            (0..th)
                .step_by(rows)
                .map(move |t0| (b, t0, rows.min(th - t0)))
        })
        .collect();
    let yp = SendPtr(y.as_mut_ptr().cast::<f32>());
    let y_len = y.len();
    crate::par::for_each(&items, |&(b, t0, nrows)| {
        let nt = nrows * tw;
        let xt_b = &xt[b * g.p_in() * cin..][..g.p_in() * cin];
        // Transformed input: [ξ][tile][ci].
        let mut v = scratch(XI * nt * cin);
        run_input_block(g, xt_b, (t0 * tw, nt, tw), XLayout::Rows, &mut v);
        // Products: [ξ][tile][co].
        let mut prod = scratch(XI * nt * cout);
        for xi in 0..XI {
            let a = &v[xi * nt * cin..][..nt * cin];
            for j in 0..u.panels() {
                let pn = u.panel(j);
                for ci0 in (0..cin).step_by(KC) {
                    let kc = KC.min(cin - ci0);
                    // SAFETY: `prod` holds nt rows of cout floats for ξ; columns
                    // j0 .. j0 + n ≤ cout are written.
                    unsafe {
                        gemm_panel(&Gemm {
                            m: nt,
                            n: pn.n,
                            kc,
                            a: Lhs::Strided(&a[ci0..], cin),
                            b: Rhs::Packed(&pn.data[(xi * cin + ci0) * pn.wpad..], pn.wpad),
                            c: prod.as_mut_ptr().add(xi * nt * cout + pn.j0),
                            c_rs: cout,
                            acc: ci0 > 0,
                        })
                    };
                }
            }
        }
        // Output pixels of the item's tile rows, channels-last, then into y's planes.
        let p0 = t0 * m * g.ow;
        let np = ((t0 + nrows) * m).min(g.oh) * g.ow - p0;
        let mut strip = scratch(np * cout);
        run_output_block(g, &prod, (t0, nrows, tw), &mut strip);
        let base = b * cout * g.p_out() + p0;
        assert!(base + (cout - 1) * g.p_out() + np <= y_len);
        // SAFETY: rows co < cout of image b, pixels p0 .. p0 + np: in bounds (asserted);
        // items write disjoint pixel ranges of y.
        unsafe {
            transpose_raw(
                strip.as_ptr(),
                cout,
                (np, cout),
                yp.get().add(base),
                g.p_out(),
            )
        };
    });
}

/// Tiles per depth block of the weight gradient: the products' depth, one [`KC`].
const WGRAD_TILES: usize = KC;

/// The weight gradient `dW (cout, cin, r, r)` of the convolution `g` (see [`applies`])
/// for input `x` and output gradient `dy`. Each output tile's share of `dW` is the
/// correlation of its 6 × 6 input tile with its `m × m` gradient tile, F(r, m): summed
/// over tiles and batch, 36 products `(cout × tiles) · (tiles × cin)`, then one output
/// transform per (co, ci). Each thread sums its share of the tiles into its own products.
pub(super) fn bwd_weight(g: &Geom, x: &[f32], dy: &[f32]) -> Vec<f32> {
    assert!(
        (g.sh, g.sw, g.kw) == (1, 1, g.kh)
            && matches!(g.kh, 3 | 5)
            && g.cin.is_multiple_of(LANES)
            && g.cout.is_multiple_of(LANES),
        "winograd: unsupported geometry {g:?}"
    );
    let (cin, cout, r) = (g.cin, g.cout, g.kh);
    let m = ALPHA + 1 - r;
    let (th, tw) = (g.oh.div_ceil(m), g.ow.div_ceil(m));
    let tiles = th * tw;
    let xt = to_channels_last(x, g.b, cin, g.p_in());
    let dyt = to_channels_last(dy, g.b, cout, g.p_out());
    // Depth blocks: up to WGRAD_TILES tiles of one image.
    let blocks: Vec<(usize, usize, usize)> = (0..g.b)
        .flat_map(|b| {
            (0..tiles)
                .step_by(WGRAD_TILES)
                .map(move |t0| (b, t0, WGRAD_TILES.min(tiles - t0)))
        })
        .collect();
    if blocks.is_empty() {
        // No tiles: the per-thread sums below would never be written.
        return vec![0.0; cout * cin * r * r];
    }
    let shares = crate::par::threads().min(blocks.len());
    let prod = crate::par::map_reduce(
        shares,
        |s| {
            // Written whole by the share's first block (`acc: false`), added to after.
            let mut prod = crate::buffers::take(XI * cout * cin);
            let mut v = scratch(XI * WGRAD_TILES * cin);
            let mut gt = scratch(XI * WGRAD_TILES * cout);
            let mut gtt = scratch(XI * WGRAD_TILES * cout);
            for (i, &(b, t0, nt)) in blocks.iter().skip(s).step_by(shares).enumerate() {
                let xt_b = &xt[b * g.p_in() * cin..][..g.p_in() * cin];
                let dyt_b = &dyt[b * g.p_out() * cout..][..g.p_out() * cout];
                run_input_block(g, xt_b, (t0, nt, tw), XLayout::Panels, &mut v);
                run_grad_block(g, dyt_b, (t0, nt, tw), &mut gt);
                for xi in 0..XI {
                    let src = &gt[xi * nt * cout..][..nt * cout];
                    let dst = &mut gtt[xi * nt * cout..][..nt * cout];
                    transpose(src, nt, cout, dst);
                    let vx = &v[xi * nt * cin..][..nt * cin];
                    for j0 in (0..cin).step_by(NR) {
                        let n = NR.min(cin - j0);
                        // SAFETY: `prod` holds cout rows of cin floats for ξ; columns
                        // j0 .. j0 + n ≤ cin are written.
                        unsafe {
                            gemm_panel(&Gemm {
                                m: cout,
                                n,
                                kc: nt,
                                a: Lhs::Strided(dst, nt),
                                b: Rhs::Packed(&vx[j0 * nt..][..nt * n], n),
                                c: prod.as_mut_ptr().add(xi * cout * cin + j0),
                                c_rs: cin,
                                acc: i > 0,
                            })
                        };
                    }
                }
            }
            prod
        },
        |mut a, b| {
            for (x, y) in a.iter_mut().zip(b.iter()) {
                *x += y;
            }
            a
        },
    )
    .expect("at least one share");
    let mut dw = vec![0.0f32; cout * cin * r * r];
    crate::par::for_chunks_mut(&mut dw, cin * r * r, |co, d| {
        run_weight_row(g, &prod, co, d)
    });
    dw
}

/// Where [`input_block`] stores the transformed input of tile `ti` of `nt`, channels
/// `c0 .. c0 + 16`, element `ξ`.
#[derive(Clone, Copy)]
enum XLayout {
    /// `[ξ][tile][ci]`: the forward's lhs rows.
    Rows,
    /// `[ξ]` then the packed panels of the `nt × cin` matrix: the weight gradient's rhs.
    Panels,
}

impl XLayout {
    #[inline(always)]
    fn at(self, (xi, ti, c0): (usize, usize, usize), nt: usize, cin: usize) -> usize {
        match self {
            XLayout::Rows => (xi * nt + ti) * cin + c0,
            XLayout::Panels => {
                let j0 = c0 / NR * NR;
                xi * nt * cin + j0 * nt + ti * NR.min(cin - j0) + (c0 - j0)
            }
        }
    }
}

/// Tile `(ty, tx)` of tiles `t0 + ti` (in row-major order, `tw` per row) of one image.
#[inline(always)]
fn tile_at(t0: usize, ti: usize, tw: usize) -> (usize, usize) {
    ((t0 + ti) / tw, (t0 + ti) % tw)
}

/// The transformed input of tiles `t0 .. t0 + nt` (`tw` per row, of output size `m`) of
/// one channels-last image `xt`, into `v` as `layout` says.
#[inline(always)]
fn input_block<const R: usize, const FMA: bool>(
    g: &Geom,
    xt: &[f32],
    (t0, nt, tw): (usize, usize, usize),
    layout: XLayout,
    v: &mut [f32],
) {
    let (cin, m) = (g.cin, ALPHA + 1 - R);
    for ti in 0..nt {
        let (ty, tx) = tile_at(t0, ti, tw);
        // Source pixel of each tile position, or None in the padding.
        let mut src = [None; XI];
        for (k, s) in src.iter_mut().enumerate() {
            let iy = (ty * m + k / ALPHA).checked_sub(g.pt);
            let ix = (tx * m + k % ALPHA).checked_sub(g.pl);
            if let (Some(iy), Some(ix)) = (iy, ix)
                && iy < g.h
                && ix < g.w
            {
                *s = Some((iy * g.w + ix) * cin);
            }
        }
        for c0 in (0..cin).step_by(LANES) {
            let mut d = [&ZERO; XI];
            for (dv, s) in d.iter_mut().zip(&src) {
                if let Some(q) = s {
                    *dv = xt[q + c0..][..LANES].try_into().expect("16 lanes");
                }
            }
            input_tile::<R, FMA>(&d, |xi, o| {
                v[layout.at((xi, ti, c0), nt, cin)..][..LANES].copy_from_slice(o)
            });
        }
    }
}

/// `G' dy G'ᵀ` of the output-gradient tiles `t0 .. t0 + nt` (`M × M` pixels each, zero
/// past the edges) of one channels-last image `dyt`, into `out[ξ][tile][co]`.
#[inline(always)]
fn grad_block<const M: usize, const FMA: bool>(
    g: &Geom,
    dyt: &[f32],
    (t0, nt, tw): (usize, usize, usize),
    out: &mut [f32],
) {
    let cout = g.cout;
    let mut d = [[0.0; LANES]; 25];
    let mut u = [[0.0; LANES]; XI];
    for ti in 0..nt {
        let (ty, tx) = tile_at(t0, ti, tw);
        for c0 in (0..cout).step_by(LANES) {
            for (k, dv) in d[..M * M].iter_mut().enumerate() {
                let (oy, ox) = (ty * M + k / M, tx * M + k % M);
                *dv = if oy < g.oh && ox < g.ow {
                    dyt[(oy * g.ow + ox) * cout + c0..][..LANES]
                        .try_into()
                        .expect("16 lanes")
                } else {
                    [0.0; LANES]
                };
            }
            kernel_tile::<M, FMA>(&d[..M * M], &mut u);
            for (xi, o) in u.iter().enumerate() {
                out[(xi * nt + ti) * cout + c0..][..LANES].copy_from_slice(o);
            }
        }
    }
}

/// `dW[co][ci]` (r × r, `r = 7 − M`) of output channel `co` from the summed products
/// `prod[ξ][co][ci]` (`A'ᵀ M A'` of F(r, M)), into `dw_co` (`cin · r²` floats).
#[inline(always)]
fn weight_row<const M: usize, const FMA: bool>(
    g: &Geom,
    prod: &[f32],
    co: usize,
    dw_co: &mut [f32],
) {
    let (cin, cout, r) = (g.cin, g.cout, ALPHA + 1 - M);
    let mut mm = [[0.0; LANES]; XI];
    let mut out = [[0.0; LANES]; 25];
    for c0 in (0..cin).step_by(LANES) {
        for (xi, mv) in mm.iter_mut().enumerate() {
            *mv = prod[(xi * cout + co) * cin + c0..][..LANES]
                .try_into()
                .expect("16 lanes");
        }
        output_tile::<M, FMA>(&mm, &mut out);
        for (t, o) in out[..r * r].iter().enumerate() {
            for (l, &v) in o.iter().enumerate() {
                dw_co[(c0 + l) * r * r + t] = v;
            }
        }
    }
}

/// The output pixels of tile rows `t0 .. t0 + nrows` from their transformed products
/// `prod[ξ][tile][co]`, channels-last into `strip` (pixels from the first row's start).
#[inline(always)]
fn output_block<const R: usize, const FMA: bool>(
    g: &Geom,
    prod: &[f32],
    (t0, nrows, tw): (usize, usize, usize),
    strip: &mut [f32],
) {
    let (cout, m) = (g.cout, ALPHA + 1 - R);
    let nt = nrows * tw;
    let mut mm = [[0.0; LANES]; XI];
    let mut out = [[0.0; LANES]; 25];
    for ti in 0..nt {
        let (ty, tx) = (ti / tw, ti % tw);
        for c0 in (0..cout).step_by(LANES) {
            for (xi, mv) in mm.iter_mut().enumerate() {
                *mv = prod[(xi * nt + ti) * cout + c0..][..LANES]
                    .try_into()
                    .expect("16 lanes");
            }
            output_tile::<R, FMA>(&mm, &mut out);
            for p in 0..m {
                let oy = (t0 + ty) * m + p;
                if oy >= g.oh {
                    break;
                }
                for q in 0..m {
                    let ox = tx * m + q;
                    if ox >= g.ow {
                        break;
                    }
                    let px = (ty * m + p) * g.ow + ox;
                    strip[px * cout + c0..][..LANES].copy_from_slice(&out[p * m + q]);
                }
            }
        }
    }
}
