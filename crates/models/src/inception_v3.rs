//! InceptionV3 as a feature extractor (no classifier head), in inference mode, with the
//! key names of timm's `inception_v3.tf_in1k` / `inception_v3.tv_in1k` checkpoints
//! (torchvision's module names). Any block's output can be tapped by its Keras name
//! (`mixed0` … `mixed10`) or its checkpoint name (`Mixed_5b` … `Mixed_7c`, the stem's
//! `Conv2d_1a_3x3` …); the forward pass stops at the deepest tap.
//!
//! Pooling follows the checkpoints' framework (PyTorch): the branch average pools count the
//! zero padding (`count_include_pad`), as timm and torchvision do for these weights.

use candle_core::{Device, Result, Tensor, bail};
use candle_nn::VarBuilder;
use oneiro_tensor_ops::{Pool2dParams, avg_pool2d, max_pool2d};

use crate::backbone::{ConvRelu, LayerName, Weights, resolve_layer};

/// Batch-norm epsilon of the TensorFlow-slim weights (and torchvision's BasicConv2d).
pub const INCEPTION_BN_EPS: f64 = 1e-3;

/// The tappable layers, in forward order.
pub const INCEPTION_LAYERS: [LayerName; 18] = {
    const fn l(checkpoint: &'static str, keras: Option<&'static str>) -> LayerName {
        LayerName { checkpoint, keras }
    }
    [
        l("Conv2d_1a_3x3", None),
        l("Conv2d_2a_3x3", None),
        l("Conv2d_2b_3x3", None),
        l("maxpool1", None),
        l("Conv2d_3b_1x1", None),
        l("Conv2d_4a_3x3", None),
        l("maxpool2", None),
        l("Mixed_5b", Some("mixed0")),
        l("Mixed_5c", Some("mixed1")),
        l("Mixed_5d", Some("mixed2")),
        l("Mixed_6a", Some("mixed3")),
        l("Mixed_6b", Some("mixed4")),
        l("Mixed_6c", Some("mixed5")),
        l("Mixed_6d", Some("mixed6")),
        l("Mixed_6e", Some("mixed7")),
        l("Mixed_7a", Some("mixed8")),
        l("Mixed_7b", Some("mixed9")),
        l("Mixed_7c", Some("mixed10")),
    ]
};

fn max_pool(x: &Tensor) -> Result<Tensor> {
    max_pool2d(x, Pool2dParams::new(3, 2, 0))
}

fn avg_pool(x: &Tensor) -> Result<Tensor> {
    avg_pool2d(x, Pool2dParams::new(3, 1, 1), true)
}

#[derive(Clone, Debug)]
enum Block {
    Conv(ConvRelu),
    MaxPool,
    /// Mixed_5b/c/d: 1×1 | 1×1→5×5 | 1×1→3×3→3×3 | avg-pool→1×1.
    A([ConvRelu; 7]),
    /// Mixed_6a: 3×3/2 | 1×1→3×3→3×3/2 | max-pool/2.
    B([ConvRelu; 4]),
    /// Mixed_6b..e: 1×1 | 1×1→1×7→7×1 | 1×1→7×1→1×7→7×1→1×7 | avg-pool→1×1.
    C([ConvRelu; 10]),
    /// Mixed_7a: 1×1→3×3/2 | 1×1→1×7→7×1→3×3/2 | max-pool/2.
    D([ConvRelu; 6]),
    /// Mixed_7b/c: 1×1 | 1×1→(1×3, 3×1) | 1×1→3×3→(1×3, 3×1) | avg-pool→1×1.
    E([ConvRelu; 9]),
}

fn cat(parts: &[Tensor]) -> Result<Tensor> {
    Tensor::cat(parts, 1)
}

