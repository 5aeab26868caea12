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

mod conv;
mod norm;
mod residual;

use std::sync::atomic::{AtomicU64, Ordering};

use candle_core::{Device, Tensor, Var};

use gantry_kernels::{Act, Backend, Kernels};

pub use conv::{ConvBlock, SpectralNorm};
pub use norm::{BatchNorm2d, NormBlock, Pass};
pub use residual::{avg_pool2x, upsample_nearest2x, ResidualModule};

use crate::candle_ops;
use crate::error::{ModelError, Result};
use crate::spec::{Activation, ConvLayer, NetworkSpec, NormLayer, Stage, TensorRole, BN_MOMENTUM};
use crate::tensors::TensorMap;

/// The form of a spec activation the CPU kernels fuse into a block (`None` for Tanh, which they
/// leave to candle).
pub(crate) fn fused_activation(a: Activation) -> Option<Act> {
    match a {
        Activation::Identity => Some(Act::Identity),
        Activation::Relu => Some(Act::Relu),
        Activation::LeakyRelu(s) => Some(Act::LeakyRelu(s as f32)),
        Activation::Tanh => None,
    }
}

/// A parameter as a tensor; detached (a constant to autograd) when `frozen`.
pub(crate) fn param(v: &Var, frozen: bool) -> Tensor {
    if frozen {
        v.as_tensor().detach()
    } else {
        v.as_tensor().clone()
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
    /// The table's spectral normalisation (a projection discriminator with spectral norm).
    pub embedding_sn: Option<SpectralNorm>,
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
        let embedding_sn = match spec.conditioning.as_ref().and_then(|c| c.sn_u_name()) {
            Some(name) => Some(SpectralNorm {
                u: source.var(name)?,
                v: std::sync::Mutex::new(None),
            }),
            None => None,
        };
        Ok(Self {
            spec,
            stages,
            embedding,
            embedding_sn,
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

    /// One power iteration of every spectrally normalised block and embedding table (once per
    /// training step).
    pub fn power_iteration(&self) -> Result<()> {
        self.conv_blocks()
            .into_iter()
            .try_for_each(ConvBlock::power_iteration)?;
        if let (Some(table), Some(sn)) = (&self.embedding, &self.embedding_sn) {
            sn.iterate(&table.as_tensor().detach())?;
        }
        Ok(())
    }

    /// The label embedding table as the network uses it: `E`, or `E / sigma(E)` when it is
    /// spectrally normalised; a constant to autograd when `frozen`.
    pub fn embedding_table(&self, frozen: bool) -> Result<Option<Tensor>> {
        let Some(table) = &self.embedding else {
            return Ok(None);
        };
        let e = param(table, frozen);
        Ok(Some(match &self.embedding_sn {
            Some(sn) => e.broadcast_div(&sn.sigma(&e)?)?,
            None => e,
        }))
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
        if let (Some(name), Some(sn)) = (
            self.spec.conditioning.as_ref().and_then(|c| c.sn_u_name()),
            &self.embedding_sn,
        ) {
            by_name.insert(name.to_string(), sn.u.clone());
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

    /// [`Network::to_tensors`] with each spectrally normalised weight (and embedding table)
    /// replaced by the one the network computes with (`W / sigma`, sigma from the stored `u`)
    /// and its `u` left out.
    pub fn inference_tensors(&self) -> Result<TensorMap> {
        let mut out = self.to_tensors()?;
        for block in self.conv_blocks() {
            if block.spectral_norm.is_some() {
                let w = block.conv_weight(true)?.to_device(&Device::Cpu)?.copy()?;
                out.insert(block.layer.weight_name(), w);
                out.remove(&block.layer.sn_u_name());
            }
        }
        if let (Some(c), Some(_)) = (&self.spec.conditioning, &self.embedding_sn) {
            if let (Some(name), Some(u), Some(table)) =
                (c.tensor_name(), c.sn_u_name(), self.embedding_table(true)?)
            {
                out.insert(name.to_string(), table.to_device(&Device::Cpu)?.copy()?);
                out.remove(u);
            }
        }
        Ok(out)
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

    /// `load_tensors` overwrites every variable with the given values (a resume, the EMA), and
    /// refuses a map that lacks one.
    #[test]
    fn load_tensors_overwrites_every_variable() {
        let dev = Device::Cpu;
        let spec = generator_spec(&ModelConfig {
            image_size: 16,
            g_width: 4,
            ..Default::default()
        });
        let a = crate::init::init_tensors(&spec, "g", 1).unwrap();
        let b = crate::init::init_tensors(&spec, "g", 2).unwrap();
        let net = Network::from_tensors(spec.clone(), &b, &dev).unwrap();
        net.load_tensors(&a).unwrap();
        let loaded = net.to_tensors().unwrap();
        for (name, t) in &a {
            let (x, y) = (
                t.flatten_all().unwrap(),
                loaded[name].flatten_all().unwrap(),
            );
            assert_eq!(
                x.to_vec1::<f32>().unwrap(),
                y.to_vec1::<f32>().unwrap(),
                "{name}"
            );
        }
        let mut short = a.clone();
        short.remove("layers.1.bn.running_mean");
        let err = net.load_tensors(&short).unwrap_err().to_string();
        assert!(
            err.contains("missing tensor `layers.1.bn.running_mean`"),
            "{err}"
        );
    }
}
