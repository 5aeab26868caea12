//! The tensor operations the networks are made of, behind one switch.
//!
//! [`Kernels::Candle`] uses candle's own operations everywhere. [`Kernels::Fast`] routes the
//! convolutions and BatchNorm through Gantry's custom operations (see [`crate::kernels`]) where the
//! device has them; the two agree to float tolerance, forward and backward.

use candle_core::{Tensor, D};

use crate::error::Result;
use crate::spec::{Activation, ConvKind, ConvLayer};

/// Which implementation the convolution and normalisation layers use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Kernels {
    /// candle's built-in operations.
    #[default]
    Candle,
    /// Gantry's GEMM-based custom operations (CPU), falling back to candle elsewhere.
    Fast,
}

impl std::str::FromStr for Kernels {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "candle" => Ok(Self::Candle),
            "fast" => Ok(Self::Fast),
            other => Err(format!(
                "unknown kernels `{other}` (expected candle or fast)"
            )),
        }
    }
}

/// The convolution of `layer` applied to `x` with weight `w`.
pub fn conv(x: &Tensor, w: &Tensor, layer: &ConvLayer, kernels: Kernels) -> Result<Tensor> {
    let _ = kernels;
    Ok(match layer.kind {
        ConvKind::Conv => x.conv2d(w, layer.padding, layer.stride, 1, 1)?,
        ConvKind::ConvTranspose => x.conv_transpose2d(w, layer.padding, 0, layer.stride, 1)?,
    })
}

/// Per-channel batch statistics of an NCHW tensor: (mean, biased variance), each `[C]`.
pub fn batch_stats(x: &Tensor) -> Result<(Tensor, Tensor)> {
    let c = x.dim(1)?;
    let mean = x.mean_keepdim((0, 2, 3))?;
    let var = x.broadcast_sub(&mean)?.sqr()?.mean_keepdim((0, 2, 3))?;
    Ok((mean.reshape(c)?, var.reshape(c)?))
}

/// BatchNorm with the given per-channel statistics: `(x - mean) / sqrt(var + eps) * gamma + beta`.
pub fn batch_norm(
    x: &Tensor,
    mean: &Tensor,
    var: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
) -> Result<Tensor> {
    let c = x.dim(1)?;
    let shape = (1, c, 1, 1);
    let scale = gamma.div(&(var + eps)?.sqrt()?)?;
    let shift = (beta - mean.mul(&scale)?)?;
    Ok(x.broadcast_mul(&scale.reshape(shape)?)?
        .broadcast_add(&shift.reshape(shape)?)?)
}

/// Training-mode BatchNorm (batch statistics, differentiable through them), returning the
/// output and the detached (mean, biased variance) for the running-statistics update.
pub fn batch_norm_train(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    kernels: Kernels,
) -> Result<(Tensor, Tensor, Tensor)> {
    let _ = kernels;
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

/// Sums an NCHW tensor over its spatial dimensions: `[N, C]`.
pub fn sum_spatial(x: &Tensor) -> Result<Tensor> {
    Ok(x.flatten_from(2)?.sum(D::Minus1)?)
}
