//! Vectorizable f32 kernels for the recurrent hot loops.
//!
//! Written by hand because libm's `expf` is a scalar call the compiler cannot vectorize,
//! and an LSTM step spends most of its non-matmul time in sigmoid/tanh. The kernels are
//! plain loops over slices, compiled three times (AVX-512, AVX2+FMA, baseline) and picked
//! once at run time, so the default build needs no `-C target-cpu`.

use std::sync::OnceLock;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Level {
    Base,
    #[cfg(target_arch = "x86_64")]
    V3,
    #[cfg(target_arch = "x86_64")]
    V4,
}

fn level() -> Level {
    static LEVEL: OnceLock<Level> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx512f")
                && std::is_x86_feature_detected!("avx512vl")
                && std::is_x86_feature_detected!("fma")
            {
                return Level::V4;
            }
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                return Level::V3;
            }
        }
        Level::Base
    })
}

/// Defines a public function that runs `$imp` compiled for the best instruction set
/// this CPU has.
macro_rules! multiversion {
    ($(#[$m:meta])* pub fn $name:ident($($a:ident: $t:ty),* $(,)?) => $imp:ident) => {
        $(#[$m])*
        pub fn $name($($a: $t),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
                fn v4($($a: $t),*) { $imp($($a),*) }
                #[target_feature(enable = "avx2,fma")]
                fn v3($($a: $t),*) { $imp($($a),*) }
                match level() {
                    // SAFETY: `level()` checked that the CPU has these features.
                    Level::V4 => return unsafe { v4($($a),*) },
                    Level::V3 => return unsafe { v3($($a),*) },
                    Level::Base => {}
                }
            }
            $imp($($a),*)
        }
    };
}

/// `e^x` with about 2 ulp error over the f32 range (Cephes' `expf` polynomial), written
/// so that loops over it vectorize. Inputs are clamped to avoid inf/denormals.
#[inline(always)]
// `max`/`min` on purpose, not `clamp` (see below).
#[allow(clippy::manual_clamp)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const C1: f32 = 0.693_359_4;
    const C2: f32 = -2.121_944_4e-4;
    // max/min rather than clamp: clamp's NaN handling keeps the loop scalar. NaN maps
    // to -87 here, which the LSTM never feeds (its inputs are finite or it has diverged).
    let x = x.max(-87.0).min(88.0);
    let n = (x * LOG2E + 0.5).floor();
    let r = x - n * C1 - n * C2;
    let mut y = 1.987_569_1e-4_f32;
    y = y * r + 1.398_199_9e-3;
    y = y * r + 8.333_452e-3;
    y = y * r + 4.166_579_6e-2;
    y = y * r + 1.666_666_5e-1;
    // Cephes writes 5.0000001e-1, which is 0.5 in f32.
    y = y * r + 0.5;
    y = y * r * r + r + 1.0;
    // 2^n built from the exponent bits; n is in [-126, 127] after the clamp.
    // SAFETY: n is an integral value in [-126, 127] after the clamp, so it fits an i32
    // (the checked `as` cast would be a scalar instruction sequence).
    let n_int: i32 = unsafe { n.to_int_unchecked() };
    let pow2n = f32::from_bits(((n_int + 127) as u32) << 23);
    y * pow2n
}

#[inline(always)]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

#[inline(always)]
pub fn tanh(x: f32) -> f32 {
    // tanh(x) = 2σ(2x) − 1: absolute error ~1e-7, which is what the LSTM needs.
    2.0 / (1.0 + exp(-2.0 * x)) - 1.0
}

#[inline(always)]
fn lstm_cell_forward_impl(
    gates: &mut [f32],
    c_prev: &[f32],
    c: &mut [f32],
    tc: &mut [f32],
    h: &mut [f32],
) {
    let n = c.len();
    let (gi, rest) = gates.split_at_mut(n);
    let (gf, rest) = rest.split_at_mut(n);
    let (gg, go) = rest.split_at_mut(n);
    let (go, c_prev, tc, h) = (&mut go[..n], &c_prev[..n], &mut tc[..n], &mut h[..n]);
    for k in 0..n {
        let i = sigmoid(gi[k]);
        let f = sigmoid(gf[k]);
        let g = tanh(gg[k]);
        let o = sigmoid(go[k]);
        gi[k] = i;
        gf[k] = f;
        gg[k] = g;
        go[k] = o;
        let cc = f * c_prev[k] + i * g;
        c[k] = cc;
        let t = tanh(cc);
        tc[k] = t;
        h[k] = o * t;
    }
}

