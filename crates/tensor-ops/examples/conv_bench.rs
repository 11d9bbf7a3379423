//! Times the convolutions and dense layers of the book's conv VAE (MNIST, batch 16) and
//! DCGAN (32×32, batch 20), candle's stock ops against `oneiro_tensor_ops::conv` and
//! `oneiro_tensor_ops::linear` (with its activation), forward alone and
//! forward + backward (loss `Σ y · r`, gradients for the kernel and, except for layers
//! that read the data, the input). The last column times that loss alone (no
//! convolution), which both forward + backward columns include.
//!
//! `cargo run --release -p oneiro-tensor-ops --example conv_bench [-- FILTER [ours]]`:
//! `FILTER` picks layers by name, `ours` skips candle's (slow) runs; `SPLIT=1` also times
//! ours with one gradient only. Threads from `RAYON_NUM_THREADS` (default 2).
//! `conv_bench_torch.py` times the same layers in PyTorch.
//!
//! In a 2-vCPU VM, glibc's returning freed memory to the kernel (and faulting it back in
//! for the next allocation) dominates small layers' backward passes;
//! `GLIBC_TUNABLES=glibc.malloc.trim_threshold=4000000000:glibc.malloc.mmap_threshold=33554432`
//! keeps it, for steady-state figures.

use std::time::{Duration, Instant};

use candle_core::{Device, Result, Tensor, Var};
use oneiro_tensor_ops::conv::{
    Conv2dParams, ConvTranspose2dParams, conv_transpose2d, conv_transpose2d_candle, conv2d,
    conv2d_candle,
};
use oneiro_tensor_ops::linear::linear_relu;

#[derive(Clone, Copy)]
enum Kind {
    Conv(Conv2dParams),
    ConvT(ConvTranspose2dParams),
    /// `act(x · wᵀ + b)` with this negative slope; `x` is `(B, C_in, 1, 1)` flattened.
    Dense(f32),
}

struct Layer {
    name: &'static str,
    /// `(B, C_in, H, W)`.
    x: (usize, usize, usize, usize),
    cout: usize,
    k: usize,
    kind: Kind,
    /// Whether the input needs a gradient (not for layers that read the data).
    x_grad: bool,
}

fn layers() -> Vec<Layer> {
    let conv = |s: usize, pad: [usize; 4]| {
        Kind::Conv(Conv2dParams {
            stride: (s, s),
            padding: pad,
        })
    };
    let convt = |s, p, op| {
        Kind::ConvT(ConvTranspose2dParams {
            stride: s,
            padding: p,
            output_padding: op,
        })
    };
    vec![
        Layer {
            name: "vae conv 1->32 3x3 same 28",
            x: (16, 1, 28, 28),
            cout: 32,
            k: 3,
            kind: conv(1, [1; 4]),
            x_grad: false,
        },
        Layer {
            name: "vae conv 32->64 3x3 s2 28",
            x: (16, 32, 28, 28),
            cout: 64,
            k: 3,
            kind: conv(2, [0, 1, 0, 1]),
            x_grad: true,
        },
        Layer {
            name: "vae conv 64->64 3x3 same 14 (x2)",
            x: (16, 64, 14, 14),
            cout: 64,
            k: 3,
            kind: conv(1, [1; 4]),
            x_grad: true,
        },
        Layer {
            name: "vae convT 64->32 3x3 s2 14",
            x: (16, 64, 14, 14),
            cout: 32,
            k: 3,
            kind: convt(2, 1, 1),
            x_grad: true,
        },
        Layer {
            name: "vae conv 32->1 3x3 same 28",
            x: (16, 32, 28, 28),
            cout: 1,
            k: 3,
            kind: conv(1, [1; 4]),
            x_grad: true,
        },
        Layer {
            name: "vae dense 12544->32 relu",
            x: (16, 12544, 1, 1),
            cout: 32,
            k: 1,
            kind: Kind::Dense(0.0),
            x_grad: true,
        },
        Layer {
            name: "vae dense 2->12544 relu",
            x: (16, 2, 1, 1),
            cout: 12544,
            k: 1,
            kind: Kind::Dense(0.0),
            x_grad: true,
        },
        Layer {
            name: "gan dense 32->32768 leaky 0.3",
            x: (20, 32, 1, 1),
            cout: 32768,
            k: 1,
            kind: Kind::Dense(0.3),
            x_grad: true,
        },
        Layer {
            name: "gan conv 128->256 5x5 same 16",
            x: (20, 128, 16, 16),
            cout: 256,
            k: 5,
            kind: conv(1, [2; 4]),
            x_grad: true,
        },
        Layer {
            name: "gan convT 256->256 4x4 s2 16",
            x: (20, 256, 16, 16),
            cout: 256,
            k: 4,
            kind: convt(2, 1, 0),
            x_grad: true,
        },
        Layer {
            name: "gan conv 256->256 5x5 same 32",
            x: (20, 256, 32, 32),
            cout: 256,
            k: 5,
            kind: conv(1, [2; 4]),
            x_grad: true,
        },
        Layer {
            name: "gan conv 256->3 7x7 same 32",
            x: (20, 256, 32, 32),
            cout: 3,
            k: 7,
            kind: conv(1, [3; 4]),
            x_grad: true,
        },
        Layer {
            name: "gan disc 3->128 3x3 valid 32",
            x: (20, 3, 32, 32),
            cout: 128,
            k: 3,
            kind: conv(1, [0; 4]),
            x_grad: false,
        },
        Layer {
            name: "gan disc 128->128 4x4 s2 30",
            x: (20, 128, 30, 30),
            cout: 128,
            k: 4,
            kind: conv(2, [0; 4]),
            x_grad: true,
        },
    ]
}

