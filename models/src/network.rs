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

    /// Whether gains and shifts are per class (`[classes, C]`).
    fn is_conditional(&self) -> bool {
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
    fn forward(&self, x: &Tensor, pass: &Pass) -> Result<Tensor> {
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
    fn forward_fast_train(
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
    fn record_batch_stats(&self, mean: Vec<f32>, var: Vec<f32>, y: &Tensor) -> Result<()> {
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
    fn channel_axis(&self) -> usize {
        match self.backend {
            Backend::CpuGemm => 0,
            _ => 1,
        }
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
    fn forward(&self, x: &Tensor, pass: &Pass) -> Result<Tensor> {
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
    fn forward(&self, x: &Tensor, pass: &Pass) -> Result<Tensor> {
        let b = &self.block;
        let mut h = match &self.pre_norm {
            Some(norm) => norm.forward(x, pass)?,
            None if b.pre_relu => x.relu()?,
            None => x.clone(),
        };
        if b.resample == Resample::Up {
            h = upsample_nearest2x(&h)?;
        }
        h = self.conv1.forward(&h, pass)?;
        h = self.conv2.forward(&h, pass)?;
        if b.resample == Resample::Down {
            h = avg_pool2x(&h)?;
        }
        // The shortcut's 1x1 convolution at the lower resolution (see `ResidualBlock`).
        let mut s = match b.resample {
            Resample::Down => avg_pool2x(x)?,
            Resample::Up | Resample::None => x.clone(),
        };
        if let Some(conv) = &self.shortcut {
            s = conv.forward(&s, pass)?;
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
    fn forward(&self, x: &Tensor, pass: &Pass) -> Result<Tensor> {
        match self {
            Self::Conv(block) => block.forward(x, pass),
            Self::Residual(block) => block.forward(x, pass),
            Self::Norm(block) => block.forward(x, pass),
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

    /// Runs every stage on an NCHW `x` (with `labels` for class-conditional BatchNorms),
    /// returning NCHW.
    pub fn forward(
        &self,
        x: &Tensor,
        labels: Option<&Tensor>,
        train: bool,
        frozen: bool,
    ) -> Result<Tensor> {
        Ok(self.run(x, labels, train, frozen, false)?.0)
    }

    /// [`Network::forward`], also returning the input of the last stage (NCHW): the features a
    /// projection discriminator projects the label onto.
    pub fn forward_with_features(
        &self,
        x: &Tensor,
        labels: Option<&Tensor>,
        train: bool,
        frozen: bool,
    ) -> Result<(Tensor, Tensor)> {
        let (out, features) = self.run(x, labels, train, frozen, true)?;
        let features =
            features.ok_or_else(|| ModelError::Input("a network without stages".into()))?;
        Ok((out, features))
    }

    fn run(
        &self,
        x: &Tensor,
        labels: Option<&Tensor>,
        train: bool,
        frozen: bool,
        keep_features: bool,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let backend = Backend::select(self.kernels, x.device());
        let pass = Pass {
            labels,
            train,
            frozen,
            backend,
        };
        // The CPU kernels' channel-major layout is NCHW with the first two axes swapped.
        let to_layout = |t: &Tensor| -> Result<Tensor> {
            Ok(match backend {
                Backend::CpuGemm => t.transpose(0, 1)?.contiguous()?,
                _ => t.clone(),
            })
        };
        let mut h = to_layout(x)?;
        let last = self.stages.len().saturating_sub(1);
        let mut features = None;
        for (i, stage) in self.stages.iter().enumerate() {
            if keep_features && i == last {
                features = Some(to_layout(&h)?);
            }
            h = stage.forward(&h, &pass)?;
        }
        Ok((to_layout(&h)?, features))
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
