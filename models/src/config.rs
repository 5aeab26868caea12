//! The model configuration shared by training, export and checkpoints.

use serde::{Deserialize, Serialize};

use crate::error::{ConfigField, ModelError, Result};

/// Most trainable parameters a pair may have (G and D together): 4 GB of f32 weights, before
/// the optimiser's moments and activations; far above any DCGAN people train.
pub const MAX_PARAMETERS: usize = 1_000_000_000;
/// Largest latent size, network width or class count accepted.
pub const MAX_DIM: usize = 65_536;

/// Default label encoding of class-conditional generators: 0 means a fixed one-hot vector
/// concatenated to `z` (the classic conditional DCGAN); a positive value a learned embedding of
/// that size.
pub const DEFAULT_LABEL_EMBED_DIM: usize = 0;

/// The family of networks a pair belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    /// DCGAN (Radford et al. 2015): transposed convolutions, 4x4 kernels.
    #[default]
    Dcgan,
    /// The SNGAN CIFAR ResNet (Miyato et al. 2018): residual blocks of 3x3 convolutions.
    Resnet,
}

impl Arch {
    /// The name used in flags and files.
    pub fn name(self) -> &'static str {
        match self {
            Self::Dcgan => "dcgan",
            Self::Resnet => "resnet",
        }
    }
}

impl std::str::FromStr for Arch {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "dcgan" => Ok(Self::Dcgan),
            "resnet" => Ok(Self::Resnet),
            other => Err(format!(
                "unknown architecture `{other}` (expected dcgan or resnet)"
            )),
        }
    }
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Hyper-parameters that fix the shapes of a GAN pair. The default is the DCGAN of the paper
/// (latent 100, widths 64) for 32x32 grey images (MNIST padded to 32, the trainer's default).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// The architecture (checkpoints written before there was a choice are DCGAN).
    #[serde(default)]
    pub arch: Arch,
    /// Length of the latent vector `z`.
    pub latent_dim: usize,
    /// Side of the square images (a power of two, 16..=256).
    pub image_size: usize,
    /// Image channels: 1 (grey) or 3 (RGB).
    pub channels: usize,
    /// Generator width: channels of the last hidden layer (`ngf`).
    pub g_width: usize,
    /// Discriminator width: channels of the first hidden layer (`ndf`).
    pub d_width: usize,
    /// Number of classes for a class-conditional pair; `None` for an unconditional one.
    #[serde(default)]
    pub num_classes: Option<usize>,
    /// Size of the generator's learned label embedding; 0 (the default) concatenates a fixed
    /// one-hot vector instead (conditional models only). Configurations written before the
    /// field existed read as 0: those models had the one-hot vector.
    #[serde(default)]
    pub label_embed_dim: usize,
    /// Spectral normalisation of every discriminator convolution (Miyato et al. 2018): the
    /// weight divided by its largest singular value, estimated by one power iteration per step
    /// with its vector kept as a buffer.
    #[serde(default)]
    pub spectral_norm: bool,
    /// Spectral normalisation of the generator's convolutions too (as BigGAN); the exporter
    /// writes each weight already divided by its estimated largest singular value, so the
    /// ONNX graph is the plain one.
    #[serde(default)]
    pub g_spectral_norm: bool,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            arch: Arch::Dcgan,
            latent_dim: 100,
            image_size: 32,
            channels: 1,
            g_width: 64,
            d_width: 64,
            num_classes: None,
            label_embed_dim: DEFAULT_LABEL_EMBED_DIM,
            spectral_norm: false,
            g_spectral_norm: false,
        }
    }
}

impl ModelConfig {
    /// Checks that every field is in range; the error names the field. (The size of the
    /// networks the fields make is checked by [`ModelConfig::validate`], beside the spec.)
    pub(crate) fn validate_fields(&self) -> Result<()> {
        let bad = |field, problem: String| Err(ModelError::invalid(field, problem));
        if !(16..=256).contains(&self.image_size) || !self.image_size.is_power_of_two() {
            return bad(
                ConfigField::ImageSize,
                format!(
                    "must be a power of two between 16 and 256, got {}",
                    self.image_size
                ),
            );
        }
        if self.channels != 1 && self.channels != 3 {
            return bad(
                ConfigField::Channels,
                format!("must be 1 or 3, got {}", self.channels),
            );
        }
        for (field, value) in [
            (ConfigField::LatentDim, self.latent_dim),
            (ConfigField::GeneratorWidth, self.g_width),
            (ConfigField::DiscriminatorWidth, self.d_width),
        ] {
            if !(1..=MAX_DIM).contains(&value) {
                return bad(
                    field,
                    format!("must be between 1 and {MAX_DIM}, got {value}"),
                );
            }
        }
        if let Some(n) = self.num_classes {
            if !(2..=MAX_DIM).contains(&n) {
                return bad(
                    ConfigField::NumClasses,
                    format!("must be between 2 and {MAX_DIM}, got {n}"),
                );
            }
        }
        if self.label_embed_dim > MAX_DIM {
            return bad(
                ConfigField::LabelEmbedDim,
                format!("must be at most {MAX_DIM}, got {}", self.label_embed_dim),
            );
        }
        Ok(())
    }

