//! The one description of Gantry's architectures (DCGAN and the SNGAN ResNet).
//!
//! [`generator_spec`] and [`discriminator_spec`] turn a [`ModelConfig`] into a list of stages
//! (convolutions, residual blocks, normalisations) with their shapes and initialisation. The
//! candle modules ([`crate::Generator`], [`crate::Discriminator`]), the seeded initialisation
//! and the ONNX graph written by `gantry-exporter` are all built by walking this list, so each
//! architecture is written down exactly once. Tensor names are produced here too and are the
//! checkpoint's keys.

mod dcgan;
mod resnet;

use crate::config::{Arch, ModelConfig};

/// BatchNorm epsilon (PyTorch's default, also used by the ONNX export).
pub const BN_EPS: f64 = 1e-5;
/// BatchNorm running-statistics momentum (PyTorch's default).
pub const BN_MOMENTUM: f64 = 0.1;
/// Negative slope of the discriminator's LeakyReLU.
pub const LEAKY_RELU_SLOPE: f64 = 0.2;
/// Kernel side of every DCGAN convolution.
pub const KERNEL: usize = 4;

pub use gantry_kernels::ConvKind;

/// Non-linearity applied after a layer (after its BatchNorm, if any).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Activation {
    /// No activation (the discriminator's logits).
    Identity,
    /// `max(x, 0)`.
    Relu,
    /// `max(x, slope * x)`.
    LeakyRelu(f64),
    /// `tanh(x)`: the generator's output in [-1, 1].
    Tanh,
}

/// How a tensor's first values are drawn (each tensor from its own seeded stream).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    /// N(mean, std): DCGAN's weights (0, 0.02) and BatchNorm gains (1, 0.02).
    Normal { mean: f32, std: f32 },
    /// U(-bound, bound): Xavier/Glorot uniform, `bound = gain * sqrt(6 / (fan_in + fan_out))`.
    Uniform { bound: f32 },
    /// All zeros (biases, BatchNorm shifts and running means).
    Zeros,
    /// All ones (BatchNorm gains of the ResNet, running variances).
    Ones,
    /// The identity matrix: a fixed one-hot label table.
    Identity,
}

impl Init {
    /// Xavier/Glorot uniform with `gain` for a weight with these fans (PyTorch's
    /// `xavier_uniform_`).
    pub fn xavier(fan_in: usize, fan_out: usize, gain: f64) -> Self {
        Self::Uniform {
            bound: (gain * (6.0 / (fan_in + fan_out) as f64).sqrt()) as f32,
        }
    }
}

/// One convolution layer, optionally with a bias, then BatchNorm, then an activation.
#[derive(Debug, Clone, PartialEq)]
pub struct ConvLayer {
    /// Prefix of the layer's tensor names (`layers.3`, `blocks.1.conv2`).
    pub name: String,
    pub kind: ConvKind,
    pub in_channels: usize,
    pub out_channels: usize,
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
    /// Spatial side of the input feature map.
    pub in_size: usize,
    /// Spatial side of the output feature map.
    pub out_size: usize,
    /// A learned per-channel bias added to the convolution (never before a BatchNorm).
    pub bias: bool,
    pub batch_norm: bool,
    pub activation: Activation,
    /// Whether the weight is spectrally normalised (its power-iteration vector a buffer).
    pub spectral_norm: bool,
    /// How the weight is initialised.
    pub init: Init,
    /// How the BatchNorm gain is initialised (when there is one).
    pub bn_gain_init: Init,
    /// A class-conditional BatchNorm: gains and shifts per class (`[classes, C]`), picked by
    /// each image's label (Dumoulin et al. 2017; SNGAN's conditional generator).
    pub bn_classes: Option<usize>,
}

impl ConvLayer {
    /// The name of the `index`-th layer of a sequential (DCGAN) network.
    pub fn numbered(index: usize) -> String {
        format!("layers.{index}")
    }

    /// Checkpoint name of the convolution weight.
    pub fn weight_name(&self) -> String {
        format!("{}.weight", self.name)
    }

    /// Checkpoint name of the convolution bias.
    pub fn bias_name(&self) -> String {
        format!("{}.bias", self.name)
    }

