//! Text generation with the book's sliding-window loop and temperature sampling.

use candle_core::{Device, Tensor};
use oneiro_models::{CharLstm, Vocabulary, vocab::describe_chars};
use oneiro_tensor_ops::{CpuLstmRunner, Wavefront, sampling};
use rand::Rng;

use crate::store::{ModelRecord, ModelStore};
use crate::{Error, Result};

/// A trained character model ready to generate.
pub struct CharGenerator {
    pub model: CharLstm,
    pub vocab: Vocabulary,
    pub maxlen: usize,
    pub lowercase: bool,
    /// Graph-free fast path, on the CPU.
    runner: Option<CpuLstmRunner>,
}

/// Checks a requested temperature: finite and ≥ 0 (0 means greedy).
pub fn validate_temperature(t: f32) -> Result<()> {
    if t.is_finite() && t >= 0.0 {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "temperature must be a finite number >= 0 (0 = greedy), got {t}"
        )))
    }
}

impl CharGenerator {
    pub fn new(model: CharLstm, vocab: Vocabulary, maxlen: usize, lowercase: bool) -> Result<Self> {
        let runner = if model.device().is_cpu() {
            Some(model.cpu_runner()?)
        } else {
            None
        };
        Ok(Self {
            model,
            vocab,
            maxlen,
            lowercase,
            runner,
        })
    }

    /// Estimated memory the loaded model holds: its weights, plus the CPU runner's
    /// rearranged copies (about twice the weights again) on the CPU.
    pub fn resident_bytes(&self) -> u64 {
        let weights = self.model.parameter_count() as u64 * 4;
        if self.runner.is_some() {
            3 * weights
        } else {
            weights
        }
    }

    /// Loads the current checkpoint of `record` onto `device`.
    pub fn load(store: &ModelStore, record: &ModelRecord, device: &Device) -> Result<Self> {
        let cfg = record.text_config()?;
        let vocab = record.vocabulary().ok_or_else(|| {
            Error::FailedPrecondition(format!("model {:?} has not been trained yet", record.name))
        })?;
        let (weights, _) = store.load_checkpoint(record, device)?;
        let model = CharLstm::from_tensors(&weights, vocab.len(), cfg.hidden, device)
            .map_err(|e| Error::Corrupt(format!("model {:?}: {e}", record.name)))?;
        Self::new(model, vocab, cfg.maxlen, cfg.lowercase)
    }

    /// Encodes a seed text the way the corpus was pre-processed; names any character
    /// outside the vocabulary.
    pub fn encode_seed(&self, seed: &str) -> Result<Vec<u32>> {
        let seed = if self.lowercase {
            seed.to_lowercase()
        } else {
            seed.to_string()
        };
        if seed.is_empty() {
            return Err(Error::invalid("the seed text is empty"));
        }
        self.vocab.encode(&seed).map_err(|e| {
            Error::invalid(format!(
                "the seed text has characters outside the vocabulary: {}",
                describe_chars(&e.0)
            ))
        })
    }

