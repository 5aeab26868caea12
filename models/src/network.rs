//! A network built by walking a [`NetworkSpec`]: convolution blocks with optional BatchNorm and an
//! optional label embedding. [`crate::Generator`] and [`crate::Discriminator`] wrap it.
//!
//! Blocks run on one of two paths with the same results: candle's ops on NCHW tensors, or
//! Gantry's CPU kernels on channel-major `[C, B, H, W]` tensors (convolutions become single
//! batch-merged GEMMs with no permutes, and BatchNorm's per-channel statistics are contiguous
//! slices). [`Network::forward_blocks`] takes and returns NCHW either way.

use std::sync::atomic::{AtomicU64, Ordering};

use candle_core::{Device, Tensor, Var};

use crate::error::{ModelError, Result};
use crate::kernels::{self, Act};
use crate::ops::{self, Kernels};
use crate::spec::{ConvLayer, NetworkSpec, BN_EPS, BN_MOMENTUM};
use crate::tensors::TensorMap;

/// A parameter as a tensor; detached (a constant to autograd) when `frozen`.
fn param(v: &Var, frozen: bool) -> Tensor {
    if frozen {
        v.as_tensor().detach()
    } else {
        v.as_tensor().clone()
    }
}

/// BatchNorm2d with learnable affine parameters and running statistics.
#[derive(Debug)]
pub struct BatchNorm2d {
    pub gamma: Var,
    pub beta: Var,
    pub running_mean: Var,
    pub running_var: Var,
    /// Weight of a new batch in the running statistics (f64 bits; PyTorch's 0.1 by default).
    momentum: AtomicU64,
}

impl BatchNorm2d {
    /// Folds batch statistics into the running ones like PyTorch: momentum 0.1 and the unbiased
    /// variance (`count` values per channel).
    fn update_running(&self, mean: &Tensor, var: &Tensor, count: usize) -> Result<()> {
        let count = count as f64;
        let unbiased = (var * (count / (count - 1.0).max(1.0)))?;
        let m = f64::from_bits(self.momentum.load(Ordering::Relaxed));
        let rm = ((self.running_mean.as_tensor() * (1.0 - m))? + (mean * m)?)?;
        let rv = ((self.running_var.as_tensor() * (1.0 - m))? + (unbiased * m)?)?;
        self.running_mean.set(&rm)?;
        self.running_var.set(&rv)?;
        Ok(())
    }

    /// Eval mode: normalise with the running statistics.
    fn forward_eval(&self, x: &Tensor, frozen: bool, channel_axis: usize) -> Result<Tensor> {
        ops::batch_norm(
            x,
            self.running_mean.as_tensor(),
            self.running_var.as_tensor(),
            &param(&self.gamma, frozen),
            &param(&self.beta, frozen),
            BN_EPS,
            channel_axis,
        )
    }
}

/// One convolution layer with its weight, optional BatchNorm and activation.
#[derive(Debug)]
pub struct ConvBlock {
    pub layer: ConvLayer,
    pub weight: Var,
    pub bn: Option<BatchNorm2d>,
}

impl ConvBlock {
    /// Convolution, BatchNorm (if any), activation, with candle's ops on an NCHW `x` (the
    /// convolution through cuDNN on CUDA when `kernels` is [`Kernels::Fast`] and the `cudnn`
    /// feature is on). `frozen` uses the parameters as constants: gradients reach the input but
    /// not this block's parameters.
    pub fn forward_candle(
        &self,
        x: &Tensor,
        train: bool,
        frozen: bool,
        kernels: Kernels,
    ) -> Result<Tensor> {
        let w = param(&self.weight, frozen);
        let y = match kernels {
            Kernels::Fast => kernels::conv_nchw(x, &w, &self.layer)?,
            Kernels::Candle => ops::conv(x, &w, &self.layer)?,
        };
        let y = match (&self.bn, train) {
            (Some(bn), true) => {
                let (y, mean, var) = ops::batch_norm_train(
                    &y,
                    &param(&bn.gamma, frozen),
                    &param(&bn.beta, frozen),
                    BN_EPS,
                )?;
                let (n, _, h, w) = y.dims4()?;
                bn.update_running(&mean, &var, n * h * w)?;
                y
            }
            (Some(bn), false) => bn.forward_eval(&y, frozen, 1)?,
            (None, _) => y,
        };
        ops::activate(&y, self.layer.activation)
    }

