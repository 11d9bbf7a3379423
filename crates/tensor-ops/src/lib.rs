//! Ops that candle lacks or runs slowly, written once here so the models stay plain.
//!
//! - [`bias`]: per-channel bias of a convolution output, with a fast bias gradient, alone
//!   or fused with a (leaky) ReLU.
//! - [`conv`]: 2-D convolution and transposed convolution (CPU kernels with their own
//!   backward, which skips gradients nothing asks for; candle's ops on other devices).
//!   Frozen kernels' packed forms are cached across calls: [`packed_cache_bytes`] reports
//!   the memory held, [`clear_packed_cache`] frees it.
//! - [`linear`]: a dense layer `act(x · wᵀ + b)` whose weight and bias gradients come out
//!   in place (candle's composition copies the transposed weight gradient).
//! - [`lstm`]: a fused LSTM over a whole sequence (CPU kernel with its own backward,
//!   candle composition on other devices) and a batch-1 inference runner.
//! - [`pool2d`]: 2-D max and average pooling with overlapping windows and padding,
//!   differentiable (CPU kernels with their own backward, candle composition elsewhere).
//! - [`rmsprop`]: RMSprop with Keras semantics (candle has none, and its optimizers hide
//!   their state, which checkpoints need).
//! - [`sampling`]: temperature reweighting and multinomial draws.
//! - [`gram`]: the Gram matrix `F · Fᵀ` of style losses, on the convolutions' kernel.
//! - [`fastmath`]: vectorized exp/sigmoid/tanh used by the CPU kernels.
//! - `gemm` (private): the matrix-product kernels the CPU ops run on: the register-tiled
//!   AVX-512 kernel of the convolutions, dense layers and Gram matrix, and (`gemm::small`)
//!   the LSTM's.
//! - `buffers` (private): recycled buffers for the CPU kernels (a global pool and
//!   per-thread scratch).

pub mod bias;
mod buffers;
pub mod conv;
pub mod fastmath;
mod gemm;
pub mod gram;
pub mod linear;
pub mod lstm;
mod par;
pub mod pool2d;
pub mod rmsprop;
pub mod sampling;

pub use bias::add_channel_bias_relu;
pub use conv::{
    Conv2dParams, ConvTranspose2dParams, clear_packed_cache, conv_transpose2d,
    conv_transpose2d_bias_relu, conv_transpose2d_candle, conv2d, conv2d_bias_relu, conv2d_candle,
    packed_cache_bytes,
};
pub use linear::{linear, linear_relu};
pub use lstm::{
    CpuLstmRunner, LstmSeq, RunnerScratch, Wavefront, lstm_last_hidden, lstm_last_hidden_reference,
};
pub use pool2d::{Pool2dParams, avg_pool2d, max_pool2d};
pub use rmsprop::{RmsProp, RmsPropConfig};
