use super::*;

fn values(len: usize, seed: u64) -> Vec<f32> {
    let mut state = seed;
    (0..len)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 33) as f32 / (1u64 << 31) as f32) - 0.5
        })
        .collect()
}

/// The naive triple loop, in f64.
#[allow(clippy::too_many_arguments)]
fn naive(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    dst_rs: usize,
    acc: bool,
    lhs: &[f32],
    lhs_rs: usize,
    rhs: &[f32],
) {
    for i in 0..m {
        for j in 0..n {
            let mut s = if acc { dst[i * dst_rs + j] as f64 } else { 0.0 };
            for p in 0..k {
                s += lhs[i * lhs_rs + p] as f64 * rhs[p * n + j] as f64;
            }
            dst[i * dst_rs + j] = s as f32;
        }
    }
}

fn check(m: usize, n: usize, k: usize, acc: bool, pad: usize) {
    let (lhs_rs, dst_rs) = (k + pad, n + 2 * pad);
    let mut lhs = values(m * lhs_rs, 1 + (m * 31 + n * 7 + k) as u64);
    let rhs = values(k * n, 2 + (m + n * 13 + k * 5) as u64);
    // NaN in the padding columns of lhs would leak into any result that read them;
    // NaN in dst checks that `accumulate = false` never reads it, and the padding
    // columns of dst must come back untouched.
    for (idx, x) in lhs.iter_mut().enumerate() {
        if idx % lhs_rs >= k {
            *x = f32::NAN;
        }
    }
    let mut init = values(m * dst_rs, 3);
    for (idx, x) in init.iter_mut().enumerate() {
        if idx % dst_rs >= n {
            *x = 7.0;
        } else if !acc {
            *x = f32::NAN;
        }
    }
    let mut expected = init.clone();
    naive(m, n, k, &mut expected, dst_rs, acc, &lhs, lhs_rs, &rhs);
    let packed = PackedRhs::pack(k, n, &rhs, n, 1);
    assert_eq!((packed.k(), packed.n()), (k, n));
    // Packed or row-major rhs, through the dispatch (AVX-512 where there is one) or
    // through the portable path directly.
    for (use_packed, portable) in [(false, false), (true, false), (false, true), (true, true)] {
        let mut got = init.clone();
        let view = if use_packed {
            packed.view()
        } else {
            Rhs {
                ptr: rhs.as_ptr(),
                k,
                n,
                packed: false,
            }
        };
        let (d, l) = (got.as_mut_ptr(), lhs.as_ptr());
        // SAFETY: the buffers are sized for the shapes and strides; dst is separate.
        unsafe {
            match (use_packed, portable) {
                (_, true) => run_portable(m, d, dst_rs, acc, l, lhs_rs, view),
                (true, false) => gemm_packed(m, d, dst_rs, acc, l, lhs_rs, &packed),
                (false, false) => {
                    gemm_rowmajor_acc(m, n, k, d, dst_rs, acc, l, lhs_rs, rhs.as_ptr())
                }
            }
        }
        for (idx, (g, e)) in got.iter().zip(&expected).enumerate() {
            let tol = 1e-5 * (1.0 + k as f32).sqrt();
            assert!(
                (g - e).abs() <= tol,
                "m={m} n={n} k={k} acc={acc} pad={pad} packed={use_packed} portable={portable}: [{}][{}] {g} vs {e}",
                idx / dst_rs,
                idx % dst_rs
            );
        }
    }
}

#[test]
fn matches_the_naive_product_for_awkward_shapes() {
    for m in [1, 3, 5, 64] {
        for n in [16, 48, 64, 80, 512] {
            for k in [1, 7, 128, 300] {
                for acc in [false, true] {
                    for pad in [0, 3] {
                        check(m, n, k, acc, pad);
                    }
                }
            }
        }
    }
}

#[test]
fn odd_widths_take_the_portable_path() {
    for (m, n, k) in [(3, 5, 4), (5, 70, 9), (2, 1, 1)] {
        for acc in [false, true] {
            check(m, n, k, acc, 2);
        }
    }
}

#[test]
fn empty_shapes() {
    check(4, 32, 0, false, 1);
    check(4, 32, 0, true, 1);
    check(0, 32, 5, true, 0);
}

