//! DCGAN (Radford et al. 2015): transposed convolutions up from the latent, strided
//! convolutions down to one logit, 4x4 kernels, BatchNorm, N(0, 0.02) weights.

use super::{
    discriminator_conditioning, generator_conditioning, Activation, ConvKind, ConvLayer, Init,
    NetworkSpec, KERNEL, LEAKY_RELU_SLOPE,
};
use crate::config::ModelConfig;

/// What a DCGAN layer is unless it says otherwise: every layer's 4x4 kernel, no bias, N(0, 0.02)
/// weights and N(1, 0.02) BatchNorm gains; and a plain convolution of stride 1 without padding,
/// BatchNorm or activation (D's output layer). Each layer spells out only what differs, so that
/// each value is written once.
const DCGAN_INIT: ConvLayer = ConvLayer {
    name: String::new(),
    kind: ConvKind::Conv,
    in_channels: 0,
    out_channels: 0,
    kernel: KERNEL,
    stride: 1,
    padding: 0,
    in_size: 0,
    out_size: 0,
    bias: false,
    batch_norm: false,
    activation: Activation::Identity,
    spectral_norm: false,
    init: Init::Normal {
        mean: 0.0,
        std: 0.02,
    },
    bn_gain_init: Init::Normal {
        mean: 1.0,
        std: 0.02,
    },
    bn_classes: None,
};

/// The DCGAN generator: ConvTranspose to 4x4, stride-2 ConvTranspose + BN + ReLU stages, Tanh out.
pub(super) fn generator(cfg: &ModelConfig) -> NetworkSpec {
    let stages = cfg.num_stages();
    let mut layers = Vec::with_capacity(stages + 1);
    let mut channels = cfg.g_width << (stages - 1);
    layers.push(ConvLayer {
        name: ConvLayer::numbered(0),
        kind: ConvKind::ConvTranspose,
        in_channels: cfg.generator_input_dim(),
        out_channels: channels,
        in_size: 1,
        out_size: 4,
        batch_norm: true,
        activation: Activation::Relu,
        spectral_norm: cfg.g_spectral_norm,
        ..DCGAN_INIT
    });
    let mut size = 4;
    for stage in 1..=stages {
        let last = stage == stages;
        let out_channels = if last { cfg.channels } else { channels / 2 };
        layers.push(ConvLayer {
            name: ConvLayer::numbered(stage),
            kind: ConvKind::ConvTranspose,
            in_channels: channels,
            out_channels,
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
            spectral_norm: cfg.g_spectral_norm,
            ..DCGAN_INIT
        });
        channels = out_channels;
        size *= 2;
    }
    NetworkSpec::sequential(layers, generator_conditioning(cfg))
}

