//! Gantry's CPU kernels as candle custom operations: cache-blocked im2col/col2im + GEMM
//! convolutions ([`blocked`], [`mod@conv`]), and each convolution fused with its BatchNorm and
//! activation into one autograd node ([`block`], [`norm`]), replacing candle's direct-loop CPU
//! convolutions and many-op BatchNorm in training.
//!
//! On CUDA (feature `cudnn`), every convolution and its gradients run through cuDNN on NCHW
//! tensors ([`primitives`], and the `cudnn` module behind it).
//!
//! Layout: tensors are channel-major, `[C, B, H, W]`, between the kernels. With the batch merged
//! into the GEMM's column dimension, a convolution's output `W * im2col(x)` is already
//! `[C_out, B * H * W]`, so no permute is needed anywhere inside a network, and every channel's
//! values are contiguous for BatchNorm. Networks convert from/to NCHW once at their ends.

pub mod block;
pub mod blocked;
pub mod conv;
#[cfg(feature = "cudnn")]
pub mod cudnn;
pub mod im2col;
pub mod matmul;
pub mod norm;
pub mod primitives;

use candle_core::{CpuStorage, Layout, Tensor};

use crate::error::Result;
use crate::spec::ConvLayer;

pub use conv::ConvParams;
pub use norm::Act;

/// The contiguous f32 data of a custom op's CPU operand (`what` names it in errors).
pub fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> candle_core::Result<&'a [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(data), Some((start, end))) => Ok(&data[start..end]),
        (CpuStorage::F32(_), None) => {
            candle_core::bail!("gantry kernels: {what} must be contiguous")
        }
        _ => candle_core::bail!("gantry kernels: {what} must be f32"),
    }
}

/// The contiguous f32 data of an in-place op's destination.
pub fn f32_slice_mut<'a>(
    s: &'a mut CpuStorage,
    l: &Layout,
    what: &str,
) -> candle_core::Result<&'a mut [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(data), Some((start, end))) => Ok(&mut data[start..end]),
        (CpuStorage::F32(_), None) => {
            candle_core::bail!("gantry kernels: {what} must be contiguous")
        }
        _ => candle_core::bail!("gantry kernels: {what} must be f32"),
    }
}

/// A custom op's `bwd` result: the input and weight gradients, each computed only when autograd
/// tracks that operand.
pub(crate) fn tracked_grads(
    x: &Tensor,
    w: &Tensor,
    input_grad: impl FnOnce() -> candle_core::Result<Tensor>,
    weight_grad: impl FnOnce() -> candle_core::Result<Tensor>,
) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
    let dx = x.track_op().then(input_grad).transpose()?;
    let dw = w.track_op().then(weight_grad).transpose()?;
    Ok((dx, dw))
}

/// The kernels' description of `layer`'s convolution.
pub fn conv_params(layer: &ConvLayer) -> ConvParams {
    ConvParams {
        kind: layer.kind,
        kernel: layer.kernel,
        stride: layer.stride,
        padding: layer.padding,
    }
}

/// The convolution of `layer` on an NCHW `x` by the fastest implementation for its device:
/// cuDNN custom ops on CUDA (feature `cudnn`), else candle's own op.
pub fn conv_nchw(x: &Tensor, w: &Tensor, layer: &ConvLayer) -> Result<Tensor> {
    #[cfg(feature = "cudnn")]
    if x.device().is_cuda() {
        return Ok(primitives::conv(x, w, conv_params(layer))?);
    }
    crate::ops::conv(x, w, layer)
}

/// The convolution of `layer` on a channel-major `x` with weight `w` through Gantry's kernels.
pub fn conv(x: &Tensor, w: &Tensor, layer: &ConvLayer) -> Result<Tensor> {
    Ok(conv::conv(x, w, conv_params(layer))?)
}

#[cfg(test)]
mod tests;
