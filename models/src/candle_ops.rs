//! The layer operations in candle's own ops on NCHW tensors: the reference that Gantry's
//! kernels are checked against, and what runs where they do not (see [`crate::Backend`]).

use candle_core::Tensor;

use crate::error::Result;
use crate::spec::{Activation, ConvKind, ConvLayer};

/// The convolution of `layer` applied to an NCHW `x` with weight `w`.
pub fn conv(x: &Tensor, w: &Tensor, layer: &ConvLayer) -> Result<Tensor> {
    Ok(match layer.kind {
        ConvKind::Conv => x.conv2d(w, layer.padding, layer.stride, 1, 1)?,
        ConvKind::ConvTranspose => x.conv_transpose2d(w, layer.padding, 0, layer.stride, 1)?,
    })
}

/// BatchNorm with the given per-channel statistics: `(x - mean) / sqrt(var + eps) * gamma + beta`.
/// `channel_axis` is 1 for NCHW tensors and 0 for channel-major ones.
pub fn batch_norm(
    x: &Tensor,
    mean: &Tensor,
    var: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    channel_axis: usize,
) -> Result<Tensor> {
    let c = x.dim(channel_axis)?;
    let mut dims = [1usize; 4];
    dims[channel_axis] = c;
    let shape = dims.to_vec();
    let scale = gamma.div(&(var + eps)?.sqrt()?)?;
    let shift = (beta - mean.mul(&scale)?)?;
    Ok(x.broadcast_mul(&scale.reshape(shape.clone())?)?
        .broadcast_add(&shift.reshape(shape)?)?)
}

/// Training-mode BatchNorm of an NCHW `x` (batch statistics, differentiable through them),
/// returning the output and the detached (mean, biased variance) for the running statistics.
pub fn batch_norm_train(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
) -> Result<(Tensor, Tensor, Tensor)> {
    let c = x.dim(1)?;
    let shape = (1, c, 1, 1);
    let mean = x.mean_keepdim((0, 2, 3))?;
    let xc = x.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim((0, 2, 3))?;
    let inv_std = (&var + eps)?.sqrt()?.recip()?;
    let y = xc
        .broadcast_mul(&inv_std)?
        .broadcast_mul(&gamma.reshape(shape)?)?
        .broadcast_add(&beta.reshape(shape)?)?;
    Ok((y, mean.detach().reshape(c)?, var.detach().reshape(c)?))
}

/// The activation applied to `x`.
pub fn activate(x: &Tensor, activation: Activation) -> Result<Tensor> {
    Ok(match activation {
        Activation::Identity => x.clone(),
        Activation::Relu => x.relu()?,
        Activation::LeakyRelu(slope) => {
            // max(x, slope * x) for 0 < slope < 1; differentiable in candle.
            x.maximum(&(x * slope)?)?
        }
        Activation::Tanh => x.tanh()?,
    })
}