impl Block {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Conv(c) => c.forward(x),
            Self::MaxPool => max_pool(x),
            Self::A([b1, b5a, b5b, b3a, b3b, b3c, bp]) => cat(&[
                b1.forward(x)?,
                b5b.forward(&b5a.forward(x)?)?,
                b3c.forward(&b3b.forward(&b3a.forward(x)?)?)?,
                bp.forward(&avg_pool(x)?)?,
            ]),
            Self::B([b3, bd1, bd2, bd3]) => cat(&[
                b3.forward(x)?,
                bd3.forward(&bd2.forward(&bd1.forward(x)?)?)?,
                max_pool(x)?,
            ]),
            Self::C([b1, b7a, b7b, b7c, d1, d2, d3, d4, d5, bp]) => {
                let mut d = x.clone();
                for c in [d1, d2, d3, d4, d5] {
                    d = c.forward(&d)?;
                }
                cat(&[
                    b1.forward(x)?,
                    b7c.forward(&b7b.forward(&b7a.forward(x)?)?)?,
                    d,
                    bp.forward(&avg_pool(x)?)?,
                ])
            }
            Self::D([b3a, b3b, b7a, b7b, b7c, b7d]) => {
                let mut d = x.clone();
                for c in [b7a, b7b, b7c, b7d] {
                    d = c.forward(&d)?;
                }
                cat(&[b3b.forward(&b3a.forward(x)?)?, d, max_pool(x)?])
            }
            Self::E([b1, b3, b3a, b3b, d1, d2, da, db, bp]) => {
                let t = b3.forward(x)?;
                let d = d2.forward(&d1.forward(x)?)?;
                cat(&[
                    b1.forward(x)?,
                    b3a.forward(&t)?,
                    b3b.forward(&t)?,
                    da.forward(&d)?,
                    db.forward(&d)?,
                    bp.forward(&avg_pool(x)?)?,
                ])
            }
        }
    }

    fn convs(&self) -> &[ConvRelu] {
        match self {
            Self::Conv(c) => std::slice::from_ref(c),
            Self::MaxPool => &[],
            Self::A(c) => c,
            Self::B(c) => c,
            Self::C(c) => c,
            Self::D(c) => c,
            Self::E(c) => c,
        }
    }

    /// Output height or width for input `s` (`None`: too small for this block).
    fn out_size(&self, s: usize) -> Option<usize> {
        let shrink = |s: usize| (s >= 3).then(|| (s - 3) / 2 + 1);
        match self {
            Self::MaxPool | Self::B(_) | Self::D(_) => shrink(s),
            Self::Conv(c) => {
                let k = c.weight.dims()[2].max(c.weight.dims()[3]);
                let pad = c.params.padding[0].max(c.params.padding[2]);
                let st = c.params.stride.0;
                (s + 2 * pad >= k).then(|| (s + 2 * pad - k) / st + 1)
            }
            Self::A(_) | Self::C(_) | Self::E(_) => Some(s),
        }
    }
}

/// InceptionV3's convolutional trunk, `Conv2d_1a_3x3` through `Mixed_7c`.
#[derive(Clone, Debug)]
pub struct InceptionV3 {
    blocks: Vec<Block>,
}

impl InceptionV3 {
    /// Builds the trunk from `weights` (timm/torchvision key names), folding batch-norm
    /// with `eps` (0.001 for both public checkpoints).
    pub fn load(weights: &Weights, eps: f64, device: &Device) -> Result<Self> {
        Self::from_var_builder(&weights.var_builder(device)?, eps)
    }