    /// Checkpoint name of the spectral normalisation's left singular vector estimate.
    pub fn sn_u_name(&self) -> String {
        format!("{}.weight_u", self.name)
    }

    /// Checkpoint name of a BatchNorm tensor: `weight`, `bias`, `running_mean` or `running_var`.
    pub fn bn_name(&self, tensor: &str) -> String {
        format!("{}.bn.{tensor}", self.name)
    }

    /// The kernels' description of this layer's convolution.
    pub fn conv_params(&self) -> gantry_kernels::ConvParams {
        gantry_kernels::ConvParams {
            kind: self.kind,
            kernel: self.kernel,
            stride: self.stride,
            padding: self.padding,
        }
    }

    /// Shape of the convolution weight in candle/PyTorch/ONNX layout.
    pub fn weight_shape(&self) -> Vec<usize> {
        match self.kind {
            ConvKind::Conv => vec![
                self.out_channels,
                self.in_channels,
                self.kernel,
                self.kernel,
            ],
            ConvKind::ConvTranspose => {
                vec![
                    self.in_channels,
                    self.out_channels,
                    self.kernel,
                    self.kernel,
                ]
            }
        }
    }

    fn tensors(&self, out: &mut Vec<TensorSpec>) {
        out.push(TensorSpec::parameter(
            self.weight_name(),
            self.weight_shape(),
            self.init,
        ));
        if self.bias {
            out.push(TensorSpec::parameter(
                self.bias_name(),
                vec![self.out_channels],
                Init::Zeros,
            ));
        }
        if self.spectral_norm {
            out.push(TensorSpec {
                name: self.sn_u_name(),
                shape: vec![self.weight_shape()[0]],
                role: TensorRole::Buffer,
                // A random direction (the power iteration normalises it).
                init: Init::Normal {
                    mean: 0.0,
                    std: 1.0,
                },
            });
        }
        if self.batch_norm {
            batch_norm_tensors(
                &format!("{}.bn", self.name),
                self.out_channels,
                self.bn_classes,
                self.bn_gain_init,
                out,
            );
        }
    }
}

/// The four tensors of a BatchNorm named `{prefix}.weight` etc.; a class-conditional one has
/// its gain and shift per class (`[classes, channels]`).
fn batch_norm_tensors(
    prefix: &str,
    channels: usize,
    classes: Option<usize>,
    gain: Init,
    out: &mut Vec<TensorSpec>,
) {
    let c = vec![channels];
    let affine = match classes {
        Some(k) => vec![k, channels],
        None => c.clone(),
    };
    out.push(TensorSpec::parameter(
        format!("{prefix}.weight"),
        affine.clone(),
        gain,
    ));
    out.push(TensorSpec::parameter(
        format!("{prefix}.bias"),
        affine,
        Init::Zeros,
    ));
    for (buffer, init) in [("running_mean", Init::Zeros), ("running_var", Init::Ones)] {
        out.push(TensorSpec {
            name: format!("{prefix}.{buffer}"),
            shape: c.clone(),
            role: TensorRole::Buffer,
            init,
        });
    }
}

/// A BatchNorm on its own (not after a convolution of the same stage), then an activation.
#[derive(Debug, Clone, PartialEq)]
pub struct NormLayer {
    /// Prefix of its tensor names (`blocks.0.bn1`: `blocks.0.bn1.weight`, ...).
    pub name: String,
    pub channels: usize,
    pub activation: Activation,
    pub gain_init: Init,
    /// Class-conditional gains and shifts (`[classes, channels]`), as [`ConvLayer::bn_classes`].
    pub classes: Option<usize>,
}

impl NormLayer {
    fn tensors(&self, out: &mut Vec<TensorSpec>) {
        batch_norm_tensors(&self.name, self.channels, self.classes, self.gain_init, out);
    }
}

/// Resampling inside a residual block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resample {
    /// Same size in and out.
    None,
    /// Nearest-neighbour x2 before the first convolution (and before the shortcut's).
    Up,
    /// 2x2 average pooling after the second convolution (and after the shortcut's).
    Down,
}

