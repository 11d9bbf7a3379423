use super::*;
use candle_core::{Device, Var};

use super::backward::dots;

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

fn random(shape: (usize, usize, usize, usize), seed: u64) -> Tensor {
    let n = shape.0 * shape.1 * shape.2 * shape.3;
    Tensor::from_vec(values(n, seed), shape, &Device::Cpu).unwrap()
}

fn to_f64(t: &Tensor) -> Vec<f64> {
    t.flatten_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// Visits every (input, weight, output) index triple of the convolution `g`, straight
/// from the formula in [`Geom`]'s documentation: the reference for all three products.
fn each_term(g: &Geom, mut f: impl FnMut(usize, usize, usize)) {
    for b in 0..g.b {
        for co in 0..g.cout {
            for oy in 0..g.oh {
                for ox in 0..g.ow {
                    let yi = ((b * g.cout + co) * g.oh + oy) * g.ow + ox;
                    for ci in 0..g.cin {
                        for a in 0..g.kh {
                            for c in 0..g.kw {
                                let iy = (oy * g.sh + a) as isize - g.pt as isize;
                                let ix = (ox * g.sw + c) as isize - g.pl as isize;
                                if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize {
                                    continue;
                                }
                                let xi = ((b * g.cin + ci) * g.h + iy as usize) * g.w + ix as usize;
                                let wi = ((co * g.cin + ci) * g.kh + a) * g.kw + c;
                                f(xi, wi, yi);
                            }
                        }
                    }
                }
            }
        }
    }
}

fn direct_fwd(g: &Geom, x: &[f64], w: &[f64]) -> Vec<f64> {
    let mut y = vec![0.0; g.b * g.cout * g.p_out()];
    each_term(g, |xi, wi, yi| y[yi] += x[xi] * w[wi]);
    y
}

fn direct_data(g: &Geom, dy: &[f64], w: &[f64]) -> Vec<f64> {
    let mut dx = vec![0.0; g.b * g.cin * g.p_in()];
    each_term(g, |xi, wi, yi| dx[xi] += dy[yi] * w[wi]);
    dx
}

fn direct_weight(g: &Geom, x: &[f64], dy: &[f64]) -> Vec<f64> {
    let mut dw = vec![0.0; g.cout * g.k()];
    each_term(g, |xi, wi, yi| dw[wi] += x[xi] * dy[yi]);
    dw
}

/// Largest difference, asserted below `tol · (1 + largest |reference|)`.
fn assert_close(got: &[f64], want: &[f64], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let scale = 1.0 + want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let (i, d) = got
        .iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .enumerate()
        .fold(
            (0, 0.0),
            |(bi, bd), (i, d)| if d > bd { (i, d) } else { (bi, bd) },
        );
    assert!(
        d <= tol * scale,
        "{what}: [{i}] {} vs {} (diff {d:e}, scale {scale})",
        got[i],
        want[i]
    );
    // A kernel that wrote nothing would pass a loose comparison with a zero reference.
    assert!(
        want.iter().any(|v| v.abs() > 1e-3),
        "{what}: degenerate reference"
    );
}

/// `(b, cin, cout, h, w, kh, kw, stride, padding)`: odd sizes, both strides, paddings 0
/// to 3 (asymmetric too), 1×7 / 7×1 kernels. Between them they take every path: the
/// shifted-planes forward (few input or output channels, stride 1 and 2) and the
/// channels-last one (128 input channels, and the 70-channel gather below); several
/// panels, masked panel tails and k-blocks; data gradients by gather (stride 1) and
/// scatter (whole images, and channel-block items at 128 channels); weight gradients by
/// dot products (few output channels, one input channel) and by product, one with
/// several items per image; and the pointwise product of 1×1 kernels.
type ConvCase = (
    usize,
    usize,
    usize,
    usize,
    usize,
    usize,
    usize,
    (usize, usize),
    [usize; 4],
);
const CONV_CASES: &[ConvCase] = &[
    (1, 1, 1, 7, 9, 3, 3, (1, 1), [1, 1, 1, 1]),
    (3, 5, 4, 7, 9, 3, 3, (2, 2), [1, 1, 1, 1]),
    (3, 5, 20, 7, 9, 4, 4, (2, 2), [0, 1, 0, 1]),
    (1, 5, 17, 9, 7, 5, 5, (1, 1), [2, 2, 2, 2]),
    (3, 1, 32, 7, 9, 7, 7, (1, 1), [3, 3, 3, 3]),
    (1, 5, 16, 7, 9, 1, 7, (1, 1), [0, 0, 3, 3]),
    (3, 5, 16, 7, 9, 7, 1, (1, 1), [3, 3, 0, 0]),
    (1, 5, 3, 9, 7, 1, 1, (1, 1), [0, 0, 0, 0]),
    (3, 5, 24, 7, 9, 3, 3, (1, 1), [3, 3, 3, 3]),
    (3, 5, 2, 9, 7, 5, 5, (2, 2), [2, 2, 2, 2]),
    (1, 5, 6, 7, 9, 3, 3, (1, 1), [0, 1, 0, 1]),
    (2, 128, 20, 5, 6, 3, 3, (2, 2), [1, 0, 1, 0]),
    (2, 20, 70, 20, 17, 3, 3, (1, 1), [1, 1, 1, 1]),
    (1, 3, 520, 20, 17, 3, 3, (1, 1), [1, 1, 1, 1]),
    (2, 32, 64, 28, 28, 3, 3, (2, 2), [0, 1, 0, 1]),
    // 1×1 at stride 1 (the pointwise product, forward and data gradient): a panel
    // and a ragged tail over 143 pixels, depth over a k-block, one short panel,
    // and few channels.
    (2, 150, 70, 13, 11, 1, 1, (1, 1), [0, 0, 0, 0]),
    (1, 200, 40, 5, 7, 1, 1, (1, 1), [0, 0, 0, 0]),
    (3, 20, 7, 9, 9, 1, 1, (1, 1), [0, 0, 0, 0]),
    // Channels-last both ways with two kernel panels, the second ragged.
    (2, 70, 80, 6, 5, 3, 3, (1, 1), [1, 1, 1, 1]),
    // Winograd both ways (forward and the flipped data gradient): 5×5 always, 3×3
    // where the kernel is trained (the gradient tests); partial tiles, asymmetric
    // padding, a depth block and a ragged panel.
    (1, 64, 64, 7, 9, 5, 5, (1, 1), [2, 2, 2, 2]),
    (2, 144, 80, 6, 5, 5, 5, (1, 1), [0, 3, 1, 2]),
    (2, 80, 144, 6, 5, 3, 3, (1, 1), [0, 1, 1, 0]),
];

/// Unequal strides, which candle cannot run: checked against the direct loop only.
const UNEQUAL_STRIDES: &[ConvCase] = &[
    (1, 5, 16, 8, 9, 3, 3, (1, 2), [1, 1, 1, 1]),
    (2, 3, 5, 9, 8, 4, 3, (2, 1), [0, 1, 2, 0]),
];

/// `(b, cin, cout, h, w, k, stride, padding, output_padding)`.
type ConvTCase = (
    usize,
    usize,
    usize,
    usize,
    usize,
    usize,
    usize,
    usize,
    usize,
);
const CONVT_CASES: &[ConvTCase] = &[
    (1, 1, 1, 7, 9, 3, 2, 1, 0),
    (3, 5, 4, 7, 9, 3, 2, 1, 1),
    (3, 5, 20, 7, 9, 4, 2, 1, 0),
    (2, 5, 17, 7, 9, 4, 2, 1, 1),
    (2, 16, 128, 4, 5, 4, 2, 1, 0),
    (1, 5, 3, 7, 9, 3, 1, 0, 0),
    (1, 5, 20, 7, 9, 3, 1, 1, 0),
    (1, 3, 5, 4, 4, 3, 2, 0, 1),
    (2, 64, 32, 14, 14, 3, 2, 1, 1),
];

fn conv_setup(case: &ConvCase, seed: u64) -> (Tensor, Tensor, Conv2dParams) {
    let &(b, cin, cout, h, w, kh, kw, stride, padding) = case;
    (
        random((b, cin, h, w), seed),
        random((cout, cin, kh, kw), seed + 1),
        Conv2dParams { stride, padding },
    )
}

fn convt_setup(case: &ConvTCase, seed: u64) -> (Tensor, Tensor, ConvTranspose2dParams) {
    let &(b, cin, cout, h, w, k, stride, padding, output_padding) = case;
    (
        random((b, cin, h, w), seed),
        random((cin, cout, k, k), seed + 1),
        ConvTranspose2dParams {
            stride,
            padding,
            output_padding,
        },
    )
}

/// f32 sums over `k` terms of magnitude ≤ 1/4.
fn tol(k: usize) -> f64 {
    2e-6 * (k as f64).sqrt().max(1.0)
}

#[test]
fn conv2d_forward_matches_candle_and_the_direct_loop() -> Result<()> {
    for (i, case) in CONV_CASES.iter().chain(UNEQUAL_STRIDES).enumerate() {
        let (x, w, p) = conv_setup(case, 10 + i as u64);
        let g = conv2d_geom(x.dims4()?, w.dims4()?, p)?;
        let ours = conv2d(&x, &w, p)?;
        assert_eq!(ours.dims4()?, (g.b, g.cout, g.oh, g.ow), "{case:?}");
        let direct = direct_fwd(&g, &to_f64(&x), &to_f64(&w));
        assert_close(
            &to_f64(&ours),
            &direct,
            tol(g.k()),
            &format!("{case:?} direct"),
        );
        if p.stride.0 == p.stride.1 {
            let candle = conv2d_candle(&x.to_dtype(DType::F64)?, &w.to_dtype(DType::F64)?, p)?;
            assert_eq!(candle.dims4()?, ours.dims4()?);
            assert_close(
                &to_f64(&ours),
                &to_f64(&candle),
                tol(g.k()),
                &format!("{case:?} candle"),
            );
        }
    }
    Ok(())
}

fn max_diff(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).fold(0.0, |m, (x, y)| m.max((x - y).abs()))
}

