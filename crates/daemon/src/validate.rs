//! Range checks of every number a request carries, in one place: each RPC checks its
//! request here before anything else, and an out-of-range field is refused with
//! INVALID_ARGUMENT naming it (`options.epochs must be an integer from 1 to 100000, got
//! 0`). [`RULES`] is the accepted range of every numeric field of the API; a test walks
//! the proto's descriptors and fails for a field without a rule.

use oneiro_proto::v1 as pb;
use oneiro_trainer::vae::infer::MAX_POINTS;

use crate::config::DaemonConfig;
use crate::error::ServiceError;

/// What a numeric field accepts when it is set.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Accept {
    /// Any value of its type: seeds, and counts where 0 means "off" or "all".
    Any,
    /// An integer in `lo..=hi`.
    Int(u64, u64),
    /// An integer from `lo` up to this daemon's `--max-generate-length`.
    UpToGenerateLength(u64),
    /// A finite number between `min` and `max`, each end included unless marked open.
    Float {
        min: f64,
        max: f64,
        min_open: bool,
        max_open: bool,
    },
    /// Any number but NaN (an infinite `max_loss` never stops).
    NotNan,
}

/// The largest finite number a float field carries.
const HUGE: f64 = f32::MAX as f64;

const fn closed(min: f64, max: f64) -> Accept {
    Accept::Float {
        min,
        max,
        min_open: false,
        max_open: false,
    }
}

/// `(min, max]`: a positive rate or step.
const fn above(min: f64, max: f64) -> Accept {
    Accept::Float {
        min,
        max,
        min_open: true,
        max_open: false,
    }
}

/// `[min, max)`: a fraction.
const fn below(min: f64, max: f64) -> Accept {
    Accept::Float {
        min,
        max,
        min_open: false,
        max_open: true,
    }
}

const FINITE: Accept = closed(-HUGE, HUGE);

/// Every numeric field of every request message, by `Message.field`.
pub const RULES: &[(&str, Accept)] = &[
    ("CharLstmConfig.maxlen", Accept::Int(1, 10_000)),
    ("CharLstmConfig.step", Accept::Int(1, 10_000)),
    ("CharLstmConfig.hidden", Accept::Int(1, 8192)),
    ("VaeConfig.latent_dim", Accept::Int(1, 512)),
    ("VaeConfig.kl_weight", closed(0.0, HUGE)),
    ("GanConfig.latent_dim", Accept::Int(1, 4096)),
    ("GanConfig.dropout", below(0.0, 1.0)),
    ("GanConfig.leaky_slope", closed(0.0, 1.0)),
    ("GanConfig.generator_seed_channels", Accept::Int(1, 4096)),
    ("GanConfig.generator_channels", Accept::Int(1, 4096)),
    ("GanConfig.discriminator_channels", Accept::Int(1, 4096)),
    ("TrainOptions.epochs", Accept::Int(1, 100_000)),
    ("TrainOptions.batch_size", Accept::Int(1, 65_536)),
    ("TrainOptions.learning_rate", above(0.0, 10.0)),
    ("TrainOptions.validation_split", below(0.0, 1.0)),
    ("TrainOptions.seed", Accept::Any),
    ("TrainOptions.sample_temperatures", closed(0.0, 100.0)),
    ("TrainOptions.sample_length", Accept::UpToGenerateLength(1)),
    ("TrainOptions.checkpoint_every_steps", Accept::Any),
    ("TrainOptions.divergence_factor", FINITE),
    ("TrainOptions.max_train_images", Accept::Any),
    ("TrainOptions.max_validation_images", Accept::Any),
    ("TrainOptions.grid_size", Accept::Int(1, 64)),
    ("TrainOptions.steps", Accept::Int(1, 10_000_000)),
    ("TrainOptions.sample_every", Accept::Int(1, 10_000_000)),
    ("TrainOptions.sample_count", Accept::Int(1, 256)),
    ("TrainOptions.discriminator_lr", above(0.0, 10.0)),
    ("TrainOptions.generator_lr", above(0.0, 10.0)),
    ("TrainOptions.clip_value", FINITE),
    ("TrainOptions.decay", closed(0.0, HUGE)),
    ("ImageData.class_label", Accept::Int(0, 9)),
    ("GenerateRequest.temperature", closed(0.0, 100.0)),
    ("GenerateRequest.length", Accept::UpToGenerateLength(1)),
    ("GenerateRequest.seed", Accept::Any),
    ("VaeGridRequest.size", Accept::Int(1, 64)),
    ("LatentPoint.values", FINITE),
    ("VaeConceptRequest.from_class", Accept::Int(0, 9)),
    ("VaeConceptRequest.to_class", Accept::Int(0, 9)),
    ("VaeConceptRequest.amount", FINITE),
    ("VaeMorphRequest.frames", Accept::Int(2, 256)),
    ("VaeMorphRequest.frame_ms", Accept::Int(1, 60_000)),
    ("GanSampleRequest.count", Accept::Int(1, 1024)),
    ("GanSampleRequest.seed", Accept::Any),
    ("BackboneWeights.random_seed", Accept::Any),
    ("DreamLayer.weight", FINITE),
    ("DreamRequest.random_layers_seed", Accept::Any),
    ("DreamRequest.step", above(0.0, HUGE)),
    ("DreamRequest.iterations", Accept::Int(1, 10_000)),
    ("DreamRequest.max_loss", Accept::NotNan),
    ("DreamRequest.octaves", Accept::Int(1, 12)),
    ("DreamRequest.octave_scale", above(1.0, 8.0)),
    ("StyleRequest.content_weight", closed(0.0, HUGE)),
    ("StyleRequest.style_weight", closed(0.0, HUGE)),
    ("StyleRequest.total_variation_weight", closed(0.0, HUGE)),
    ("StyleRequest.rounds", Accept::Int(1, 1000)),
    ("StyleRequest.iterations", Accept::Int(1, 1000)),
    ("StyleRequest.height", Accept::Int(16, 4096)),
];

