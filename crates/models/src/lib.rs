//! The generative architectures of Oneiro. A model is a serde config plus a constructor
//! from weights whose keys are the checkpoint's keys (PyTorch-style names), so real
//! weights load without renaming.

pub mod char_lstm;
pub mod dcgan;
pub mod init;
pub mod vae;
pub mod vocab;

pub use char_lstm::{CharLstm, CharLstmConfig};
pub use dcgan::{Dcgan, GanConfig};
pub use vae::{Vae, VaeConfig};
pub use vocab::Vocabulary;