/// A dense layer on `x (B, C, 1, 1)` with `w (out, C, 1, 1)`: ours, or candle's
/// composition (`matmul` with the transposed weight, broadcast bias, `maximum(z, s·z)`).
fn dense(x: &Tensor, w: &Tensor, b: &Tensor, slope: f32, ours: bool) -> Result<Tensor> {
    let x = x.flatten_from(1)?;
    let w = w.flatten_from(1)?;
    if ours {
        return linear_relu(&x, &w, b, slope);
    }
    let z = x.matmul(&w.t()?)?.broadcast_add(b)?;
    z.maximum(&(&z * slope as f64)?)
}

/// Median wall time of `f` over at least 3 runs and about `budget`, after one warm-up.
fn time(budget: Duration, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    let mut runs = Vec::new();
    let start = Instant::now();
    while runs.len() < 3 || (start.elapsed() < budget && runs.len() < 50) {
        let t = Instant::now();
        f()?;
        runs.push(t.elapsed().as_secs_f64() * 1e3);
    }
    runs.sort_by(f64::total_cmp);
    Ok(runs[runs.len() / 2])
}

fn main() -> Result<()> {
    let threads: usize = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .expect("rayon pool");
    let filter = std::env::args().nth(1).unwrap_or_default();
    // `ours` as a second argument skips candle's (slow) runs, for profiling.
    let ours_only = std::env::args().nth(2).is_some_and(|a| a == "ours");
    let budget = Duration::from_millis(1500);
    let dev = Device::Cpu;
    println!("threads: {threads}");
    println!(
        "{:<34} {:>11} {:>11} {:>11} {:>11} {:>8} {:>9}",
        "layer", "candle fwd", "ours fwd", "candle f+b", "ours f+b", "f+b gain", "loss f+b"
    );
    for l in layers().iter().filter(|l| l.name.contains(&filter)) {
        let (b, cin, h, w) = l.x;
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (b, cin, h, w), &dev)?)?;
        let wshape = match l.kind {
            Kind::Conv(_) => (l.cout, cin, l.k, l.k),
            Kind::ConvT(_) => (cin, l.cout, l.k, l.k),
            Kind::Dense(_) => (l.cout, cin * h * w, 1, 1),
        };
        let wt = Var::from_tensor(&(Tensor::randn(0f32, 1.0, wshape, &dev)? * 0.05)?)?;
        let bias = Var::from_tensor(&Tensor::randn(0f32, 0.1, l.cout, &dev)?)?;
        let xin = if l.x_grad {
            x.as_tensor().clone()
        } else {
            x.as_tensor().detach()
        };
        let run = |ours: bool| -> Result<Tensor> {
            match (l.kind, ours) {
                (Kind::Conv(p), true) => conv2d(&xin, wt.as_tensor(), p),
                (Kind::Conv(p), false) => conv2d_candle(&xin, wt.as_tensor(), p),
                (Kind::ConvT(p), true) => conv_transpose2d(&xin, wt.as_tensor(), p),
                (Kind::ConvT(p), false) => conv_transpose2d_candle(&xin, wt.as_tensor(), p),
                (Kind::Dense(s), ours) => dense(&xin, wt.as_tensor(), bias.as_tensor(), s, ours),
            }
        };
        let r = Tensor::randn(0f32, 1.0, run(true)?.shape(), &dev)?;
        // The loss alone (`Σ y · r` and its backward, no convolution), part of both f+b.
        let y0 = Var::from_tensor(&r.zeros_like()?)?;
        let loss_ms = time(budget, || {
            (y0.as_tensor() * &r)?.sum_all()?.backward()?;
            Ok(())
        })?;
        let mut ms = [0.0; 4];
        for (i, ours) in [false, true].into_iter().enumerate() {
            if ours_only && !ours {
                continue;
            }
            ms[i] = time(budget, || run(ours).map(|_| ()))?;
            ms[2 + i] = time(budget, || {
                let grads = (run(ours)? * &r)?.sum_all()?.backward()?;
                assert!(grads.get(wt.as_tensor()).is_some());
                Ok(())
            })?;
        }
        if std::env::var_os("SPLIT").is_some() {
            // Ours with one gradient only: a frozen kernel, or data without a gradient.
            let frozen_w = wt.as_tensor().detach();
            let (xv, frozen_x) = (x.as_tensor().clone(), x.as_tensor().detach());
            let only = |w_frozen: bool| -> Result<f64> {
                time(budget, || {
                    let (xi, wi) = if w_frozen {
                        (&xv, &frozen_w)
                    } else {
                        (&frozen_x, wt.as_tensor())
                    };
                    let y = match l.kind {
                        Kind::Conv(p) => conv2d(xi, wi, p)?,
                        Kind::ConvT(p) => conv_transpose2d(xi, wi, p)?,
                        Kind::Dense(s) => dense(xi, wi, bias.as_tensor(), s, true)?,
                    };
                    (y * &r)?.sum_all()?.backward()?;
                    Ok(())
                })
            };
            println!(
                "    ours f+b dx only {:.2}  dw only {:.2}",
                only(true)?,
                only(false)?
            );
        }
        println!(
            "{:<34} {:>11.2} {:>11.2} {:>11.2} {:>11.2} {:>7.1}x {:>9.2}",
            l.name,
            ms[0],
            ms[1],
            ms[2],
            ms[3],
            ms[2] / ms[3],
            loss_ms
        );
    }
    Ok(())
}