/// Most images one `GanSample` or latent points one VAE call may ask for.
pub const MAX_GAN_LATENTS: usize = 1024;
/// Most layers one DeepDream or style request may name.
const MAX_LAYERS: usize = 64;

/// The rule of `Message.field`.
pub fn rule(key: &str) -> Option<Accept> {
    RULES.iter().find(|(k, _)| *k == key).map(|(_, a)| *a)
}

impl Accept {
    /// Whether an integer is accepted, with this daemon's limits.
    pub fn accepts_int(self, v: u64, config: &DaemonConfig) -> bool {
        match self {
            Accept::Any => true,
            Accept::Int(lo, hi) => (lo..=hi).contains(&v),
            Accept::UpToGenerateLength(lo) => {
                (lo..=u64::from(config.max_generate_length)).contains(&v)
            }
            // A float rule read as an integer (not in the API, but total).
            Accept::Float { .. } | Accept::NotNan => self.accepts_float(v as f64),
        }
    }

    pub fn accepts_float(self, v: f64) -> bool {
        match self {
            Accept::Any => true,
            Accept::NotNan => !v.is_nan(),
            Accept::Float {
                min,
                max,
                min_open,
                max_open,
            } => {
                v.is_finite()
                    && if min_open { v > min } else { v >= min }
                    && if max_open { v < max } else { v <= max }
            }
            Accept::Int(..) | Accept::UpToGenerateLength(_) => false,
        }
    }

    /// The rule as a user reads it in an error ("an integer from 1 to 64").
    pub fn describe(self, config: &DaemonConfig) -> String {
        let num = |x: f64| {
            if x == HUGE {
                "any finite size".to_string()
            } else if x == -HUGE {
                "-∞".to_string()
            } else {
                x.to_string()
            }
        };
        match self {
            Accept::Any => "any value".into(),
            Accept::Int(lo, hi) => format!("an integer from {lo} to {hi}"),
            Accept::UpToGenerateLength(lo) => format!(
                "an integer from {lo} to {} (this daemon's --max-generate-length)",
                config.max_generate_length
            ),
            Accept::NotNan => "a number (not NaN)".into(),
            Accept::Float { min, max, .. } if min == -HUGE && max == HUGE => {
                "a finite number".into()
            }
            Accept::Float { min, max, .. } if max == HUGE => {
                format!(
                    "a finite number >{} {min}",
                    if self.min_open() { "" } else { "=" }
                )
            }
            Accept::Float {
                min,
                max,
                min_open,
                max_open,
            } => format!(
                "a number in {}{}, {}{}",
                if min_open { "(" } else { "[" },
                num(min),
                num(max),
                if max_open { ")" } else { "]" }
            ),
        }
    }

