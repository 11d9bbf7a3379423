//! The generative architectures of Oneiro. A model is a serde config plus a constructor
//! from weights whose keys are the checkpoint's keys (PyTorch-style names), so real
//! weights load without renaming.

pub mod backbone;
pub mod char_lstm;
pub mod dcgan;
pub mod inception_v3;
pub mod init;
mod params;
pub mod vae;
pub mod vgg19;
pub mod vocab;

pub use backbone::{Preprocessing, Weights};
pub use char_lstm::{CharLstm, CharLstmConfig};
pub use dcgan::{Dcgan, GanConfig};
pub use inception_v3::InceptionV3;
pub use vae::{Vae, VaeConfig};
pub use vgg19::Vgg19;
pub use vocab::Vocabulary;