/// The Winograd forward and weight gradient against the direct sums, both kernel
/// sizes: sizes that end in partial tiles, paddings 0–3 (asymmetric too), batch 1, and
/// channels across a depth block with a ragged last panel. Their error stays within
/// the direct f32 sum's bound (printed: the figures quoted in `winograd`'s docs).
#[test]
fn winograd_forward_matches_the_direct_sum() -> Result<()> {
    let cases: &[ConvCase] = &[
        (1, 16, 16, 7, 9, 5, 5, (1, 1), [2, 2, 2, 2]),
        (2, 32, 16, 8, 8, 5, 5, (1, 1), [0, 3, 1, 2]),
        (1, 16, 32, 5, 6, 3, 3, (1, 1), [1, 1, 1, 1]),
        (2, 16, 16, 11, 4, 3, 3, (1, 1), [0, 0, 2, 3]),
        (1, 144, 80, 9, 10, 5, 5, (1, 1), [2, 2, 2, 2]),
        (1, 144, 80, 9, 10, 3, 3, (1, 1), [1, 1, 1, 1]),
        // 144 tiles: two depth blocks of the weight gradient, the second partial.
        (1, 16, 16, 24, 23, 5, 5, (1, 1), [2, 2, 2, 2]),
        // More depth blocks (one per image) than threads: each thread's sum is
        // written by its first block and added to by the others.
        (9, 16, 16, 6, 5, 3, 3, (1, 1), [1, 1, 1, 1]),
    ];
    for (i, case) in cases.iter().enumerate() {
        let (x, w, p) = conv_setup(case, 200 + i as u64);
        let g = conv2d_geom(x.dims4()?, w.dims4()?, p)?;
        let xv = x.flatten_all()?.to_vec1::<f32>()?;
        let wv = w.flatten_all()?.to_vec1::<f32>()?;
        let len = g.b * g.cout * g.p_out();
        let mut y = Vec::with_capacity(len);
        let u = winograd::transform_kernel(&g, &wv);
        winograd::fwd(&g, &xv, &u, &mut y.spare_capacity_mut()[..len]);
        // SAFETY: the forward writes every element.
        unsafe { y.set_len(len) };
        let got: Vec<f64> = y.iter().map(|&v| f64::from(v)).collect();
        let direct = direct_fwd(&g, &to_f64(&x), &to_f64(&w));
        eprintln!("{case:?}: max error {:e}", max_diff(&got, &direct));
        assert_close(&got, &direct, tol(g.k()), &format!("{case:?}"));
        // The weight gradient for some output gradient.
        let r = random((g.b, g.cout, g.oh, g.ow), 300 + i as u64);
        let dw = winograd::bwd_weight(&g, &xv, &r.flatten_all()?.to_vec1::<f32>()?);
        let got: Vec<f64> = dw.iter().map(|&v| f64::from(v)).collect();
        let direct = direct_weight(&g, &to_f64(&x), &to_f64(&r));
        eprintln!(
            "{case:?}: max weight-gradient error {:e}",
            max_diff(&got, &direct)
        );
        assert_close(
            &got,
            &direct,
            tol(g.b * g.p_out()),
            &format!("{case:?} weight gradient"),
        );
    }
    Ok(())
}