    pub fn from_var_builder(vb: &VarBuilder, eps: f64) -> Result<Self> {
        let conv = |name: &str, cin, cout, k: (usize, usize), stride, pad: (usize, usize)| {
            ConvRelu::conv_bn(&vb.pp(name), cin, cout, k, stride, pad, eps)
        };
        let sq = |k: usize| (k, k);
        let mut blocks = vec![
            Block::Conv(conv("Conv2d_1a_3x3", 3, 32, sq(3), 2, (0, 0))?),
            Block::Conv(conv("Conv2d_2a_3x3", 32, 32, sq(3), 1, (0, 0))?),
            Block::Conv(conv("Conv2d_2b_3x3", 32, 64, sq(3), 1, (1, 1))?),
            Block::MaxPool,
            Block::Conv(conv("Conv2d_3b_1x1", 64, 80, sq(1), 1, (0, 0))?),
            Block::Conv(conv("Conv2d_4a_3x3", 80, 192, sq(3), 1, (0, 0))?),
            Block::MaxPool,
        ];
        let block_a = |name: &str, cin: usize, pool: usize| -> Result<Block> {
            let c = |sub: &str, ci, co, k, pad| {
                conv(&format!("{name}.{sub}"), ci, co, sq(k), 1, (pad, pad))
            };
            Ok(Block::A([
                c("branch1x1", cin, 64, 1, 0)?,
                c("branch5x5_1", cin, 48, 1, 0)?,
                c("branch5x5_2", 48, 64, 5, 2)?,
                c("branch3x3dbl_1", cin, 64, 1, 0)?,
                c("branch3x3dbl_2", 64, 96, 3, 1)?,
                c("branch3x3dbl_3", 96, 96, 3, 1)?,
                c("branch_pool", cin, pool, 1, 0)?,
            ]))
        };
        blocks.push(block_a("Mixed_5b", 192, 32)?);
        blocks.push(block_a("Mixed_5c", 256, 64)?);
        blocks.push(block_a("Mixed_5d", 288, 64)?);
        {
            let c = |sub: &str, ci, co, k, s, pad| {
                conv(&format!("Mixed_6a.{sub}"), ci, co, sq(k), s, (pad, pad))
            };
            blocks.push(Block::B([
                c("branch3x3", 288, 384, 3, 2, 0)?,
                c("branch3x3dbl_1", 288, 64, 1, 1, 0)?,
                c("branch3x3dbl_2", 64, 96, 3, 1, 1)?,
                c("branch3x3dbl_3", 96, 96, 3, 2, 0)?,
            ]));
        }
        // 1×7 pads the width by 3, 7×1 the height.
        const ROW: ((usize, usize), (usize, usize)) = ((1, 7), (0, 3));
        const COL: ((usize, usize), (usize, usize)) = ((7, 1), (3, 0));
        const ONE: ((usize, usize), (usize, usize)) = ((1, 1), (0, 0));
        for (name, c7) in [
            ("Mixed_6b", 128),
            ("Mixed_6c", 160),
            ("Mixed_6d", 160),
            ("Mixed_6e", 192),
        ] {
            let c = |sub: &str, ci, co, (k, pad): ((usize, usize), (usize, usize))| {
                conv(&format!("{name}.{sub}"), ci, co, k, 1, pad)
            };
            blocks.push(Block::C([
                c("branch1x1", 768, 192, ONE)?,
                c("branch7x7_1", 768, c7, ONE)?,
                c("branch7x7_2", c7, c7, ROW)?,
                c("branch7x7_3", c7, 192, COL)?,
                c("branch7x7dbl_1", 768, c7, ONE)?,
                c("branch7x7dbl_2", c7, c7, COL)?,
                c("branch7x7dbl_3", c7, c7, ROW)?,
                c("branch7x7dbl_4", c7, c7, COL)?,
                c("branch7x7dbl_5", c7, 192, ROW)?,
                c("branch_pool", 768, 192, ONE)?,
            ]));
        }
        {
            let c =
                |sub: &str, ci, co, k, s, pad| conv(&format!("Mixed_7a.{sub}"), ci, co, k, s, pad);
            blocks.push(Block::D([
                c("branch3x3_1", 768, 192, (1, 1), 1, (0, 0))?,
                c("branch3x3_2", 192, 320, (3, 3), 2, (0, 0))?,
                c("branch7x7x3_1", 768, 192, (1, 1), 1, (0, 0))?,
                c("branch7x7x3_2", 192, 192, (1, 7), 1, (0, 3))?,
                c("branch7x7x3_3", 192, 192, (7, 1), 1, (3, 0))?,
                c("branch7x7x3_4", 192, 192, (3, 3), 2, (0, 0))?,
            ]));
        }
        for (name, cin) in [("Mixed_7b", 1280), ("Mixed_7c", 2048)] {
            let c = |sub: &str, ci, co, k, pad| conv(&format!("{name}.{sub}"), ci, co, k, 1, pad);
            blocks.push(Block::E([
                c("branch1x1", cin, 320, (1, 1), (0, 0))?,
                c("branch3x3_1", cin, 384, (1, 1), (0, 0))?,
                c("branch3x3_2a", 384, 384, (1, 3), (0, 1))?,
                c("branch3x3_2b", 384, 384, (3, 1), (1, 0))?,
                c("branch3x3dbl_1", cin, 448, (1, 1), (0, 0))?,
                c("branch3x3dbl_2", 448, 384, (3, 3), (1, 1))?,
                c("branch3x3dbl_3a", 384, 384, (1, 3), (0, 1))?,
                c("branch3x3dbl_3b", 384, 384, (3, 1), (1, 0))?,
                c("branch_pool", cin, 192, (1, 1), (0, 0))?,
            ]));
        }
        debug_assert_eq!(blocks.len(), INCEPTION_LAYERS.len());
        Ok(Self { blocks })
    }

