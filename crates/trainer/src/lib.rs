//! Training loops, datasets, checkpoints and progress events.
//!
//! Everything here is synchronous and device-agnostic: the daemon runs it on its
//! per-device worker thread, the CLI's benchmarks call it directly.
//!
//! One module per technique (`text`, `vae`, `gan`, `vision` for DeepDream and style
//! transfer); the training loops share [`fit`]'s skeleton.

pub mod bench;
pub mod cifar;
pub mod error;
pub mod events;
pub(crate) mod fit;
pub mod gan;
pub mod hub;
pub mod imageio;
pub mod mnist;
pub mod parquet_images;
pub mod run;
pub mod store;
pub mod text;
pub mod vae;
pub mod vision;

pub use error::{Error, Result};
pub use events::{LossParts, Stop, TrainEvent, Unit};
pub use store::{ModelKind, ModelRecord, ModelSpec, ModelStore};

// The paths before the split into technique modules, kept until the daemon and the
// client have moved to the new ones.
#[doc(hidden)]
pub use gan as gan_train;
#[doc(hidden)]
pub use text::{data as text_data, generate as text_generate};
#[doc(hidden)]
pub use vae::infer as vae_infer;
#[doc(hidden)]
pub use vision::{backbones, lbfgs};

#[doc(hidden)]
pub mod text_train {
    pub use crate::run::device_name;
    pub use crate::text::train::*;
}

#[doc(hidden)]
pub mod vae_train {
    pub use crate::vae::train::*;
}

#[doc(hidden)]
pub mod dream {
    pub use crate::vision::dream::*;
    pub use crate::vision::planes::Planes;
}

#[doc(hidden)]
pub mod style {
    pub use crate::vision::planes::Planes;
    pub use crate::vision::style::StyleLoss as LossParts;
    pub use crate::vision::style::*;
}