/// Which forwards take Winograd's transform: stride-1 5×5 kernels always, 3×3 ones
/// while trained or over enough tiles, and only between ≥ 64 channels in whole
/// registers.
#[test]
fn winograd_is_chosen_where_it_pays() -> Result<()> {
    let geom = |cin, cout, k, s| {
        conv2d_geom(
            (2, cin, 16, 16),
            (cout, cin, k, k),
            Conv2dParams {
                stride: (s, s),
                padding: [k / 2; 4],
            },
        )
    };
    assert!(winograd::applies(&geom(256, 256, 5, 1)?, false));
    assert!(winograd::applies(&geom(128, 256, 5, 1)?, true));
    assert!(winograd::applies(&geom(64, 64, 3, 1)?, false));
    // Frozen 3×3: only with at least 64 tiles (2 images of 4 × 4 tiles here).
    assert!(!winograd::applies(&geom(64, 64, 3, 1)?, true));
    let big = conv2d_geom((2, 64, 32, 32), (64, 64, 3, 3), Conv2dParams::same(3))?;
    assert!(winograd::applies(&big, true));
    assert!(!winograd::applies(&geom(256, 256, 5, 2)?, false));
    assert!(!winograd::applies(&geom(32, 64, 3, 1)?, false));
    assert!(!winograd::applies(&geom(64, 72, 5, 1)?, false));
    assert!(!winograd::applies(&geom(64, 64, 7, 1)?, false));
    Ok(())
}

