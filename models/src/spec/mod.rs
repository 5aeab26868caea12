//! The one description of the DCGAN architecture.
//!
//! [`generator_spec`] and [`discriminator_spec`] turn a [`ModelConfig`] into a list of layers with
//! their shapes. The candle modules ([`crate::Generator`], [`crate::Discriminator`]) and the ONNX
//! graph written by `gantry-exporter` are both built by walking this list, so the architecture is
//! written down exactly once. Tensor names are produced here too and are the checkpoint's keys.

use crate::config::ModelConfig;

/// BatchNorm epsilon (PyTorch's default, also used by the ONNX export).
pub const BN_EPS: f64 = 1e-5;
/// BatchNorm running-statistics momentum (PyTorch's default).
pub const BN_MOMENTUM: f64 = 0.1;
/// Negative slope of the discriminator's LeakyReLU.
pub const LEAKY_RELU_SLOPE: f64 = 0.2;
/// Kernel side of every convolution.
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

/// One convolution layer, optionally followed by BatchNorm, then an activation.
#[derive(Debug, Clone, PartialEq)]
pub struct ConvLayer {
    /// Position in the network; names the layer's tensors (`layers.{index}.…`).
    pub index: usize,
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
    pub batch_norm: bool,
    pub activation: Activation,
    /// Whether the weight is spectrally normalised (its power-iteration vector a buffer).
    pub spectral_norm: bool,
}

impl ConvLayer {
    /// Checkpoint name of the convolution weight.
    pub fn weight_name(&self) -> String {
        format!("layers.{}.weight", self.index)
    }

    /// Checkpoint name of the spectral normalisation's left singular vector estimate.
    pub fn sn_u_name(&self) -> String {
        format!("layers.{}.weight_u", self.index)
    }

    /// Checkpoint name of a BatchNorm tensor: `weight`, `bias`, `running_mean` or `running_var`.
    pub fn bn_name(&self, tensor: &str) -> String {
        format!("layers.{}.bn.{tensor}", self.index)
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
}

impl Conditioning {
    /// Checkpoint name of the embedding table, for conditionings that have one.
    pub fn tensor_name(&self) -> Option<&'static str> {
        match self {
            Self::ConcatEmbedding { .. } => Some("label_embedding.weight"),
            Self::LabelMaps { .. } => None,
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
            Self::LabelMaps { .. } => None,
        }
    }

    /// Whether the optimiser trains the table (a fixed one-hot table is a buffer).
    pub fn trainable(&self) -> bool {
        matches!(
            self,
            Self::ConcatEmbedding {
                trainable: true,
                ..
            }
        )
    }

    /// Number of classes.
    pub fn num_classes(&self) -> usize {
        match *self {
            Self::ConcatEmbedding { num_classes, .. } | Self::LabelMaps { num_classes } => {
                num_classes
            }
        }
    }
}

/// Whether a tensor is trained by the optimiser or is a BatchNorm buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TensorRole {
    Parameter,
    Buffer,
}

/// A named tensor of a network with its shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub role: TensorRole,
}

/// A whole network: its layers in order and how labels enter it.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkSpec {
    pub layers: Vec<ConvLayer>,
    pub conditioning: Option<Conditioning>,
}

