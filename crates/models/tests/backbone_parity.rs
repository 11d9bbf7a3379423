//! Parity of the InceptionV3 and VGG19 feature extractors with torchvision (the layout of
//! timm's public checkpoints), without downloading a checkpoint: weights follow a formula
//! of the key name that `goldens/backbone_goldens.py` also uses, are written to a
//! safetensors file with the real key names, loaded through the real loader, and every
//! tap's activations and the input gradient of a loss are compared with the goldens the
//! script wrote from PyTorch.

use candle_core::{DType, Device, Result, Shape, Tensor, Var};
use candle_nn::VarBuilder;
use oneiro_models::backbone::checkpoint_from;
use oneiro_models::{InceptionV3, Preprocessing, Vgg19, Weights};
use serde_json::Value;

/// The golden script's weight formula.
struct Formula;

fn formula_values(key: &str, dims: &[usize]) -> Vec<f32> {
    let s = (key.bytes().map(u64::from).sum::<u64>() % 97) as f64;
    let n: usize = dims.iter().product();
    let u = |i: usize| (0.37 * i as f64 + 0.1 * s).sin();
    let f: Box<dyn Fn(f64) -> f64> = if dims.len() == 4 {
        let fan_in: usize = dims[1..].iter().product();
        let scale = (4.0 / fan_in as f64).sqrt();
        Box::new(move |u| u * scale)
    } else if key.ends_with("bn.weight") {
        Box::new(|u| 1.0 + 0.1 * u)
    } else if key.ends_with("bn.bias") || key.ends_with("bn.running_mean") {
        Box::new(|u| 0.1 * u)
    } else if key.ends_with("bn.running_var") {
        Box::new(|u| 1.0 + 0.25 * (u + 1.0))
    } else if key.ends_with(".bias") {
        Box::new(|u| 0.01 * u)
    } else {
        panic!("no formula for {key}")
    };
    (0..n).map(|i| f(u(i)) as f32).collect()
}

impl candle_nn::var_builder::SimpleBackend for Formula {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> Result<Tensor> {
        Tensor::from_vec(formula_values(name, s.dims()), s, dev)?.to_dtype(dtype)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> Result<Tensor> {
        panic!("unchecked get of {name}")
    }