/// A residual block: `main(x) + shortcut(x)`, where `main` is [pre-normalisation or ReLU,]
/// [upsampling,] `conv1`, `conv2`, [pooling] and the shortcut resamples the same way around a
/// 1x1 convolution. A 1x1 convolution commutes with nearest upsampling and with average
/// pooling (both act per channel, it per pixel), so the shortcut's convolution always runs at the
/// lower resolution (SNGAN's blocks upsample before it and pool after it except in the first
/// discriminator block: the same map, at a quarter of the cost).
#[derive(Debug, Clone, PartialEq)]
pub struct ResidualBlock {
    /// Prefix of its tensor names (`blocks.2`).
    pub name: String,
    /// BatchNorm + ReLU at the start of the main path (generator blocks).
    pub pre_norm: Option<NormLayer>,
    /// A plain ReLU at the start of the main path (discriminator blocks after the first).
    pub pre_relu: bool,
    pub resample: Resample,
    pub conv1: ConvLayer,
    pub conv2: ConvLayer,
    /// The learned shortcut (a 1x1 convolution, at the lower resolution); `None` is the
    /// identity.
    pub shortcut: Option<ConvLayer>,
}

/// One stage of a network, applied to the output of the one before.
#[derive(Debug, Clone, PartialEq)]
pub enum Stage {
    /// A convolution (with its bias, BatchNorm and activation).
    Conv(ConvLayer),
    /// A residual block.
    Residual(Box<ResidualBlock>),
    /// A BatchNorm and activation on their own.
    Norm(NormLayer),
    /// An activation, then the sum over all pixels: `[N, C, H, W]` -> `[N, C, 1, 1]`.
    SumPool(Activation),
}

/// How class labels enter a network.
#[derive(Debug, Clone, PartialEq)]
pub enum Conditioning {
    /// Generator: `embedding[label]` (dim `embed_dim`) is concatenated to `z`. A non-trainable
    /// table is the identity: a fixed one-hot code.
    ConcatEmbedding {
        num_classes: usize,
        embed_dim: usize,
        trainable: bool,
    },
    /// Discriminator: one-hot label maps (`num_classes` constant planes) are concatenated to the
    /// image, so the first convolution sees the class everywhere (the classic conditional DCGAN).
    LabelMaps { num_classes: usize },
    /// Generator: the labels pick the gains and shifts of its class-conditional BatchNorms
    /// ([`ConvLayer::bn_classes`], [`NormLayer::classes`]); `z` enters alone.
    ClassNorm { num_classes: usize },
    /// Discriminator: a projection (Miyato & Koyama 2018): the logit gains
    /// `<embedding[label], features>` over the pooled features of `channels` values. With
    /// `spectral_norm` the table is spectrally normalised as D's convolutions are (SNGAN's and
    /// BigGAN's `SNEmbedding`: the `[num_classes, channels]` matrix, `u` of `num_classes`).
    Projection {
        num_classes: usize,
        channels: usize,
        spectral_norm: bool,
    },
}

impl Conditioning {
    /// Checkpoint name of the embedding table, for conditionings that have one.
    pub fn tensor_name(&self) -> Option<&'static str> {
        match self {
            Self::ConcatEmbedding { .. } => Some("label_embedding.weight"),
            Self::Projection { .. } => Some("projection.weight"),
            Self::LabelMaps { .. } | Self::ClassNorm { .. } => None,
        }
    }

    /// Checkpoint name of the embedding table's spectral-norm `u`, where it is normalised.
    pub fn sn_u_name(&self) -> Option<&'static str> {
        match self {
            Self::Projection {
                spectral_norm: true,
                ..
            } => Some("projection.weight_u"),
            _ => None,
        }
    }

    /// Shape `[num_classes, embed_dim]` of the embedding table, for conditionings that have one.
    pub fn shape(&self) -> Option<Vec<usize>> {
        match *self {
            Self::ConcatEmbedding {
                num_classes,
                embed_dim,
                ..
            } => Some(vec![num_classes, embed_dim]),
            Self::Projection {
                num_classes,
                channels,
                ..
            } => Some(vec![num_classes, channels]),
            Self::LabelMaps { .. } | Self::ClassNorm { .. } => None,
        }
    }

    /// Whether the optimiser trains the table (a fixed one-hot table is a buffer).
    pub fn trainable(&self) -> bool {
        matches!(
            self,
            Self::ConcatEmbedding {
                trainable: true,
                ..
            } | Self::Projection { .. }
        )
    }

    /// How the embedding table is initialised: the identity for a fixed one-hot code, N(0, 1)
    /// for a learned input embedding, Xavier-uniform for a projection (as SNGAN's code).
    fn init(&self) -> Init {
        match *self {
            Self::Projection {
                num_classes,
                channels,
                ..
            } => Init::xavier(num_classes, channels, 1.0),
            _ if self.trainable() => Init::Normal {
                mean: 0.0,
                std: 1.0,
            },
            _ => Init::Identity,
        }
    }
}

