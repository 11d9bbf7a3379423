//! Models on disk.
//!
//! ```text
//! <state>/models/<name>/model.json                          description (the commit point)
//! <state>/models/<name>/checkpoints/<id>/weights.safetensors
//! <state>/models/<name>/checkpoints/<id>/optimizer.safetensors
//! ```
//! A checkpoint directory is written under a temporary name, synced and renamed into
//! place; only then is `model.json` (written to a temporary file, synced, renamed)
//! pointed at it. A crash at any point leaves the previous description and the
//! checkpoint it names intact. The newest two checkpoints are kept.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use candle_core::{Device, Tensor};
use oneiro_models::{CharLstmConfig, GanConfig, VaeConfig, Vocabulary};
use serde::{Deserialize, Serialize};

use crate::events::Unit;
use crate::{Error, Result};

/// The `model.json` format this code writes; [`ModelStore::load`] also reads format 1.
pub const FORMAT: u32 = 2;
const KEEP_CHECKPOINTS: usize = 2;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelKind {
    CharLstm,
    Vae,
    Gan,
}

impl ModelKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::CharLstm => "char-lstm",
            Self::Vae => "vae",
            Self::Gan => "gan",
        }
    }
}

/// RMSprop settings and progress, saved so a continued training resumes exactly.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OptimizerRecord {
    pub learning_rate: f64,
    pub rho: f64,
    pub epsilon: f64,
    pub iterations: u64,
}

/// Where a checkpoint taken inside an epoch stopped, to resume that epoch exactly.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochProgress {
    /// The epoch in progress (1-based).
    pub epoch: u32,
    /// Batches of it already done.
    pub step: u32,
    /// Running sum of batch loss × batch size, and sequences seen, for the epoch mean.
    pub loss_sum: f64,
    pub seen: u64,
    /// The run's shape: a later run continues this epoch only if its batches are the
    /// same (same batch size over the same training windows).
    #[serde(default)]
    pub batch_size: u64,
    #[serde(default)]
    pub train_sequences: u64,
}

/// The GAN's losses over one reporting window, ending at `step`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GanPoint {
    pub step: u64,
    pub discriminator_loss: f32,
    pub adversarial_loss: f32,
}

/// What kind of model a record describes, with what only that kind has.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ModelSpec {
    CharLstm {
        config: CharLstmConfig,
        /// The sorted vocabulary, once trained.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        vocab: Option<Vec<char>>,
        /// A window of the training corpus, the default seed of generation.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        seed_text: Option<String>,
    },
    Vae {
        config: VaeConfig,
        /// Mean latent point of each digit class (from the labeled validation data), the
        /// ends of concept vectors.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        class_means: Option<Vec<Vec<f32>>>,
    },
    Gan {
        config: GanConfig,
        /// Steps trained so far (the GAN's progress; it has no epochs).
        #[serde(default)]
        steps_trained: u64,
        /// The mean losses of each reporting window.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        history: Vec<GanPoint>,
    },
}

impl ModelSpec {
    pub fn kind(&self) -> ModelKind {
        match self {
            Self::CharLstm { .. } => ModelKind::CharLstm,
            Self::Vae { .. } => ModelKind::Vae,
            Self::Gan { .. } => ModelKind::Gan,
        }
    }
}

impl ModelKind {
    /// What the kind's training progress is counted in.
    pub fn unit(self) -> Unit {
        match self {
            Self::Gan => Unit::Steps,
            Self::CharLstm | Self::Vae => Unit::Epochs,
        }
    }
}

/// A model's description, `model.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelRecord {
    /// Always [`FORMAT`] once loaded: older files are converted as they are read.
    pub format: u32,
    pub name: String,
    /// Random at creation: tells a re-created model from an earlier one of the same name.
    pub uid: u64,
    pub spec: ModelSpec,
    /// Epochs trained so far (text, VAE; the GAN counts steps in its spec).
    pub epochs_trained: u32,
    /// Set when the checkpoint was taken inside epoch `epochs_trained + 1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<EpochProgress>,
    /// Epoch mean losses; the GAN's: the discriminator's mean loss of each report.
    pub loss_history: Vec<f32>,
    pub val_loss_history: Vec<f32>,
    pub optimizer: Option<OptimizerRecord>,
    /// Seed of init, shuffling and samples, fixed at the first training.
    pub seed: Option<u64>,
    pub parameters: u64,
    /// The current checkpoint's directory name.
    pub checkpoint: Option<String>,
    pub updated_unix: i64,
    /// Increases with every save; lets caches notice a newer checkpoint.
    pub revision: u64,
}

