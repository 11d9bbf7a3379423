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