#[test]
fn conv_transpose2d_forward_matches_candle_and_the_direct_loop() -> Result<()> {
    for (i, case) in CONVT_CASES.iter().enumerate() {
        let (x, w, p) = convt_setup(case, 40 + i as u64);
        let ours = conv_transpose2d(&x, &w, p)?;
        let candle =
            conv_transpose2d_candle(&x.to_dtype(DType::F64)?, &w.to_dtype(DType::F64)?, p)?;
        assert_eq!(ours.dims4()?, candle.dims4()?, "{case:?}");
        let g = conv_transpose2d_geom(x.dims4()?, w.dims4()?, p)?;
        let terms = g.cout * g.taps();
        assert_close(
            &to_f64(&ours),
            &to_f64(&candle),
            tol(terms),
            &format!("{case:?} candle"),
        );
        let direct = direct_data(&g, &to_f64(&x), &to_f64(&w));
        assert_close(
            &to_f64(&ours),
            &direct,
            tol(terms),
            &format!("{case:?} direct"),
        );
    }
    Ok(())
}

/// Gradients of `Σ f(x, w) · r` for both arguments, from our op and from candle's (in
/// f64) on the same values.
fn grads_of(
    f: &dyn Fn(&Tensor, &Tensor) -> Result<Tensor>,
    x: &Tensor,
    w: &Tensor,
    seed: u64,
) -> Result<(Vec<f64>, Vec<f64>)> {
    let (xv, wv) = (Var::from_tensor(x)?, Var::from_tensor(w)?);
    let y = f(xv.as_tensor(), wv.as_tensor())?;
    let r = random(y.dims4()?, seed).to_dtype(y.dtype())?;
    let grads = (y * r)?.sum_all()?.backward()?;
    Ok((
        to_f64(grads.get(xv.as_tensor()).expect("input gradient")),
        to_f64(grads.get(wv.as_tensor()).expect("weight gradient")),
    ))
}

/// Output and input gradient of `conv2d(x, w)` with `w` frozen (the product under
/// test) and, for reference, candle's forward and autograd input gradient.
fn frozen_vs_candle(x: &Tensor, w: &Tensor, p: Conv2dParams) -> Result<[Vec<f64>; 4]> {
    // candle's own conv2d backward fills in the kernel's gradient regardless.
    let run = |f: &dyn Fn(&Tensor, &Tensor, Conv2dParams) -> Result<Tensor>, ours: bool| {
        let xv = Var::from_tensor(x)?;
        let y = f(xv.as_tensor(), w, p)?;
        let r = random(y.dims4()?, 9);
        let grads = (&y * r)?.sum_all()?.backward()?;
        let dx = to_f64(grads.get(xv.as_tensor()).expect("input gradient"));
        assert!(
            !ours || grads.get(w).is_none(),
            "a frozen kernel got a gradient"
        );
        Result::Ok((to_f64(&y), dx))
    };
    let (y, dx) = run(&conv2d, true)?;
    let (y_want, dx_want) = run(&conv2d_candle, false)?;
    Ok([y, y_want, dx, dx_want])
}

/// Frozen kernels on the channels-last path come from [`PACKED`] after the first
/// call: repeated calls give bit-identical results, kernels of the same shape are not
/// mixed up, and a detached `Var` whose storage `set` rewrote is packed anew.
#[test]
fn frozen_kernels_are_cached_without_confusion() -> Result<()> {
    let p = Conv2dParams::same(3);
    for (i, &(b, cin, cout, h, w)) in [
        (1, 65, 70, 7, 9),
        (2, 130, 97, 5, 11),
        (1, 96, 129, 9, 4),
        (2, 67, 64, 3, 13),
        // Winograd's transformed kernel, cached (72 tiles).
        (2, 64, 80, 24, 23),
    ]
    .iter()
    .enumerate()
    {
        let seed = 100 + 10 * i as u64;
        let x = random((b, cin, h, w), seed);
        let w1 = random((cout, cin, 3, 3), seed + 1);
        let w2 = random((cout, cin, 3, 3), seed + 2);
        let t = tol(9 * cin.max(cout));
        let mut first = None;
        for (j, wt) in [&w1, &w2, &w1, &w1].into_iter().enumerate() {
            let [y, y_want, dx, dx_want] = frozen_vs_candle(&x, wt, p)?;
            let what = format!("{:?} call {j}", (b, cin, cout, h, w));
            assert_close(&y, &y_want, t, &format!("{what} y"));
            assert_close(&dx, &dx_want, t, &format!("{what} dx"));
            if j == 0 {
                first = Some((y, dx));
            } else if j >= 2 {
                assert!(first.as_ref() == Some(&(y, dx)), "{what}: not identical");
            }
        }
        let v = Var::from_tensor(&w1)?;
        let d = v.as_tensor().detach();
        // Rewritten in place between calls: the cached form (from the second call) must
        // not serve the third.
        for wt in [&w1, &w2, &w1, &w2] {
            v.set(wt)?;
            let [y, y_want, dx, dx_want] = frozen_vs_candle(&x, &d, p)?;
            assert_close(&y, &y_want, t, "detached var y");
            assert_close(&dx, &dx_want, t, "detached var dx");
        }
    }
    Ok(())
}