/// Whether a tensor is trained by the optimiser or is a BatchNorm buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TensorRole {
    Parameter,
    Buffer,
}

/// A named tensor of a network with its shape and initialisation.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub role: TensorRole,
    pub init: Init,
}

impl TensorSpec {
    fn parameter(name: String, shape: Vec<usize>, init: Init) -> Self {
        Self {
            name,
            shape,
            role: TensorRole::Parameter,
            init,
        }
    }
}

/// A whole network: its stages in order and how labels enter it.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkSpec {
    pub stages: Vec<Stage>,
    pub conditioning: Option<Conditioning>,
}

impl NetworkSpec {
    /// A network of convolutions only (DCGAN, the evaluation classifier).
    pub fn sequential(layers: Vec<ConvLayer>, conditioning: Option<Conditioning>) -> Self {
        Self {
            stages: layers.into_iter().map(Stage::Conv).collect(),
            conditioning,
        }
    }

    /// Every convolution, in the order the network applies them (a residual block's `conv1`,
    /// `conv2`, then its shortcut).
    pub fn conv_layers(&self) -> Vec<&ConvLayer> {
        let mut out = Vec::new();
        for stage in &self.stages {
            match stage {
                Stage::Conv(layer) => out.push(layer),
                Stage::Residual(block) => {
                    out.push(&block.conv1);
                    out.push(&block.conv2);
                    out.extend(&block.shortcut);
                }
                Stage::Norm(_) | Stage::SumPool(_) => {}
            }
        }
        out
    }

    /// Every tensor of the network, parameters and buffers, in a fixed order.
    pub fn tensors(&self) -> Vec<TensorSpec> {
        let mut out = Vec::new();
        if let Some(c) = &self.conditioning {
            if let (Some(name), Some(shape)) = (c.tensor_name(), c.shape()) {
                let role = if c.trainable() {
                    TensorRole::Parameter
                } else {
                    TensorRole::Buffer
                };
                out.push(TensorSpec {
                    name: name.to_string(),
                    shape: shape.clone(),
                    role,
                    init: c.init(),
                });
                if let Some(u) = c.sn_u_name() {
                    out.push(TensorSpec {
                        name: u.to_string(),
                        shape: vec![shape[0]],
                        role: TensorRole::Buffer,
                        // A random direction, as a convolution's (see ConvLayer::tensors).
                        init: Init::Normal {
                            mean: 0.0,
                            std: 1.0,
                        },
                    });
                }
            }
        }
        for stage in &self.stages {
            match stage {
                Stage::Conv(layer) => layer.tensors(&mut out),
                Stage::Residual(block) => {
                    if let Some(norm) = &block.pre_norm {
                        norm.tensors(&mut out);
                    }
                    block.conv1.tensors(&mut out);
                    block.conv2.tensors(&mut out);
                    if let Some(shortcut) = &block.shortcut {
                        shortcut.tensors(&mut out);
                    }
                }
                Stage::Norm(norm) => norm.tensors(&mut out),
                Stage::SumPool(_) => {}
            }
        }
        out
    }

    /// Number of trainable scalars (what PyTorch's `sum(p.numel() for p in m.parameters())` counts).
    pub fn parameter_count(&self) -> usize {
        self.tensors()
            .iter()
            .filter(|t| t.role == TensorRole::Parameter)
            .map(|t| t.shape.iter().product::<usize>())
            .sum()
    }
}

/// The generator of `cfg`'s architecture: `z` (with the label's embedding) -> image in [-1, 1].
pub fn generator_spec(cfg: &ModelConfig) -> NetworkSpec {
    match cfg.arch {
        Arch::Dcgan => dcgan::generator(cfg),
        Arch::Resnet => resnet::generator(cfg),
    }
}

