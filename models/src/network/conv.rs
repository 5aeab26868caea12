//! A convolution block (convolution, bias, BatchNorm, activation) on candle's ops or Gantry's
//! CPU kernels, and its spectral normalisation.

use candle_core::{Tensor, Var};
use gantry_kernels::{Act, Backend};

use super::norm::{BatchNorm2d, Pass};
use super::{fused_activation, param};
use crate::candle_ops;
use crate::error::Result;
use crate::spec::{ConvLayer, BN_EPS};

/// Spectral normalisation of a block's weight `W` (`[out, in, k, k]`, seen as an `out x
/// in*k*k` matrix): the convolution uses `W / sigma` with `sigma = u^T W v`, the largest
/// singular value as estimated by power iteration (as PyTorch's `spectral_norm`); `u` is a
/// buffer (in checkpoints), `v` is recomputed from it.
#[derive(Debug)]
pub struct SpectralNorm {
    /// The left singular vector estimate (`[out]`).
    pub u: Var,
    /// The right one from the last power iteration (`[in*k*k]`).
    pub(super) v: std::sync::Mutex<Option<Tensor>>,
}

/// `x / max(|x|, 1e-12)`.
fn normalized(x: &Tensor) -> Result<Tensor> {
    let norm = x.sqr()?.sum_all()?.sqrt()?.maximum(1e-12)?;
    Ok(x.broadcast_div(&norm)?)
}

impl SpectralNorm {
    /// `v = normalize(W^T u)`, then `u = normalize(W v)`, for the matrix `w` (`[out, cols]`).
    pub(super) fn iterate(&self, w: &Tensor) -> Result<()> {
        let u = self.u.as_tensor().unsqueeze(1)?;
        let v = normalized(&w.t()?.matmul(&u)?)?;
        let u = normalized(&w.matmul(&v)?)?;
        self.u.set(&u.squeeze(1)?)?;
        *self.v.lock().expect("not poisoned") = Some(v);
        Ok(())
    }

    /// `sigma = u^T W v` for the matrix `w`, differentiable in `w` (`u`, `v` are constants).
    pub(super) fn sigma(&self, w: &Tensor) -> Result<Tensor> {
        let u = self.u.as_tensor().detach().unsqueeze(0)?;
        let v = match self.v.lock().expect("not poisoned").clone() {
            Some(v) => v,
            None => normalized(&w.detach().t()?.matmul(&u.t()?)?)?,
        };
        Ok(u.matmul(&w.matmul(&v)?)?.reshape(())?)
    }
}

/// One convolution layer with its weight, optional bias, BatchNorm and activation.
#[derive(Debug)]
pub struct ConvBlock {
    pub layer: ConvLayer,
    pub weight: Var,
    pub bias: Option<Var>,
    pub bn: Option<BatchNorm2d>,
    /// Present when the layer is spectrally normalised.
    pub spectral_norm: Option<SpectralNorm>,
}

impl ConvBlock {
    /// The weight as the convolution uses it: `W`, or `W / sigma(W)` with spectral
    /// normalisation; a constant to autograd when `frozen`.
    pub fn conv_weight(&self, frozen: bool) -> Result<Tensor> {
        let w = param(&self.weight, frozen);
        let Some(sn) = &self.spectral_norm else {
            return Ok(w);
        };
        let sigma = sn.sigma(&w.reshape((w.dim(0)?, ()))?)?;
        Ok(w.broadcast_div(&sigma)?)
    }

    /// One power iteration of the spectral normalisation (nothing without it).
    pub fn power_iteration(&self) -> Result<()> {
        match &self.spectral_norm {
            Some(sn) => {
                let w = self.weight.as_tensor().detach();
                sn.iterate(&w.reshape((w.dim(0)?, ()))?)
            }
            None => Ok(()),
        }
    }

    /// `y` plus the bias (if any), channels on `channel_axis`.
    fn add_bias(&self, y: Tensor, frozen: bool, channel_axis: usize) -> Result<Tensor> {
        let Some(bias) = &self.bias else {
            return Ok(y);
        };
        let mut shape = [1usize; 4];
        shape[channel_axis] = self.layer.out_channels;
        Ok(y.broadcast_add(&param(bias, frozen).reshape(shape.to_vec())?)?)
    }

    /// The block on `x` in `pass`'s layout: NCHW for candle's ops and cuDNN, channel-major for
    /// Gantry's CPU kernels.
    pub fn forward(&self, x: &Tensor, pass: &Pass) -> Result<Tensor> {
        match pass.backend {
            Backend::CpuGemm => self.forward_channel_major(x, pass),
            _ => self.forward_nchw(x, pass),
        }
    }

    /// Convolution, bias and BatchNorm (if any), activation, with candle's ops on an NCHW `x`
    /// (the convolution through cuDNN with [`Backend::Cudnn`]). `pass.frozen` uses the
    /// parameters as constants: gradients reach the input but not this block's parameters.
    fn forward_nchw(&self, x: &Tensor, pass: &Pass) -> Result<Tensor> {
        let w = self.conv_weight(pass.frozen)?;
        let y = match pass.backend {
            Backend::Cudnn => gantry_kernels::primitive_conv_nchw(x, &w, self.layer.conv_params())?,
            Backend::Candle | Backend::CpuGemm => candle_ops::conv(x, &w, &self.layer)?,
        };
        let y = self.add_bias(y, pass.frozen, 1)?;
        let y = match &self.bn {
            Some(bn) => bn.forward(&y, pass)?,
            None => y,
        };
        candle_ops::activate(&y, self.layer.activation)
    }

    /// The same block with Gantry's CPU kernels on a channel-major `x` (`[C, B, H, W]`).
    fn forward_channel_major(&self, x: &Tensor, pass: &Pass) -> Result<Tensor> {
        let w = self.conv_weight(pass.frozen)?;
        let conv = self.layer.conv_params();
        let act = fused_activation(self.layer.activation);
        let conditional = self.bn.as_ref().is_some_and(BatchNorm2d::is_conditional);
        if self.bias.is_none() && !conditional {
            if let (Some(bn), true, Some(act)) = (&self.bn, pass.train, act) {
                // Convolution, BatchNorm and activation as one autograd node.
                let (y, mean, var) = gantry_kernels::gemm_conv_bn_act_train(
                    x,
                    &w,
                    &param(&bn.gamma, pass.frozen),
                    &param(&bn.beta, pass.frozen),
                    conv,
                    BN_EPS,
                    act,
                )?;
                bn.record_batch_stats(mean, var, &y)?;
                return Ok(y);
            }
            if let (None, Some(act)) = (&self.bn, act) {
                if act != Act::Identity {
                    return Ok(gantry_kernels::gemm_conv_act(x, &w, conv, act)?);
                }
            }
        }
        let y = gantry_kernels::gemm_conv(x, &w, conv)?;
        let y = self.add_bias(y, pass.frozen, 0)?;
        match (&self.bn, pass.train, act) {
            (Some(bn), true, Some(act)) => {
                bn.forward_fast_train(&y, act, self.layer.activation, pass)
            }
            (Some(bn), _, _) => candle_ops::activate(&bn.forward(&y, pass)?, self.layer.activation),
            (None, _, _) => candle_ops::activate(&y, self.layer.activation),
        }
    }
}