impl ModelRecord {
    pub fn new_char_lstm(name: &str, config: CharLstmConfig) -> Self {
        Self::untrained(
            name,
            ModelSpec::CharLstm {
                config,
                vocab: None,
                seed_text: None,
            },
        )
    }

    pub fn new_vae(name: &str, config: VaeConfig) -> Self {
        Self::untrained(
            name,
            ModelSpec::Vae {
                config,
                class_means: None,
            },
        )
    }

    pub fn new_gan(name: &str, config: GanConfig) -> Self {
        Self::untrained(
            name,
            ModelSpec::Gan {
                config,
                steps_trained: 0,
                history: vec![],
            },
        )
    }

    fn untrained(name: &str, spec: ModelSpec) -> Self {
        Self {
            format: FORMAT,
            name: name.to_string(),
            uid: rand::random(),
            spec,
            epochs_trained: 0,
            progress: None,
            loss_history: vec![],
            val_loss_history: vec![],
            optimizer: None,
            seed: None,
            parameters: 0,
            checkpoint: None,
            updated_unix: 0,
            revision: 0,
        }
    }

    pub fn kind(&self) -> ModelKind {
        self.spec.kind()
    }

    /// How far training has come, in the unit jobs count: epochs, or steps for the GAN.
    pub fn progress_units(&self) -> u32 {
        match self.spec {
            ModelSpec::Gan { steps_trained, .. } => steps_trained.min(u32::MAX as u64) as u32,
            _ => self.epochs_trained,
        }
    }

    /// The GAN's steps trained so far (0 for the other kinds).
    pub fn steps_trained(&self) -> u64 {
        match self.spec {
            ModelSpec::Gan { steps_trained, .. } => steps_trained,
            _ => 0,
        }
    }

    pub(crate) fn set_steps_trained(&mut self, steps: u64) {
        if let ModelSpec::Gan { steps_trained, .. } = &mut self.spec {
            *steps_trained = steps;
        }
    }

    /// The GAN's mean losses of each reporting window (empty for the other kinds).
    pub fn gan_history(&self) -> &[GanPoint] {
        match &self.spec {
            ModelSpec::Gan { history, .. } => history,
            _ => &[],
        }
    }

    /// The text model's sorted vocabulary, once trained.
    pub fn vocab(&self) -> Option<&[char]> {
        match &self.spec {
            ModelSpec::CharLstm { vocab, .. } => vocab.as_deref(),
            _ => None,
        }
    }

    /// The text model's default seed of generation, once trained.
    pub fn seed_text(&self) -> Option<&str> {
        match &self.spec {
            ModelSpec::CharLstm { seed_text, .. } => seed_text.as_deref(),
            _ => None,
        }
    }

    /// The VAE's class means, once trained.
    pub fn class_means(&self) -> Option<&[Vec<f32>]> {
        match &self.spec {
            ModelSpec::Vae { class_means, .. } => class_means.as_deref(),
            _ => None,
        }
    }

    fn wrong_kind(&self, wanted: ModelKind) -> Error {
        Error::FailedPrecondition(format!(
            "model {:?} is a {} model, not a {} model",
            self.name,
            self.kind().name(),
            wanted.name()
        ))
    }

    /// The character model's settings, or an error naming the model's actual kind.
    pub fn text_config(&self) -> Result<&CharLstmConfig> {
        match &self.spec {
            ModelSpec::CharLstm { config, .. } => Ok(config),
            _ => Err(self.wrong_kind(ModelKind::CharLstm)),
        }
    }

    pub fn vae_config(&self) -> Result<&VaeConfig> {
        match &self.spec {
            ModelSpec::Vae { config, .. } => Ok(config),
            _ => Err(self.wrong_kind(ModelKind::Vae)),
        }
    }

