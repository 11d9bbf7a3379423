//! What the checkpoint-compatibility fixtures record, shared by the program that wrote them
//! (`examples/write_compat_fixtures.rs`, run once on the code before the named-parameter
//! change) and the test that checks today's code against them
//! (`tests/checkpoint_compat.rs`). Only the models' public API is used, so the same
//! summaries are computed by both versions of the code.
//!
//! The DCGAN and char-LSTM fixtures are seeded random weights at tiny widths. The VAE has
//! no width setting and its smallest instance is 2.2 MB of f32, so its fixture records the
//! key set and shapes and its weights are a formula of the key name, written to a
//! safetensors file at test time and loaded through the same path.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Result, Tensor, Var};
use oneiro_models::{CharLstm, Dcgan, GanConfig, Vae, VaeConfig};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde_json::{Value, json};

pub const GAN_FILE: &str = "dcgan_tiny.safetensors";
pub const LSTM_FILE: &str = "char_lstm_tiny.safetensors";
pub const GOLDEN_FILE: &str = "compat_goldens.json";

pub fn fixtures_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

pub fn vae_config() -> VaeConfig {
    VaeConfig {
        latent_dim: 2,
        kl_weight: 5e-4,
    }
}

pub fn gan_config() -> GanConfig {
    GanConfig {
        latent_dim: 8,
        dropout: 0.4,
        leaky_slope: 0.3,
        generator_seed_channels: 4,
        generator_channels: 4,
        discriminator_channels: 4,
    }
}

pub const LSTM_VOCAB: usize = 11;
pub const LSTM_HIDDEN: usize = 8;

/// First 8 values, sum and sum of magnitudes of a tensor.
pub fn summary(t: &Tensor) -> Result<Value> {
    let v = t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
    let first: Vec<f64> = v.iter().take(8).map(|&x| x as f64).collect();
    let sum: f64 = v.iter().map(|&x| x as f64).sum();
    let abs_sum: f64 = v.iter().map(|&x| (x as f64).abs()).sum();
    Ok(json!({ "dims": t.dims(), "first": first, "sum": sum, "abs_sum": abs_sum }))
}

/// Deterministic values in [0, 1) or [-1, 1), without any RNG.
fn wave(n: usize, salt: f64, unit: bool) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let s = (0.731 * i as f64 + salt).sin();
            (if unit { 0.5 * (s + 1.0) } else { s }) as f32
        })
        .collect()
}

/// The VAE's stand-in weights: a formula of the key name, scaled like Glorot by fan-in.
pub fn vae_formula_weights(layout: &[(String, Vec<usize>)]) -> Result<HashMap<String, Tensor>> {
    layout
        .iter()
        .map(|(key, dims)| {
            let salt = (key.bytes().map(u64::from).sum::<u64>() % 97) as f64 * 0.1;
            let n: usize = dims.iter().product();
            let scale = if key.ends_with(".bias") {
                0.05
            } else {
                let fan_in: usize = dims[1..].iter().product();
                (3.0 / fan_in as f64).sqrt()
            };
            let v: Vec<f32> = wave(n, salt, false)
                .into_iter()
                .map(|x| (x as f64 * scale) as f32)
                .collect();
            Ok((
                key.clone(),
                Tensor::from_vec(v, dims.as_slice(), &Device::Cpu)?,
            ))
        })
        .collect()
}

fn layout_of(tensors: &[(String, Tensor)]) -> Vec<(String, Vec<usize>)> {
    tensors
        .iter()
        .map(|(k, t)| (k.clone(), t.dims().to_vec()))
        .collect()
}

fn layout_json(tensors: &[(String, Tensor)]) -> Value {
    Value::Array(
        layout_of(tensors)
            .into_iter()
            .map(|(k, d)| json!([k, d]))
            .collect(),
    )
}

/// Per-key sum of magnitudes of seeded fresh weights: the initialisers and the order they
/// draw from the RNG.
fn init_json(tensors: &[(String, Tensor)]) -> Result<Value> {
    let mut m = serde_json::Map::new();
    for (k, t) in tensors {
        let v = t.flatten_all()?.to_vec1::<f32>()?;
        m.insert(
            k.clone(),
            json!(v.iter().map(|&x| (x as f64).abs()).sum::<f64>()),
        );
    }
    Ok(Value::Object(m))
}

/// Per-variable gradient magnitudes, in `vars()` order.
fn grads_json(vars: &[Var], loss: &Tensor) -> Result<Value> {
    let g = loss.backward()?;
    let mut out = Vec::new();
    for v in vars {
        out.push(match g.get(v.as_tensor()) {
            Some(t) => json!(t.abs()?.sum_all()?.to_scalar::<f32>()? as f64),
            None => Value::Null,
        });
    }
    Ok(Value::Array(out))
}

pub fn vae_summaries(m: &Vae) -> Result<Value> {
    let dev = Device::Cpu;
    let images = Tensor::from_vec(wave(2 * 28 * 28, 0.3, true), (2, 1, 28, 28), &dev)?;
    let eps = Tensor::from_vec(wave(2 * m.config.latent_dim, 1.7, false), (2, ()), &dev)?;
    let enc = m.encode(&images)?;
    let logits = m.decode_logits(&enc.z_mean)?;
    let loss = m.loss(&images, &eps)?;
    Ok(json!({
        "z_mean": summary(&enc.z_mean)?,
        "z_log_var": summary(&enc.z_log_var)?,
        "decode_logits": summary(&logits)?,
        "loss_total": summary(&loss.total)?,
        "loss_reconstruction": summary(&loss.reconstruction)?,
        "loss_kl": summary(&loss.kl)?,
        "grad_abs_sums": grads_json(&m.vars(), &loss.total)?,
    }))
}