/// One frozen 3×3 kernel at map sizes on both sides of Winograd's tile threshold, in
/// an order that caches each form first (as DeepDream's octaves or a new batch size
/// do): each call finds its own packed form, never the other one.
#[test]
fn frozen_kernels_keep_their_two_packed_forms_apart() -> Result<()> {
    let p = Conv2dParams::same(3);
    let w = random((80, 96, 3, 3), 400);
    let small = random((1, 96, 6, 7), 401);
    let large = random((2, 96, 24, 23), 402);
    let (gs, gl) = (
        conv2d_geom(small.dims4()?, w.dims4()?, p)?,
        conv2d_geom(large.dims4()?, w.dims4()?, p)?,
    );
    assert!(!winograd::applies(&gs, true) && gs.is_channels_last());
    assert!(winograd::applies(&gl, true));
    for x in [&small, &small, &large, &large, &small, &large] {
        let [y, y_want, dx, dx_want] = frozen_vs_candle(x, &w, p)?;
        let t = tol(9 * 96);
        assert_close(&y, &y_want, t, &format!("{:?} y", x.dims()));
        assert_close(&dx, &dx_want, t, &format!("{:?} dx", x.dims()));
    }
    Ok(())
}

/// Against the direct loop always, and against candle's autograd where it runs: its
/// conv2d backward fails when the two axes need different output padding in its
/// transposed convolution (stride 2 over a 10 × 9 padded input, say).
#[test]
fn gradients_match_candle_autograd_and_the_direct_loop() -> Result<()> {
    let mut candle_checked = 0;
    for (i, case) in CONV_CASES.iter().enumerate() {
        let (x, w, p) = conv_setup(case, 70 + i as u64);
        let g = conv2d_geom(x.dims4()?, w.dims4()?, p)?;
        let (dx, dw) = grads_of(&|x, w| conv2d(x, w, p), &x, &w, 5)?;
        let t = tol(g.cout * g.taps() + g.b * g.p_out());
        let r = to_f64(&random((g.b, g.cout, g.oh, g.ow), 5));
        let (x64, w64) = (to_f64(&x), to_f64(&w));
        assert_close(&dx, &direct_data(&g, &r, &w64), t, &format!("{case:?} dx"));
        assert_close(
            &dw,
            &direct_weight(&g, &x64, &r),
            t,
            &format!("{case:?} dw"),
        );
        let (x64, w64) = (x.to_dtype(DType::F64)?, w.to_dtype(DType::F64)?);
        if let Ok((rdx, rdw)) = grads_of(&|x, w| conv2d_candle(x, w, p), &x64, &w64, 5) {
            assert_close(&dx, &rdx, t, &format!("{case:?} dx vs candle"));
            assert_close(&dw, &rdw, t, &format!("{case:?} dw vs candle"));
            candle_checked += 1;
        }
    }
    assert!(
        candle_checked >= CONV_CASES.len() - 3,
        "candle ran {candle_checked} cases"
    );
    for (i, case) in CONVT_CASES.iter().enumerate() {
        let (x, w, p) = convt_setup(case, 90 + i as u64);
        let g = conv_transpose2d_geom(x.dims4()?, w.dims4()?, p)?;
        let (dx, dw) = grads_of(&|x, w| conv_transpose2d(x, w, p), &x, &w, 6)?;
        let t = tol(g.k() + g.b * g.p_in());
        let r = to_f64(&random((g.b, g.cin, g.h, g.w), 6));
        let (x64, w64) = (to_f64(&x), to_f64(&w));
        assert_close(&dx, &direct_fwd(&g, &r, &w64), t, &format!("{case:?} dx"));
        assert_close(
            &dw,
            &direct_weight(&g, &r, &x64),
            t,
            &format!("{case:?} dw"),
        );
        let (x64, w64) = (x.to_dtype(DType::F64)?, w.to_dtype(DType::F64)?);
        let (rdx, rdw) = grads_of(&|x, w| conv_transpose2d_candle(x, w, p), &x64, &w64, 6)?;
        assert_close(&dx, &rdx, t, &format!("{case:?} dx vs candle"));
        assert_close(&dw, &rdw, t, &format!("{case:?} dw vs candle"));
    }
    Ok(())
}

#[test]
fn backward_products_match_the_direct_loop_for_unequal_strides() -> Result<()> {
    for (i, case) in UNEQUAL_STRIDES.iter().enumerate() {
        let (x, w, p) = conv_setup(case, 110 + i as u64);
        let g = conv2d_geom(x.dims4()?, w.dims4()?, p)?;
        let (dx, dw) = grads_of(&|x, w| conv2d(x, w, p), &x, &w, 7)?;
        let r = to_f64(&random((g.b, g.cout, g.oh, g.ow), 7));
        let (x64, w64) = (to_f64(&x), to_f64(&w));
        assert_close(
            &dx,
            &direct_data(&g, &r, &w64),
            tol(g.k()),
            &format!("{case:?} dx"),
        );
        assert_close(
            &dw,
            &direct_weight(&g, &x64, &r),
            tol(g.b * g.p_out()),
            &format!("{case:?} dw"),
        );
    }
    Ok(())
}