/// The DCGAN discriminator: stride-2 Conv + BN + LeakyReLU stages (no BN on the first), then a
/// 4x4 Conv to one logit. Conditional models see one-hot label maps beside the image channels.
pub(super) fn discriminator(cfg: &ModelConfig) -> NetworkSpec {
    let stages = cfg.num_stages();
    let mut layers = Vec::with_capacity(stages + 1);
    let mut channels = cfg.channels + cfg.num_classes.unwrap_or(0);
    let mut size = cfg.image_size;
    for stage in 0..stages {
        let out_channels = cfg.d_width << stage;
        layers.push(ConvLayer {
            name: ConvLayer::numbered(stage),
            in_channels: channels,
            out_channels,
            stride: 2,
            padding: 1,
            in_size: size,
            out_size: size / 2,
            batch_norm: stage > 0,
            activation: Activation::LeakyRelu(LEAKY_RELU_SLOPE),
            spectral_norm: cfg.spectral_norm,
            ..DCGAN_INIT
        });
        channels = out_channels;
        size /= 2;
    }
    // The output layer: a 4x4 convolution of the 4x4 maps to one logit (DCGAN_INIT's plain
    // convolution).
    layers.push(ConvLayer {
        name: ConvLayer::numbered(stages),
        in_channels: channels,
        out_channels: 1,
        in_size: 4,
        out_size: 1,
        spectral_norm: cfg.spectral_norm,
        ..DCGAN_INIT
    });
    NetworkSpec::sequential(layers, discriminator_conditioning(cfg))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{discriminator_spec, generator_spec, TensorRole};

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

    /// A layer's BatchNorm tensors are named `{layer}.bn.{tensor}`, as the spec lists them
    /// (the exporter reads them by these names).
    #[test]
    fn batchnorm_tensor_names_are_the_spec_names() {
        let g = generator_spec(&cfg(32, 1));
        let names: Vec<String> = g.tensors().into_iter().map(|t| t.name).collect();
        let layer = g.conv_layers()[1];
        assert_eq!(layer.bn_name("running_var"), "layers.1.bn.running_var");
        for t in ["weight", "bias", "running_mean", "running_var"] {
            assert!(names.contains(&layer.bn_name(t)), "{t}: {names:?}");
        }
    }

    /// Every layer is the paper's: G transposed 4x4 convolutions (the first stride 1 from 1x1,
    /// then stride 2, padding 1), BatchNorm and ReLU, the last Tanh without BatchNorm; D strided
    /// 4x4 convolutions with LeakyReLU(0.2), BatchNorm from the second on, then a 4x4 valid
    /// convolution to one logit.
    #[test]
    fn layers_are_the_papers() {
        use crate::spec::{ConvKind::*, LEAKY_RELU_SLOPE};
        let lrelu = Activation::LeakyRelu(LEAKY_RELU_SLOPE);
        let row = |l: &ConvLayer| {
            (
                l.kind,
                l.kernel,
                l.stride,
                l.padding,
                l.batch_norm,
                l.activation,
            )
        };
        let g: Vec<_> = generator_spec(&cfg(32, 1))
            .conv_layers()
            .into_iter()
            .map(row)
            .collect();
        assert_eq!(
            g,
            [
                (ConvTranspose, 4, 1, 0, true, Activation::Relu),
                (ConvTranspose, 4, 2, 1, true, Activation::Relu),
                (ConvTranspose, 4, 2, 1, true, Activation::Relu),
                (ConvTranspose, 4, 2, 1, false, Activation::Tanh),
            ]
        );
        let d: Vec<_> = discriminator_spec(&cfg(32, 1))
            .conv_layers()
            .into_iter()
            .map(row)
            .collect();
        assert_eq!(
            d,
            [
                (Conv, 4, 2, 1, false, lrelu),
                (Conv, 4, 2, 1, true, lrelu),
                (Conv, 4, 2, 1, true, lrelu),
                (Conv, 4, 1, 0, false, Activation::Identity),
            ]
        );
        assert_eq!(LEAKY_RELU_SLOPE, 0.2);
        for spec in [generator_spec(&cfg(32, 1)), discriminator_spec(&cfg(32, 1))] {
            let names: Vec<String> = spec.conv_layers().iter().map(|l| l.name.clone()).collect();
            assert_eq!(names, ["layers.0", "layers.1", "layers.2", "layers.3"]);
        }
    }

    #[test]
    fn shapes_chain_from_latent_to_image() {
        for (size, ch) in [(16, 1), (32, 1), (64, 3), (128, 3), (256, 3)] {
            let g = generator_spec(&cfg(size, ch));
            assert_eq!(g.conv_layers()[0].in_size, 1);
            assert_eq!(g.conv_layers().last().unwrap().out_size, size);
            assert_eq!(g.conv_layers().last().unwrap().out_channels, ch);
            for pair in g.conv_layers().windows(2) {
                assert_eq!(pair[0].out_channels, pair[1].in_channels);
                assert_eq!(pair[0].out_size, pair[1].in_size);
            }
            let d = discriminator_spec(&cfg(size, ch));
            assert_eq!(d.conv_layers()[0].in_size, size);
            assert_eq!(d.conv_layers()[0].in_channels, ch);
            assert_eq!(d.conv_layers().last().unwrap().out_size, 1);
            for pair in d.conv_layers().windows(2) {
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
        assert_eq!(
            g.conv_layers()[0].in_channels,
            110,
            "one-hot labels by default"
        );
        assert_eq!(g.tensors()[0].shape, vec![10, 10]);
        assert_eq!(g.tensors()[0].role, TensorRole::Buffer);
        let learned = generator_spec(&ModelConfig {
            label_embed_dim: 50,
            ..c.clone()
        });
        assert_eq!(learned.conv_layers()[0].in_channels, 150);
        assert_eq!(learned.tensors()[0].role, TensorRole::Parameter);
        let d = discriminator_spec(&c);
        assert_eq!(
            d.tensors()[0].shape,
            vec![64, 11, 4, 4],
            "label maps widen D's input"
        );
    }
}