    pub fn gan_config(&self) -> Result<&GanConfig> {
        match &self.spec {
            ModelSpec::Gan { config, .. } => Ok(config),
            _ => Err(self.wrong_kind(ModelKind::Gan)),
        }
    }

    /// Checks the kind's configuration.
    pub fn validate(&self) -> Result<()> {
        match &self.spec {
            ModelSpec::CharLstm { config, .. } => config.validate(),
            ModelSpec::Vae { config, .. } => config.validate(),
            ModelSpec::Gan { config, .. } => config.validate(),
        }
        .map_err(Error::InvalidArgument)
    }

    pub fn vocabulary(&self) -> Option<Vocabulary> {
        self.vocab().map(|v| Vocabulary::from_chars(v.to_vec()))
    }
}

/// `model.json` as format 1 wrote it: a kind, and the kind's configuration among three
/// optional ones. Read only, into a [`ModelRecord`].
#[derive(Deserialize)]
struct RecordV1 {
    name: String,
    uid: u64,
    kind: ModelKind,
    #[serde(default)]
    char_lstm: Option<CharLstmConfig>,
    #[serde(default)]
    vae: Option<VaeConfig>,
    #[serde(default)]
    gan: Option<GanConfig>,
    #[serde(default)]
    steps_trained: u64,
    #[serde(default)]
    gan_history: Vec<GanPoint>,
    #[serde(default)]
    class_means: Option<Vec<Vec<f32>>>,
    vocab: Option<Vec<char>>,
    epochs_trained: u32,
    #[serde(default)]
    progress: Option<EpochProgress>,
    loss_history: Vec<f32>,
    val_loss_history: Vec<f32>,
    optimizer: Option<OptimizerRecord>,
    seed: Option<u64>,
    seed_text: Option<String>,
    parameters: u64,
    checkpoint: Option<String>,
    updated_unix: i64,
    revision: u64,
}

impl RecordV1 {
    fn upgrade(self) -> std::result::Result<ModelRecord, String> {
        let missing = || format!("a {} model without its configuration", self.kind.name());
        let spec = match self.kind {
            ModelKind::CharLstm => ModelSpec::CharLstm {
                config: self.char_lstm.ok_or_else(missing)?,
                vocab: self.vocab,
                seed_text: self.seed_text,
            },
            ModelKind::Vae => ModelSpec::Vae {
                config: self.vae.ok_or_else(missing)?,
                class_means: self.class_means,
            },
            ModelKind::Gan => ModelSpec::Gan {
                config: self.gan.ok_or_else(missing)?,
                steps_trained: self.steps_trained,
                history: self.gan_history,
            },
        };
        Ok(ModelRecord {
            format: FORMAT,
            name: self.name,
            uid: self.uid,
            spec,
            epochs_trained: self.epochs_trained,
            progress: self.progress,
            loss_history: self.loss_history,
            val_loss_history: self.val_loss_history,
            optimizer: self.optimizer,
            seed: self.seed,
            parameters: self.parameters,
            checkpoint: self.checkpoint,
            updated_unix: self.updated_unix,
            revision: self.revision,
        })
    }
}

/// A `model.json` of any readable format, as the current [`ModelRecord`].
fn parse_record(bytes: &[u8]) -> std::result::Result<ModelRecord, String> {
    #[derive(Deserialize)]
    struct Format {
        format: u32,
    }
    let Format { format } = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    match format {
        1 => serde_json::from_slice::<RecordV1>(bytes)
            .map_err(|e| e.to_string())?
            .upgrade(),
        FORMAT => serde_json::from_slice(bytes).map_err(|e| e.to_string()),
        other => Err(format!("unknown format {other}")),
    }
}

/// The optimizer's accumulators as checkpoint tensors, named `velocity.{prefix}{key}` after
/// the weights they belong to (`prefix` "" for one optimizer, "d." / "g." for the GAN's).
pub fn optimizer_tensors(
    prefix: &str,
    weights: &[(String, Tensor)],
    opt: &oneiro_tensor_ops::RmsProp,
) -> Vec<(String, Tensor)> {
    weights
        .iter()
        .zip(&opt.velocity)
        .map(|((k, _), v)| (format!("velocity.{prefix}{k}"), v.clone()))
        .collect()
}

