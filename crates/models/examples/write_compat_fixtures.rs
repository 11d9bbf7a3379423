//! Writes the checkpoint-compatibility fixtures under `tests/fixtures/` with the code as it
//! is when run. Run once, before a change that must keep checkpoints loading and outputs
//! unchanged; `tests/checkpoint_compat.rs` then holds later code to them. Rerunning it
//! after such a change would only re-record whatever that code does.
//!
//!     cargo run -p oneiro-models --example write_compat_fixtures

#[path = "../tests/support/compat.rs"]
mod compat;

use std::collections::HashMap;

use candle_core::{Device, Result, Tensor};
use oneiro_models::{CharLstm, Dcgan, Vae};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn save(tensors: Vec<(String, Tensor)>, path: &std::path::Path) -> Result<()> {
    let map: HashMap<String, Tensor> = tensors.into_iter().collect();
    candle_core::safetensors::save(&map, path)
}

fn main() -> Result<()> {
    let dir = compat::fixtures_dir();
    std::fs::create_dir_all(&dir)?;
    let dev = Device::Cpu;

    let gan = Dcgan::new_random(
        compat::gan_config(),
        &mut ChaCha8Rng::seed_from_u64(2),
        &dev,
    )?;
    save(gan.tensors(), &dir.join(compat::GAN_FILE))?;
    let lstm = CharLstm::new_random(
        compat::LSTM_VOCAB,
        compat::LSTM_HIDDEN,
        &mut ChaCha8Rng::seed_from_u64(3),
        &dev,
    )?;
    save(lstm.tensors(), &dir.join(compat::LSTM_FILE))?;
    // The VAE's key list comes from a fresh model; its weights are the formula's.
    let fresh = Vae::new_random(
        compat::vae_config(),
        &mut ChaCha8Rng::seed_from_u64(1),
        &dev,
    )?;
    let layout: Vec<(String, Vec<usize>)> = fresh
        .tensors()
        .iter()
        .map(|(k, t)| (k.clone(), t.dims().to_vec()))
        .collect();

    // Goldens from the models as loaded back, exactly as the test will load them.
    let tmp = std::env::temp_dir().join(format!("oneiro-compat-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    let vae = compat::load_vae(&layout, &tmp)?;
    std::fs::remove_dir_all(&tmp)?;
    let gan = compat::load_gan(&dir.join(compat::GAN_FILE))?;
    let lstm = compat::load_lstm(&dir.join(compat::LSTM_FILE))?;
    let goldens = compat::goldens(&vae, &gan, &lstm)?;
    let text = serde_json::to_string_pretty(&goldens).expect("json") + "\n";
    std::fs::write(dir.join(compat::GOLDEN_FILE), text)?;
    for f in [compat::GAN_FILE, compat::LSTM_FILE, compat::GOLDEN_FILE] {
        let n = std::fs::metadata(dir.join(f))?.len();
        println!("{f}: {n} bytes");
    }
    Ok(())
}
