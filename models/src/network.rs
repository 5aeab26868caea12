//! A network built by walking a [`NetworkSpec`]: its stages (convolution blocks with optional
//! bias, BatchNorm and activation; residual blocks; lone BatchNorms; sum pooling) and an optional
//! label embedding. [`crate::Generator`] and [`crate::Discriminator`] wrap it.
//!
//! Blocks run on the [`Backend`] that [`Backend::select`] picks, all with the same results:
//! candle's ops on NCHW tensors (convolutions through cuDNN with [`Backend::Cudnn`]), or
//! Gantry's CPU kernels on channel-major `[C, B, H, W]` tensors (convolutions become single
//! batch-merged GEMMs with no permutes, and BatchNorm's per-channel statistics are contiguous
//! slices). [`Network::forward`] takes and returns NCHW either way; resampling, additions and
//! pooling act on the last two axes, the same in both layouts.

use std::sync::atomic::{AtomicU64, Ordering};

use candle_core::{Device, Tensor, Var};

use gantry_kernels::{Act, Backend, Kernels};

use crate::candle_ops;
use crate::error::{ModelError, Result};
use crate::spec::{
    Activation, ConvLayer, NetworkSpec, NormLayer, Resample, ResidualBlock, Stage, TensorRole,
    BN_EPS, BN_MOMENTUM,
};
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

    /// Normalises `x` (channels on `channel_axis`: 1 for NCHW, 0 for channel-major) with batch
    /// statistics, updating the running ones, when `train`; with the running ones otherwise.
    fn forward(
        &self,
        x: &Tensor,
        train: bool,
        frozen: bool,
        channel_axis: usize,
    ) -> Result<Tensor> {
        if !train {
            return self.forward_eval(x, frozen, channel_axis);
        }
        let nchw = if channel_axis == 1 {
            x.clone()
        } else {
            x.transpose(0, 1)?
        };
        let (y, mean, var) = candle_ops::batch_norm_train(
            &nchw,
            &param(&self.gamma, frozen),
            &param(&self.beta, frozen),
            BN_EPS,
        )?;
        self.update_running(&mean, &var, y.elem_count() / mean.elem_count())?;
        Ok(if channel_axis == 1 {
            y
        } else {
            y.transpose(0, 1)?
        })
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

    /// The block on `x` with `backend`: NCHW for candle's ops and cuDNN, channel-major for
    /// Gantry's CPU kernels.
    pub fn forward(
        &self,
        x: &Tensor,
        train: bool,
        frozen: bool,
        backend: Backend,
    ) -> Result<Tensor> {
        match backend {
            Backend::CpuGemm => self.forward_channel_major(x, train, frozen),
            backend => self.forward_nchw(x, train, frozen, backend),
        }
    }

    /// Convolution, bias and BatchNorm (if any), activation, with candle's ops on an NCHW `x`
    /// (the convolution through cuDNN with [`Backend::Cudnn`]). `frozen` uses the parameters as
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
        let y = self.add_bias(y, frozen, 1)?;
        let y = match &self.bn {
            Some(bn) => bn.forward(&y, train, frozen, 1)?,
            None => y,
        };
        candle_ops::activate(&y, self.layer.activation)
    }

    /// The same block with Gantry's CPU kernels on a channel-major `x` (`[C, B, H, W]`).
    pub fn forward_channel_major(&self, x: &Tensor, train: bool, frozen: bool) -> Result<Tensor> {
        let w = self.conv_weight(frozen)?;
        let conv = self.layer.conv_params();
        let act = fused_activation(self.layer.activation);
        if self.bias.is_none() {
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
        }
        let y = gantry_kernels::gemm_conv(x, &w, conv)?;
        let y = self.add_bias(y, frozen, 0)?;
        let y = match &self.bn {
            Some(bn) => bn.forward(&y, train, frozen, 0)?,
            None => y,
        };
        candle_ops::activate(&y, self.layer.activation)
    }
}

