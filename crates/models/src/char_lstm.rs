//! Character-level LSTM (SPEC §1): LSTM(hidden) over one-hot characters, last hidden
//! state → Dense(vocab) → softmax. The one-hot input is never built: the input
//! projection is a row gather (see `oneiro_tensor_ops::lstm`).
//!
//! Weight keys follow PyTorch's `nn.LSTM` / `nn.Linear` (and candle's `LSTM`):
//! `lstm.weight_ih_l0 (4H, V)`, `lstm.weight_hh_l0 (4H, H)`, `lstm.bias_ih_l0 (4H)`,
//! `lstm.bias_hh_l0 (4H)`, `dense.weight (V, H)`, `dense.bias (V)`.

use std::collections::HashMap;

use candle_core::{DType, Device, Result, Tensor, Var, bail};
use oneiro_tensor_ops::{CpuLstmRunner, lstm_last_hidden};
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::init;

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
    /// In the order of [`WEIGHT_KEYS`].
    params: Vec<Var>,
}

impl CharLstm {
    fn expected_shapes(vocab: usize, hidden: usize) -> [Vec<usize>; 6] {
        let g = 4 * hidden;
        [
            vec![g, vocab],
            vec![g, hidden],
            vec![g],
            vec![g],
            vec![vocab, hidden],
            vec![vocab],
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
        let mut forget = vec![0f32; g];
        forget[hidden..2 * hidden].iter_mut().for_each(|b| *b = 1.0);
        let tensors = [
            init::glorot_uniform((g, vocab), vocab, g, rng, dev)?,
            init::orthogonal((g, hidden), rng, dev)?,
            Tensor::from_vec(forget, g, dev)?,
            Tensor::zeros(g, DType::F32, dev)?,
            init::glorot_uniform((vocab, hidden), hidden, vocab, rng, dev)?,
            Tensor::zeros(vocab, DType::F32, dev)?,
        ];
        let params = tensors
            .iter()
            .map(Var::from_tensor)
            .collect::<Result<_>>()?;
        Ok(Self {
            vocab,
            hidden,
            params,
        })
    }

    /// From saved weights (keys of [`WEIGHT_KEYS`]), checking every shape.
    pub fn from_tensors(
        weights: &HashMap<String, Tensor>,
        vocab: usize,
        hidden: usize,
        dev: &Device,
    ) -> Result<Self> {
        let shapes = Self::expected_shapes(vocab, hidden);
        let mut params = Vec::with_capacity(6);
        for (key, shape) in WEIGHT_KEYS.iter().zip(shapes) {
            let Some(t) = weights.get(*key) else {
                bail!("weights lack `{key}`")
            };
            if t.dims() != shape.as_slice() {
                bail!("`{key}` has shape {:?}, expected {shape:?}", t.dims())
            }
            params.push(Var::from_tensor(&t.to_device(dev)?.to_dtype(DType::F32)?)?);
        }
        Ok(Self {
            vocab,
            hidden,
            params,
        })
    }

    /// Named weights, for saving.
    pub fn tensors(&self) -> Vec<(String, Tensor)> {
        WEIGHT_KEYS
            .iter()
            .zip(&self.params)
            .map(|(k, v)| (k.to_string(), v.as_tensor().clone()))
            .collect()
    }

    /// The trainable variables, in the order of [`WEIGHT_KEYS`].
    pub fn vars(&self) -> Vec<Var> {
        self.params.clone()
    }

    pub fn vocab(&self) -> usize {
        self.vocab
    }

    pub fn hidden(&self) -> usize {
        self.hidden
    }

    pub fn parameter_count(&self) -> usize {
        self.params.iter().map(|p| p.elem_count()).sum()
    }

    pub fn device(&self) -> &Device {
        self.params[0].device()
    }

    /// Input projection of every character, `(V, 4H)`: `W_ihᵀ + b_ih + b_hh`.
    fn input_table(&self) -> Result<Tensor> {
        let bias = (self.params[2].as_tensor() + self.params[3].as_tensor())?;
        self.params[0].t()?.broadcast_add(&bias)
    }

    /// Logits `(B, V)` for windows of character ids `(B, T)`. `train` keeps what the
    /// backward pass needs.
    pub fn forward(&self, ids: &Tensor, train: bool) -> Result<Tensor> {
        let h = lstm_last_hidden(ids, &self.input_table()?, &self.params[1], train)?;
        h.matmul(&self.params[4].t()?)?
            .broadcast_add(&self.params[5])
    }

    /// A graph-free batch-1 runner for generation on the CPU.
    pub fn cpu_runner(&self) -> Result<CpuLstmRunner> {
        CpuLstmRunner::new(
            &self.input_table()?,
            &self.params[1],
            &self.params[4],
            &self.params[5],
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
            m.params[2].to_vec1::<f32>()?,
            vec![0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]
        );
        Ok(())
    }
}
