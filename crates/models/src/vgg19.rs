//! VGG19's convolutional part as a feature extractor, with the key names of timm's
//! `vgg19.tv_in1k` (torchvision's `features.N.weight|bias`). Taps are after the ReLU,
//! named as Keras names them (`block1_conv1` … `block5_conv4`, `block1_pool` …) or by
//! the checkpoint's module index (`features.1`, the ReLU after `features.0`); the forward
//! pass stops at the deepest tap.

use candle_core::{Device, Result, Tensor, bail};
use candle_nn::VarBuilder;
use oneiro_tensor_ops::{Pool2dParams, max_pool2d};

use crate::backbone::{ConvRelu, LayerName, Weights, resolve_layer};

/// Channels per block (four blocks of convolutions, each then max-pooled).
const BLOCKS: [(usize, usize); 5] = [(64, 2), (128, 2), (256, 4), (512, 4), (512, 4)];

/// The tappable layers in forward order: 16 convolutions (after ReLU) and 5 pools.
pub const VGG19_LAYERS: [LayerName; 21] = {
    const fn l(checkpoint: &'static str, keras: &'static str) -> LayerName {
        LayerName {
            checkpoint,
            keras: Some(keras),
        }
    }
    [
        l("features.1", "block1_conv1"),
        l("features.3", "block1_conv2"),
        l("features.4", "block1_pool"),
        l("features.6", "block2_conv1"),
        l("features.8", "block2_conv2"),
        l("features.9", "block2_pool"),
        l("features.11", "block3_conv1"),
        l("features.13", "block3_conv2"),
        l("features.15", "block3_conv3"),
        l("features.17", "block3_conv4"),
        l("features.18", "block3_pool"),
        l("features.20", "block4_conv1"),
        l("features.22", "block4_conv2"),
        l("features.24", "block4_conv3"),
        l("features.26", "block4_conv4"),
        l("features.27", "block4_pool"),
        l("features.29", "block5_conv1"),
        l("features.31", "block5_conv2"),
        l("features.33", "block5_conv3"),
        l("features.35", "block5_conv4"),
        l("features.36", "block5_pool"),
    ]
};

#[derive(Clone, Debug)]
enum Layer {
    Conv(ConvRelu),
    Pool,
}

/// VGG19 `features`: 3×3 convolutions with ReLU and 2×2 max-pools.
#[derive(Clone, Debug)]
pub struct Vgg19 {
    layers: Vec<Layer>,
}

impl Vgg19 {
    pub fn load(weights: &Weights, device: &Device) -> Result<Self> {
        Self::from_var_builder(&weights.var_builder(device)?)
    }

    pub fn from_var_builder(vb: &VarBuilder) -> Result<Self> {
        let vb = vb.pp("features");
        let mut layers = Vec::with_capacity(VGG19_LAYERS.len());
        let (mut index, mut cin) = (0, 3);
        for (cout, n) in BLOCKS {
            for _ in 0..n {
                layers.push(Layer::Conv(ConvRelu::conv_bias(&vb.pp(index), cin, cout)?));
                cin = cout;
                index += 2; // the convolution and its ReLU
            }
            layers.push(Layer::Pool);
            index += 1;
        }
        Ok(Self { layers })
    }

    pub fn layers() -> &'static [LayerName] {
        &VGG19_LAYERS
    }

    /// The index of a layer by Keras (`block5_conv2`) or checkpoint (`features.31`) name.
    pub fn resolve(name: &str) -> Result<usize> {
        resolve_layer("VGG19", &VGG19_LAYERS, name)
    }

    /// The activations of layers `taps` for `x` (`(N, 3, H, W)`, already preprocessed),
    /// in the order asked; the forward pass stops at the deepest one.
    pub fn forward_taps(&self, x: &Tensor, taps: &[usize]) -> Result<Vec<Tensor>> {
        let Some(&last) = taps.iter().max() else {
            bail!("no VGG19 layer requested")
        };
        if last >= self.layers.len() {
            bail!("VGG19 has {} layers, layer {last} asked", self.layers.len())
        }
        let (h, w) = (x.dim(2)?, x.dim(3)?);
        let pools = self.layers[..=last]
            .iter()
            .filter(|l| matches!(l, Layer::Pool))
            .count();
        if h >> pools == 0 || w >> pools == 0 {
            bail!(
                "a {h}x{w} image is too small for VGG19 up to {}: it needs at least {min}x{min} pixels",
                VGG19_LAYERS[last].keras.unwrap_or_default(),
                min = 1usize << pools,
            )
        }
        let mut out: Vec<Option<Tensor>> = vec![None; taps.len()];
        let mut y = x.clone();
        for (i, layer) in self.layers[..=last].iter().enumerate() {
            y = match layer {
                Layer::Conv(c) => c.forward(&y)?,
                Layer::Pool => max_pool2d(&y, Pool2dParams::new(2, 2, 0))?,
            };
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

    pub fn parameter_count(&self) -> usize {
        self.layers
            .iter()
            .map(|l| match l {
                Layer::Conv(c) => c.elem_count(),
                Layer::Pool => 0,
            })
            .sum()
    }
}
