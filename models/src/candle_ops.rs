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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Inference BatchNorm against the formula in f64, channels on either axis.
    #[test]
    fn batch_norm_with_given_statistics_matches_the_formula() {
        let dev = Device::Cpu;
        let (mean, var, gamma, beta) = (
            [0.5f32, -1.0],
            [4.0f32, 0.25],
            [2.0f32, -0.5],
            [0.1f32, 3.0],
        );
        let eps = 1e-3;
        let x: Vec<f32> = (0..2 * 2 * 3).map(|i| i as f32 * 0.37 - 2.0).collect();
        let t = |v: &[f32]| Tensor::from_slice(v, v.len(), &dev).unwrap();
        for channel_axis in [1, 0] {
            // NCHW [2, 2, 3, 1] or channel-major [2, 2, 3, 1] read with channels first.
            let xs = Tensor::from_slice(&x, (2, 2, 3, 1), &dev).unwrap();
            let y = batch_norm(
                &xs,
                &t(&mean),
                &t(&var),
                &t(&gamma),
                &t(&beta),
                eps,
                channel_axis,
            )
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
            for (i, (&xi, &yi)) in x.iter().zip(&y).enumerate() {
                let c = if channel_axis == 1 {
                    (i / 3) % 2
                } else {
                    i / 6
                };
                let expected = (xi as f64 - mean[c] as f64) / (var[c] as f64 + eps).sqrt()
                    * gamma[c] as f64
                    + beta[c] as f64;
                assert!(
                    (yi as f64 - expected).abs() < 1e-5,
                    "axis {channel_axis}, {i}: {yi} vs {expected}"
                );
            }
        }
    }
}
