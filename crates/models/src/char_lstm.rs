//! Character-level LSTM (SPEC §1): LSTM(hidden) over one-hot characters, last hidden
//! state → Dense(vocab) → softmax. The one-hot input is never built: the input
//! projection is a row gather (see `oneiro_tensor_ops::lstm`).
//!
//! Weight keys follow PyTorch's `nn.LSTM` / `nn.Linear` (and candle's `LSTM`):
//! `lstm.weight_ih_l0 (4H, V)`, `lstm.weight_hh_l0 (4H, H)`, `lstm.bias_ih_l0 (4H)`,
//! `lstm.bias_hh_l0 (4H)`, `dense.weight (V, H)`, `dense.bias (V)`.

use std::collections::HashMap;

use candle_core::{DType, Device, Result, Tensor, Var};
use oneiro_tensor_ops::{CpuLstmRunner, lstm_last_hidden};
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::init;
use crate::params::{self, Layer};

/// Hyper-parameters, with the book's defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CharLstmConfig {
    /// Characters per window.
    pub maxlen: usize,
    /// Distance between the starts of consecutive windows.
    pub step: usize,
    /// LSTM units.
    pub hidden: usize,
    /// Lower-case the corpus before use.
    pub lowercase: bool,
}

impl Default for CharLstmConfig {
    fn default() -> Self {
        Self {
            maxlen: 60,
            step: 3,
            hidden: 128,
            lowercase: true,
        }
    }
}

impl CharLstmConfig {
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.maxlen == 0 || self.maxlen > 10_000 {
            return Err(format!(
                "maxlen must be between 1 and 10000, got {}",
                self.maxlen
            ));
        }
        if self.step == 0 {
            return Err("step must be at least 1".into());
        }
        if self.hidden == 0 || self.hidden > 8192 {
            return Err(format!(
                "hidden must be between 1 and 8192, got {}",
                self.hidden
            ));
        }
        Ok(())
    }
}

pub const WEIGHT_KEYS: [&str; 6] = [
    "lstm.weight_ih_l0",
    "lstm.weight_hh_l0",
    "lstm.bias_ih_l0",
    "lstm.bias_hh_l0",
    "dense.weight",
    "dense.bias",
];

pub struct CharLstm {
    vocab: usize,
    hidden: usize,
    lstm: Lstm,
    dense: Layer,
}

/// PyTorch's `nn.LSTM` weights for one layer, named as it names them.
struct Lstm {
    weight_ih_l0: Var,
    weight_hh_l0: Var,
    bias_ih_l0: Var,
    bias_hh_l0: Var,
}

impl CharLstm {
    /// Every variable, asking `source` for each in the order of [`WEIGHT_KEYS`].
    fn build(
        vocab: usize,
        hidden: usize,
        mut source: impl FnMut(&str, &[usize]) -> Result<Var>,
    ) -> Result<Self> {
        let g = 4 * hidden;
        let s = &mut source;
        let lstm = Lstm {
            weight_ih_l0: s(WEIGHT_KEYS[0], &[g, vocab])?,
            weight_hh_l0: s(WEIGHT_KEYS[1], &[g, hidden])?,
            bias_ih_l0: s(WEIGHT_KEYS[2], &[g])?,
            bias_hh_l0: s(WEIGHT_KEYS[3], &[g])?,
        };
        Ok(Self {
            vocab,
            hidden,
            lstm,
            dense: Layer::new("dense", &[vocab, hidden], vocab, s)?,
        })
    }

    /// In the order of [`WEIGHT_KEYS`].
    fn named(&self) -> [(String, &Var); 6] {
        let l = &self.lstm;
        let [dense_w, dense_b] = self.dense.named();
        [
            (WEIGHT_KEYS[0].to_string(), &l.weight_ih_l0),
            (WEIGHT_KEYS[1].to_string(), &l.weight_hh_l0),
            (WEIGHT_KEYS[2].to_string(), &l.bias_ih_l0),
            (WEIGHT_KEYS[3].to_string(), &l.bias_hh_l0),
            dense_w,
            dense_b,
        ]
    }

