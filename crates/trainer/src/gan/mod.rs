//! The DCGAN (SPEC §5): the adversarial step and its training by steps.

pub mod step;
pub mod train;

pub use step::{StepLosses, adversarial_step, grid_png, latents};
pub use train::{GanTrainOptions, train_gan};