    /// The same block with Gantry's CPU kernels on a channel-major `x` (`[C, B, H, W]`).
    pub fn forward_fast(&self, x: &Tensor, train: bool, frozen: bool) -> Result<Tensor> {
        let w = param(&self.weight, frozen);
        let act = Act::from_spec(self.layer.activation);
        if let (Some(bn), true, Some(act)) = (&self.bn, train, act) {
            // Convolution, BatchNorm and activation as one autograd node.
            let (y, mean, var) = kernels::block::conv_bn_act_train(
                x,
                &w,
                &param(&bn.gamma, frozen),
                &param(&bn.beta, frozen),
                kernels::conv_params(&self.layer),
                BN_EPS,
                act,
            )?;
            let c = mean.len();
            let dev = y.device();
            bn.update_running(
                &Tensor::from_vec(mean, c, dev)?,
                &Tensor::from_vec(var, c, dev)?,
                y.elem_count() / c,
            )?;
            return Ok(y);
        }
        if let (None, Some(act)) = (&self.bn, act) {
            if act != Act::Identity {
                return Ok(kernels::block::conv_act(
                    x,
                    &w,
                    kernels::conv_params(&self.layer),
                    act,
                )?);
            }
        }
        let y = kernels::conv(x, &w, &self.layer)?;
        match (&self.bn, act) {
            (Some(bn), _) => {
                let y = if train {
                    // BatchNorm before a non-fusable activation: candle's ops, channel axis 0.
                    let (y, mean, var) = ops::batch_norm_train(
                        &y.transpose(0, 1)?,
                        &param(&bn.gamma, frozen),
                        &param(&bn.beta, frozen),
                        BN_EPS,
                    )?;
                    bn.update_running(&mean, &var, y.elem_count() / mean.elem_count())?;
                    y.transpose(0, 1)?
                } else {
                    bn.forward_eval(&y, frozen, 0)?
                };
                ops::activate(&y, self.layer.activation)
            }
            (None, Some(_)) => Ok(y), // the identity
            (None, None) => ops::activate(&y, self.layer.activation),
        }
    }
}

/// The layers of a spec with their variables on one device.
#[derive(Debug)]
pub struct Network {
    pub spec: NetworkSpec,
    pub blocks: Vec<ConvBlock>,
    /// The label embedding table (`[num_classes, dim]`) of a conditional network.
    pub embedding: Option<Var>,
    pub kernels: Kernels,
    device: Device,
}