    fn contains_tensor(&self, _: &str) -> bool {
        true
    }
}

/// Writes the formula checkpoint for the network `build` constructs, with some extra
/// tensors real checkpoints carry (a classifier, batch counters) that must be ignored.
fn checkpoint(
    dir: &std::path::Path,
    build: impl Fn(&VarBuilder) -> Result<()>,
) -> std::path::PathBuf {
    let mut tensors = checkpoint_from(Formula, build).unwrap();
    tensors.insert(
        "fc.weight".into(),
        Tensor::zeros((10, 4), DType::F32, &Device::Cpu).unwrap(),
    );
    tensors.insert(
        "Conv2d_1a_3x3.bn.num_batches_tracked".into(),
        Tensor::new(0i64, &Device::Cpu).unwrap(),
    );
    let path = dir.join("model.safetensors");
    candle_core::safetensors::save(&tensors, &path).unwrap();
    path
}

fn goldens() -> Value {
    let text = include_str!("goldens/backbone_goldens.json");
    serde_json::from_str(text).unwrap()
}

fn pixels(h: usize, w: usize) -> Tensor {
    let mut v = Vec::with_capacity(3 * h * w);
    for c in 0..3 {
        for y in 0..h {
            for x in 0..w {
                v.push(
                    (127.5 + 127.5 * (0.11 * y as f64 + 0.07 * x as f64 + 1.3 * c as f64).sin())
                        as f32,
                );
            }
        }
    }
    Tensor::from_vec(v, (1, 3, h, w), &Device::Cpu).unwrap()
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

fn stats(v: &[f32]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
    let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
    (mean, var.sqrt())
}

/// Compares shape, mean, std and the sampled values of `t` with golden entry `g`, within
/// `tol` × the golden std (activations after ReLU have many exact zeros: a relative
/// tolerance alone would not do).
fn check(what: &str, t: &Tensor, g: &Value, tol: f64) {
    let shape: Vec<usize> = g["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_u64().unwrap() as usize)
        .collect();
    assert_eq!(t.dims(), &shape[..], "{what}: shape");
    let v = flat(t);
    let (mean, std) = stats(&v);
    let (gmean, gstd) = (g["mean"].as_f64().unwrap(), g["std"].as_f64().unwrap());
    let abs = tol * gstd;
    assert!(
        (mean - gmean).abs() <= abs,
        "{what}: mean {mean} vs {gmean}"
    );
    assert!((std - gstd).abs() <= abs, "{what}: std {std} vs {gstd}");
    for s in g["samples"].as_array().unwrap() {
        let (i, want) = (s[0].as_u64().unwrap() as usize, s[1].as_f64().unwrap());
        let got = v[i] as f64;
        assert!(
            (got - want).abs() <= abs,
            "{what}: element {i} is {got}, PyTorch {want}"
        );
    }
}

#[test]
fn inception_v3_matches_torchvision_at_every_tap_and_in_its_input_gradient() {
    let g = goldens();
    let g = &g["inception_v3"];
    let dir = tempfile::tempdir().unwrap();
    let path = checkpoint(dir.path(), |vb| {
        InceptionV3::from_var_builder(vb, 1e-3).map(|_| ())
    });
    let net = InceptionV3::load(&Weights::File(path), 1e-3, &Device::Cpu).unwrap();
    let x = Preprocessing::Inception
        .from_pixels(&pixels(99, 123))
        .unwrap();

    let names: Vec<String> = g["taps"].as_object().unwrap().keys().cloned().collect();
    let taps: Vec<usize> = names
        .iter()
        .map(|n| InceptionV3::resolve(n).unwrap())
        .collect();
    assert_eq!(taps.len(), 18, "every layer has a golden");
    let outs = net.forward_taps(&x, &taps).unwrap();
    for (name, out) in names.iter().zip(&outs) {
        check(name, out, &g["taps"][name], 1e-3);
    }

    // DeepDream's loss and its gradient w.r.t. the input: the pools' and convolutions'
    // backward passes against PyTorch's autograd.
    let gd = &g["dream_grad"];
    let weights: Vec<(usize, f64)> = gd["weights"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (InceptionV3::resolve(k).unwrap(), v.as_f64().unwrap()))
        .collect();
    let var = Var::from_tensor(&x).unwrap();
    let taps: Vec<usize> = weights.iter().map(|w| w.0).collect();
    let acts = net.forward_taps(var.as_tensor(), &taps).unwrap();
    let mut loss = Tensor::new(0f32, &Device::Cpu).unwrap();
    for (a, (_, c)) in acts.iter().zip(&weights) {
        loss = (loss + (a.sqr().unwrap().mean_all().unwrap() * *c).unwrap()).unwrap();
    }
    let l = loss.to_scalar::<f32>().unwrap() as f64;
    let want = gd["loss"].as_f64().unwrap();
    assert!((l - want).abs() <= 1e-4 * want, "dream loss {l} vs {want}");
    let grads = loss.backward().unwrap();
    check("dream gradient", grads.get(&var).unwrap(), gd, 2e-3);
}

#[test]
fn vgg19_matches_torchvision_at_every_tap_and_in_its_input_gradient() {
    let g = goldens();
    let g = &g["vgg19"];
    let dir = tempfile::tempdir().unwrap();
    let path = checkpoint(dir.path(), |vb| Vgg19::from_var_builder(vb).map(|_| ()));
    let net = Vgg19::load(&Weights::File(path), &Device::Cpu).unwrap();
    let x = Preprocessing::Imagenet
        .from_pixels(&pixels(37, 50))
        .unwrap();
    let names: Vec<String> = g["taps"].as_object().unwrap().keys().cloned().collect();
    let taps: Vec<usize> = names.iter().map(|n| Vgg19::resolve(n).unwrap()).collect();
    let outs = net.forward_taps(&x, &taps).unwrap();
    for (name, out) in names.iter().zip(&outs) {
        check(name, out, &g["taps"][name], 1e-3);
    }

    let var = Var::from_tensor(&x).unwrap();
    let taps = [
        Vgg19::resolve("block4_conv1").unwrap(),
        Vgg19::resolve("block5_conv2").unwrap(),
    ];
    let acts = net.forward_taps(var.as_tensor(), &taps).unwrap();
    let loss = (acts[0].sqr().unwrap().mean_all().unwrap()
        + acts[1].sqr().unwrap().mean_all().unwrap())
    .unwrap();
    let l = loss.to_scalar::<f32>().unwrap() as f64;
    let want = g["grad"]["loss"].as_f64().unwrap();
    assert!((l - want).abs() <= 1e-4 * want, "VGG loss {l} vs {want}");
    let grads = loss.backward().unwrap();
    check(
        "VGG input gradient",
        grads.get(&var).unwrap(),
        &g["grad"],
        2e-3,
    );
}

#[test]
fn layer_names_resolve_both_ways_and_unknown_names_list_the_choices() {
    assert_eq!(
        InceptionV3::resolve("mixed3").unwrap(),
        InceptionV3::resolve("Mixed_6a").unwrap()
    );
    assert_eq!(
        Vgg19::resolve("block5_conv2").unwrap(),
        Vgg19::resolve("features.31").unwrap()
    );
    let e = InceptionV3::resolve("mixed11").unwrap_err().to_string();
    assert!(e.contains("mixed11") && e.contains("mixed10"), "{e}");
    let e = Vgg19::resolve("conv9").unwrap_err().to_string();
    assert!(e.contains("block1_conv1"), "{e}");
}

#[test]
fn a_checkpoint_missing_a_tensor_or_with_a_wrong_shape_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let path = checkpoint(dir.path(), |vb| Vgg19::from_var_builder(vb).map(|_| ()));
    let mut t = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    t.remove("features.28.bias");
    candle_core::safetensors::save(&t, &path).unwrap();
    let e = Vgg19::load(&Weights::File(path.clone()), &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(e.contains("features.28.bias"), "{e}");
    t.insert(
        "features.28.bias".into(),
        Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap(),
    );
    candle_core::safetensors::save(&t, &path).unwrap();
    let e = Vgg19::load(&Weights::File(path), &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(e.contains("features.28.bias"), "{e}");
    let e = Vgg19::load(
        &Weights::File(dir.path().join("none.safetensors")),
        &Device::Cpu,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("does not exist"), "{e}");
    std::fs::write(dir.path().join("junk.safetensors"), b"not a checkpoint").unwrap();
    assert!(
        Vgg19::load(
            &Weights::File(dir.path().join("junk.safetensors")),
            &Device::Cpu
        )
        .is_err()
    );
}

#[test]
fn images_too_small_for_the_deepest_tap_get_an_error_naming_the_minimum() {
    let net = InceptionV3::load(&Weights::Seeded(1), 1e-3, &Device::Cpu).unwrap();
    let mixed5 = InceptionV3::resolve("mixed5").unwrap();
    let min = net.min_input(mixed5);
    assert_eq!(min, 43, "up to mixed5 (Mixed_6c) the input shrinks 16-fold");
    assert_eq!(
        net.min_input(InceptionV3::resolve("mixed10").unwrap()),
        75,
        "Keras' minimum for the whole network"
    );
    let x = Tensor::zeros((1, 3, 40, 200), DType::F32, &Device::Cpu).unwrap();
    let e = net.forward_taps(&x, &[mixed5]).unwrap_err().to_string();
    assert!(e.contains("40x200") && e.contains("43x43"), "{e}");
    let ok = Tensor::zeros((1, 3, 43, 43), DType::F32, &Device::Cpu).unwrap();
    assert_eq!(
        net.forward_taps(&ok, &[mixed5]).unwrap()[0].dims(),
        &[1, 768, 1, 1]
    );
    // Seeded weights are the full network: every parameter of the real one.
    assert_eq!(net.parameter_count(), 21_751_136 + 17_216);
    let vgg = Vgg19::load(&Weights::Seeded(1), &Device::Cpu).unwrap();
    assert_eq!(vgg.parameter_count(), 20_024_384);
}
