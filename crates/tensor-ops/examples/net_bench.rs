//! Times the forward pass and input gradient of two frozen feature extractors built from
//! this crate's ops: InceptionV3 up to `Mixed_6c` on a 1×3×299×299 image (DeepDream's
//! step: weighted mean squares of four blocks' outputs) and VGG19's trunk up to
//! `block5_conv2` on a 1×3×128×192 image (style transfer's evaluation, with mean squares
//! of its six taps standing in for the Gram losses). Random weights, so only the shapes
//! matter; seconds per step are the median of several after a warm-up.
//!
//! `cargo run --release -p oneiro-tensor-ops --example net_bench [-- inception|vgg [STEPS]]`,
//! threads from `RAYON_NUM_THREADS` (default 2). PyTorch's figures for the same work:
//! `torch_peer.py dream-step --size 299x299` and `torch_peer.py style-eval`.

use std::time::Instant;

use candle_core::{Device, Result, Tensor, Var};
use oneiro_tensor_ops::{
    Conv2dParams, Pool2dParams, add_channel_bias_relu, avg_pool2d, conv2d, max_pool2d,
};

/// A convolution with a bias and ReLU, frozen.
struct Conv {
    w: Tensor,
    b: Tensor,
    p: Conv2dParams,
}

impl Conv {
    fn new(cin: usize, cout: usize, k: (usize, usize), stride: usize, pad: (usize, usize)) -> Self {
        let dev = Device::Cpu;
        let std = (2.0 / (cin * k.0 * k.1) as f64).sqrt() as f32;
        Self {
            w: Tensor::randn(0f32, std, (cout, cin, k.0, k.1), &dev).expect("weights"),
            b: Tensor::randn(0f32, 0.01, cout, &dev).expect("bias"),
            p: Conv2dParams {
                stride: (stride, stride),
                padding: [pad.0, pad.0, pad.1, pad.1],
            },
        }
    }

    fn sq(cin: usize, cout: usize, k: usize, stride: usize, pad: usize) -> Self {
        Self::new(cin, cout, (k, k), stride, (pad, pad))
    }

    fn fwd(&self, x: &Tensor) -> Result<Tensor> {
        add_channel_bias_relu(&conv2d(x, &self.w, self.p)?, &self.b, 0.0)
    }
}

fn chain(x: &Tensor, convs: &[Conv]) -> Result<Tensor> {
    convs.iter().try_fold(x.clone(), |y, c| c.fwd(&y))
}

fn max_pool(x: &Tensor, k: usize, s: usize) -> Result<Tensor> {
    max_pool2d(x, Pool2dParams::new(k, s, 0))
}

fn avg_pool(x: &Tensor) -> Result<Tensor> {
    avg_pool2d(x, Pool2dParams::new(3, 1, 1), true)
}

fn mean_sq(y: &Tensor) -> Result<Tensor> {
    y.sqr()?.mean_all()
}

enum Block {
    Stem(Vec<Conv>),
    /// Mixed_5b/c/d.
    A(Vec<Conv>),
    /// Mixed_6a.
    B(Vec<Conv>),
    /// Mixed_6b/c.
    C(Vec<Conv>),
}

fn inception() -> Vec<Block> {
    let mut blocks = vec![Block::Stem(vec![
        Conv::sq(3, 32, 3, 2, 0),
        Conv::sq(32, 32, 3, 1, 0),
        Conv::sq(32, 64, 3, 1, 1),
        Conv::sq(64, 80, 1, 1, 0),
        Conv::sq(80, 192, 3, 1, 0),
    ])];
    for (cin, pool) in [(192, 32), (256, 64), (288, 64)] {
        blocks.push(Block::A(vec![
            Conv::sq(cin, 64, 1, 1, 0),
            Conv::sq(cin, 48, 1, 1, 0),
            Conv::sq(48, 64, 5, 1, 2),
            Conv::sq(cin, 64, 1, 1, 0),
            Conv::sq(64, 96, 3, 1, 1),
            Conv::sq(96, 96, 3, 1, 1),
            Conv::sq(cin, pool, 1, 1, 0),
        ]));
    }
    blocks.push(Block::B(vec![
        Conv::sq(288, 384, 3, 2, 0),
        Conv::sq(288, 64, 1, 1, 0),
        Conv::sq(64, 96, 3, 1, 1),
        Conv::sq(96, 96, 3, 2, 0),
    ]));
    for c7 in [128, 160] {
        let (row, col) = (((1, 7), (0, 3)), ((7, 1), (3, 0)));
        let c = |ci, co, (k, pad): ((usize, usize), (usize, usize))| Conv::new(ci, co, k, 1, pad);
        blocks.push(Block::C(vec![
            Conv::sq(768, 192, 1, 1, 0),
            Conv::sq(768, c7, 1, 1, 0),
            c(c7, c7, row),
            c(c7, 192, col),
            Conv::sq(768, c7, 1, 1, 0),
            c(c7, c7, col),
            c(c7, c7, row),
            c(c7, c7, col),
            c(c7, 192, row),
            Conv::sq(768, 192, 1, 1, 0),
        ]));
    }
    blocks
}

