//! BatchNorm in a network: per channel or per class, batch or running statistics, on either
//! layout, and what one forward pass runs with ([`Pass`]).

use std::sync::atomic::{AtomicU64, Ordering};

use candle_core::{Tensor, Var};
use gantry_kernels::{Act, Backend};

use super::{fused_activation, param};
use crate::candle_ops;
use crate::error::{ModelError, Result};
use crate::spec::{Activation, NormLayer, BN_EPS};

/// BatchNorm2d with learnable affine parameters and running statistics.
#[derive(Debug)]
pub struct BatchNorm2d {
    pub gamma: Var,
    pub beta: Var,
    pub running_mean: Var,
    pub running_var: Var,
    /// Weight of a new batch in the running statistics (f64 bits; PyTorch's 0.1 by default).
    pub(super) momentum: AtomicU64,
}

impl BatchNorm2d {
    /// Folds batch statistics into the running ones like PyTorch: momentum 0.1 and the unbiased
    /// variance (`count` values per channel).
    pub(super) fn update_running(&self, mean: &Tensor, var: &Tensor, count: usize) -> Result<()> {
        let count = count as f64;
        let unbiased = (var * (count / (count - 1.0).max(1.0)))?;
        let m = f64::from_bits(self.momentum.load(Ordering::Relaxed));
        let rm = ((self.running_mean.as_tensor() * (1.0 - m))? + (mean * m)?)?;
        let rv = ((self.running_var.as_tensor() * (1.0 - m))? + (unbiased * m)?)?;
        self.running_mean.set(&rm)?;
        self.running_var.set(&rv)?;
        Ok(())
    }

    /// Whether gains and shifts are per class (`[classes, C]`).
    pub(super) fn is_conditional(&self) -> bool {
        self.gamma.as_tensor().rank() == 2
    }

    /// The affine parameters applied after normalisation: per channel (`[C]`), or for a
    /// class-conditional BatchNorm the gains and shifts of each image's class (`[N, C]`).
    fn affine(&self, pass: &Pass) -> Result<(Tensor, Tensor)> {
        let (gamma, beta) = (
            param(&self.gamma, pass.frozen),
            param(&self.beta, pass.frozen),
        );
        if !self.is_conditional() {
            return Ok((gamma, beta));
        }
        let labels = pass.labels.ok_or_else(|| {
            ModelError::Input("a class-conditional BatchNorm needs labels".into())
        })?;
        Ok((gamma.embedding(labels)?, beta.embedding(labels)?))
    }

    /// Unit gains and zero shifts: the normalisation alone, before a per-image affine map.
    fn unit_affine(&self) -> Result<(Tensor, Tensor)> {
        let c = self.running_mean.as_tensor();
        Ok((c.ones_like()?, c.zeros_like()?))
    }

    /// Normalises `x` (channels on `pass.channel_axis()`) with batch statistics, updating the
    /// running ones, when `pass.train`; with the running ones otherwise; then the affine map.
    pub(super) fn forward(&self, x: &Tensor, pass: &Pass) -> Result<Tensor> {
        let axis = pass.channel_axis();
        let conditional = self.is_conditional();
        let (gamma, beta) = if conditional {
            self.unit_affine()?
        } else {
            self.affine(pass)?
        };
        let y = if pass.train {
            let nchw = if axis == 1 {
                x.clone()
            } else {
                x.transpose(0, 1)?
            };
            let (y, mean, var) = candle_ops::batch_norm_train(&nchw, &gamma, &beta, BN_EPS)?;
            self.update_running(&mean, &var, y.elem_count() / mean.elem_count())?;
            if axis == 1 {
                y
            } else {
                y.transpose(0, 1)?
            }
        } else {
            candle_ops::batch_norm(
                x,
                self.running_mean.as_tensor(),
                self.running_var.as_tensor(),
                &gamma,
                &beta,
                BN_EPS,
                axis,
            )?
        };
        if conditional {
            self.class_affine(&y, pass)
        } else {
            Ok(y)
        }
    }

    /// `y * gain[label] + shift[label]` per image, channels on `pass.channel_axis()`.
    fn class_affine(&self, y: &Tensor, pass: &Pass) -> Result<Tensor> {
        let (gain, shift) = self.affine(pass)?;
        let (n, c) = gain.dims2()?;
        let shape = |t: Tensor| -> Result<Tensor> {
            Ok(match pass.channel_axis() {
                1 => t.reshape((n, c, 1, 1))?,
                _ => t.t()?.reshape((c, n, 1, 1))?,
            })
        };
        Ok(y.broadcast_mul(&shape(gain)?)?
            .broadcast_add(&shape(shift)?)?)
    }

    /// Training-mode BatchNorm and the fusable activation `act` (`activation` in the spec's
    /// terms) on a channel-major `x` with Gantry's kernel (one autograd node; a
    /// class-conditional one normalises there and applies its per-image affine map and the
    /// activation after).
    pub(super) fn forward_fast_train(
        &self,
        x: &Tensor,
        act: Act,
        activation: Activation,
        pass: &Pass,
    ) -> Result<Tensor> {
        let conditional = self.is_conditional();
        let (gamma, beta, fused) = if conditional {
            let (g, b) = self.unit_affine()?;
            (g, b, Act::Identity)
        } else {
            let (g, b) = self.affine(pass)?;
            (g, b, act)
        };
        let (y, mean, var) = gantry_kernels::bn_act_train(x, &gamma, &beta, BN_EPS, fused)?;
        self.record_batch_stats(mean, var, &y)?;
        if !conditional {
            return Ok(y);
        }
        let y = self.class_affine(&y, pass)?;
        candle_ops::activate(&y, activation)
    }

    /// Folds the kernels' batch statistics (per channel) into the running ones.
    pub(super) fn record_batch_stats(
        &self,
        mean: Vec<f32>,
        var: Vec<f32>,
        y: &Tensor,
    ) -> Result<()> {
        let c = mean.len();
        let dev = y.device();
        self.update_running(
            &Tensor::from_vec(mean, c, dev)?,
            &Tensor::from_vec(var, c, dev)?,
            y.elem_count() / c,
        )
    }
}

/// What one forward pass runs with: the labels (for class-conditional BatchNorm), batch or
/// running statistics, whether the parameters are constants to autograd, and the backend
/// (which fixes the layout: NCHW, or channel-major for Gantry's CPU kernels).
#[derive(Debug, Clone, Copy)]
pub struct Pass<'a> {
    pub labels: Option<&'a Tensor>,
    pub train: bool,
    pub frozen: bool,
    pub backend: Backend,
}

impl Pass<'_> {
    /// The axis that holds channels in this pass's layout.
    pub(super) fn channel_axis(&self) -> usize {
        match self.backend {
            Backend::CpuGemm => 0,
            _ => 1,
        }
    }
}

/// A lone BatchNorm with its activation.
#[derive(Debug)]
pub struct NormBlock {
    pub norm: NormLayer,
    pub bn: BatchNorm2d,
}

impl NormBlock {
    pub(super) fn forward(&self, x: &Tensor, pass: &Pass) -> Result<Tensor> {
        let act = fused_activation(self.norm.activation);
        if let (Backend::CpuGemm, true, Some(act)) = (pass.backend, pass.train, act) {
            return self
                .bn
                .forward_fast_train(x, act, self.norm.activation, pass);
        }
        let y = self.bn.forward(x, pass)?;
        candle_ops::activate(&y, self.norm.activation)
    }
}
