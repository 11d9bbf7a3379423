use super::*;

fn values(len: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(17);
    (0..len)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 33) as f32 / (1u64 << 31) as f32) - 0.5
        })
        .collect()
}

#[test]
fn transposes_of_ragged_shapes() {
    for rows in [1, 5, 16, 17, 33, 48] {
        for cols in [1, 3, 16, 31, 64] {
            let src = values(rows * cols, (rows * 64 + cols) as u64);
            let mut dst = vec![f32::NAN; rows * cols];
            transpose(&src, rows, cols, &mut dst);
            for i in 0..rows {
                for j in 0..cols {
                    assert_eq!(
                        dst[j * rows + i],
                        src[i * cols + j],
                        "{rows}x{cols} [{i}][{j}]"
                    );
                }
            }
        }
    }
}

/// The kernel (AVX-512 where present, and the portable one) against a naive product,
/// for every tile shape, masked widths, row strides wider than `kc` and accumulation
/// over a NaN-free but nonzero `c`; columns past `n` must stay untouched.
#[test]
fn kernel_matches_the_naive_product() {
    for m in [1, 5, 6, 7, 13] {
        for n in [1usize, 3, 16, 17, 40, 64] {
            for kc in [0, 1, 9, 130] {
                for acc in [false, true] {
                    let wpad = n.next_multiple_of(16);
                    let a_rs = kc + 3;
                    let a = values(m * a_rs, (m * 100 + n * 7 + kc) as u64);
                    let b = values(kc.max(1) * wpad, (m + n * 11 + kc * 5) as u64);
                    let c_rs = n + 5;
                    let init = values(m * c_rs, 99);
                    let mut want = init.clone();
                    for i in 0..m {
                        for j in 0..n {
                            let s: f64 = (0..kc)
                                .map(|p| a[i * a_rs + p] as f64 * b[p * wpad + j] as f64)
                                .sum();
                            let old = if acc { init[i * c_rs + j] as f64 } else { 0.0 };
                            want[i * c_rs + j] = (old + s) as f32;
                        }
                    }
                    for portable in [false, true] {
                        let mut c = init.clone();
                        let gm = Gemm {
                            m,
                            n,
                            kc,
                            a: Lhs::Strided(&a, a_rs),
                            b: Rhs::Packed(&b, wpad),
                            c: c.as_mut_ptr(),
                            c_rs,
                            acc,
                        };
                        // SAFETY: c holds m rows of c_rs ≥ n floats.
                        unsafe {
                            if portable {
                                gemm_portable(&gm)
                            } else {
                                gemm_panel(&gm)
                            }
                        };
                        for (idx, (g, e)) in c.iter().zip(&want).enumerate() {
                            assert!(
                                (g - e).abs() <= 1e-5 * (1.0 + kc as f32).sqrt(),
                                "m={m} n={n} kc={kc} acc={acc} portable={portable} [{idx}]: {g} vs {e}"
                            );
                        }
                    }
                }
            }
        }
    }
}
