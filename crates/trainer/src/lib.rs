//! Training loops, datasets, checkpoints and progress events.
//!
//! Everything here is synchronous and device-agnostic: the daemon runs it on its
//! per-device worker thread, the CLI's benchmarks call it directly.

pub mod bench;
pub mod error;
pub mod events;
pub mod mnist;
pub mod store;
pub mod text_data;
pub mod text_generate;
pub mod text_train;

pub use error::{Error, Result};
pub use events::{Stop, TrainEvent};
pub use store::{ModelRecord, ModelStore};