    /// Number of stride-2 up/down-sampling stages between 4x4 and the image size.
    pub fn num_stages(&self) -> usize {
        (self.image_size / 4).trailing_zeros() as usize
    }

    /// Size of the label vector concatenated to `z` (0 for unconditional models, and for the
    /// ResNet, whose labels enter through class-conditional BatchNorm instead).
    pub fn label_dim(&self) -> usize {
        match self.num_classes {
            None => 0,
            Some(_) if self.arch == Arch::Resnet => 0,
            Some(k) if self.label_embed_dim == 0 => k,
            Some(_) => self.label_embed_dim,
        }
    }

    /// Channels of the generator input after the label vector is concatenated.
    pub fn generator_input_dim(&self) -> usize {
        self.latent_dim + self.label_dim()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Flags and files name the architectures `dcgan` and `resnet`, both ways; nothing else parses.
    #[test]
    fn architectures_are_named_both_ways() {
        for arch in [Arch::Dcgan, Arch::Resnet] {
            assert_eq!(arch.name().parse::<Arch>(), Ok(arch));
            assert_eq!(arch.to_string(), arch.name());
        }
        assert_eq!(
            [Arch::Dcgan.name(), Arch::Resnet.name()],
            ["dcgan", "resnet"]
        );
        let err = "vgg".parse::<Arch>().unwrap_err();
        assert_eq!(err, "unknown architecture `vgg` (expected dcgan or resnet)");
    }

    /// A config.json written before the later fields existed reads as what those checkpoints
    /// are: DCGAN, unconditional, a one-hot label code, no spectral norm.
    #[test]
    fn older_configs_read_with_the_defaults_they_were_written_under() {
        let old =
            r#"{"latent_dim": 100, "image_size": 32, "channels": 1, "g_width": 64, "d_width": 64}"#;
        let cfg: ModelConfig = serde_json::from_str(old).unwrap();
        assert_eq!(cfg, ModelConfig::default());
        assert_eq!(
            (cfg.arch, cfg.num_classes, cfg.label_embed_dim),
            (Arch::Dcgan, None, 0)
        );
        assert!(!cfg.spectral_norm && !cfg.g_spectral_norm);
    }

    #[test]
    fn rejects_bad_sizes_and_channels() {
        for size in [0, 8, 24, 48, 512] {
            let cfg = ModelConfig {
                image_size: size,
                ..Default::default()
            };
            let err = cfg.validate().unwrap_err().to_string();
            assert!(err.contains("image size"), "{err}");
        }
        let cfg = ModelConfig {
            channels: 2,
            ..Default::default()
        };
        assert!(cfg.validate().unwrap_err().to_string().contains("channels"));
        let field_of = |cfg: ModelConfig| match cfg.validate() {
            Err(ModelError::InvalidConfig { field, .. }) => Some(field),
            _ => None,
        };
        for (cfg, field) in [
            (
                ModelConfig {
                    latent_dim: 0,
                    ..Default::default()
                },
                ConfigField::LatentDim,
            ),
            (
                ModelConfig {
                    latent_dim: 100_000_000,
                    ..Default::default()
                },
                ConfigField::LatentDim,
            ),
            (
                ModelConfig {
                    g_width: 100_000,
                    ..Default::default()
                },
                ConfigField::GeneratorWidth,
            ),
            (
                ModelConfig {
                    d_width: 20_000,
                    ..Default::default()
                },
                ConfigField::DiscriminatorWidth,
            ),
            (
                ModelConfig {
                    image_size: 256,
                    g_width: 2048,
                    ..Default::default()
                },
                ConfigField::GeneratorWidth,
            ),
            (
                ModelConfig {
                    num_classes: Some(1),
                    ..Default::default()
                },
                ConfigField::NumClasses,
            ),
            (
                ModelConfig {
                    label_embed_dim: MAX_DIM + 1,
                    ..Default::default()
                },
                ConfigField::LabelEmbedDim,
            ),
        ] {
            assert_eq!(field_of(cfg.clone()), Some(field), "{cfg:?}");
        }
        for fine in [
            ModelConfig {
                g_width: 512,
                ..Default::default()
            },
            ModelConfig {
                label_embed_dim: MAX_DIM,
                ..Default::default()
            },
        ] {
            assert_eq!(field_of(fine.clone()), None, "{fine:?}");
        }
        for size in [16, 32, 64, 128, 256] {
            let cfg = ModelConfig {
                image_size: size,
                ..Default::default()
            };
            cfg.validate().unwrap();
        }
    }

    #[test]
    fn stages_follow_the_image_size() {
        let stages = |image_size| {
            ModelConfig {
                image_size,
                ..Default::default()
            }
            .num_stages()
        };
        assert_eq!(stages(16), 2);
        assert_eq!(stages(32), 3);
        assert_eq!(stages(64), 4);
        assert_eq!(stages(256), 6);
    }
}