/// The discriminator of `cfg`'s architecture: image (with label maps) -> one logit.
pub fn discriminator_spec(cfg: &ModelConfig) -> NetworkSpec {
    match cfg.arch {
        Arch::Dcgan => dcgan::discriminator(cfg),
        Arch::Resnet => resnet::discriminator(cfg),
    }
}

/// The generator's input: `z` with the label vector concatenated, as `[N, dim, 1, 1]`.
fn generator_conditioning(cfg: &ModelConfig) -> Option<Conditioning> {
    cfg.num_classes
        .map(|num_classes| Conditioning::ConcatEmbedding {
            num_classes,
            embed_dim: cfg.label_dim(),
            trainable: cfg.label_embed_dim > 0,
        })
}

/// The discriminator's label maps beside the image channels.
fn discriminator_conditioning(cfg: &ModelConfig) -> Option<Conditioning> {
    cfg.num_classes
        .map(|num_classes| Conditioning::LabelMaps { num_classes })
}

impl ModelConfig {
    /// Checks every field, and the size of the networks they make; the error names the field.
    pub fn validate(&self) -> crate::error::Result<()> {
        self.validate_with_limit(crate::config::MAX_PARAMETERS)
    }

    /// [`ModelConfig::validate`] with at most `max_parameters` parameters in G and D together.
    fn validate_with_limit(&self, max_parameters: usize) -> crate::error::Result<()> {
        use crate::error::ConfigField;
        let bad = |field, problem: String| Err(crate::error::ModelError::invalid(field, problem));
        self.validate_fields()?;
        if self.arch == Arch::Resnet && self.image_size < resnet::MIN_IMAGE_SIZE {
            return bad(
                ConfigField::ImageSize,
                format!(
                    "must be at least {} for the resnet architecture (one residual block per doubling from 4x4), got {}",
                    resnet::MIN_IMAGE_SIZE,
                    self.image_size
                ),
            );
        }
        // Every field is bounded (MAX_DIM, 256 px), so the exact counts stay far below 2^64
        // (under 2^50 at the bounds, tested): no bound has to come first. The specs are layer
        // descriptions; nothing is allocated for the weights here.
        let g = generator_spec(self).parameter_count();
        let d = discriminator_spec(self).parameter_count();
        let parameters = g as u128 + d as u128;
        if parameters > max_parameters as u128 {
            let field = if g >= d {
                ConfigField::GeneratorWidth
            } else {
                ConfigField::DiscriminatorWidth
            };
            return bad(
                field,
                format!(
                    "makes a model of {parameters} parameters (at most {max_parameters}); choose smaller widths or latent size"
                ),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// At every field's upper bound, for both architectures, the size check counts the
    /// parameters without overflowing (the test profile checks overflow) and refuses the model
    /// by the larger network's width, before anything is allocated.
    #[test]
    fn the_largest_configurations_are_counted_and_refused() {
        use crate::config::MAX_DIM;
        use crate::error::ConfigField;
        for arch in [Arch::Dcgan, Arch::Resnet] {
            for (g_width, d_width, field) in [
                (MAX_DIM, 1, ConfigField::GeneratorWidth),
                (1, MAX_DIM, ConfigField::DiscriminatorWidth),
            ] {
                let c = ModelConfig {
                    arch,
                    image_size: 256,
                    channels: 3,
                    latent_dim: MAX_DIM,
                    g_width,
                    d_width,
                    num_classes: Some(MAX_DIM),
                    label_embed_dim: MAX_DIM,
                    ..Default::default()
                };
                let count =
                    generator_spec(&c).parameter_count() + discriminator_spec(&c).parameter_count();
                assert!(count < 1 << 50, "{arch:?}: {count}");
                let err = c.validate().unwrap_err();
                assert!(
                    err.to_string()
                        .contains(&format!("makes a model of {count} parameters")),
                    "{arch:?}: {err}"
                );
                assert!(
                    matches!(err, crate::error::ModelError::InvalidConfig { field: f, .. } if f == field),
                    "{arch:?}: {err:?}"
                );
            }
        }
    }
}