/// Central differences of `L = Σ f(x, w) · r`, computed in f64 from the f32 outputs.
/// `L` is linear in each argument, so the difference quotient is exact for any step and
/// a large one keeps f32 rounding out of it: what remains checks the backward's index
/// arithmetic (the reference comparisons above share candle's).
fn check_finite_differences(
    f: &dyn Fn(&Tensor, &Tensor) -> Result<Tensor>,
    x: &Tensor,
    w: &Tensor,
    what: &str,
) -> Result<()> {
    let (dx, dw) = grads_of(f, x, w, 3)?;
    let r = to_f64(&random(f(x, w)?.dims4()?, 3));
    let loss = |x: &Tensor, w: &Tensor| -> Result<f64> {
        Ok(to_f64(&f(x, w)?).iter().zip(&r).map(|(a, b)| a * b).sum())
    };
    let step = 0.5f32;
    for (arg, grad, name) in [(0, &dx, "x"), (1, &dw, "w")] {
        let base = if arg == 0 { x } else { w };
        let vals = base.flatten_all()?.to_vec1::<f32>()?;
        let n = vals.len();
        // Ends, middle and a spread in between: padding borders and interiors.
        let mut picks: Vec<usize> = (0..12).map(|i| i * (n - 1) / 11).collect();
        picks.push(n / 2 + 1);
        picks.dedup();
        for idx in picks.into_iter().filter(|&i| i < n) {
            let shifted = |d: f32| -> Result<Tensor> {
                let mut v = vals.clone();
                v[idx] += d;
                Tensor::from_vec(v, base.shape(), &Device::Cpu)
            };
            let (plus, minus) = (shifted(step)?, shifted(-step)?);
            let (lp, lm) = if arg == 0 {
                (loss(&plus, w)?, loss(&minus, w)?)
            } else {
                (loss(x, &plus)?, loss(x, &minus)?)
            };
            let fd = (lp - lm) / (2.0 * step as f64);
            assert!(
                (fd - grad[idx]).abs() <= 1e-4 * (1.0 + fd.abs()),
                "{what}: d/d{name}[{idx}] analytic {} vs finite difference {fd}",
                grad[idx]
            );
        }
    }
    Ok(())
}

#[test]
fn gradients_match_finite_differences() -> Result<()> {
    let small_conv: &[ConvCase] = &[
        (2, 3, 4, 7, 9, 3, 3, (2, 2), [0, 1, 0, 1]),
        (1, 2, 18, 6, 7, 3, 3, (1, 1), [1, 1, 1, 1]),
        (2, 2, 16, 5, 8, 1, 7, (1, 1), [0, 0, 3, 3]),
        (1, 3, 2, 8, 5, 7, 1, (1, 1), [3, 3, 0, 0]),
        (2, 4, 3, 9, 7, 4, 3, (1, 2), [1, 2, 0, 1]),
        // Winograd forward and data gradient.
        (1, 64, 64, 5, 6, 5, 5, (1, 1), [2, 1, 2, 3]),
    ];
    for (i, case) in small_conv.iter().enumerate() {
        let (x, w, p) = conv_setup(case, 130 + i as u64);
        check_finite_differences(&|x, w| conv2d(x, w, p), &x, &w, &format!("{case:?}"))?;
    }
    let small_convt: &[ConvTCase] = &[
        (2, 3, 4, 4, 5, 3, 2, 1, 1),
        (1, 4, 17, 3, 4, 4, 2, 1, 0),
        (1, 18, 3, 5, 4, 3, 1, 1, 0),
    ];
    for (i, case) in small_convt.iter().enumerate() {
        let (x, w, p) = convt_setup(case, 150 + i as u64);
        check_finite_differences(
            &|x, w| conv_transpose2d(x, w, p),
            &x,
            &w,
            &format!("{case:?}"),
        )?;
    }
    Ok(())
}