/// Nearest-neighbour x2 upsampling of the last two axes (`[A, B, H, W]` -> `[A, B, 2H, 2W]`):
/// Gantry's kernel on the CPU; elsewhere broadcasts and reshapes, so that autograd sums each
/// 2x2 cell's gradient back.
pub fn upsample_nearest2x(x: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() {
        return Ok(gantry_kernels::upsample_nearest2x(x)?);
    }
    let (a, b, h, w) = x.dims4()?;
    Ok(x.reshape((a, b, h, 1, w, 1))?
        .broadcast_as((a, b, h, 2, w, 2))?
        .contiguous()?
        .reshape((a, b, 2 * h, 2 * w))?)
}

/// 2x2 average pooling of the last two axes (`[A, B, H, W]` -> `[A, B, H/2, W/2]`): Gantry's
/// kernel on the CPU, candle's `avg_pool2d` elsewhere.
pub fn avg_pool2x(x: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() {
        return Ok(gantry_kernels::avg_pool2x(x)?);
    }
    Ok(x.avg_pool2d(2)?)
}

/// A lone BatchNorm with its activation.
#[derive(Debug)]
pub struct NormBlock {
    pub norm: NormLayer,
    pub bn: BatchNorm2d,
}

impl NormBlock {
    fn forward(&self, x: &Tensor, train: bool, frozen: bool, backend: Backend) -> Result<Tensor> {
        let act = fused_activation(self.norm.activation);
        if let (Backend::CpuGemm, true, Some(act)) = (backend, train, act) {
            // BatchNorm and activation as one autograd node of the CPU kernels.
            let bn = &self.bn;
            let (y, mean, var) = gantry_kernels::bn_act_train(
                x,
                &param(&bn.gamma, frozen),
                &param(&bn.beta, frozen),
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
        let y = self.bn.forward(x, train, frozen, channel_axis(backend))?;
        candle_ops::activate(&y, self.norm.activation)
    }
}

/// The axis that holds channels in the layout `backend` computes in.
fn channel_axis(backend: Backend) -> usize {
    match backend {
        Backend::CpuGemm => 0,
        _ => 1,
    }
}

/// A residual block's modules.
#[derive(Debug)]
pub struct ResidualModule {
    pub block: ResidualBlock,
    pub pre_norm: Option<NormBlock>,
    pub conv1: ConvBlock,
    pub conv2: ConvBlock,
    pub shortcut: Option<ConvBlock>,
}

impl ResidualModule {
    fn forward(&self, x: &Tensor, train: bool, frozen: bool, backend: Backend) -> Result<Tensor> {
        let b = &self.block;
        let mut h = match &self.pre_norm {
            Some(norm) => norm.forward(x, train, frozen, backend)?,
            None if b.pre_relu => x.relu()?,
            None => x.clone(),
        };
        if b.resample == Resample::Up {
            h = upsample_nearest2x(&h)?;
        }
        h = self.conv1.forward(&h, train, frozen, backend)?;
        h = self.conv2.forward(&h, train, frozen, backend)?;
        if b.resample == Resample::Down {
            h = avg_pool2x(&h)?;
        }
        // The shortcut's 1x1 convolution at the lower resolution (see `ResidualBlock`).
        let mut s = match b.resample {
            Resample::Down => avg_pool2x(x)?,
            Resample::Up | Resample::None => x.clone(),
        };
        if let Some(conv) = &self.shortcut {
            s = conv.forward(&s, train, frozen, backend)?;
        }
        if b.resample == Resample::Up {
            s = upsample_nearest2x(&s)?;
        }
        Ok((h + s)?)
    }

    fn conv_blocks(&self) -> impl Iterator<Item = &ConvBlock> {
        [&self.conv1, &self.conv2].into_iter().chain(&self.shortcut)
    }
}

/// A network stage with its variables.
#[derive(Debug)]
pub enum StageModule {
    Conv(ConvBlock),
    Residual(Box<ResidualModule>),
    Norm(NormBlock),
    SumPool(Activation),
}

impl StageModule {
    fn forward(&self, x: &Tensor, train: bool, frozen: bool, backend: Backend) -> Result<Tensor> {
        match self {
            Self::Conv(block) => block.forward(x, train, frozen, backend),
            Self::Residual(block) => block.forward(x, train, frozen, backend),
            Self::Norm(block) => block.forward(x, train, frozen, backend),
            Self::SumPool(act) => {
                let (a, b, _, _) = x.dims4()?;
                let y = candle_ops::activate(x, *act)?;
                Ok(y.sum_keepdim((2, 3))?.reshape((a, b, 1, 1))?)
            }
        }
    }
}

/// The stages of a spec with their variables on one device.
#[derive(Debug)]
pub struct Network {
    pub spec: NetworkSpec,
    pub stages: Vec<StageModule>,
    /// The label embedding table (`[num_classes, dim]`) of a conditional network.
    pub embedding: Option<Var>,
    pub kernels: Kernels,
    device: Device,
}

/// Looks up the variables of a spec's tensors by name.
struct VarSource<'a> {
    tensors: &'a TensorMap,
    device: &'a Device,
}

impl VarSource<'_> {
    fn var(&self, name: &str) -> Result<Var> {
        let t = self
            .tensors
            .get(name)
            .ok_or_else(|| ModelError::Input(format!("missing tensor `{name}` for the network")))?;
        Ok(Var::from_tensor(&t.to_device(self.device)?.contiguous()?)?)
    }

