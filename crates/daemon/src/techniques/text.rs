//! The character-level LSTM (SPEC §1): training on a corpus, and generation streamed a
//! few characters at a time.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use candle_core::Device;
use oneiro_models::CharLstmConfig;
use oneiro_proto::v1 as pb;
use oneiro_trainer::events::EventSink;
use oneiro_trainer::store::ModelKind;
use oneiro_trainer::text::CharCorpus;
use oneiro_trainer::text::generate::{CharGenerator, validate_temperature};
use oneiro_trainer::text::{TextTrainOptions, train_char_lstm};
use oneiro_trainer::{ModelRecord, ModelStore};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tracing::info_span;

use super::{ResolvedData, TrainKind, count_or, divergence_factor, ensure_kind_model, resident};
use crate::config::DaemonConfig;
use crate::error::ServiceError;
use crate::jobs::{Job, JobData, TrainPlan};
use crate::sources;
use crate::worker::{Command, DeviceContext, Loaded, Reply, send_within};

pub struct Text;

impl TrainKind for Text {
    const KIND: ModelKind = ModelKind::CharLstm;
    type Options = TextTrainOptions;
    type Data = String;
    type Source = ();

    fn options(p: Option<&pb::TrainOptions>) -> Result<TextTrainOptions, ServiceError> {
        let options = train_options(p);
        options.validate()?;
        Ok(options)
    }

    fn data(
        req: &pb::TrainRequest,
        _: &TextTrainOptions,
        config: &DaemonConfig,
    ) -> Result<ResolvedData<String, ()>, ServiceError> {
        let corpus = Arc::new(sources::read_corpus(req, config)?);
        Ok(ResolvedData {
            kept: JobData::Corpus(corpus.clone()),
            data: corpus,
            source: (),
        })
    }

    /// Also checks the corpus against the model's settings before anything is created,
    /// so a bad corpus is an immediate error rather than a failed job.
    fn ensure_model(
        store: &ModelStore,
        req: &pb::TrainRequest,
        options: &TextTrainOptions,
        corpus: &String,
    ) -> Result<ModelRecord, ServiceError> {
        let check = |config: &CharLstmConfig, vocab: Option<&oneiro_models::Vocabulary>| {
            CharCorpus::prepare(corpus, config, vocab)?
                .split(options.validation_split)
                .map(|_| ())
                .map_err(ServiceError::from)
        };
        let requested = match &req.create_config {
            Some(pb::train_request::CreateConfig::CharLstm(c)) => Some(c),
            _ => None,
        };
        ensure_kind_model(
            store,
            req,
            ModelRecord::text_config,
            |existing| requested.map(|p| char_lstm_config(Some(p), existing)),
            || {
                let config = char_lstm_config(requested, &Default::default());
                check(&config, None)?;
                Ok(ModelRecord::new_char_lstm(&req.model, config))
            },
            |record| check(record.text_config()?, record.vocabulary().as_ref()),
        )
    }

    fn plan(options: TextTrainOptions, _: (), record: &ModelRecord) -> (TrainPlan, u32) {
        let target = record.epochs_trained + options.epochs;
        (TrainPlan::Text(options), target)
    }

    fn reload(job: &Job) -> oneiro_trainer::Result<Arc<String>> {
        std::fs::read_to_string(job.corpus_path())
            .map(Arc::new)
            .map_err(|e| {
                oneiro_trainer::Error::Corrupt(format!("cannot read the job's saved corpus: {e}"))
            })
    }

    fn train(
        ctx: &mut DeviceContext,
        job: &Job,
        plan: &TrainPlan,
        corpus: &String,
        sink: &mut dyn EventSink,
    ) -> oneiro_trainer::Result<ModelRecord> {
        let TrainPlan::Text(options) = plan else {
            unreachable!("dispatched by plan")
        };
        train_char_lstm(&ctx.store, &job.model, corpus, options, &ctx.device, sink)
    }
}

/// A full config from a partial one: unset fields take `base`'s values.
pub fn char_lstm_config(p: Option<&pb::CharLstmConfig>, base: &CharLstmConfig) -> CharLstmConfig {
    let Some(p) = p else { return base.clone() };
    CharLstmConfig {
        maxlen: count_or(p.maxlen, base.maxlen),
        step: count_or(p.step, base.step),
        hidden: count_or(p.hidden, base.hidden),
        lowercase: p.lowercase.unwrap_or(base.lowercase),
    }
}

pub fn char_lstm_to_proto(c: &CharLstmConfig) -> pb::CharLstmConfig {
    pb::CharLstmConfig {
        maxlen: Some(c.maxlen as u32),
        step: Some(c.step as u32),
        hidden: Some(c.hidden as u32),
        lowercase: Some(c.lowercase),
    }
}