    fn min_open(self) -> bool {
        matches!(self, Accept::Float { min_open: true, .. })
    }
}

/// Checks fields against [`RULES`], naming them by their path in the request.
pub struct Fields<'c> {
    config: &'c DaemonConfig,
}

type Checked = Result<(), ServiceError>;

impl<'c> Fields<'c> {
    pub fn new(config: &'c DaemonConfig) -> Self {
        Self { config }
    }

    fn rule(&self, key: &str) -> Result<Accept, ServiceError> {
        rule(key).ok_or_else(|| ServiceError::Internal(format!("no range is defined for {key}")))
    }

    /// An integer field; unset passes (the default applies).
    pub fn int(&self, key: &str, path: &str, v: Option<impl Into<u64>>) -> Checked {
        let Some(v) = v.map(Into::into) else {
            return Ok(());
        };
        let accept = self.rule(key)?;
        if accept.accepts_int(v, self.config) {
            return Ok(());
        }
        Err(ServiceError::InvalidArgument(format!(
            "{path} must be {}, got {v}",
            accept.describe(self.config)
        )))
    }

    /// A float field; unset passes.
    pub fn float(&self, key: &str, path: &str, v: Option<impl Into<f64>>) -> Checked {
        let Some(v) = v.map(Into::into) else {
            return Ok(());
        };
        let accept = self.rule(key)?;
        if accept.accepts_float(v) {
            return Ok(());
        }
        Err(ServiceError::InvalidArgument(format!(
            "{path} must be {}, got {v}",
            accept.describe(self.config)
        )))
    }

    /// Every element of a repeated float field.
    pub fn floats(&self, key: &str, path: &str, values: &[f32]) -> Checked {
        for (i, &v) in values.iter().enumerate() {
            self.float(key, &format!("{path}[{i}]"), Some(v))?;
        }
        Ok(())
    }

    /// The length of a repeated field.
    pub fn len(&self, path: &str, n: usize, lo: usize, hi: usize) -> Checked {
        if (lo..=hi).contains(&n) {
            return Ok(());
        }
        Err(ServiceError::InvalidArgument(format!(
            "{path} must hold {lo} to {hi} entries, got {n}"
        )))
    }

    fn latents(&self, path: &str, points: &[pb::LatentPoint]) -> Checked {
        for (i, p) in points.iter().enumerate() {
            self.floats(
                "LatentPoint.values",
                &format!("{path}[{i}].values"),
                &p.values,
            )?;
        }
        Ok(())
    }

    fn weights(&self, path: &str, w: Option<&pb::BackboneWeights>) -> Checked {
        use pb::backbone_weights::Source;
        let seed = w.and_then(|w| match w.source {
            Some(Source::RandomSeed(s)) => Some(s),
            _ => None,
        });
        self.int(
            "BackboneWeights.random_seed",
            &format!("{path}.random_seed"),
            seed,
        )
    }
}

/// A request whose numbers are checked before it is served.
pub trait Validate {
    fn validate(&self, f: &Fields) -> Checked;
}

/// Checks `req` against this daemon's ranges.
pub fn check<R: Validate>(req: &R, config: &DaemonConfig) -> Checked {
    req.validate(&Fields::new(config))
}

macro_rules! nothing_to_check {
    ($($t:ty),*) => {$(
        impl Validate for $t {
            fn validate(&self, _: &Fields) -> Checked {
                Ok(())
            }
        }
    )*};
}

nothing_to_check!(
    pb::InfoRequest,
    pb::ListModelsRequest,
    pb::DescribeModelRequest,
    pb::DeleteModelRequest,
    pb::LoadModelRequest,
    pb::UnloadModelRequest,
    pb::WatchJobRequest,
    pb::CancelJobRequest,
    pb::ListJobsRequest,
    pb::ResumeJobRequest
);