    fn batch_norm(&self, prefix: &str) -> Result<BatchNorm2d> {
        Ok(BatchNorm2d {
            gamma: self.var(&format!("{prefix}.weight"))?,
            beta: self.var(&format!("{prefix}.bias"))?,
            running_mean: self.var(&format!("{prefix}.running_mean"))?,
            running_var: self.var(&format!("{prefix}.running_var"))?,
            momentum: AtomicU64::new(BN_MOMENTUM.to_bits()),
        })
    }

    fn conv(&self, layer: &ConvLayer) -> Result<ConvBlock> {
        Ok(ConvBlock {
            layer: layer.clone(),
            weight: self.var(&layer.weight_name())?,
            bias: match layer.bias {
                true => Some(self.var(&layer.bias_name())?),
                false => None,
            },
            bn: match layer.batch_norm {
                true => Some(self.batch_norm(&format!("{}.bn", layer.name))?),
                false => None,
            },
            spectral_norm: match layer.spectral_norm {
                true => Some(SpectralNorm {
                    u: self.var(&layer.sn_u_name())?,
                    v: std::sync::Mutex::new(None),
                }),
                false => None,
            },
        })
    }

    fn norm(&self, norm: &NormLayer) -> Result<NormBlock> {
        Ok(NormBlock {
            norm: norm.clone(),
            bn: self.batch_norm(&norm.name)?,
        })
    }

    fn stage(&self, stage: &Stage) -> Result<StageModule> {
        Ok(match stage {
            Stage::Conv(layer) => StageModule::Conv(self.conv(layer)?),
            Stage::Residual(block) => StageModule::Residual(Box::new(ResidualModule {
                block: (**block).clone(),
                pre_norm: block.pre_norm.as_ref().map(|n| self.norm(n)).transpose()?,
                conv1: self.conv(&block.conv1)?,
                conv2: self.conv(&block.conv2)?,
                shortcut: block.shortcut.as_ref().map(|l| self.conv(l)).transpose()?,
            })),
            Stage::Norm(norm) => StageModule::Norm(self.norm(norm)?),
            Stage::SumPool(act) => StageModule::SumPool(*act),
        })
    }
}

