//! Checkpoints written before the models named their parameters still load, under the same
//! keys in the same order (optimizer state pairs with `vars()` by position), and the loaded
//! models compute what they computed then. The fixtures and goldens were written by
//! `examples/write_compat_fixtures.rs` on the code before that change.

#[path = "support/compat.rs"]
mod compat;

use serde_json::Value;

fn goldens() -> Value {
    let path = compat::fixtures_dir().join(compat::GOLDEN_FILE);
    serde_json::from_str(&std::fs::read_to_string(path).expect("goldens")).expect("json")
}

/// Values within 1e-5 of the golden relative to their size; sums relative to the sum of
/// magnitudes, so a sum that cancels to near zero is not held to its own tiny size.
fn assert_close(what: &str, got: &Value, want: &Value) {
    match (got, want) {
        (Value::Object(g), Value::Object(w)) => {
            let gk: Vec<_> = g.keys().collect();
            let wk: Vec<_> = w.keys().collect();
            assert_eq!(gk, wk, "{what}: fields");
            let scale = w.get("abs_sum").and_then(Value::as_f64);
            for (k, wv) in w {
                let name = format!("{what}.{k}");
                match (k.as_str(), scale) {
                    ("sum", Some(s)) => close(&name, g[k].as_f64(), wv.as_f64(), s),
                    _ => assert_close(&name, &g[k], wv),
                }
            }
        }
        (Value::Array(g), Value::Array(w)) => {
            assert_eq!(g.len(), w.len(), "{what}: length");
            for (i, (gv, wv)) in g.iter().zip(w).enumerate() {
                assert_close(&format!("{what}[{i}]"), gv, wv);
            }
        }
        (Value::Number(_), Value::Number(n)) if n.is_f64() => {
            let w = want.as_f64();
            close(what, got.as_f64(), w, w.unwrap().abs())
        }
        _ => assert_eq!(got, want, "{what}"),
    }
}

fn close(what: &str, got: Option<f64>, want: Option<f64>, scale: f64) {
    let (g, w) = (got.expect(what), want.expect(what));
    let tol = 1e-5 * scale.max(1e-12);
    assert!((g - w).abs() <= tol, "{what}: {g} vs golden {w}");
}

#[test]
fn old_checkpoints_load_under_the_same_keys_and_compute_the_same() {
    let want = goldens();
    let dir = tempfile::tempdir().expect("tempdir");
    let fixtures = compat::fixtures_dir();
    let vae_layout = compat::parse_layout(&want["vae"]["keys"]);
    let vae = compat::load_vae(&vae_layout, dir.path()).expect("VAE");
    let gan = compat::load_gan(&fixtures.join(compat::GAN_FILE)).expect("DCGAN fixture");
    let lstm = compat::load_lstm(&fixtures.join(compat::LSTM_FILE)).expect("LSTM fixture");
    let got = compat::goldens(&vae, &gan, &lstm).expect("goldens");
    for model in ["vae", "dcgan", "char_lstm"] {
        assert_close(model, &got[model], &want[model]);
    }
}

#[test]
fn the_fixture_files_hold_exactly_the_recorded_keys() {
    let want = goldens();
    let fixtures = compat::fixtures_dir();
    for (model, file) in [
        ("dcgan", compat::GAN_FILE),
        ("char_lstm", compat::LSTM_FILE),
    ] {
        let saved = candle_core::safetensors::load(fixtures.join(file), &candle_core::Device::Cpu)
            .expect("fixture");
        let mut keys: Vec<_> = saved.keys().cloned().collect();
        keys.sort();
        let mut recorded: Vec<_> = compat::parse_layout(&want[model]["keys"])
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        recorded.sort();
        assert_eq!(keys, recorded, "{model}");
    }
}
