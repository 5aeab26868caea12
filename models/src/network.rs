//! A network built by walking a [`NetworkSpec`]: convolution blocks with optional BatchNorm and an
//! optional label embedding. [`crate::Generator`] and [`crate::Discriminator`] wrap it.
//!
//! Blocks run on the [`Backend`] that [`Backend::select`] picks, all with the same results:
//! candle's ops on NCHW tensors (convolutions through cuDNN with [`Backend::Cudnn`]), or
//! Gantry's CPU kernels on channel-major `[C, B, H, W]` tensors (convolutions become single
//! batch-merged GEMMs with no permutes, and BatchNorm's per-channel statistics are contiguous
//! slices). [`Network::forward_blocks`] takes and returns NCHW either way.

use std::sync::atomic::{AtomicU64, Ordering};

use candle_core::{Device, Tensor, Var};

use gantry_kernels::{Act, Backend, Kernels};

use crate::candle_ops;
use crate::error::{ModelError, Result};
use crate::spec::{Activation, ConvLayer, NetworkSpec, TensorRole, BN_EPS, BN_MOMENTUM};
use crate::tensors::TensorMap;

/// The form of a spec activation the CPU kernels fuse into a block (`None` for Tanh, which they
/// leave to candle).
fn fused_activation(a: Activation) -> Option<Act> {
    match a {
        Activation::Identity => Some(Act::Identity),
        Activation::Relu => Some(Act::Relu),
        Activation::LeakyRelu(s) => Some(Act::LeakyRelu(s as f32)),
        Activation::Tanh => None,
    }
}

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
        candle_ops::batch_norm(
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

/// Spectral normalisation of a block's weight `W` (`[out, in, k, k]`, seen as an `out x
/// in*k*k` matrix): the convolution uses `W / sigma` with `sigma = u^T W v`, the largest
/// singular value as estimated by power iteration (as PyTorch's `spectral_norm`); `u` is a
/// buffer (in checkpoints), `v` is recomputed from it.
#[derive(Debug)]
pub struct SpectralNorm {
    /// The left singular vector estimate (`[out]`).
    pub u: Var,
    /// The right one from the last power iteration (`[in*k*k]`).
    v: std::sync::Mutex<Option<Tensor>>,
}

/// `x / max(|x|, 1e-12)`.
fn normalized(x: &Tensor) -> Result<Tensor> {
    let norm = x.sqr()?.sum_all()?.sqrt()?.maximum(1e-12)?;
    Ok(x.broadcast_div(&norm)?)
}

impl SpectralNorm {
    /// `v = normalize(W^T u)`, then `u = normalize(W v)`, for the matrix `w` (`[out, cols]`).
    fn iterate(&self, w: &Tensor) -> Result<()> {
        let u = self.u.as_tensor().unsqueeze(1)?;
        let v = normalized(&w.t()?.matmul(&u)?)?;
        let u = normalized(&w.matmul(&v)?)?;
        self.u.set(&u.squeeze(1)?)?;
        *self.v.lock().expect("not poisoned") = Some(v);
        Ok(())
    }

    /// `sigma = u^T W v` for the matrix `w`, differentiable in `w` (`u`, `v` are constants).
    fn sigma(&self, w: &Tensor) -> Result<Tensor> {
        let u = self.u.as_tensor().detach().unsqueeze(0)?;
        let v = match self.v.lock().expect("not poisoned").clone() {
            Some(v) => v,
            None => normalized(&w.detach().t()?.matmul(&u.t()?)?)?,
        };
        Ok(u.matmul(&w.matmul(&v)?)?.reshape(())?)
    }
}

/// One convolution layer with its weight, optional BatchNorm and activation.
#[derive(Debug)]
pub struct ConvBlock {
    pub layer: ConvLayer,
    pub weight: Var,
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

    /// Convolution, BatchNorm (if any), activation, with candle's ops on an NCHW `x` (the
    /// convolution through cuDNN with [`Backend::Cudnn`]). `frozen` uses the parameters as
    /// constants: gradients reach the input but not this block's parameters.
    pub fn forward_nchw(
        &self,
        x: &Tensor,
        train: bool,
        frozen: bool,
        backend: Backend,
    ) -> Result<Tensor> {
        let w = self.conv_weight(frozen)?;
        let y = match backend {
            Backend::Cudnn => gantry_kernels::primitive_conv_nchw(x, &w, self.layer.conv_params())?,
            Backend::Candle | Backend::CpuGemm => candle_ops::conv(x, &w, &self.layer)?,
        };
        let y = match (&self.bn, train) {
            (Some(bn), true) => {
                let (y, mean, var) = candle_ops::batch_norm_train(
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
        candle_ops::activate(&y, self.layer.activation)
    }

    /// The same block with Gantry's CPU kernels on a channel-major `x` (`[C, B, H, W]`).
    pub fn forward_channel_major(&self, x: &Tensor, train: bool, frozen: bool) -> Result<Tensor> {
        let w = self.conv_weight(frozen)?;
        let conv = self.layer.conv_params();
        let act = fused_activation(self.layer.activation);
        if let (Some(bn), true, Some(act)) = (&self.bn, train, act) {
            // Convolution, BatchNorm and activation as one autograd node.
            let (y, mean, var) = gantry_kernels::gemm_conv_bn_act_train(
                x,
                &w,
                &param(&bn.gamma, frozen),
                &param(&bn.beta, frozen),
                conv,
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
                return Ok(gantry_kernels::gemm_conv_act(x, &w, conv, act)?);
            }
        }
        let y = gantry_kernels::gemm_conv(x, &w, conv)?;
        match (&self.bn, act) {
            (Some(bn), _) => {
                let y = if train {
                    // BatchNorm before a non-fusable activation: candle's ops, channel axis 0.
                    let (y, mean, var) = candle_ops::batch_norm_train(
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
                candle_ops::activate(&y, self.layer.activation)
            }
            (None, Some(_)) => Ok(y), // the identity
            (None, None) => candle_ops::activate(&y, self.layer.activation),
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
                ModelError::Input(format!("missing tensor `{name}` for the network"))
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
                let spectral_norm = if layer.spectral_norm {
                    Some(SpectralNorm {
                        u: var(&layer.sn_u_name())?,
                        v: std::sync::Mutex::new(None),
                    })
                } else {
                    None
                };
                Ok(ConvBlock {
                    layer: layer.clone(),
                    weight: var(&layer.weight_name())?,
                    bn,
                    spectral_norm,
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
        match Backend::select(self.kernels, x.device()) {
            Backend::CpuGemm => {
                let mut h = x.transpose(0, 1)?.contiguous()?;
                for block in blocks {
                    h = block.forward_channel_major(&h, train, frozen)?;
                }
                Ok(h.transpose(0, 1)?.contiguous()?)
            }
            backend => {
                let mut h = x.clone();
                for block in blocks {
                    h = block.forward_nchw(&h, train, frozen, backend)?;
                }
                Ok(h)
            }
        }
    }

    /// One power iteration of every spectrally normalised block (once per training step).
    pub fn power_iteration(&self) -> Result<()> {
        self.blocks.iter().try_for_each(ConvBlock::power_iteration)
    }

    /// Sets the running-statistics momentum of every BatchNorm (1/(i+1) for batch i gives the
    /// exact average over batches; [`BN_MOMENTUM`] is the training default).
    pub fn set_bn_momentum(&self, momentum: f64) {
        for bn in self.blocks.iter().filter_map(|b| b.bn.as_ref()) {
            bn.momentum.store(momentum.to_bits(), Ordering::Relaxed);
        }
    }

    /// Every variable (parameters and buffers) with its checkpoint name and role, in the order
    /// of [`NetworkSpec::tensors`].
    pub fn vars_with_roles(&self) -> Vec<(String, Var, TensorRole)> {
        let mut by_name = std::collections::HashMap::new();
        if let (Some(name), Some(e)) = (
            self.spec
                .conditioning
                .as_ref()
                .and_then(|c| c.tensor_name()),
            &self.embedding,
        ) {
            by_name.insert(name.to_string(), e.clone());
        }
        for b in &self.blocks {
            by_name.insert(b.layer.weight_name(), b.weight.clone());
            if let Some(sn) = &b.spectral_norm {
                by_name.insert(b.layer.sn_u_name(), sn.u.clone());
            }
            if let Some(bn) = &b.bn {
                by_name.insert(b.layer.bn_name("weight"), bn.gamma.clone());
                by_name.insert(b.layer.bn_name("bias"), bn.beta.clone());
                by_name.insert(b.layer.bn_name("running_mean"), bn.running_mean.clone());
                by_name.insert(b.layer.bn_name("running_var"), bn.running_var.clone());
            }
        }
        self.spec
            .tensors()
            .into_iter()
            .filter_map(|t| by_name.remove(&t.name).map(|v| (t.name, v, t.role)))
            .collect()
    }

    /// Trainable variables (role [`TensorRole::Parameter`]) with their checkpoint names, in
    /// spec order: what the optimiser updates and the EMA averages.
    pub fn parameters(&self) -> Vec<(String, Var)> {
        self.vars_with_roles()
            .into_iter()
            .filter(|(_, _, role)| *role == TensorRole::Parameter)
            .map(|(name, var, _)| (name, var))
            .collect()
    }

    /// Every variable (parameters and buffers) with its checkpoint name, in spec order.
    pub fn all_vars(&self) -> Vec<(String, Var)> {
        self.vars_with_roles()
            .into_iter()
            .map(|(name, var, _)| (name, var))
            .collect()
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
                .ok_or_else(|| ModelError::Input(format!("missing tensor `{name}`")))?;
            var.set(&t.to_device(&self.device)?)?;
        }
        Ok(())
    }

    /// Looks up label embeddings: `[N]` integer labels -> `[N, dim]`.
    pub fn embed(&self, labels: &Tensor) -> Result<Tensor> {
        let table = self.embedding.as_ref().ok_or_else(|| {
            ModelError::Input("labels were given to an unconditional network".into())
        })?;
        Ok(table.as_tensor().embedding(labels)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{generator_spec, ModelConfig};

    /// A fixed one-hot label table is a buffer: not trained, not averaged; a learned one is.
    #[test]
    fn parameters_follow_the_spec_roles() {
        let dev = Device::Cpu;
        for (embed, trained) in [(0, false), (6, true)] {
            let cfg = ModelConfig {
                image_size: 16,
                g_width: 4,
                num_classes: Some(3),
                label_embed_dim: embed,
                ..Default::default()
            };
            let spec = generator_spec(&cfg);
            let tensors = crate::init::init_tensors(&spec, "g", 1).unwrap();
            let net = Network::from_tensors(spec.clone(), &tensors, &dev).unwrap();
            let names: Vec<String> = net.parameters().into_iter().map(|(n, _)| n).collect();
            assert_eq!(
                names.contains(&"label_embedding.weight".to_string()),
                trained
            );
            assert!(!names.iter().any(|n| n.contains("running")));
            assert_eq!(net.all_vars().len(), spec.tensors().len());
        }
    }
}