impl Network {
    /// Builds the network from named tensors (validated by the caller) on `device`.
    pub fn from_tensors(spec: NetworkSpec, tensors: &TensorMap, device: &Device) -> Result<Self> {
        let source = VarSource { tensors, device };
        let stages = spec
            .stages
            .iter()
            .map(|stage| source.stage(stage))
            .collect::<Result<Vec<_>>>()?;
        let embedding = match spec.conditioning.as_ref().and_then(|c| c.tensor_name()) {
            Some(name) => Some(source.var(name)?),
            None => None,
        };
        Ok(Self {
            spec,
            stages,
            embedding,
            kernels: Kernels::default(),
            device: device.clone(),
        })
    }

    /// The device the variables live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Every convolution block, in the order of [`NetworkSpec::conv_layers`].
    pub fn conv_blocks(&self) -> Vec<&ConvBlock> {
        let mut out = Vec::new();
        for stage in &self.stages {
            match stage {
                StageModule::Conv(block) => out.push(block),
                StageModule::Residual(block) => out.extend(block.conv_blocks()),
                StageModule::Norm(_) | StageModule::SumPool(_) => {}
            }
        }
        out
    }

    /// Every BatchNorm with its checkpoint prefix.
    fn batch_norms(&self) -> Vec<(String, &BatchNorm2d)> {
        fn conv<'a>(out: &mut Vec<(String, &'a BatchNorm2d)>, b: &'a ConvBlock) {
            if let Some(bn) = &b.bn {
                out.push((format!("{}.bn", b.layer.name), bn));
            }
        }
        let mut out = Vec::new();
        for stage in &self.stages {
            match stage {
                StageModule::Conv(block) => conv(&mut out, block),
                StageModule::Residual(block) => {
                    if let Some(n) = &block.pre_norm {
                        out.push((n.norm.name.clone(), &n.bn));
                    }
                    block.conv_blocks().for_each(|b| conv(&mut out, b));
                }
                StageModule::Norm(n) => out.push((n.norm.name.clone(), &n.bn)),
                StageModule::SumPool(_) => {}
            }
        }
        out
    }

    /// Runs every stage on an NCHW `x`, returning NCHW.
    pub fn forward(&self, x: &Tensor, train: bool, frozen: bool) -> Result<Tensor> {
        let backend = Backend::select(self.kernels, x.device());
        let mut h = match backend {
            Backend::CpuGemm => x.transpose(0, 1)?.contiguous()?,
            _ => x.clone(),
        };
        for stage in &self.stages {
            h = stage.forward(&h, train, frozen, backend)?;
        }
        Ok(match backend {
            Backend::CpuGemm => h.transpose(0, 1)?.contiguous()?,
            _ => h,
        })
    }

    /// One power iteration of every spectrally normalised block (once per training step).
    pub fn power_iteration(&self) -> Result<()> {
        self.conv_blocks()
            .into_iter()
            .try_for_each(ConvBlock::power_iteration)
    }

    /// Sets the running-statistics momentum of every BatchNorm (1/(i+1) for batch i gives the
    /// exact average over batches; [`BN_MOMENTUM`] is the training default).
    pub fn set_bn_momentum(&self, momentum: f64) {
        for (_, bn) in self.batch_norms() {
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
        for b in self.conv_blocks() {
            by_name.insert(b.layer.weight_name(), b.weight.clone());
            if let Some(bias) = &b.bias {
                by_name.insert(b.layer.bias_name(), bias.clone());
            }
            if let Some(sn) = &b.spectral_norm {
                by_name.insert(b.layer.sn_u_name(), sn.u.clone());
            }
        }
        for (prefix, bn) in self.batch_norms() {
            by_name.insert(format!("{prefix}.weight"), bn.gamma.clone());
            by_name.insert(format!("{prefix}.bias"), bn.beta.clone());
            by_name.insert(format!("{prefix}.running_mean"), bn.running_mean.clone());
            by_name.insert(format!("{prefix}.running_var"), bn.running_var.clone());
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
