//! Ops that candle lacks or runs slowly, written once here so the models stay plain.
//!
//! - [`bias`]: per-channel bias of a convolution output, with a fast bias gradient.
//! - [`conv`]: 2-D convolution and transposed convolution (CPU kernels with their own
//!   backward, which skips gradients nothing asks for; candle's ops on other devices).
//! - [`lstm`]: a fused LSTM over a whole sequence (CPU kernel with its own backward,
//!   candle composition on other devices) and a batch-1 inference runner.
//! - [`rmsprop`]: RMSprop with Keras semantics (candle has none, and its optimizers hide
//!   their state, which checkpoints need).
//! - [`sampling`]: temperature reweighting and multinomial draws.
//! - [`fastmath`]: vectorized exp/sigmoid/tanh used by the CPU kernels.
//! - `smallgemm` (private): the AVX-512 kernel for the LSTM's matmuls.
//! - `pool` (private): recycled buffers for the CPU kernels.

pub mod bias;
pub mod conv;
pub mod fastmath;
pub mod lstm;
mod pool;
pub mod rmsprop;
pub mod sampling;
mod smallgemm;

pub use conv::{
    Conv2dParams, ConvTranspose2dParams, conv_transpose2d, conv_transpose2d_candle, conv2d,
    conv2d_candle,
};
pub use lstm::{
    CpuLstmRunner, LstmSeq, RunnerScratch, Wavefront, lstm_last_hidden, lstm_last_hidden_reference,
};
pub use rmsprop::{RmsProp, RmsPropConfig};