pub fn gan_summaries(m: &Dcgan) -> Result<Value> {
    let dev = Device::Cpu;
    let z = Tensor::from_vec(wave(2 * m.config.latent_dim, 0.9, false), (2, ()), &dev)?;
    let images = m.generate(&z)?;
    let logits = m.discriminate(&images, None, false)?;
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let dropped = m.discriminate(&images, Some(&mut rng), false)?;
    let target = Tensor::ones((2, 1), DType::F32, &dev)?;
    let loss = oneiro_models::dcgan::bce_with_logits(&logits, &target)?;
    let frozen = m.discriminate(&images, None, true)?;
    let g_loss = oneiro_models::dcgan::bce_with_logits(&frozen, &target)?;
    Ok(json!({
        "generate": summary(&images)?,
        "discriminate": summary(&logits)?,
        "discriminate_dropout": summary(&dropped)?,
        "discriminator_grad_abs_sums": grads_json(&m.discriminator.vars(), &loss)?,
        "generator_grad_abs_sums": grads_json(&m.generator.vars(), &g_loss)?,
    }))
}

pub fn lstm_ids() -> Result<Tensor> {
    let ids: Vec<u32> = (0..3 * 6)
        .map(|i| (i * 7 + 3) % LSTM_VOCAB as u32)
        .collect();
    Tensor::from_vec(ids, (3, 6), &Device::Cpu)
}

pub fn lstm_summaries(m: &CharLstm) -> Result<Value> {
    let ids = lstm_ids()?;
    let logits = m.forward(&ids, false)?;
    let train = m.forward(&ids, true)?;
    let loss = candle_nn::loss::cross_entropy(
        &train,
        &Tensor::from_vec(vec![1u32, 4, 9], 3, &Device::Cpu)?,
    )?;
    let runner = m.cpu_runner()?;
    let mut scratch = oneiro_tensor_ops::RunnerScratch::default();
    let mut runner_logits = vec![0f32; runner.outputs()];
    runner.logits(&[2, 5, 7, 1], &mut scratch, &mut runner_logits);
    Ok(json!({
        "forward": summary(&logits)?,
        "forward_train": summary(&train)?,
        "cpu_runner": summary(&Tensor::new(runner_logits.as_slice(), &Device::Cpu)?)?,
        "grad_abs_sums": grads_json(&m.vars(), &loss)?,
    }))
}

/// Everything the golden file holds, for the three models as loaded.
pub fn goldens(vae: &Vae, gan: &Dcgan, lstm: &CharLstm) -> Result<Value> {
    let seeded = |seed| ChaCha8Rng::seed_from_u64(seed);
    let fresh_vae = Vae::new_random(vae_config(), &mut seeded(11), &Device::Cpu)?;
    let fresh_gan = Dcgan::new_random(gan_config(), &mut seeded(12), &Device::Cpu)?;
    let fresh_lstm = CharLstm::new_random(LSTM_VOCAB, LSTM_HIDDEN, &mut seeded(13), &Device::Cpu)?;
    let mut out = BTreeMap::new();
    out.insert(
        "vae",
        json!({
            "keys": layout_json(&vae.tensors()),
            "init_abs_sums_seed_11": init_json(&fresh_vae.tensors())?,
            "outputs": vae_summaries(vae)?,
        }),
    );
    out.insert(
        "dcgan",
        json!({
            "keys": layout_json(&gan.tensors()),
            "generator_keys": layout_json(&gan.generator.tensors()),
            "discriminator_keys": layout_json(&gan.discriminator.tensors()),
            "init_abs_sums_seed_12": init_json(&fresh_gan.tensors())?,
            "outputs": gan_summaries(gan)?,
        }),
    );
    out.insert(
        "char_lstm",
        json!({
            "keys": layout_json(&lstm.tensors()),
            "init_abs_sums_seed_13": init_json(&fresh_lstm.tensors())?,
            "outputs": lstm_summaries(lstm)?,
        }),
    );
    Ok(serde_json::to_value(out).expect("plain values"))
}

/// The VAE as the fixture describes it: formula weights for the recorded keys, saved and
/// loaded back through safetensors, then built by `Vae::from_tensors`.
pub fn load_vae(layout: &[(String, Vec<usize>)], dir: &Path) -> Result<Vae> {
    let weights = vae_formula_weights(layout)?;
    let path = dir.join("vae.safetensors");
    candle_core::safetensors::save(&weights, &path)?;
    let back = candle_core::safetensors::load(&path, &Device::Cpu)?;
    Vae::from_tensors(vae_config(), &back, &Device::Cpu)
}

pub fn load_gan(path: &Path) -> Result<Dcgan> {
    let w = candle_core::safetensors::load(path, &Device::Cpu)?;
    Dcgan::from_tensors(gan_config(), &w, &Device::Cpu)
}

pub fn load_lstm(path: &Path) -> Result<CharLstm> {
    let w = candle_core::safetensors::load(path, &Device::Cpu)?;
    CharLstm::from_tensors(&w, LSTM_VOCAB, LSTM_HIDDEN, &Device::Cpu)
}

pub fn parse_layout(v: &Value) -> Vec<(String, Vec<usize>)> {
    v.as_array()
        .expect("a key list")
        .iter()
        .map(|e| {
            let key = e[0].as_str().expect("a key").to_string();
            let dims = e[1]
                .as_array()
                .expect("dims")
                .iter()
                .map(|d| d.as_u64().expect("a dim") as usize)
                .collect();
            (key, dims)
        })
        .collect()
}