fn inception_loss(blocks: &[Block], x: &Tensor) -> Result<Tensor> {
    let mut y = x.clone();
    let mut loss = Tensor::zeros((), candle_core::DType::F32, x.device())?;
    // Mixed_5d, 6a, 6b, 6c: blocks 3 to 6.
    let weights = [0.0, 0.0, 0.0, 0.2, 3.0, 2.0, 1.5];
    for (i, block) in blocks.iter().enumerate() {
        y = match block {
            Block::Stem(c) => {
                let y = chain(&y, &c[..3])?;
                let y = max_pool(&y, 3, 2)?;
                let y = chain(&y, &c[3..])?;
                max_pool(&y, 3, 2)?
            }
            Block::A(c) => Tensor::cat(
                &[
                    c[0].fwd(&y)?,
                    chain(&y, &c[1..3])?,
                    chain(&y, &c[3..6])?,
                    c[6].fwd(&avg_pool(&y)?)?,
                ],
                1,
            )?,
            Block::B(c) => Tensor::cat(
                &[c[0].fwd(&y)?, chain(&y, &c[1..4])?, max_pool(&y, 3, 2)?],
                1,
            )?,
            Block::C(c) => Tensor::cat(
                &[
                    c[0].fwd(&y)?,
                    chain(&y, &c[1..4])?,
                    chain(&y, &c[4..9])?,
                    c[9].fwd(&avg_pool(&y)?)?,
                ],
                1,
            )?,
        };
        if weights[i] > 0.0 {
            loss = (loss + (mean_sq(&y)? * weights[i])?)?;
        }
    }
    Ok(loss)
}

/// VGG19's convolutions up to block5_conv2, by block, and whose outputs are taps.
fn vgg() -> Vec<Vec<Conv>> {
    let mut cin = 3;
    [(64, 2), (128, 2), (256, 4), (512, 4), (512, 2)]
        .into_iter()
        .map(|(cout, n)| {
            (0..n)
                .map(|_| {
                    let c = Conv::sq(cin, cout, 3, 1, 1);
                    cin = cout;
                    c
                })
                .collect()
        })
        .collect()
}

fn vgg_loss(blocks: &[Vec<Conv>], x: &Tensor) -> Result<Tensor> {
    let mut y = x.clone();
    let mut loss = Tensor::zeros((), candle_core::DType::F32, x.device())?;
    for (i, block) in blocks.iter().enumerate() {
        if i > 0 {
            y = max_pool(&y, 2, 2)?;
        }
        for (j, c) in block.iter().enumerate() {
            y = c.fwd(&y)?;
            // The first convolution of each block, and block5_conv2.
            if j == 0 || (i == 4 && j == 1) {
                loss = (loss + mean_sq(&y)?)?;
            }
        }
    }
    Ok(loss)
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
    let which = std::env::args().nth(1).unwrap_or_default();
    let steps: usize = std::env::args()
        .nth(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or(8);
    let dev = Device::Cpu;
    let time = |name: &str,
                shape: (usize, usize, usize, usize),
                f: &dyn Fn(&Tensor) -> Result<Tensor>|
     -> Result<()> {
        let x = Var::from_tensor(&Tensor::rand(-1f32, 1f32, shape, &dev)?)?;
        let mut runs = Vec::new();
        for i in 0..=steps {
            let t = Instant::now();
            let grads = f(x.as_tensor())?.backward()?;
            let g = grads.get(x.as_tensor()).expect("input gradient");
            g.abs()?.mean_all()?.to_scalar::<f32>()?;
            if i > 0 {
                runs.push(t.elapsed().as_secs_f64());
            }
        }
        runs.sort_by(f64::total_cmp);
        println!(
            "{name}: median {:.4} s/step, best {:.4} ({steps} steps, {threads} threads)",
            runs[runs.len() / 2],
            runs[0]
        );
        Ok(())
    };
    if which.is_empty() || which == "inception" {
        let net = inception();
        time("inception 299x299 to Mixed_6c", (1, 3, 299, 299), &|x| {
            inception_loss(&net, x)
        })?;
    }
    if which.is_empty() || which == "vgg" {
        let net = vgg();
        time("vgg19 128x192 to block5_conv2", (1, 3, 128, 192), &|x| {
            vgg_loss(&net, x)
        })?;
    }
    Ok(())
}