multiversion! {
    /// One LSTM cell for one sequence. `gates` holds the pre-activations `[i, f, g, o]`
    /// (4·H) and is overwritten with the activations; writes `c`, `tanh(c)` and `h`.
    pub fn lstm_cell_forward(gates: &mut [f32], c_prev: &[f32], c: &mut [f32], tc: &mut [f32], h: &mut [f32])
        => lstm_cell_forward_impl
}

#[inline(always)]
fn lstm_cell_backward_impl(
    acts: &[f32],
    c_prev: &[f32],
    tc: &[f32],
    dh: &[f32],
    dc: &mut [f32],
    dgates: &mut [f32],
) {
    let n = dc.len();
    let (ai, rest) = acts.split_at(n);
    let (af, rest) = rest.split_at(n);
    let (ag, ao) = rest.split_at(n);
    let (di, rest) = dgates.split_at_mut(n);
    let (df, rest) = rest.split_at_mut(n);
    let (dg, dout) = rest.split_at_mut(n);
    let (ao, dout, c_prev, tc, dh) = (&ao[..n], &mut dout[..n], &c_prev[..n], &tc[..n], &dh[..n]);
    for k in 0..n {
        let (i, f, g, o, t) = (ai[k], af[k], ag[k], ao[k], tc[k]);
        let dcc = dc[k] + dh[k] * o * (1.0 - t * t);
        di[k] = dcc * g * i * (1.0 - i);
        df[k] = dcc * c_prev[k] * f * (1.0 - f);
        dg[k] = dcc * i * (1.0 - g * g);
        dout[k] = dh[k] * t * o * (1.0 - o);
        dc[k] = dcc * f;
    }
}

multiversion! {
    /// Backward of [`lstm_cell_forward`] for one sequence: from the activations, the
    /// previous cell state, `tanh(c)`, the incoming `dh` and the running `dc` (updated in
    /// place to the gradient for the previous step), writes the gate pre-activation
    /// gradients.
    pub fn lstm_cell_backward(acts: &[f32], c_prev: &[f32], tc: &[f32], dh: &[f32], dc: &mut [f32], dgates: &mut [f32])
        => lstm_cell_backward_impl
}

#[inline(always)]
fn vec_mat_acc_impl(out: &mut [f32], x: &[f32], w: &[f32]) {
    let n = out.len();
    for (k, &xk) in x.iter().enumerate() {
        let row = &w[k * n..(k + 1) * n];
        for (o, &wv) in out.iter_mut().zip(row) {
            *o += xk * wv;
        }
    }
}

multiversion! {
    /// `out += x · W` for a row-major `W` of shape (x.len(), out.len()): the batch-1
    /// product, as a sequence of vectorized axpys (no horizontal reductions).
    pub fn vec_mat_acc(out: &mut [f32], x: &[f32], w: &[f32]) => vec_mat_acc_impl
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_std_within_a_few_ulp() {
        let mut worst = 0f32;
        let mut x = -80.0f32;
        while x < 80.0 {
            let rel = ((exp(x) - x.exp()) / x.exp()).abs();
            worst = worst.max(rel);
            x += 0.0137;
        }
        assert!(worst < 5e-7, "worst relative error {worst}");
    }

    #[test]
    fn sigmoid_and_tanh_match_std() {
        for i in -2000..2000 {
            let x = i as f32 * 0.01;
            assert!(
                (sigmoid(x) - 1.0 / (1.0 + (-x).exp())).abs() < 2e-7,
                "sigmoid({x})"
            );
            assert!((tanh(x) - x.tanh()).abs() < 3e-7, "tanh({x})");
        }
        assert_eq!(sigmoid(-1e4), 1.0 / (1.0 + 88f32.exp()));
        assert!((sigmoid(1e4) - 1.0).abs() < 1e-7);
    }

    #[test]
    fn vec_mat_acc_is_a_matrix_product() {
        let x = [1.0, 2.0, 3.0];
        let w = [1.0, 0.0, 0.5, 1.0, 2.0, -1.0]; // 3 × 2
        let mut out = [10.0, 20.0];
        vec_mat_acc(&mut out, &x, &w);
        assert_eq!(out, [10.0 + 1.0 + 1.0 + 6.0, 20.0 + 0.0 + 2.0 - 3.0]);
    }
}
