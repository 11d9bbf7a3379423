//! What the pretrained feature extractors ([`crate::InceptionV3`], [`crate::Vgg19`]) share:
//! where their weights come from, the input scaling those weights expect, and layer names.
//!
//! Weights are read by key from a safetensors file in timm's layout (the hub's
//! `timm/inception_v3.tf_in1k`, `timm/vgg19.tv_in1k`), only the tensors the feature
//! extractor needs (VGG19's checkpoint is mostly classifier), or made up from a seed for
//! trying the pipeline without a download. Batch-norm is folded into the convolutions at
//! load time: the networks only ever run in inference mode, and a folded convolution is
//! one op instead of five.

use std::path::Path;

use candle_core::{DType, Device, Result, Shape, Tensor, bail};
use candle_nn::VarBuilder;
use candle_nn::var_builder::SimpleBackend;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};

/// How pixels (RGB, 0–255) become the network's input; fixed by the weights' origin.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Preprocessing {
    /// TensorFlow-slim / Keras InceptionV3: `x / 127.5 - 1`.
    Inception,
    /// torchvision: `(x / 255 - mean) / std`, ImageNet mean (0.485, 0.456, 0.406) and std
    /// (0.229, 0.224, 0.225), RGB.
    Imagenet,
    /// Caffe / Keras VGG: RGB → BGR, minus the ImageNet means (103.939, 116.779, 123.68),
    /// no scaling.
    Caffe,
}

const IMAGENET_MEAN: [f64; 3] = [0.485, 0.456, 0.406];
const IMAGENET_STD: [f64; 3] = [0.229, 0.224, 0.225];
const CAFFE_MEAN_BGR: [f64; 3] = [103.939, 116.779, 123.68];

impl Preprocessing {
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "inception" | "tf" | "tensorflow" => Some(Self::Inception),
            "imagenet" | "torchvision" | "torch" => Some(Self::Imagenet),
            "caffe" | "bgr" => Some(Self::Caffe),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Inception => "inception",
            Self::Imagenet => "imagenet",
            Self::Caffe => "caffe",
        }
    }

    /// One line for users: what the network is fed.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Inception => "pixels / 127.5 - 1 (TensorFlow/Keras InceptionV3)",
            Self::Imagenet => {
                "RGB / 255, minus mean (0.485, 0.456, 0.406), over std (0.229, 0.224, 0.225) (torchvision)"
            }
            Self::Caffe => "RGB to BGR, minus (103.939, 116.779, 123.68), 0-255 (Caffe/Keras VGG)",
        }
    }

    /// The network's input from pixels `(N, 3, H, W)` in RGB 0–255; differentiable.
    pub fn from_pixels(self, px: &Tensor) -> Result<Tensor> {
        match self {
            Self::Inception => px.affine(1.0 / 127.5, -1.0),
            Self::Imagenet => {
                let scale: Vec<f32> = IMAGENET_STD
                    .iter()
                    .map(|s| (1.0 / (255.0 * s)) as f32)
                    .collect();
                let shift: Vec<f32> = (0..3)
                    .map(|c| (-IMAGENET_MEAN[c] / IMAGENET_STD[c]) as f32)
                    .collect();
                channel_affine(px, &scale, &shift)
            }
            Self::Caffe => {
                let bgr = px.index_select(&Tensor::new(&[2u32, 1, 0], px.device())?, 1)?;
                let shift: Vec<f32> = CAFFE_MEAN_BGR.iter().map(|m| -*m as f32).collect();
                channel_affine(&bgr, &[1.0; 3], &shift)
            }
        }
    }
}

fn channel_affine(x: &Tensor, scale: &[f32], shift: &[f32]) -> Result<Tensor> {
    let dev = x.device();
    let s = Tensor::from_slice(scale, (1, 3, 1, 1), dev)?.to_dtype(x.dtype())?;
    let b = Tensor::from_slice(shift, (1, 3, 1, 1), dev)?.to_dtype(x.dtype())?;
    x.broadcast_mul(&s)?.broadcast_add(&b)
}

