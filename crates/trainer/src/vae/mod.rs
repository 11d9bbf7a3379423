//! The convolutional VAE on MNIST (SPEC §4): training, and what a trained one does
//! (decoding, the latent grid, concept vectors, morphs).

pub mod infer;
pub mod train;

pub use infer::VaeRunner;
pub use train::{VaeTrainOptions, train_vae};