/// Restores what [`optimizer_tensors`] saved into `opt`, naming any missing tensor.
pub fn restore_optimizer(
    state: &HashMap<String, Tensor>,
    prefix: &str,
    weights: &[(String, Tensor)],
    opt: &mut oneiro_tensor_ops::RmsProp,
    iterations: u64,
    model: &str,
) -> Result<()> {
    let velocity = weights
        .iter()
        .map(|(k, _)| {
            state
                .get(&format!("velocity.{prefix}{k}"))
                .cloned()
                .ok_or_else(|| {
                    Error::Corrupt(format!(
                        "model {model:?}: optimizer state lacks velocity.{prefix}{k}"
                    ))
                })
        })
        .collect::<Result<Vec<_>>>()?;
    opt.set_state(velocity, iterations)?;
    Ok(())
}

/// Model names become directory names: keep them to a portable, traversal-free set.
pub fn validate_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "invalid model name {name:?}: use 1-64 characters of A-Z a-z 0-9 . _ - , not starting with '.'"
        )))
    }
}

pub struct ModelStore {
    root: PathBuf,
}

/// Writes `bytes` to `path` through a synced temporary file and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().expect("file inside a directory");
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().unwrap().to_string_lossy()
    ));
    {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> Result<()> {
    fs::File::open(dir)?.sync_all()?;
    Ok(())
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl ModelStore {
    /// Opens (creating if needed) the store under `state_dir`.
    pub fn open(state_dir: &Path) -> Result<Self> {
        let root = state_dir.join("models");
        fs::create_dir_all(&root)?;
        Ok(Self { root })
    }

    fn dir(&self, name: &str) -> Result<PathBuf> {
        validate_name(name)?;
        Ok(self.root.join(name))
    }

    pub fn exists(&self, name: &str) -> Result<bool> {
        Ok(self.dir(name)?.join("model.json").is_file())
    }

    pub fn create(&self, record: &ModelRecord) -> Result<()> {
        let dir = self.dir(&record.name)?;
        if dir.join("model.json").is_file() {
            return Err(Error::AlreadyExists(format!(
                "model {:?} already exists",
                record.name
            )));
        }
        record.validate()?;
        fs::create_dir_all(dir.join("checkpoints"))?;
        self.write_record(record)
    }

    fn write_record(&self, record: &ModelRecord) -> Result<()> {
        let json = serde_json::to_vec_pretty(record).expect("records serialize");
        write_atomic(&self.dir(&record.name)?.join("model.json"), &json)
    }

    pub fn load(&self, name: &str) -> Result<ModelRecord> {
        let path = self.dir(name)?.join("model.json");
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::NotFound(format!("no model named {name:?}")));
            }
            Err(e) => return Err(e.into()),
        };
        parse_record(&bytes).map_err(|e| Error::Corrupt(format!("{}: {e}", path.display())))
    }

    /// Every readable model, sorted by name. Unreadable ones are logged and skipped so
    /// one damaged directory does not hide the rest.
    pub fn list(&self) -> Result<Vec<ModelRecord>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.root)? {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if validate_name(&name).is_err() {
                continue;
            }
            match self.load(&name) {
                Ok(r) => out.push(r),
                Err(Error::NotFound(_)) => {}
                Err(e) => tracing::warn!(model = %name, error = %e, "skipping unreadable model"),
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    pub fn delete(&self, name: &str) -> Result<()> {
        let dir = self.dir(name)?;
        if !dir.join("model.json").is_file() {
            return Err(Error::NotFound(format!("no model named {name:?}")));
        }
        // Remove the description first: a crash halfway leaves no half-listed model.
        fs::remove_file(dir.join("model.json"))?;
        fs::remove_dir_all(&dir)?;
        Ok(())
    }

    /// Writes a new checkpoint and commits `record` pointing at it (updating its
    /// checkpoint id, revision and time). Returns the checkpoint id.
    pub fn save_checkpoint(
        &self,
        record: &mut ModelRecord,
        weights: &[(String, Tensor)],
        optimizer: &[(String, Tensor)],
    ) -> Result<String> {
        let ckpts = self.dir(&record.name)?.join("checkpoints");
        fs::create_dir_all(&ckpts)?;
        let revision = record.revision + 1;
        let id = format!("{revision:06}-epoch{:04}", record.epochs_trained);
        let tmp = ckpts.join(format!(".tmp-{id}"));
        if tmp.exists() {
            fs::remove_dir_all(&tmp)?;
        }
        fs::create_dir_all(&tmp)?;
        for (file, tensors) in [
            ("weights.safetensors", weights),
            ("optimizer.safetensors", optimizer),
        ] {
            let map: HashMap<String, Tensor> = tensors.iter().cloned().collect();
            let path = tmp.join(file);
            candle_core::safetensors::save(&map, &path)?;
            fs::File::open(&path)?.sync_all()?;
        }
        sync_dir(&tmp)?;
        let final_dir = ckpts.join(&id);
        if final_dir.exists() {
            fs::remove_dir_all(&final_dir)?;
        }
        fs::rename(&tmp, &final_dir)?;
        sync_dir(&ckpts)?;

        let mut next = record.clone();
        next.checkpoint = Some(id.clone());
        next.revision = revision;
        next.updated_unix = now_unix();
        self.write_record(&next)?;
        *record = next;
        self.prune(&ckpts, revision)?;
        Ok(id)
    }

    /// Keeps the current checkpoint and the newest older one; removes the rest (by
    /// revision number, not name order), including any newer leftovers that no
    /// description points to.
    fn prune(&self, ckpts: &Path, current: u64) -> Result<()> {
        let mut revs: Vec<(u64, String)> = fs::read_dir(ckpts)?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter_map(|n| Some((n.split('-').next()?.parse::<u64>().ok()?, n)))
            .collect();
        revs.sort();
        let older: Vec<&(u64, String)> = revs.iter().filter(|(r, _)| *r < current).collect();
        let keep_older = older.len().saturating_sub(KEEP_CHECKPOINTS - 1);
        for (rev, name) in &revs {
            let keep = *rev == current || older[keep_older..].iter().any(|(r, _)| r == rev);
            if !keep {
                fs::remove_dir_all(ckpts.join(name))?;
            }
        }
        Ok(())
    }

    /// The model `record` names, from its last checkpoint (with the optimizer state saved
    /// there) through `load`, or from `create` when it has no checkpoint yet.
    pub fn resume_or_create<M, E: std::fmt::Display>(
        &self,
        record: &ModelRecord,
        device: &Device,
        load: impl FnOnce(&HashMap<String, Tensor>) -> std::result::Result<M, E>,
        create: impl FnOnce() -> Result<M>,
    ) -> Result<(M, Option<HashMap<String, Tensor>>)> {
        if record.checkpoint.is_none() {
            return Ok((create()?, None));
        }
        let (weights, opt_state) = self.load_checkpoint(record, device)?;
        let model =
            load(&weights).map_err(|e| Error::Corrupt(format!("model {:?}: {e}", record.name)))?;
        Ok((model, Some(opt_state)))
    }

    /// Loads the current checkpoint's weights and optimizer tensors onto `device`.
    pub fn load_checkpoint(
        &self,
        record: &ModelRecord,
        device: &Device,
    ) -> Result<(HashMap<String, Tensor>, HashMap<String, Tensor>)> {
        let Some(id) = &record.checkpoint else {
            return Err(Error::FailedPrecondition(format!(
                "model {:?} has not been trained yet",
                record.name
            )));
        };
        let dir = self.dir(&record.name)?.join("checkpoints").join(id);
        let load = |file: &str| -> Result<HashMap<String, Tensor>> {
            let path = dir.join(file);
            candle_core::safetensors::load(&path, device)
                .map_err(|e| Error::Corrupt(format!("cannot read {}: {e}", path.display())))
        };
        Ok((load("weights.safetensors")?, load("optimizer.safetensors")?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cannot_escape_the_state_directory() {
        for bad in ["", "../x", "a/b", ".hidden", "x\0", "a b", &"x".repeat(65)] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
        for good in ["my-model", "v1.2_final", "A"] {
            validate_name(good).unwrap();
        }
    }

    #[test]
    fn checkpoints_commit_atomically_and_old_ones_are_pruned() -> Result<()> {
        let tmp = tempfile::tempdir()?;
        let store = ModelStore::open(tmp.path())?;
        let mut rec = ModelRecord::new_char_lstm("m", CharLstmConfig::default());
        store.create(&rec)?;
        assert!(matches!(store.create(&rec), Err(Error::AlreadyExists(_))));
        assert!(matches!(
            store.load_checkpoint(&rec, &Device::Cpu),
            Err(Error::FailedPrecondition(_))
        ));
        for epoch in 1..=3u32 {
            rec.epochs_trained = epoch;
            let w = vec![("w".to_string(), Tensor::new(&[epoch as f32], &Device::Cpu)?)];
            store.save_checkpoint(&mut rec, &w, &[])?;
        }
        let loaded = store.load("m")?;
        assert_eq!(loaded, rec);
        let (w, _) = store.load_checkpoint(&loaded, &Device::Cpu)?;
        assert_eq!(w["w"].to_vec1::<f32>()?, vec![3.0]);
        let kept = fs::read_dir(tmp.path().join("models/m/checkpoints"))?.count();
        assert_eq!(kept, 2);
        // A leftover that sorts after the current one by name must not win.
        fs::create_dir_all(tmp.path().join("models/m/checkpoints/000057-epoch0009"))?;
        rec.epochs_trained = 4;
        let w = vec![("w".to_string(), Tensor::new(&[4f32], &Device::Cpu)?)];
        let id = store.save_checkpoint(&mut rec, &w, &[])?;
        assert_eq!(
            store.load_checkpoint(&store.load("m")?, &Device::Cpu)?.0["w"].to_vec1::<f32>()?,
            vec![4.0]
        );
        let mut left: Vec<String> = fs::read_dir(tmp.path().join("models/m/checkpoints"))?
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, vec!["000003-epoch0003".to_string(), id]);
        assert_eq!(store.list()?.len(), 1);
        store.delete("m")?;
        assert!(matches!(store.load("m"), Err(Error::NotFound(_))));
        Ok(())
    }

    #[test]
    fn records_round_trip_as_format_2_and_unknown_formats_are_refused() {
        let rec = ModelRecord::new_gan("g", GanConfig::default());
        let json = serde_json::to_value(&rec).unwrap();
        assert_eq!(
            (json["format"].as_u64(), json["spec"]["kind"].as_str()),
            (Some(2), Some("gan"))
        );
        assert_eq!(parse_record(json.to_string().as_bytes()).unwrap(), rec);
        let err = parse_record(br#"{"format": 3, "name": "x"}"#).unwrap_err();
        assert_eq!(err, "unknown format 3");
        let err = parse_record(br#"{"format": 1, "name": "x", "uid": 1, "kind": "vae", "vocab": null, "epochs_trained": 0, "loss_history": [], "val_loss_history": [], "optimizer": null, "seed": null, "seed_text": null, "parameters": 0, "checkpoint": null, "updated_unix": 0, "revision": 0}"#).unwrap_err();
        assert_eq!(err, "a vae model without its configuration");
    }

    #[test]
    fn a_truncated_checkpoint_is_reported_as_corrupt() -> Result<()> {
        let tmp = tempfile::tempdir()?;
        let store = ModelStore::open(tmp.path())?;
        let mut rec = ModelRecord::new_char_lstm("m", CharLstmConfig::default());
        store.create(&rec)?;
        let w = vec![(
            "w".to_string(),
            Tensor::zeros(100, candle_core::DType::F32, &Device::Cpu)?,
        )];
        let id = store.save_checkpoint(&mut rec, &w, &[])?;
        let path = tmp
            .path()
            .join("models/m/checkpoints")
            .join(id)
            .join("weights.safetensors");
        let bytes = fs::read(&path)?;
        fs::write(&path, &bytes[..bytes.len() / 2])?;
        let err = store.load_checkpoint(&rec, &Device::Cpu).unwrap_err();
        assert!(
            matches!(err, Error::Corrupt(_)) && err.to_string().contains("weights.safetensors"),
            "{err}"
        );
        Ok(())
    }
}