    pub fn layers() -> &'static [LayerName] {
        &INCEPTION_LAYERS
    }

    /// The index of a layer by Keras (`mixed3`) or checkpoint (`Mixed_6a`) name.
    pub fn resolve(name: &str) -> Result<usize> {
        resolve_layer("InceptionV3", &INCEPTION_LAYERS, name)
    }

    /// The activations of layers `taps` (indices from [`Self::resolve`]) for `x`
    /// (`(N, 3, H, W)`, already preprocessed), in the order asked; the forward pass stops
    /// at the deepest one.
    pub fn forward_taps(&self, x: &Tensor, taps: &[usize]) -> Result<Vec<Tensor>> {
        let Some(&last) = taps.iter().max() else {
            bail!("no InceptionV3 layer requested")
        };
        if last >= self.blocks.len() {
            bail!(
                "InceptionV3 has {} layers, layer {last} asked",
                self.blocks.len()
            )
        }
        let (h, w) = (x.dim(2)?, x.dim(3)?);
        if self.output_size(h, w, last).is_none() {
            let min = self.min_input(last);
            bail!(
                "a {h}x{w} image is too small for InceptionV3 up to {}: it needs at least {min}x{min} pixels",
                display_name(last)
            )
        }
        let mut out: Vec<Option<Tensor>> = vec![None; taps.len()];
        let mut y = x.clone();
        for (i, block) in self.blocks[..=last].iter().enumerate() {
            y = block.forward(&y)?;
            for (slot, &t) in out.iter_mut().zip(taps) {
                if t == i {
                    *slot = Some(y.clone());
                }
            }
        }
        Ok(out
            .into_iter()
            .map(|t| t.expect("every tap is on the way"))
            .collect())
    }

    /// Spatial size of layer `upto`'s output for an `h`×`w` input; `None` when the input
    /// is too small to get there.
    pub fn output_size(&self, h: usize, w: usize, upto: usize) -> Option<(usize, usize)> {
        self.blocks[..=upto.min(self.blocks.len() - 1)]
            .iter()
            .try_fold((h, w), |(h, w), b| Some((b.out_size(h)?, b.out_size(w)?)))
            .filter(|&(h, w)| h > 0 && w > 0)
    }

    /// The smallest square input that reaches layer `upto`.
    pub fn min_input(&self, upto: usize) -> usize {
        (1..4096)
            .find(|&s| self.output_size(s, s, upto).is_some())
            .unwrap_or(4096)
    }

    pub fn parameter_count(&self) -> usize {
        self.blocks
            .iter()
            .flat_map(|b| b.convs())
            .map(ConvRelu::elem_count)
            .sum()
    }
}

/// The name users know a layer by (Keras where there is one).
pub fn display_name(i: usize) -> &'static str {
    let l = INCEPTION_LAYERS[i];
    l.keras.unwrap_or(l.checkpoint)
}
