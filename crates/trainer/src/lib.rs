//! Training loops, datasets, checkpoints and progress events.
//!
//! Everything here is synchronous and device-agnostic: the daemon runs it on its
//! per-device worker thread, the CLI's benchmarks call it directly.

pub mod backbones;
pub mod bench;
pub mod cifar;
pub mod dream;
pub mod error;
pub mod events;
pub mod gan_train;
pub mod hub;
pub mod imageio;
pub mod lbfgs;
pub mod mnist;
pub mod parquet_images;
pub mod store;
pub mod style;
pub mod text_data;
pub mod text_generate;
pub mod text_train;
pub mod vae_infer;
pub mod vae_train;

pub use error::{Error, Result};
pub use events::{LossParts, Stop, TrainEvent};
pub use store::{ModelRecord, ModelStore};