/// The trainer's options from the request's; zero / unset fields are the book's.
pub fn train_options(p: Option<&pb::TrainOptions>) -> TextTrainOptions {
    let d = TextTrainOptions::default();
    let Some(p) = p else { return d };
    TextTrainOptions {
        epochs: p.epochs.unwrap_or(d.epochs),
        batch_size: p.batch_size.map_or(d.batch_size, |b| b as usize),
        learning_rate: p.learning_rate.map(f64::from),
        validation_split: p.validation_split,
        seed: p.seed,
        sample_temperatures: if p.no_samples {
            vec![]
        } else if p.sample_temperatures.is_empty() {
            d.sample_temperatures
        } else {
            p.sample_temperatures.clone()
        },
        sample_length: p.sample_length.map_or(d.sample_length, |l| l as usize),
        checkpoint_every_steps: p.checkpoint_every_steps,
        divergence_factor: divergence_factor(p.divergence_factor, d.divergence_factor),
    }
}

/// A trained character model, ready to generate.
pub fn load(
    store: &ModelStore,
    record: &ModelRecord,
    device: &Device,
) -> Result<Loaded, ServiceError> {
    let g = CharGenerator::load(store, record, device)?;
    let bytes = g.resident_bytes();
    Ok(Loaded::new(g, bytes))
}

/// Characters a `Generate` request without a length gets: the book's sample length.
const DEFAULT_GENERATE_LENGTH: usize = 400;

/// A checked `Generate` request.
pub struct Generation {
    model: String,
    seed_text: String,
    temperature: f32,
    length: usize,
    seed: Option<u64>,
}

impl Generation {
    /// `req`'s numbers are in range already (validate.rs).
    pub fn check(req: pb::GenerateRequest) -> Result<Self, ServiceError> {
        oneiro_trainer::store::validate_name(&req.model)?;
        let temperature = req.temperature.unwrap_or(1.0);
        validate_temperature(temperature)?;
        Ok(Self {
            model: req.model,
            seed_text: req.seed_text,
            temperature,
            length: req.length.map_or(DEFAULT_GENERATE_LENGTH, |l| l as usize),
            seed: req.seed,
        })
    }

    /// The command that generates on the device, streaming chunks to `chunks`.
    pub fn command(self, chunks: Reply<pb::GenerateChunk>) -> Command {
        let span = info_span!("generate", model = %self.model, length = self.length);
        let c = chunks.clone();
        Command::new(
            "generation",
            span,
            Some(self.model.clone()),
            chunks,
            move |ctx| self.run(ctx, &c),
        )
    }

    fn run(
        self,
        ctx: &mut DeviceContext,
        chunks: &Reply<pb::GenerateChunk>,
    ) -> Result<(), ServiceError> {
        let (generator, record) = resident::<CharGenerator>(ctx, &self.model, ModelKind::CharLstm)?;
        let seed_text = if self.seed_text.is_empty() {
            record.seed_text().unwrap_or_default().to_string()
        } else {
            self.seed_text
        };
        let seed_ids = generator.encode_seed(&seed_text)?;
        let used: String = seed_ids[seed_ids.len().saturating_sub(generator.maxlen)..]
            .iter()
            .map(|&i| generator.vocab.char(i))
            .collect();
        let mut rng = match self.seed {
            Some(s) => ChaCha8Rng::seed_from_u64(s),
            None => ChaCha8Rng::from_os_rng(),
        };
        // Characters go out in small chunks: at least every 20 ms while drawing, so a
        // reader sees them as they come, without one message per character.
        const FLUSH_EVERY: Duration = Duration::from_millis(20);
        let mut pending = String::new();
        let mut first = Some(used);
        let mut last_flush = Instant::now();
        let flush = |pending: &mut String, first: &mut Option<String>| -> bool {
            let chunk = pb::GenerateChunk {
                text: std::mem::take(pending),
                seed_text: first.take().unwrap_or_default(),
            };
            send_within(chunks, Ok(chunk))
        };
        let (metrics, stopping) = (ctx.metrics.clone(), ctx.stopping.clone());
        let length = self.length;
        let drawn =
            generator.generate(&seed_ids, self.temperature, length, &mut rng, &mut |c| {
                metrics.generated_char();
                pending.push(c);
                if pending.len() >= 256 || last_flush.elapsed() >= FLUSH_EVERY {
                    last_flush = Instant::now();
                    return flush(&mut pending, &mut first);
                }
                !chunks.is_closed() && !stopping.load(Ordering::Relaxed)
            })?;
        if !pending.is_empty() || first.is_some() {
            flush(&mut pending, &mut first);
        }
        if drawn < length && ctx.is_stopping() {
            let msg = format!(
                "the daemon is shutting down; generation stopped after {drawn} of {length} characters"
            );
            let _ = send_within(chunks, Err(ServiceError::ShuttingDown(msg).into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_config_fields_keep_the_base_values() {
        let base = CharLstmConfig {
            maxlen: 40,
            ..Default::default()
        };
        let p = pb::CharLstmConfig {
            hidden: Some(64),
            ..Default::default()
        };
        let c = char_lstm_config(Some(&p), &base);
        assert_eq!((c.maxlen, c.step, c.hidden, c.lowercase), (40, 3, 64, true));
    }

    #[test]
    fn default_train_options_are_the_books() {
        let o = train_options(Some(&pb::TrainOptions::default()));
        assert_eq!(o, TextTrainOptions::default());
        let o = train_options(Some(&pb::TrainOptions {
            no_samples: true,
            ..Default::default()
        }));
        assert!(o.sample_temperatures.is_empty());
    }
}
