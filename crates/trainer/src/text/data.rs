//! The character corpus: text → ids, and the book's windows (`maxlen` characters every
//! `step`, target = the next character) as start offsets, never as a one-hot array.
//! Nietzsche (600 k characters) costs ~2.4 MB of ids here instead of the book's ~1 GB
//! boolean array.

use oneiro_models::{CharLstmConfig, Vocabulary, vocab::describe_chars};

use crate::{Error, Result};

pub struct CharCorpus {
    pub vocab: Vocabulary,
    pub ids: Vec<u32>,
    pub maxlen: usize,
    pub step: usize,
}

impl CharCorpus {
    /// Pre-processes `text` as the model's config says. With `vocab` (a model trained
    /// before), every character must be in it; without, the vocabulary is built from
    /// the text.
    pub fn prepare(
        text: &str,
        config: &CharLstmConfig,
        vocab: Option<&Vocabulary>,
    ) -> Result<Self> {
        config.validate().map_err(Error::InvalidArgument)?;
        if text.is_empty() {
            return Err(Error::invalid("the corpus is empty"));
        }
        let lowered;
        let text = if config.lowercase {
            lowered = text.to_lowercase();
            &lowered
        } else {
            text
        };
        let (vocab, ids) = match vocab {
            Some(v) => {
                let ids = v.encode(text).map_err(|e| {
                    Error::invalid(format!(
                        "the corpus has characters the model was not trained on: {}",
                        describe_chars(&e.0)
                    ))
                })?;
                (v.clone(), ids)
            }
            None => {
                let v = Vocabulary::from_text(text);
                if v.len() < 2 {
                    return Err(Error::invalid(format!(
                        "the corpus has a single distinct character ({}); there is nothing to learn",
                        describe_chars(v.chars())
                    )));
                }
                let ids = v.encode(text).expect("vocabulary built from this text");
                (v, ids)
            }
        };
        if ids.len() <= config.maxlen {
            return Err(Error::invalid(format!(
                "the corpus has {} characters; maxlen {} needs at least {}",
                ids.len(),
                config.maxlen,
                config.maxlen + 1
            )));
        }
        Ok(Self {
            vocab,
            ids,
            maxlen: config.maxlen,
            step: config.step,
        })
    }

    /// Number of windows: the book's `range(0, len(text) - maxlen, step)`.
    pub fn window_count(&self) -> usize {
        (self.ids.len() - self.maxlen).div_ceil(self.step)
    }

    /// The characters of window `w` and its target.
    pub fn window(&self, w: usize) -> (&[u32], u32) {
        let start = w * self.step;
        (
            &self.ids[start..start + self.maxlen],
            self.ids[start + self.maxlen],
        )
    }

    /// Splits window indices Keras' way: the last `fraction` is held out (before any
    /// shuffling).
    pub fn split(&self, fraction: f32) -> Result<(Vec<usize>, Vec<usize>)> {
        if !(0.0..1.0).contains(&fraction) {
            return Err(Error::invalid(format!(
                "validation split must be in [0, 1), got {fraction}"
            )));
        }
        let n = self.window_count();
        let at = ((n as f64) * (1.0 - fraction as f64)) as usize;
        if at == 0 {
            return Err(Error::invalid(format!(
                "validation split {fraction} leaves no training windows out of {n}"
            )));
        }
        Ok(((0..at).collect(), (at..n).collect()))
    }

    /// Writes the windows `ws` as a `(len, maxlen)` id matrix and their targets.
    pub fn fill_batch(&self, ws: &[usize], ids: &mut Vec<u32>, targets: &mut Vec<u32>) {
        ids.clear();
        targets.clear();
        for &w in ws {
            let (x, y) = self.window(w);
            ids.extend_from_slice(x);
            targets.push(y);
        }
    }

    /// Decodes ids back to text.
    pub fn decode(&self, ids: &[u32]) -> String {
        ids.iter().map(|&i| self.vocab.char(i)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(maxlen: usize, step: usize) -> CharLstmConfig {
        CharLstmConfig {
            maxlen,
            step,
            hidden: 8,
            lowercase: true,
        }
    }

    #[test]
    fn windows_follow_the_book() {
        let c = CharCorpus::prepare("ABCDEFGHIJ", &cfg(4, 3), None).unwrap();
        // range(0, 10 - 4, 3) = 0, 3
        assert_eq!(c.window_count(), 2);
        assert_eq!(c.decode(c.window(1).0), "defg");
        assert_eq!(c.vocab.char(c.window(1).1), 'h');
    }

    #[test]
    fn bad_corpora_get_clear_errors() {
        let err = |t: &str, c: CharLstmConfig| {
            CharCorpus::prepare(t, &c, None).err().unwrap().to_string()
        };
        assert_eq!(err("", cfg(4, 1)), "the corpus is empty");
        assert!(err("aaaaaaa", cfg(4, 1)).contains("single distinct character ('a')"));
        assert!(err("abcab", cfg(10, 1)).contains("5 characters; maxlen 10 needs at least 11"));
        let vocab = Vocabulary::from_text("abc");
        let e = CharCorpus::prepare("abcxd", &cfg(2, 1), Some(&vocab))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("'x', 'd'"), "{e}");
    }

    #[test]
    fn validation_split_holds_out_the_tail() {
        let c = CharCorpus::prepare("abcdefghijklmnopqrstuvwxyz", &cfg(5, 1), None).unwrap();
        let (train, val) = c.split(0.25).unwrap();
        assert_eq!(train.len() + val.len(), 21);
        assert_eq!(val, (15..21).collect::<Vec<_>>());
    }
}
