//! Ops that candle lacks or runs slowly, written once here so the models stay plain.
//!
//! - [`lstm`]: a fused LSTM over a whole sequence (CPU kernel with its own backward,
//!   candle composition on other devices) and a batch-1 inference runner.
//! - [`rmsprop`]: RMSprop with Keras semantics (candle has none, and its optimizers hide
//!   their state, which checkpoints need).
//! - [`sampling`]: temperature reweighting and multinomial draws.
//! - [`fastmath`]: vectorized exp/sigmoid/tanh used by the CPU kernels.
//! - `smallgemm` (private): the AVX-512 kernel for the LSTM's matmuls.
//! - `pool` (private): recycled buffers for the CPU kernels.

pub mod fastmath;
pub mod lstm;
mod pool;
pub mod rmsprop;
pub mod sampling;
mod smallgemm;

pub use lstm::{
    CpuLstmRunner, LstmSeq, RunnerScratch, Wavefront, lstm_last_hidden, lstm_last_hidden_reference,
};
pub use rmsprop::{RmsProp, RmsPropConfig};