    /// Fresh weights with Keras' initialisers: Glorot-uniform kernels, an orthogonal
    /// recurrent kernel, zero biases except the forget gate's (1, `unit_forget_bias`).
    pub fn new_random(
        vocab: usize,
        hidden: usize,
        rng: &mut impl Rng,
        dev: &Device,
    ) -> Result<Self> {
        let g = 4 * hidden;
        Self::build(vocab, hidden, |key, shape| {
            let t = match key {
                "lstm.weight_ih_l0" => init::glorot_uniform((g, vocab), vocab, g, rng, dev)?,
                "lstm.weight_hh_l0" => init::orthogonal((g, hidden), rng, dev)?,
                "lstm.bias_ih_l0" => {
                    let mut forget = vec![0f32; g];
                    forget[hidden..2 * hidden].iter_mut().for_each(|b| *b = 1.0);
                    Tensor::from_vec(forget, g, dev)?
                }
                "dense.weight" => init::glorot_uniform((vocab, hidden), hidden, vocab, rng, dev)?,
                _ => Tensor::zeros(shape, DType::F32, dev)?,
            };
            Var::from_tensor(&t)
        })
    }

    /// From saved weights (keys of [`WEIGHT_KEYS`]), checking every shape.
    pub fn from_tensors(
        weights: &HashMap<String, Tensor>,
        vocab: usize,
        hidden: usize,
        dev: &Device,
    ) -> Result<Self> {
        Self::build(vocab, hidden, params::saved(weights, dev))
    }

    /// Named weights, for saving.
    pub fn tensors(&self) -> Vec<(String, Tensor)> {
        params::tensors(self.named())
    }

    /// The trainable variables, in the order of [`WEIGHT_KEYS`].
    pub fn vars(&self) -> Vec<Var> {
        self.named().into_iter().map(|(_, v)| v.clone()).collect()
    }

    pub fn vocab(&self) -> usize {
        self.vocab
    }

    pub fn hidden(&self) -> usize {
        self.hidden
    }

    pub fn parameter_count(&self) -> usize {
        self.named().iter().map(|(_, v)| v.elem_count()).sum()
    }

    pub fn device(&self) -> &Device {
        self.lstm.weight_ih_l0.device()
    }

    /// Input projection of every character, `(V, 4H)`: `W_ihᵀ + b_ih + b_hh`.
    fn input_table(&self) -> Result<Tensor> {
        let l = &self.lstm;
        let bias = (l.bias_ih_l0.as_tensor() + l.bias_hh_l0.as_tensor())?;
        l.weight_ih_l0.t()?.broadcast_add(&bias)
    }

    /// Logits `(B, V)` for windows of character ids `(B, T)`. `train` keeps what the
    /// backward pass needs.
    pub fn forward(&self, ids: &Tensor, train: bool) -> Result<Tensor> {
        let w_hh = &self.lstm.weight_hh_l0;
        let h = lstm_last_hidden(ids, &self.input_table()?, w_hh, train)?;
        h.matmul(&self.dense.weight.t()?)?
            .broadcast_add(&self.dense.bias)
    }

    /// A graph-free batch-1 runner for generation on the CPU.
    pub fn cpu_runner(&self) -> Result<CpuLstmRunner> {
        CpuLstmRunner::new(
            &self.input_table()?,
            &self.lstm.weight_hh_l0,
            &self.dense.weight,
            &self.dense.bias,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn weights_round_trip_through_named_tensors() -> Result<()> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let m = CharLstm::new_random(7, 5, &mut rng, &Device::Cpu)?;
        assert_eq!(m.parameter_count(), 20 * 7 + 20 * 5 + 40 + 7 * 5 + 7);
        let saved: HashMap<String, Tensor> = m.tensors().into_iter().collect();
        let loaded = CharLstm::from_tensors(&saved, 7, 5, &Device::Cpu)?;
        let ids = Tensor::new(&[[1u32, 2, 3], [6, 0, 0]], &Device::Cpu)?;
        let diff = (m.forward(&ids, false)? - loaded.forward(&ids, false)?)?
            .abs()?
            .max_all()?;
        assert_eq!(diff.to_scalar::<f32>()?, 0.0);
        Ok(())
    }

    #[test]
    fn wrong_shapes_are_named() -> Result<()> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let m = CharLstm::new_random(7, 5, &mut rng, &Device::Cpu)?;
        let saved: HashMap<String, Tensor> = m.tensors().into_iter().collect();
        let err = CharLstm::from_tensors(&saved, 8, 5, &Device::Cpu)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("lstm.weight_ih_l0") && err.contains("[20, 8]"),
            "{err}"
        );
        Ok(())
    }

    #[test]
    fn forget_gate_bias_starts_at_one() -> Result<()> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let m = CharLstm::new_random(3, 2, &mut rng, &Device::Cpu)?;
        assert_eq!(
            m.lstm.bias_ih_l0.to_vec1::<f32>()?,
            vec![0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]
        );
        Ok(())
    }
}