/// [`gemm_strided_lhs`] against the naive loop, for an lhs stored transposed
/// (`lhs_rs = 1`, as in the LSTM weight gradient) or with both strides non-unit, and
/// an rhs with padded rows.
fn check_strided(m: usize, n: usize, k: usize, acc: bool, transposed: bool) {
    // Element (i, kk) of the lhs: transposed, a k × (m + 3) row-major matrix; else an
    // m × k matrix with rows 2k + 5 apart and every other column skipped.
    let (lhs_rs, lhs_cs) = if transposed {
        (1, m + 3)
    } else {
        (2 * k + 5, 2)
    };
    let lhs_len = (m.max(1) - 1) * lhs_rs + (k.max(1) - 1) * lhs_cs + 1;
    let mut lhs = vec![f32::NAN; lhs_len];
    let vals = values(m * k, 5 + (m * 3 + n + k * 11) as u64);
    let mut dense = vec![0.0; m * k];
    for i in 0..m {
        for p in 0..k {
            lhs[i * lhs_rs + p * lhs_cs] = vals[i * k + p];
            dense[i * k + p] = vals[i * k + p];
        }
    }
    // Rows of n values, 4 apart padded with NaN.
    let rhs_rs = n + 4;
    let rvals = values(k * n, 6 + (m + n * 17 + k) as u64);
    let mut rhs = vec![f32::NAN; k * rhs_rs];
    for p in 0..k {
        rhs[p * rhs_rs..][..n].copy_from_slice(&rvals[p * n..(p + 1) * n]);
    }
    let dst_rs = n + 1;
    let mut init = values(m * dst_rs, 4);
    for (idx, x) in init.iter_mut().enumerate() {
        if idx % dst_rs >= n {
            *x = 7.0;
        } else if !acc {
            *x = f32::NAN;
        }
    }
    let mut expected = init.clone();
    naive(m, n, k, &mut expected, dst_rs, acc, &dense, k, &rvals);
    let mut got = init.clone();
    // SAFETY: the buffers are sized for the shapes and strides; dst is separate.
    unsafe {
        gemm_strided_lhs(
            (m, n, k),
            got.as_mut_ptr(),
            dst_rs,
            acc,
            (lhs.as_ptr(), lhs_rs, lhs_cs),
            (rhs.as_ptr(), rhs_rs),
        )
    };
    for (idx, (g, e)) in got.iter().zip(&expected).enumerate() {
        let tol = 1e-5 * (1.0 + k as f32).sqrt();
        assert!(
            (g - e).abs() <= tol,
            "m={m} n={n} k={k} acc={acc} transposed={transposed}: [{}][{}] {g} vs {e}",
            idx / dst_rs,
            idx % dst_rs
        );
    }
}

#[test]
fn strided_lhs_matches_the_naive_product() {
    // m around multiples of MR, n one or several panels (the last one partial) or not
    // a multiple of 16 (the `gemm` path), k within one block, on a block boundary and
    // a few blocks with a short last one.
    for m in [1, 5, 6, 13, 64] {
        for n in [16, 80, 128, 20] {
            for k in [1, 9, KC, 2 * KC + 3, 700] {
                for acc in [false, true] {
                    for transposed in [true, false] {
                        check_strided(m, n, k, acc, transposed);
                    }
                }
            }
        }
    }
    // The LSTM weight-gradient shape (4H × H, k = rows · T) at H = 32.
    check_strided(128, 32, 7 * 13, false, true);
    check_strided(0, 16, 5, true, true);
    check_strided(3, 16, 0, false, true);
    check_strided(3, 16, 0, true, false);
}

#[test]
fn packing_a_transpose() {
    // A 3 × 70 matrix packed as its 70 × 3 transpose.
    let src = values(3 * 70, 9);
    let p = PackedRhs::pack(70, 3, &src, 1, 70);
    // One panel (n = 3 < 64): rows of 3 contiguous floats.
    for r in 0..70 {
        for c in 0..3 {
            assert_eq!(p.data[r * 3 + c], src[c * 70 + r]);
        }
    }
    // Two panels (64 + 6 columns) of the 3 × 70 matrix itself.
    let p = PackedRhs::pack(3, 70, &src, 70, 1);
    assert_eq!(p.data[64 + 1], src[70 + 1]);
    assert_eq!(p.data[3 * 64 + 6 + 2], src[70 + 64 + 2]);
}