    /// Draws `length` characters after `seed`, calling `emit` with each; `emit`
    /// returning `false` stops early (the listener went away). Returns the count drawn.
    pub fn generate(
        &self,
        seed: &[u32],
        temperature: f32,
        length: usize,
        rng: &mut (impl Rng + Send),
        emit: &mut (dyn FnMut(char) -> bool + Send),
    ) -> Result<usize> {
        validate_temperature(temperature)?;
        if seed.is_empty() {
            return Err(Error::invalid("the seed text is empty"));
        }
        let v = self.vocab.len();
        let (mut logits, mut probs) = (vec![0f32; v], vec![0f32; v]);
        let mut drawn = 0;
        match &self.runner {
            Some(runner) => {
                // On a rayon worker, so that the per-character joins inside the wavefront
                // are cheap local pushes rather than cross-thread injections.
                rayon::scope(|_| -> Result<()> {
                    let mut wf = Wavefront::new(runner, self.maxlen, seed)?;
                    while drawn < length {
                        wf.logits(&mut logits);
                        sampling::softmax(&logits, &mut probs);
                        let next = sampling::sample(&probs, temperature, rng) as u32;
                        drawn += 1;
                        if !emit(self.vocab.char(next)) {
                            break;
                        }
                        wf.push(next);
                    }
                    Ok(())
                })?;
            }
            None => {
                let mut window: Vec<u32> = seed[seed.len().saturating_sub(self.maxlen)..].to_vec();
                while drawn < length {
                    let ids = Tensor::new(window.as_slice(), self.model.device())?.unsqueeze(0)?;
                    let logits = self
                        .model
                        .forward(&ids, false)?
                        .squeeze(0)?
                        .to_vec1::<f32>()?;
                    sampling::softmax(&logits, &mut probs);
                    let next = sampling::sample(&probs, temperature, rng) as u32;
                    drawn += 1;
                    if !emit(self.vocab.char(next)) {
                        break;
                    }
                    if window.len() == self.maxlen {
                        window.remove(0);
                    }
                    window.push(next);
                }
            }
        }
        Ok(drawn)
    }

    /// Convenience: the whole generated string.
    pub fn generate_string(
        &self,
        seed: &[u32],
        temperature: f32,
        length: usize,
        rng: &mut (impl Rng + Send),
    ) -> Result<String> {
        let mut out = String::new();
        self.generate(seed, temperature, length, rng, &mut |c| {
            out.push(c);
            true
        })?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn cpu_fast_path_and_graph_path_draw_the_same_text() -> Result<()> {
        let vocab = Vocabulary::from_text("abcdefgh ");
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let model = CharLstm::new_random(vocab.len(), 16, &mut rng, &Device::Cpu)?;
        let fast = CharGenerator::new(model, vocab.clone(), 6, true)?;
        let slow = CharGenerator {
            runner: None,
            ..CharGenerator::new(fast.model_clone()?, vocab, 6, true)?
        };
        let seed = fast.encode_seed("Bad cab")?;
        for t in [0.0f32, 0.5, 1.2] {
            let a = fast.generate_string(&seed, t, 50, &mut ChaCha8Rng::seed_from_u64(9))?;
            let b = slow.generate_string(&seed, t, 50, &mut ChaCha8Rng::seed_from_u64(9))?;
            assert_eq!(a, b, "temperature {t}");
            assert_eq!(a.chars().count(), 50);
        }
        Ok(())
    }

    #[test]
    fn bad_seeds_and_temperatures_are_named() -> Result<()> {
        let vocab = Vocabulary::from_text("abc");
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let g = CharGenerator::new(
            CharLstm::new_random(3, 4, &mut rng, &Device::Cpu)?,
            vocab,
            4,
            false,
        )?;
        let e = g.encode_seed("abQ!").unwrap_err().to_string();
        assert!(e.contains("'Q', '!'"), "{e}");
        for t in [-0.1f32, f32::NAN, f32::INFINITY] {
            assert!(matches!(
                g.generate(&[0], t, 3, &mut rng, &mut |_| true),
                Err(Error::InvalidArgument(_))
            ));
        }
        Ok(())
    }

    #[test]
    fn emit_returning_false_stops_generation() -> Result<()> {
        let vocab = Vocabulary::from_text("abc");
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let g = CharGenerator::new(
            CharLstm::new_random(3, 4, &mut rng, &Device::Cpu)?,
            vocab,
            4,
            false,
        )?;
        let mut seen = 0;
        let n = g.generate(&[0, 1], 1.0, 1000, &mut rng, &mut |_| {
            seen += 1;
            seen < 7
        })?;
        assert_eq!((n, seen), (7, 7));
        Ok(())
    }

    impl CharGenerator {
        fn model_clone(&self) -> Result<CharLstm> {
            let w = self.model.tensors().into_iter().collect();
            Ok(CharLstm::from_tensors(
                &w,
                self.model.vocab(),
                self.model.hidden(),
                &Device::Cpu,
            )?)
        }
    }
}
