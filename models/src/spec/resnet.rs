//! The SNGAN CIFAR ResNet (Miyato et al. 2018, the networks of their Chainer code and of
//! pytorch-gan-collections): residual up-blocks from a linear projection of the latent, residual
//! down-blocks to a global sum pooling and a linear logit; 3x3 convolutions, Xavier-uniform
//! weights (gain sqrt(2) inside the blocks, 1 on shortcuts and the ends).
//!
//! Widths: every generator block has `4 * g_width` channels and every discriminator block
//! `2 * d_width`, so the default widths (64) give SNGAN's 256 and 128. Biases are kept only where
//! no BatchNorm follows (a bias before a BatchNorm is subtracted again by it).

use super::{
    Activation, Conditioning, ConvKind, ConvLayer, Init, NetworkSpec, NormLayer, Resample,
    ResidualBlock, Stage,
};
use crate::config::ModelConfig;

/// Smallest image side: three blocks from 4x4, as SNGAN's CIFAR networks.
pub(super) const MIN_IMAGE_SIZE: usize = 32;

/// Channels of every generator block for a `--g-width`.
pub fn generator_channels(cfg: &ModelConfig) -> usize {
    4 * cfg.g_width
}

/// Channels of every discriminator block for a `--d-width`.
pub fn discriminator_channels(cfg: &ModelConfig) -> usize {
    2 * cfg.d_width
}

/// A convolution of these channels and kernel (stride 1, "same" padding) on `size` maps.
fn conv(
    name: String,
    in_channels: usize,
    out_channels: usize,
    kernel: usize,
    size: usize,
) -> ConvLayer {
    let area = kernel * kernel;
    ConvLayer {
        name,
        kind: ConvKind::Conv,
        in_channels,
        out_channels,
        kernel,
        stride: 1,
        padding: kernel / 2,
        in_size: size,
        out_size: size,
        bias: true,
        batch_norm: false,
        activation: Activation::Identity,
        spectral_norm: false,
        init: Init::xavier(in_channels * area, out_channels * area, 1.0),
        bn_gain_init: Init::Ones,
        bn_classes: None,
    }
}

/// A convolution inside a residual path: Xavier gain sqrt(2) (ReLU networks).
fn residual_conv(name: String, in_channels: usize, out_channels: usize, size: usize) -> ConvLayer {
    ConvLayer {
        init: Init::xavier(in_channels * 9, out_channels * 9, std::f64::consts::SQRT_2),
        ..conv(name, in_channels, out_channels, 3, size)
    }
}

/// The generator: linear `z -> 4x4xC`, one up-block per doubling (BN, ReLU, nearest x2,
/// conv3x3, BN, ReLU, conv3x3, with an upsampled 1x1 shortcut), BN, ReLU, conv3x3, tanh. A
/// conditional generator's block BatchNorms are class-conditional (SNGAN's cGAN).
pub(super) fn generator(cfg: &ModelConfig) -> NetworkSpec {
    let c = generator_channels(cfg);
    let classes = cfg.num_classes;
    let input = cfg.generator_input_dim();
    let sn = cfg.g_spectral_norm;
    let mut stages = vec![Stage::Conv(ConvLayer {
        kind: ConvKind::ConvTranspose,
        kernel: 4,
        padding: 0,
        in_size: 1,
        out_size: 4,
        bias: false,
        // As `nn.Linear(input, 16 * C)`: the fans of the matrix it is.
        init: Init::xavier(input, 16 * c, 1.0),
        spectral_norm: sn,
        ..conv("linear".into(), input, c, 4, 1)
    })];
    let mut size = 4;
    for i in 0..cfg.num_stages() {
        let name = format!("blocks.{i}");
        stages.push(Stage::Residual(Box::new(ResidualBlock {
            pre_norm: Some(NormLayer {
                name: format!("{name}.bn1"),
                channels: c,
                activation: Activation::Relu,
                gain_init: Init::Ones,
                classes,
            }),
            pre_relu: false,
            resample: Resample::Up,
            conv1: ConvLayer {
                bias: false,
                batch_norm: true,
                bn_classes: classes,
                activation: Activation::Relu,
                spectral_norm: sn,
                ..residual_conv(format!("{name}.conv1"), c, c, size * 2)
            },
            conv2: ConvLayer {
                bias: false,
                spectral_norm: sn,
                ..residual_conv(format!("{name}.conv2"), c, c, size * 2)
            },
            // At the lower resolution, then upsampled (the same map).
            shortcut: Some(ConvLayer {
                bias: false,
                spectral_norm: sn,
                ..conv(format!("{name}.shortcut"), c, c, 1, size)
            }),
            name,
        })));
        size *= 2;
    }
    stages.push(Stage::Norm(NormLayer {
        name: "bn".into(),
        channels: c,
        activation: Activation::Relu,
        gain_init: Init::Ones,
        classes: None,
    }));
    stages.push(Stage::Conv(ConvLayer {
        activation: Activation::Tanh,
        spectral_norm: sn,
        ..conv("output".into(), c, cfg.channels, 3, size)
    }));
    NetworkSpec {
        stages,
        conditioning: classes.map(|num_classes| Conditioning::ClassNorm { num_classes }),
    }
}