/// Where a feature extractor's weights come from.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Weights {
    /// A safetensors file with the checkpoint's key names.
    File(std::path::PathBuf),
    /// He-initialised convolutions, identity batch-norm, zero biases, from this seed: a
    /// network that runs like the real one but is **not pretrained**.
    Seeded(u64),
}

impl Weights {
    /// A [`VarBuilder`] over these weights.
    pub fn var_builder(&self, device: &Device) -> Result<VarBuilder<'static>> {
        match self {
            Self::File(path) => open_safetensors(path, device),
            Self::Seeded(seed) => Ok(VarBuilder::from_backend(
                Box::new(SeededWeights { seed: *seed }),
                DType::F32,
                device.clone(),
            )),
        }
    }

    pub fn is_pretrained(&self) -> bool {
        matches!(self, Self::File(_))
    }
}

fn open_safetensors(path: &Path, device: &Device) -> Result<VarBuilder<'static>> {
    if !path.is_file() {
        bail!("weights file {} does not exist", path.display())
    }
    // SAFETY: the mapping lives only while the network is built: every tensor is copied
    // out of it (folded into new tensors) before the builder is dropped. A file rewritten
    // by someone else during those milliseconds is the one hazard left, as with any mmap.
    unsafe { VarBuilder::from_mmaped_safetensors(&[path], DType::F32, device) }
        .map_err(|e| candle_core::Error::Msg(format!("weights file {}: {e}", path.display())))
}

/// The tensors a checkpoint for the network `build` constructs must hold, by key, with
/// [`Weights::Seeded`] values: a file in the real layout without a download (tests, and
/// air-gapped machines trying the loaders).
pub fn seeded_checkpoint(
    seed: u64,
    build: impl FnOnce(&VarBuilder) -> Result<()>,
) -> Result<std::collections::HashMap<String, Tensor>> {
    checkpoint_from(SeededWeights { seed }, build)
}

/// The tensors the network `build` constructs asks `values` for, by key: a checkpoint in
/// the real layout with made-up values (seeded, or a formula a reference script shares).
pub fn checkpoint_from<B: SimpleBackend + 'static>(
    values: B,
    build: impl FnOnce(&VarBuilder) -> Result<()>,
) -> Result<std::collections::HashMap<String, Tensor>> {
    let recorded = std::sync::Arc::new(std::sync::Mutex::new(std::collections::HashMap::new()));
    let vb = VarBuilder::from_backend(
        Box::new(Recording {
            inner: values,
            recorded: recorded.clone(),
        }),
        DType::F32,
        Device::Cpu,
    );
    build(&vb)?;
    drop(vb);
    let map = std::mem::take(&mut *recorded.lock().expect("not poisoned"));
    Ok(map)
}

/// Keeps a copy of every tensor handed out (see [`checkpoint_from`]).
struct Recording<B> {
    inner: B,
    recorded: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, Tensor>>>,
}