impl Network {
    /// Builds the network from named tensors (validated by the caller) on `device`.
    pub fn from_tensors(spec: NetworkSpec, tensors: &TensorMap, device: &Device) -> Result<Self> {
        let var = |name: &str| -> Result<Var> {
            let t = tensors.get(name).ok_or_else(|| {
                ModelError::Config(format!("missing tensor `{name}` for the network"))
            })?;
            Ok(Var::from_tensor(&t.to_device(device)?.contiguous()?)?)
        };
        let blocks = spec
            .layers
            .iter()
            .map(|layer| {
                let bn = if layer.batch_norm {
                    Some(BatchNorm2d {
                        gamma: var(&layer.bn_name("weight"))?,
                        beta: var(&layer.bn_name("bias"))?,
                        running_mean: var(&layer.bn_name("running_mean"))?,
                        running_var: var(&layer.bn_name("running_var"))?,
                        momentum: AtomicU64::new(BN_MOMENTUM.to_bits()),
                    })
                } else {
                    None
                };
                Ok(ConvBlock {
                    layer: layer.clone(),
                    weight: var(&layer.weight_name())?,
                    bn,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let embedding = match spec.conditioning.as_ref().and_then(|c| c.tensor_name()) {
            Some(name) => Some(var(name)?),
            None => None,
        };
        Ok(Self {
            spec,
            blocks,
            embedding,
            kernels: Kernels::default(),
            device: device.clone(),
        })
    }

    /// The device the variables live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Runs `blocks` (a slice of this network's blocks) on an NCHW `x`, returning NCHW.
    pub fn forward_blocks(
        &self,
        x: &Tensor,
        blocks: &[ConvBlock],
        train: bool,
        frozen: bool,
    ) -> Result<Tensor> {
        if self.kernels == Kernels::Fast && x.device().is_cpu() {
            let mut h = x.transpose(0, 1)?.contiguous()?;
            for block in blocks {
                h = block.forward_fast(&h, train, frozen)?;
            }
            Ok(h.transpose(0, 1)?.contiguous()?)
        } else {
            let mut h = x.clone();
            for block in blocks {
                h = block.forward_candle(&h, train, frozen, self.kernels)?;
            }
            Ok(h)
        }
    }

    /// Sets the running-statistics momentum of every BatchNorm (1/(i+1) for batch i gives the
    /// exact average over batches; [`BN_MOMENTUM`] is the training default).
    pub fn set_bn_momentum(&self, momentum: f64) {
        for bn in self.blocks.iter().filter_map(|b| b.bn.as_ref()) {
            bn.momentum.store(momentum.to_bits(), Ordering::Relaxed);
        }
    }

    /// Trainable variables with their checkpoint names, in spec order.
    pub fn parameters(&self) -> Vec<(String, Var)> {
        self.named_vars(false)
    }

    /// Every variable (parameters and BatchNorm buffers) with its checkpoint name.
    pub fn all_vars(&self) -> Vec<(String, Var)> {
        self.named_vars(true)
    }

    fn named_vars(&self, with_buffers: bool) -> Vec<(String, Var)> {
        let mut out = Vec::new();
        if let (Some(name), Some(e)) = (
            self.spec
                .conditioning
                .as_ref()
                .and_then(|c| c.tensor_name()),
            &self.embedding,
        ) {
            out.push((name.to_string(), e.clone()));
        }
        for b in &self.blocks {
            out.push((b.layer.weight_name(), b.weight.clone()));
            if let Some(bn) = &b.bn {
                out.push((b.layer.bn_name("weight"), bn.gamma.clone()));
                out.push((b.layer.bn_name("bias"), bn.beta.clone()));
                if with_buffers {
                    out.push((b.layer.bn_name("running_mean"), bn.running_mean.clone()));
                    out.push((b.layer.bn_name("running_var"), bn.running_var.clone()));
                }
            }
        }
        out
    }

    /// A CPU copy of every tensor (parameters and buffers), ready for a checkpoint.
    pub fn to_tensors(&self) -> Result<TensorMap> {
        self.all_vars()
            .into_iter()
            .map(|(k, v)| Ok((k, v.as_tensor().to_device(&Device::Cpu)?.copy()?)))
            .collect()
    }

    /// Overwrites every variable with the values in `tensors` (same names and shapes).
    pub fn load_tensors(&self, tensors: &TensorMap) -> Result<()> {
        for (name, var) in self.all_vars() {
            let t = tensors
                .get(&name)
                .ok_or_else(|| ModelError::Config(format!("missing tensor `{name}`")))?;
            var.set(&t.to_device(&self.device)?)?;
        }
        Ok(())
    }

    /// Looks up label embeddings: `[N]` integer labels -> `[N, dim]`.
    pub fn embed(&self, labels: &Tensor) -> Result<Tensor> {
        let table = self.embedding.as_ref().ok_or_else(|| {
            ModelError::Config("labels were given to an unconditional network".into())
        })?;
        Ok(table.as_tensor().embedding(labels)?)
    }
}