fn char_lstm(f: &Fields, path: &str, c: &pb::CharLstmConfig) -> Checked {
    f.int("CharLstmConfig.maxlen", &format!("{path}.maxlen"), c.maxlen)?;
    f.int("CharLstmConfig.step", &format!("{path}.step"), c.step)?;
    f.int("CharLstmConfig.hidden", &format!("{path}.hidden"), c.hidden)
}

fn vae(f: &Fields, path: &str, c: &pb::VaeConfig) -> Checked {
    f.int(
        "VaeConfig.latent_dim",
        &format!("{path}.latent_dim"),
        c.latent_dim,
    )?;
    f.float(
        "VaeConfig.kl_weight",
        &format!("{path}.kl_weight"),
        c.kl_weight,
    )
}

fn gan(f: &Fields, path: &str, c: &pb::GanConfig) -> Checked {
    f.int(
        "GanConfig.latent_dim",
        &format!("{path}.latent_dim"),
        c.latent_dim,
    )?;
    f.float("GanConfig.dropout", &format!("{path}.dropout"), c.dropout)?;
    f.float(
        "GanConfig.leaky_slope",
        &format!("{path}.leaky_slope"),
        c.leaky_slope,
    )?;
    for (key, v) in [
        ("generator_seed_channels", c.generator_seed_channels),
        ("generator_channels", c.generator_channels),
        ("discriminator_channels", c.discriminator_channels),
    ] {
        f.int(&format!("GanConfig.{key}"), &format!("{path}.{key}"), v)?;
    }
    Ok(())
}

impl Validate for pb::CreateModelRequest {
    fn validate(&self, f: &Fields) -> Checked {
        use pb::create_model_request::Config;
        match &self.config {
            Some(Config::CharLstm(c)) => char_lstm(f, "char_lstm", c),
            Some(Config::Vae(c)) => vae(f, "vae", c),
            Some(Config::Gan(c)) => gan(f, "gan", c),
            None => Ok(()),
        }
    }
}

impl Validate for pb::TrainOptions {
    fn validate(&self, f: &Fields) -> Checked {
        let o = |name: &str| format!("options.{name}");
        let key = |name: &str| format!("TrainOptions.{name}");
        for (name, v) in [
            ("epochs", self.epochs),
            ("batch_size", self.batch_size),
            ("sample_length", self.sample_length),
            ("checkpoint_every_steps", Some(self.checkpoint_every_steps)),
            ("max_train_images", Some(self.max_train_images)),
            ("max_validation_images", Some(self.max_validation_images)),
            ("grid_size", self.grid_size),
            ("steps", self.steps),
            ("sample_every", self.sample_every),
            ("sample_count", self.sample_count),
        ] {
            f.int(&key(name), &o(name), v)?;
        }
        f.int(&key("seed"), &o("seed"), self.seed)?;
        for (name, v) in [
            ("learning_rate", self.learning_rate),
            ("validation_split", Some(self.validation_split)),
            ("divergence_factor", Some(self.divergence_factor)),
            ("discriminator_lr", self.discriminator_lr),
            ("generator_lr", self.generator_lr),
            ("clip_value", self.clip_value),
        ] {
            f.float(&key(name), &o(name), v)?;
        }
        f.float(&key("decay"), &o("decay"), self.decay)?;
        f.floats(
            &key("sample_temperatures"),
            &o("sample_temperatures"),
            &self.sample_temperatures,
        )
    }
}

impl Validate for pb::TrainRequest {
    fn validate(&self, f: &Fields) -> Checked {
        use pb::train_request::{CreateConfig, Data};
        match &self.create_config {
            Some(CreateConfig::CharLstm(c)) => char_lstm(f, "char_lstm", c)?,
            Some(CreateConfig::Vae(c)) => vae(f, "vae", c)?,
            Some(CreateConfig::Gan(c)) => gan(f, "gan", c)?,
            None => {}
        }
        if let Some(o) = &self.options {
            o.validate(f)?;
        }
        if let Some(Data::Images(i)) = &self.data {
            f.int("ImageData.class_label", "images.class_label", i.class_label)?;
            if let Some(pb::image_data::Source::Inline(inline)) = &i.source {
                f.len("images.inline.images", inline.images.len(), 1, usize::MAX)?;
            }
        }
        Ok(())
    }
}