impl<B: SimpleBackend> SimpleBackend for Recording<B> {
    fn get(
        &self,
        s: Shape,
        name: &str,
        h: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> Result<Tensor> {
        let t = self.inner.get(s, name, h, dtype, dev)?;
        self.recorded
            .lock()
            .expect("not poisoned")
            .insert(name.to_string(), t.clone());
        Ok(t)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> Result<Tensor> {
        self.inner.get_unchecked(name, dtype, dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.inner.contains_tensor(name)
    }
}

/// Made-up weights, generated per tensor from the seed and the key, so they do not depend
/// on the order in which the network asks for them.
struct SeededWeights {
    seed: u64,
}

impl SimpleBackend for SeededWeights {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> Result<Tensor> {
        let n = s.elem_count();
        let values: Vec<f32> = if name.ends_with("running_var") || name.ends_with("bn.weight") {
            vec![1.0; n]
        } else if s.rank() == 4 {
            let fan_in: usize = s.dims()[1..].iter().product();
            let std = (2.0 / fan_in as f64).sqrt() as f32;
            let key = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
            });
            let mut rng = ChaCha8Rng::seed_from_u64(self.seed ^ key);
            (0..n)
                .map(|_| {
                    std * <StandardNormal as Distribution<f32>>::sample(&StandardNormal, &mut rng)
                })
                .collect()
        } else {
            vec![0.0; n]
        };
        Tensor::from_vec(values, s, dev)?.to_dtype(dtype)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> Result<Tensor> {
        bail!("seeded weights need a shape for {name}")
    }

    fn contains_tensor(&self, _: &str) -> bool {
        true
    }
}

/// A convolution with its batch-norm folded in (`conv → BN → ReLU` of InceptionV3), or a
/// convolution with bias (VGG19); followed by ReLU in both networks.
#[derive(Clone, Debug)]
pub struct ConvRelu {
    pub(crate) weight: Tensor,
    pub(crate) bias: Tensor,
    pub(crate) params: oneiro_tensor_ops::Conv2dParams,
}

impl ConvRelu {
    /// `prefix.conv.weight` + `prefix.bn.{weight,bias,running_mean,running_var}`.
    pub(crate) fn conv_bn(
        vb: &VarBuilder,
        cin: usize,
        cout: usize,
        kernel: (usize, usize),
        stride: usize,
        pad: (usize, usize),
        eps: f64,
    ) -> Result<Self> {
        let w = vb.get((cout, cin, kernel.0, kernel.1), "conv.weight")?;
        let bn = vb.pp("bn");
        let gamma = bn.get(cout, "weight")?;
        let beta = bn.get(cout, "bias")?;
        let mean = bn.get(cout, "running_mean")?;
        let var = bn.get(cout, "running_var")?;
        let scale = gamma.div(&(var + eps)?.sqrt()?)?;
        let weight = w.broadcast_mul(&scale.reshape((cout, 1, 1, 1))?)?;
        let bias = (beta - mean.mul(&scale)?)?;
        Ok(Self {
            weight,
            bias,
            params: oneiro_tensor_ops::Conv2dParams {
                stride: (stride, stride),
                padding: [pad.0, pad.0, pad.1, pad.1],
            },
        })
    }

    /// `prefix.weight` + `prefix.bias`, 3×3, stride 1, padding 1 (VGG).
    pub(crate) fn conv_bias(vb: &VarBuilder, cin: usize, cout: usize) -> Result<Self> {
        Ok(Self {
            weight: vb.get((cout, cin, 3, 3), "weight")?,
            bias: vb.get(cout, "bias")?,
            params: oneiro_tensor_ops::Conv2dParams::new(1, 1),
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        oneiro_tensor_ops::conv2d_bias_relu(x, &self.weight, &self.bias, self.params, 0.0)
    }

    pub(crate) fn elem_count(&self) -> usize {
        self.weight.elem_count() + self.bias.elem_count()
    }
}

/// A layer a caller can tap: its checkpoint name and, where Keras has one, its Keras name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LayerName {
    pub checkpoint: &'static str,
    pub keras: Option<&'static str>,
}

/// The index of `name` (Keras or checkpoint name, case-insensitive) in `layers`, or an
/// error that lists the names there are.
pub fn resolve_layer(network: &str, layers: &[LayerName], name: &str) -> Result<usize> {
    let hit = layers.iter().position(|l| {
        l.checkpoint.eq_ignore_ascii_case(name)
            || l.keras.is_some_and(|k| k.eq_ignore_ascii_case(name))
    });
    match hit {
        Some(i) => Ok(i),
        None => {
            let names: Vec<&str> = layers
                .iter()
                .map(|l| l.keras.unwrap_or(l.checkpoint))
                .collect();
            bail!(
                "{network} has no layer {name:?}; layers: {}",
                names.join(", ")
            )
        }
    }
}
