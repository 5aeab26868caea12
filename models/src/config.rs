//! The model configuration shared by training, export and checkpoints.

use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};

/// Default label encoding of class-conditional generators: 0 means a fixed one-hot vector
/// concatenated to `z` (the classic conditional DCGAN); a positive value a learned embedding of
/// that size.
pub const DEFAULT_LABEL_EMBED_DIM: usize = 0;

/// Hyper-parameters that fix the shapes of a DCGAN pair.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelConfig {
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
    /// one-hot vector instead (conditional models only).
    #[serde(default = "default_label_embed_dim")]
    pub label_embed_dim: usize,
}

fn default_label_embed_dim() -> usize {
    DEFAULT_LABEL_EMBED_DIM
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            latent_dim: 100,
            image_size: 64,
            channels: 3,
            g_width: 64,
            d_width: 64,
            num_classes: None,
            label_embed_dim: DEFAULT_LABEL_EMBED_DIM,
        }
    }
}

impl ModelConfig {
    /// Checks every field; the error names the offending one.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(ModelError::Config(msg));
        if !(16..=256).contains(&self.image_size) || !self.image_size.is_power_of_two() {
            return bad(format!(
                "image_size must be a power of two between 16 and 256, got {}",
                self.image_size
            ));
        }
        if self.channels != 1 && self.channels != 3 {
            return bad(format!("channels must be 1 or 3, got {}", self.channels));
        }
        if self.latent_dim == 0 {
            return bad("latent_dim must be at least 1".into());
        }
        if self.g_width == 0 || self.d_width == 0 {
            return bad("g_width and d_width must be at least 1".into());
        }
        if let Some(n) = self.num_classes {
            if n < 2 {
                return bad(format!("num_classes must be at least 2, got {n}"));
            }
        }
        Ok(())
    }

    /// Number of stride-2 up/down-sampling stages between 4x4 and the image size.
    pub fn num_stages(&self) -> usize {
        (self.image_size / 4).trailing_zeros() as usize
    }

    /// Size of the label vector concatenated to `z` (0 for unconditional models).
    pub fn label_dim(&self) -> usize {
        match self.num_classes {
            None => 0,
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

    #[test]
    fn rejects_bad_sizes_and_channels() {
        for size in [0, 8, 24, 48, 512] {
            let cfg = ModelConfig {
                image_size: size,
                ..Default::default()
            };
            let err = cfg.validate().unwrap_err().to_string();
            assert!(err.contains("image_size"), "{err}");
        }
        let cfg = ModelConfig {
            channels: 2,
            ..Default::default()
        };
        assert!(cfg.validate().unwrap_err().to_string().contains("channels"));
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
