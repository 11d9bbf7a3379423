//! Image techniques on pretrained networks: DeepDream (SPEC §2) and neural style transfer
//! (SPEC §3), with the backbones they run on, their image planes and L-BFGS.

pub mod backbones;
pub mod dream;
pub mod lbfgs;
pub mod planes;
pub mod style;

pub use planes::Planes;