/// The fused op is the composition `add_channel_bias_relu(conv2d(..))` (both checked by
/// finite differences above) as one node: the same f32 arithmetic, so the output and all
/// three gradients must be bit-identical, with any subset of the arguments tracked.
#[test]
fn fused_bias_relu_equals_the_composition() -> Result<()> {
    let cases: &[ConvCase] = &[
        (2, 3, 4, 7, 9, 3, 3, (2, 2), [0, 1, 0, 1]),
        (1, 2, 70, 6, 7, 3, 3, (1, 1), [1, 1, 1, 1]),
        (2, 80, 16, 5, 8, 1, 7, (1, 1), [0, 0, 3, 3]),
        (1, 16, 8, 9, 9, 1, 1, (1, 1), [0, 0, 0, 0]),
        (2, 4, 3, 9, 7, 4, 3, (1, 2), [1, 2, 0, 1]),
    ];
    for (i, case) in cases.iter().enumerate() {
        let (x, w, p) = conv_setup(case, 170 + i as u64);
        let b = Tensor::from_vec(values(case.2, 190 + i as u64), case.2, &Device::Cpu)?;
        let r = random(conv2d(&x, &w, p)?.dims4()?, 7);
        for slope in [0.0f32, 0.3] {
            for tracked in [
                [true, true, true],
                [true, false, true],
                [false, true, false],
            ] {
                let arg = |t: &Tensor, on: bool| -> Result<Tensor> {
                    Ok(if on {
                        Var::from_tensor(t)?.as_tensor().clone()
                    } else {
                        t.copy()?
                    })
                };
                let (xv, wv, bv) = (
                    arg(&x, tracked[0])?,
                    arg(&w, tracked[1])?,
                    arg(&b, tracked[2])?,
                );
                let fused = conv2d_bias_relu(&xv, &wv, &bv, p, slope)?;
                let composed =
                    crate::bias::add_channel_bias_relu(&conv2d(&xv, &wv, p)?, &bv, slope)?;
                let what = format!("{case:?} slope {slope} tracked {tracked:?}");
                assert_eq!(to_f64(&fused), to_f64(&composed), "{what}: forward");
                let gf = (&fused * &r)?.sum_all()?.backward()?;
                let gc = (&composed * &r)?.sum_all()?.backward()?;
                for (t, on, name) in [
                    (&xv, tracked[0], "x"),
                    (&wv, tracked[1], "w"),
                    (&bv, tracked[2], "b"),
                ] {
                    match (gf.get(t), gc.get(t)) {
                        (Some(f), Some(c)) if on => {
                            assert_eq!(to_f64(f), to_f64(c), "{what}: d/d{name}")
                        }
                        (None, None) if !on => {}
                        (f, c) => panic!(
                            "{what}: d/d{name} fused {:?} composed {:?}",
                            f.is_some(),
                            c.is_some()
                        ),
                    }
                }
            }
        }
    }
    assert!(
        conv2d_bias_relu(
            &random((1, 2, 5, 5), 1),
            &random((3, 2, 3, 3), 2),
            &Tensor::zeros(4, DType::F32, &Device::Cpu)?,
            Conv2dParams::same(3),
            0.0
        )
        .is_err()
    );
    Ok(())
}

/// The transposed form: bit-identical to `add_channel_bias_relu(conv_transpose2d(..))`
/// in output and gradients (the VAE's 3×3 stride-2 case and a 4×4 one like the GAN's).
#[test]
fn fused_transposed_bias_relu_equals_the_composition() -> Result<()> {
    let cases = [
        ((2, 6, 5, 5), (6, 4, 3, 3), (2, 1, 1)),
        ((1, 3, 4, 3), (3, 5, 4, 4), (2, 1, 0)),
    ];
    for (i, (xd, wd, (stride, padding, output_padding))) in cases.into_iter().enumerate() {
        let p = ConvTranspose2dParams {
            stride,
            padding,
            output_padding,
        };
        let x = Var::from_tensor(&random(xd, 300 + i as u64))?;
        let w = Var::from_tensor(&random(wd, 310 + i as u64))?;
        let b = Var::from_tensor(&Tensor::from_vec(values(wd.1, 320), wd.1, &Device::Cpu)?)?;
        for slope in [0.0f32, 0.3] {
            let fused = conv_transpose2d_bias_relu(&x, &w, &b, p, slope)?;
            let composed =
                crate::bias::add_channel_bias_relu(&conv_transpose2d(&x, &w, p)?, &b, slope)?;
            assert_eq!(to_f64(&fused), to_f64(&composed), "case {i}: forward");
            let r = random(fused.dims4()?, 7);
            let gf = (&fused * &r)?.sum_all()?.backward()?;
            let gc = (&composed * &r)?.sum_all()?.backward()?;
            for (t, name) in [(&x, "x"), (&w, "w"), (&b, "b")] {
                let (f, c) = (gf.get(t).unwrap(), gc.get(t).unwrap());
                assert_eq!(to_f64(f), to_f64(c), "case {i} slope {slope}: d/d{name}");
            }
        }
    }
    Ok(())
}