impl NetworkSpec {
    /// Every tensor of the network, parameters and buffers, in a fixed order.
    pub fn tensors(&self) -> Vec<TensorSpec> {
        let mut out = Vec::new();
        let param = |name, shape| TensorSpec {
            name,
            shape,
            role: TensorRole::Parameter,
        };
        if let Some(c) = &self.conditioning {
            if let (Some(name), Some(shape)) = (c.tensor_name(), c.shape()) {
                let role = if c.trainable() {
                    TensorRole::Parameter
                } else {
                    TensorRole::Buffer
                };
                out.push(TensorSpec {
                    name: name.to_string(),
                    shape,
                    role,
                });
            }
        }
        for layer in &self.layers {
            out.push(param(layer.weight_name(), layer.weight_shape()));
            if layer.spectral_norm {
                out.push(TensorSpec {
                    name: layer.sn_u_name(),
                    shape: vec![layer.weight_shape()[0]],
                    role: TensorRole::Buffer,
                });
            }
            if layer.batch_norm {
                let c = vec![layer.out_channels];
                out.push(param(layer.bn_name("weight"), c.clone()));
                out.push(param(layer.bn_name("bias"), c.clone()));
                for buffer in ["running_mean", "running_var"] {
                    out.push(TensorSpec {
                        name: layer.bn_name(buffer),
                        shape: c.clone(),
                        role: TensorRole::Buffer,
                    });
                }
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

/// The DCGAN generator: ConvTranspose to 4x4, stride-2 ConvTranspose + BN + ReLU stages, Tanh out.
pub fn generator_spec(cfg: &ModelConfig) -> NetworkSpec {
    let stages = cfg.num_stages();
    let mut layers = Vec::with_capacity(stages + 1);
    let mut channels = cfg.g_width << (stages - 1);
    layers.push(ConvLayer {
        index: 0,
        kind: ConvKind::ConvTranspose,
        in_channels: cfg.generator_input_dim(),
        out_channels: channels,
        kernel: KERNEL,
        stride: 1,
        padding: 0,
        in_size: 1,
        out_size: 4,
        batch_norm: true,
        activation: Activation::Relu,
        spectral_norm: false,
    });
    let mut size = 4;
    for stage in 1..=stages {
        let last = stage == stages;
        let out_channels = if last { cfg.channels } else { channels / 2 };
        layers.push(ConvLayer {
            index: stage,
            kind: ConvKind::ConvTranspose,
            in_channels: channels,
            out_channels,
            kernel: KERNEL,
            stride: 2,
            padding: 1,
            in_size: size,
            out_size: size * 2,
            batch_norm: !last,
            activation: if last {
                Activation::Tanh
            } else {
                Activation::Relu
            },
            spectral_norm: false,
        });
        channels = out_channels;
        size *= 2;
    }
    NetworkSpec {
        layers,
        conditioning: cfg
            .num_classes
            .map(|num_classes| Conditioning::ConcatEmbedding {
                num_classes,
                embed_dim: cfg.label_dim(),
                trainable: cfg.label_embed_dim > 0,
            }),
    }
}

/// The DCGAN discriminator: stride-2 Conv + BN + LeakyReLU stages (no BN on the first), then a
/// 4x4 Conv to one logit. Conditional models see one-hot label maps beside the image channels.
pub fn discriminator_spec(cfg: &ModelConfig) -> NetworkSpec {
    let stages = cfg.num_stages();
    let mut layers = Vec::with_capacity(stages + 1);
    let mut channels = cfg.channels + cfg.num_classes.unwrap_or(0);
    let mut size = cfg.image_size;
    for stage in 0..stages {
        let out_channels = cfg.d_width << stage;
        layers.push(ConvLayer {
            index: stage,
            kind: ConvKind::Conv,
            in_channels: channels,
            out_channels,
            kernel: KERNEL,
            stride: 2,
            padding: 1,
            in_size: size,
            out_size: size / 2,
            batch_norm: stage > 0,
            activation: Activation::LeakyRelu(LEAKY_RELU_SLOPE),
            spectral_norm: cfg.spectral_norm,
        });
        channels = out_channels;
        size /= 2;
    }
    layers.push(ConvLayer {
        index: stages,
        kind: ConvKind::Conv,
        in_channels: channels,
        out_channels: 1,
        kernel: KERNEL,
        stride: 1,
        padding: 0,
        in_size: 4,
        out_size: 1,
        batch_norm: false,
        activation: Activation::Identity,
        spectral_norm: cfg.spectral_norm,
    });
    NetworkSpec {
        layers,
        conditioning: cfg
            .num_classes
            .map(|num_classes| Conditioning::LabelMaps { num_classes }),
    }
}

impl ModelConfig {
    /// Checks every field, and the size of the networks they make; the error names the field.
    pub fn validate(&self) -> crate::error::Result<()> {
        use crate::config::MAX_PARAMETERS;
        use crate::error::ConfigField;
        let bad = |field, problem: String| Err(crate::error::ModelError::invalid(field, problem));
        self.validate_fields()?;
        // The widest layers hold `width << (stages - 1)` channels: check the pair's size before
        // anything is allocated (in u128, so that no product overflows).
        let stages = self.num_stages() as u32;
        let widest = |w: usize| (w as u128) << stages.saturating_sub(1);
        let rough =
            widest(self.g_width) * (self.generator_input_dim() as u128 + widest(self.g_width)) * 16
                + widest(self.d_width) * widest(self.d_width) * 16;
        let parameters = if rough > MAX_PARAMETERS as u128 * 4 {
            rough
        } else {
            (generator_spec(self).parameter_count() + discriminator_spec(self).parameter_count())
                as u128
        };
        if parameters > MAX_PARAMETERS as u128 {
            let field = if widest(self.g_width) >= widest(self.d_width) {
                ConfigField::GeneratorWidth
            } else {
                ConfigField::DiscriminatorWidth
            };
            return bad(
                field,
                format!(
                    "makes a model of about {parameters} parameters (at most {MAX_PARAMETERS}); choose smaller widths or latent size"
                ),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(image_size: usize, channels: usize) -> ModelConfig {
        ModelConfig {
            image_size,
            channels,
            ..Default::default()
        }
    }

    #[test]
    fn parameter_counts_match_pytorch_dcgan() {
        // Counts printed by PyTorch for the reference DCGAN (bench/torch_dcgan.py's networks):
        // sum(p.numel() for p in G(64, 3).parameters()) and likewise for D and the 32x32x1 pair.
        let c64 = cfg(64, 3);
        assert_eq!(generator_spec(&c64).parameter_count(), 3_576_704);
        assert_eq!(discriminator_spec(&c64).parameter_count(), 2_765_568);
        let c32 = cfg(32, 1);
        assert_eq!(generator_spec(&c32).parameter_count(), 1_066_880);
        assert_eq!(discriminator_spec(&c32).parameter_count(), 661_248);
    }

    #[test]
    fn shapes_chain_from_latent_to_image() {
        for (size, ch) in [(16, 1), (32, 1), (64, 3), (128, 3), (256, 3)] {
            let g = generator_spec(&cfg(size, ch));
            assert_eq!(g.layers[0].in_size, 1);
            assert_eq!(g.layers.last().unwrap().out_size, size);
            assert_eq!(g.layers.last().unwrap().out_channels, ch);
            for pair in g.layers.windows(2) {
                assert_eq!(pair[0].out_channels, pair[1].in_channels);
                assert_eq!(pair[0].out_size, pair[1].in_size);
            }
            let d = discriminator_spec(&cfg(size, ch));
            assert_eq!(d.layers[0].in_size, size);
            assert_eq!(d.layers[0].in_channels, ch);
            assert_eq!(d.layers.last().unwrap().out_size, 1);
            for pair in d.layers.windows(2) {
                assert_eq!(pair[0].out_channels, pair[1].in_channels);
                assert_eq!(pair[0].out_size, pair[1].in_size);
            }
        }
    }

    #[test]
    fn conditional_models_add_embeddings() {
        let c = ModelConfig {
            image_size: 32,
            channels: 1,
            num_classes: Some(10),
            ..Default::default()
        };
        let g = generator_spec(&c);
        assert_eq!(g.layers[0].in_channels, 110, "one-hot labels by default");
        assert_eq!(g.tensors()[0].shape, vec![10, 10]);
        assert_eq!(g.tensors()[0].role, TensorRole::Buffer);
        let learned = generator_spec(&ModelConfig {
            label_embed_dim: 50,
            ..c.clone()
        });
        assert_eq!(learned.layers[0].in_channels, 150);
        assert_eq!(learned.tensors()[0].role, TensorRole::Parameter);
        let d = discriminator_spec(&c);
        assert_eq!(
            d.tensors()[0].shape,
            vec![64, 11, 4, 4],
            "label maps widen D's input"
        );
    }
}
