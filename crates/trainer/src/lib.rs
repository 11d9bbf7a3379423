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
