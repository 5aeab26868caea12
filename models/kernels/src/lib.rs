//! Gantry's compute kernels, as candle custom operations with autograd support.
//!
//! - **CPU convolutions** on channel-major tensors (`[C, B, H, W]`): [`gemm_conv`] (a
//!   convolution or transposed convolution as im2col/col2im + GEMM, cache-tiled over groups of
//!   images), and the same fused with what follows it in a DCGAN block as one autograd node:
//!   [`gemm_conv_act`] and, in training mode, [`gemm_conv_bn_act_train`] (BatchNorm with batch
//!   statistics, then the activation). With the batch merged into the GEMM's column
//!   dimension, a convolution's output `W * im2col(x)` is already `[C_out, B * H * W]`: no
//!   permute anywhere inside a network, and every channel's values are contiguous for BatchNorm.
//!   Networks convert from/to NCHW once at their ends.
//! - **NCHW convolutions as three primitives** ([`primitive_conv_nchw`]): cuDNN's forward,
//!   backward-data and backward-filter on CUDA (feature `cudnn`), direct reference loops on the
//!   CPU (which is what tests the mapping without a GPU).
//! - **Resampling** of the last two axes with hand-written backward passes: nearest x2
//!   ([`upsample_nearest2x`]) and 2x2 average pooling ([`avg_pool2x`]), and a lone training-mode
//!   BatchNorm with its activation ([`bn_act_train`]), for residual blocks.
//! - **Adam** applied in place ([`adam_update`]).
//! - [`Backend::select`]: the one place that decides which of these a network runs on.
//! - [`profile`]: named timing spans the kernels record when profiling is on.
//!
//! All of Gantry's `unsafe` code lives in this crate (the GEMM calls and the tiled kernels'
//! disjoint writes into one output), each block with the argument for its soundness.

mod adam;
mod allocator;
mod backend;
mod batch_norm;
#[cfg(feature = "cudnn")]
mod cudnn;
mod fused;
mod gemm_conv;
mod geometry;
mod im2col;
mod matmul;
mod nchw;
pub mod profile;
mod resample;
mod storage;
mod tiled;

pub use adam::{adam_update, AdamStep};
pub use allocator::tune_allocator;
pub use backend::{Backend, Kernels};
pub use batch_norm::Act;
pub use fused::{bn_act_train, gemm_conv_act, gemm_conv_bn_act_train};
pub use gemm_conv::{gemm_conv, ConvKind, ConvParams};
pub use nchw::primitive_conv_nchw;
pub use resample::{avg_pool2x, upsample_nearest2x};

#[cfg(test)]
mod tests;