impl Validate for pb::GenerateRequest {
    fn validate(&self, f: &Fields) -> Checked {
        f.float(
            "GenerateRequest.temperature",
            "temperature",
            self.temperature,
        )?;
        f.int("GenerateRequest.length", "length", self.length)?;
        f.int("GenerateRequest.seed", "seed", self.seed)
    }
}

impl Validate for pb::VaeGridRequest {
    fn validate(&self, f: &Fields) -> Checked {
        f.int("VaeGridRequest.size", "size", self.size)
    }
}

impl Validate for pb::VaeDecodeRequest {
    fn validate(&self, f: &Fields) -> Checked {
        f.latents("points", &self.points)?;
        f.len("points", self.points.len(), 1, MAX_POINTS)
    }
}

impl Validate for pb::VaeEncodeRequest {
    fn validate(&self, f: &Fields) -> Checked {
        f.len("images", self.images.len(), 1, MAX_POINTS)
    }
}

impl Validate for pb::VaeConceptRequest {
    fn validate(&self, f: &Fields) -> Checked {
        f.int(
            "VaeConceptRequest.from_class",
            "from_class",
            Some(self.from_class),
        )?;
        f.int(
            "VaeConceptRequest.to_class",
            "to_class",
            Some(self.to_class),
        )?;
        if let Some(v) = &self.vector {
            f.floats("LatentPoint.values", "vector.values", &v.values)?;
        }
        f.float("VaeConceptRequest.amount", "amount", self.amount)
    }
}

impl Validate for pb::VaeMorphRequest {
    fn validate(&self, f: &Fields) -> Checked {
        f.int("VaeMorphRequest.frames", "frames", self.frames)?;
        f.int("VaeMorphRequest.frame_ms", "frame_ms", self.frame_ms)
    }
}

impl Validate for pb::GanSampleRequest {
    fn validate(&self, f: &Fields) -> Checked {
        f.int("GanSampleRequest.count", "count", self.count)?;
        f.int("GanSampleRequest.seed", "seed", self.seed)?;
        f.latents("latents", &self.latents)?;
        f.len("latents", self.latents.len(), 0, MAX_GAN_LATENTS)
    }
}

impl Validate for pb::DreamRequest {
    fn validate(&self, f: &Fields) -> Checked {
        for (i, l) in self.layers.iter().enumerate() {
            f.float(
                "DreamLayer.weight",
                &format!("layers[{i}].weight"),
                Some(l.weight),
            )?;
        }
        f.len("layers", self.layers.len(), 0, MAX_LAYERS)?;
        f.int(
            "DreamRequest.random_layers_seed",
            "random_layers_seed",
            self.random_layers_seed,
        )?;
        f.float("DreamRequest.step", "step", self.step)?;
        f.int("DreamRequest.iterations", "iterations", self.iterations)?;
        f.float("DreamRequest.max_loss", "max_loss", self.max_loss)?;
        f.int("DreamRequest.octaves", "octaves", self.octaves)?;
        f.float(
            "DreamRequest.octave_scale",
            "octave_scale",
            self.octave_scale,
        )?;
        f.weights("weights", self.weights.as_ref())
    }
}

impl Validate for pb::StyleRequest {
    fn validate(&self, f: &Fields) -> Checked {
        for (name, v) in [
            ("content_weight", self.content_weight),
            ("style_weight", self.style_weight),
            ("total_variation_weight", self.total_variation_weight),
        ] {
            f.float(&format!("StyleRequest.{name}"), name, v)?;
        }
        for (name, v) in [
            ("rounds", self.rounds),
            ("iterations", self.iterations),
            ("height", self.height),
        ] {
            f.int(&format!("StyleRequest.{name}"), name, v)?;
        }
        f.len("style_layers", self.style_layers.len(), 0, MAX_LAYERS)?;
        f.weights("weights", self.weights.as_ref())
    }
}