#[test]
fn arguments_without_a_gradient_get_none() -> Result<()> {
    type F = dyn Fn(&Tensor, &Tensor) -> Result<Tensor>;
    type Dims = (usize, usize, usize, usize);
    let cp = Conv2dParams {
        stride: (2, 2),
        padding: [0, 1, 0, 1],
    };
    let tp = ConvTranspose2dParams {
        stride: 2,
        padding: 1,
        output_padding: 1,
    };
    // (ours, candle's, input shape, kernel shape)
    let ops: [(&F, &F, Dims, Dims); 2] = [
        (
            &move |x, w| conv2d(x, w, cp),
            &move |x, w| conv2d_candle(x, w, cp),
            (2, 5, 9, 9),
            (20, 5, 3, 3),
        ),
        (
            &move |x, w| conv_transpose2d(x, w, tp),
            &move |x, w| conv_transpose2d_candle(x, w, tp),
            (2, 5, 5, 4),
            (5, 20, 3, 3),
        ),
    ];
    for (i, (ours, candle, xs, ws)) in ops.into_iter().enumerate() {
        let (x, w) = (random(xs, 170 + i as u64), random(ws, 180 + i as u64));
        let (rdx, rdw) = grads_of(
            candle,
            &x.to_dtype(DType::F64)?,
            &w.to_dtype(DType::F64)?,
            9,
        )?;
        // A frozen kernel: the input gradient only.
        let xv = Var::from_tensor(&x)?;
        let y = ours(xv.as_tensor(), &w)?;
        let r = random(y.dims4()?, 9);
        let grads = (&y * &r)?.sum_all()?.backward()?;
        assert!(
            grads.get(&w).is_none(),
            "op {i}: a gradient for the frozen kernel"
        );
        let dx = to_f64(grads.get(xv.as_tensor()).expect("input gradient"));
        assert_close(&dx, &rdx, 1e-5, &format!("op {i} dx"));
        // Data without a gradient: the kernel gradient only.
        let wv = Var::from_tensor(&w)?;
        let y = ours(&x, wv.as_tensor())?;
        let grads = (&y * &r)?.sum_all()?.backward()?;
        assert!(grads.get(&x).is_none(), "op {i}: a gradient for the data");
        let dw = to_f64(grads.get(wv.as_tensor()).expect("kernel gradient"));
        assert_close(&dw, &rdw, 1e-5, &format!("op {i} dw"));
    }
    Ok(())
}

#[test]
fn strided_inputs_give_the_contiguous_result() -> Result<()> {
    // A (B, C, W, H) tensor transposed to (B, C, H, W), and a kernel likewise.
    let x = random((2, 5, 9, 7), 190).transpose(2, 3)?;
    let w = random((16, 5, 3, 3), 191).transpose(2, 3)?;
    assert!(!x.is_contiguous() && !w.is_contiguous());
    let p = Conv2dParams::same(3);
    let got = to_f64(&conv2d(&x, &w, p)?);
    let want = to_f64(&conv2d(&x.contiguous()?, &w.contiguous()?, p)?);
    assert_eq!(got, want);
    Ok(())
}

#[test]
fn bad_shapes_are_errors() {
    let x = random((1, 3, 5, 5), 1);
    assert!(conv2d(&x, &random((4, 2, 3, 3), 2), Conv2dParams::same(3)).is_err());
    assert!(conv2d(&x, &random((4, 3, 7, 3), 2), Conv2dParams::new(1, 0)).is_err());
    assert!(conv2d(&x, &random((4, 3, 3, 3), 2), Conv2dParams::new(0, 1)).is_err());
    let tp = ConvTranspose2dParams {
        stride: 1,
        padding: 4,
        output_padding: 0,
    };
    assert!(conv_transpose2d(&x, &random((3, 2, 3, 3), 2), tp).is_err());
    assert!(
        conv_transpose2d(
            &x,
            &random((2, 2, 3, 3), 2),
            ConvTranspose2dParams { padding: 0, ..tp }
        )
        .is_err()
    );
}

#[test]
fn params_constructors() {
    assert_eq!(
        Conv2dParams::same(5),
        Conv2dParams {
            stride: (1, 1),
            padding: [2; 4]
        }
    );
    assert_eq!(
        Conv2dParams::new(2, 1),
        Conv2dParams {
            stride: (2, 2),
            padding: [1; 4]
        }
    );
}

/// The dot-product kernel of the few-output-channel weight gradient (AVX-512 where
/// present, and the portable one) against f64 sums, for every row count up to a
/// few tiles and window counts around its tile widths.
#[test]
fn dot_kernel_matches_f64_sums() {
    let len = 48;
    let base = values(600, 5);
    for m in 1..=9 {
        for k in [1, 5, 8, 13, 24, 25, 50] {
            let a_rs = len + 7;
            let a = values(m * a_rs, (m * 31 + k) as u64);
            let mut offs: Vec<usize> = (0..k).map(|j| (j * 37) % (600 - len)).collect();
            offs.resize(k.next_multiple_of(dots::J_MAX), 0);
            let init = values(m * k, 77);
            let want: Vec<f64> = (0..m * k)
                .map(|i| {
                    let (r, j) = (i / k, i % k);
                    init[i] as f64
                        + (0..len)
                            .map(|q| a[r * a_rs + q] as f64 * base[offs[j] + q] as f64)
                            .sum::<f64>()
                })
                .collect();
            for portable in [false, true] {
                let mut acc = init.clone();
                if portable {
                    dots::portable(&a, a_rs, m, len, &base, &offs, k, &mut acc);
                } else {
                    dots::run(&a, a_rs, m, len, &base, &offs, k, &mut acc);
                }
                let got: Vec<f64> = acc.iter().map(|&v| v as f64).collect();
                assert_close(
                    &got,
                    &want,
                    1e-5,
                    &format!("m={m} k={k} portable={portable}"),
                );
            }
        }
    }
}