/// The discriminator: one down-block per halving to 4x4 (the first "optimised": no ReLU
/// before it, on the image itself), ReLU, sum over pixels, linear.
/// Every convolution is spectrally normalised when `cfg.spectral_norm`. A conditional
/// discriminator adds a projection of the label onto the pooled features (its embedding
/// spectrally normalised too).
pub(super) fn discriminator(cfg: &ModelConfig) -> NetworkSpec {
    let d = discriminator_channels(cfg);
    let sn = cfg.spectral_norm;
    let mut channels = cfg.channels;
    let mut size = cfg.image_size;
    let mut stages = Vec::new();
    for i in 0..cfg.num_stages() {
        let name = format!("blocks.{i}");
        let first = i == 0;
        stages.push(Stage::Residual(Box::new(ResidualBlock {
            pre_norm: None,
            pre_relu: !first,
            resample: Resample::Down,
            conv1: ConvLayer {
                activation: Activation::Relu,
                spectral_norm: sn,
                ..residual_conv(format!("{name}.conv1"), channels, d, size)
            },
            conv2: ConvLayer {
                spectral_norm: sn,
                ..residual_conv(format!("{name}.conv2"), d, d, size)
            },
            // On the pooled input (the same map as pooling after it).
            shortcut: Some(ConvLayer {
                spectral_norm: sn,
                ..conv(format!("{name}.shortcut"), channels, d, 1, size / 2)
            }),
            name,
        })));
        channels = d;
        size /= 2;
    }
    stages.push(Stage::SumPool(Activation::Relu));
    stages.push(Stage::Conv(ConvLayer {
        spectral_norm: sn,
        ..conv("linear".into(), d, 1, 1, 1)
    }));
    NetworkSpec {
        stages,
        conditioning: cfg.num_classes.map(|num_classes| Conditioning::Projection {
            num_classes,
            channels: d,
            spectral_norm: sn,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Arch;
    use crate::spec::{discriminator_spec, generator_spec};

    fn cfg(image_size: usize, channels: usize) -> ModelConfig {
        ModelConfig {
            arch: Arch::Resnet,
            image_size,
            channels,
            latent_dim: 128,
            ..Default::default()
        }
    }

    /// Counts printed by PyTorch for bench/torch_resnet.py's networks (SNGAN's CIFAR ResNet
    /// with Gantry's bias choices): `sum(p.numel() for p in G.parameters())`, likewise for D.
    #[test]
    fn parameter_counts_match_the_pytorch_reference() {
        let c32 = cfg(32, 3);
        assert_eq!(generator_spec(&c32).parameter_count(), PYTORCH_G_32);
        assert_eq!(discriminator_spec(&c32).parameter_count(), PYTORCH_D_32);
    }

    const PYTORCH_G_32: usize = 4_270_339;
    const PYTORCH_D_32: usize = 775_169;

    fn field_of(result: crate::error::Result<()>) -> Option<crate::error::ConfigField> {
        match result {
            Err(crate::error::ModelError::InvalidConfig { field, .. }) => Some(field),
            _ => None,
        }
    }

    /// Xavier-uniform weights as SNGAN initialises them: fans of `channels x k x k`, gain
    /// sqrt(2) inside the residual paths and 1 on the shortcuts and the output; "same" padding.
    #[test]
    fn convolutions_start_xavier_uniform_with_sngans_gains() {
        let g = generator_spec(&cfg(32, 3));
        let layer = |name: &str| {
            g.conv_layers()
                .into_iter()
                .find(|l| l.name == name)
                .unwrap()
                .clone()
        };
        for (name, bound, padding) in [
            (
                "blocks.0.conv1",
                2f64.sqrt() * (6.0 / (2.0 * 256.0 * 9.0f64)).sqrt(),
                1,
            ),
            ("blocks.0.shortcut", (6.0 / 512.0f64).sqrt(), 0),
            ("output", (6.0 / (259.0 * 9.0f64)).sqrt(), 1),
        ] {
            let l = layer(name);
            let Init::Uniform { bound: got } = l.init else {
                panic!("{name}: {:?}", l.init)
            };
            assert!(
                (got as f64 - bound).abs() < 1e-7,
                "{name}: {got} vs {bound}"
            );
            assert_eq!(
                (l.padding, l.in_size, l.out_size),
                (padding, l.in_size, l.in_size),
                "{name}"
            );
        }
    }

    /// Every convolution of the 32 px pair, in order, as SNGAN's CIFAR ResNet has it: (name,
    /// kernel, padding, input size, output size, BatchNorm, activation, bias).
    #[test]
    fn layers_are_sngans() {
        use Activation::{Identity as Id, Relu, Tanh};
        let row = |l: &ConvLayer| {
            (
                l.name.clone(),
                l.kernel,
                l.padding,
                l.in_size,
                l.out_size,
                l.batch_norm,
                l.activation,
                l.bias,
            )
        };
        let c = cfg(32, 3);
        let g: Vec<_> = generator_spec(&c)
            .conv_layers()
            .into_iter()
            .map(row)
            .collect();
        let mut expected = vec![("linear".to_string(), 4, 0, 1, 4, false, Id, false)];
        for (i, size) in [(0, 8), (1, 16), (2, 32)] {
            expected.extend([
                (
                    format!("blocks.{i}.conv1"),
                    3,
                    1,
                    size,
                    size,
                    true,
                    Relu,
                    false,
                ),
                (
                    format!("blocks.{i}.conv2"),
                    3,
                    1,
                    size,
                    size,
                    false,
                    Id,
                    false,
                ),
                (
                    format!("blocks.{i}.shortcut"),
                    1,
                    0,
                    size / 2,
                    size / 2,
                    false,
                    Id,
                    false,
                ),
            ]);
        }
        expected.push(("output".to_string(), 3, 1, 32, 32, false, Tanh, true));
        assert_eq!(g, expected);
        let d: Vec<_> = discriminator_spec(&c)
            .conv_layers()
            .into_iter()
            .map(row)
            .collect();
        let mut expected = Vec::new();
        for (i, size) in [(0, 32), (1, 16), (2, 8)] {
            expected.extend([
                (
                    format!("blocks.{i}.conv1"),
                    3,
                    1,
                    size,
                    size,
                    false,
                    Relu,
                    true,
                ),
                (
                    format!("blocks.{i}.conv2"),
                    3,
                    1,
                    size,
                    size,
                    false,
                    Id,
                    true,
                ),
                (
                    format!("blocks.{i}.shortcut"),
                    1,
                    0,
                    size / 2,
                    size / 2,
                    false,
                    Id,
                    true,
                ),
            ]);
        }
        expected.push(("linear".to_string(), 1, 0, 1, 1, false, Id, true));
        assert_eq!(d, expected);
    }

    /// The ResNet needs one block per doubling from 4x4, so 32 px and up.
    #[test]
    fn resnet_images_start_at_32() {
        let err = cfg(16, 3).validate().unwrap_err().to_string();
        assert!(
            err.contains("must be at least 32 for the resnet architecture"),
            "{err}"
        );
        for size in [32, 64, 256] {
            cfg(size, 3).validate().unwrap();
        }
    }

    /// The size limit counts G and D exactly: a limit of the pair's exact count passes, one
    /// less is refused, naming the larger network's width.
    #[test]
    fn the_parameter_limit_counts_both_networks_exactly() {
        use crate::error::ConfigField;
        let exact = PYTORCH_G_32 + PYTORCH_D_32;
        cfg(32, 3).validate_with_limit(exact).unwrap();
        let err = cfg(32, 3).validate_with_limit(exact - 1).unwrap_err();
        assert!(
            err.to_string()
                .contains(&format!("of {exact} parameters (at most {})", exact - 1)),
            "{err}"
        );
        assert_eq!(field_of(Err(err)), Some(ConfigField::GeneratorWidth));
        let wide_d = ModelConfig {
            g_width: 2,
            d_width: 64,
            ..cfg(32, 3)
        };
        let exact = generator_spec(&wide_d).parameter_count()
            + discriminator_spec(&wide_d).parameter_count();
        let refused = wide_d.validate_with_limit(exact - 1);
        assert_eq!(field_of(refused), Some(ConfigField::DiscriminatorWidth));
    }

    #[test]
    fn every_block_doubles_or_halves_the_size() {
        for size in [32, 64, 128, 256] {
            let g = generator_spec(&cfg(size, 3));
            let blocks: Vec<_> = g
                .stages
                .iter()
                .filter_map(|s| match s {
                    Stage::Residual(b) => Some(b),
                    _ => None,
                })
                .collect();
            assert_eq!(blocks.len(), cfg(size, 3).num_stages());
            assert_eq!(blocks.last().unwrap().conv2.out_size, size);
            assert!(
                matches!(g.stages.last(), Some(Stage::Conv(l)) if l.activation == Activation::Tanh && l.out_channels == 3)
            );
            let d = discriminator_spec(&cfg(size, 3));
            let first = match &d.stages[0] {
                Stage::Residual(b) => b,
                other => panic!("{other:?}"),
            };
            assert!(!first.pre_relu);
            assert_eq!(first.conv1.in_size, size);
            assert!(matches!(d.stages.last(), Some(Stage::Conv(l)) if l.out_channels == 1));
        }
    }
}
