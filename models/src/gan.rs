//! The DCGAN generator and discriminator as candle modules built from the layer spec.

use candle_core::{DType, Device, Tensor};

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::init::init_tensors;
use crate::network::Network;
use crate::ops::{self, Kernels};
use crate::spec::{discriminator_spec, generator_spec};
use crate::tensors::TensorMap;

/// Checks labels against a conditional config: present exactly when the model is conditional.
fn check_labels(cfg: &ModelConfig, labels: Option<&Tensor>, batch: usize) -> Result<()> {
    match (cfg.num_classes, labels) {
        (None, None) => Ok(()),
        (None, Some(_)) => Err(ModelError::Config(
            "labels were given to an unconditional model".into(),
        )),
        (Some(_), None) => Err(ModelError::Config(
            "a class-conditional model needs labels".into(),
        )),
        (Some(_), Some(l)) if l.dims() != [batch] => Err(ModelError::Config(format!(
            "labels have shape {:?}, expected [{batch}]",
            l.dims()
        ))),
        _ => Ok(()),
    }
}

/// DCGAN generator: `z [N, latent_dim]` (plus labels `[N]` when conditional) -> images
/// `[N, C, H, W]` in [-1, 1].
#[derive(Debug)]
pub struct Generator {
    pub config: ModelConfig,
    pub net: Network,
}

impl Generator {
    /// A freshly initialised generator (DCGAN init from `seed`).
    pub fn new(config: &ModelConfig, seed: u64, device: &Device) -> Result<Self> {
        config.validate()?;
        let spec = generator_spec(config);
        let tensors = init_tensors(&spec, "generator", seed)?;
        Self::from_tensors(config, &tensors, device)
    }

    /// A generator holding `tensors` (checkpoint names and shapes).
    pub fn from_tensors(
        config: &ModelConfig,
        tensors: &TensorMap,
        device: &Device,
    ) -> Result<Self> {
        config.validate()?;
        Ok(Self {
            config: config.clone(),
            net: Network::from_tensors(generator_spec(config), tensors, device)?,
        })
    }

    /// Selects the convolution/BatchNorm implementation.
    pub fn set_kernels(&mut self, kernels: Kernels) {
        self.net.kernels = kernels;
    }

    /// Generates images. `train` selects batch statistics (and updates the running ones);
    /// eval mode (`false`) uses the running statistics, as the exported model does.
    pub fn forward(&self, z: &Tensor, labels: Option<&Tensor>, train: bool) -> Result<Tensor> {
        let (n, latent) = z.dims2()?;
        if latent != self.config.latent_dim {
            return Err(ModelError::Config(format!(
                "latents have {latent} dims, the model expects {}",
                self.config.latent_dim
            )));
        }
        check_labels(&self.config, labels, n)?;
        let mut h = match labels {
            Some(l) => Tensor::cat(&[z, &self.net.embed(l)?], 1)?,
            None => z.clone(),
        };
        h = h.reshape((n, self.config.generator_input_dim(), 1, 1))?;
        for block in &self.net.blocks {
            h = block.forward(&h, train, self.net.kernels)?;
        }
        Ok(h)
    }
}

/// DCGAN discriminator: images `[N, C, H, W]` (plus labels when conditional) -> logits `[N]`.
#[derive(Debug)]
pub struct Discriminator {
    pub config: ModelConfig,
    pub net: Network,
}

impl Discriminator {
    /// A freshly initialised discriminator (DCGAN init from `seed`).
    pub fn new(config: &ModelConfig, seed: u64, device: &Device) -> Result<Self> {
        config.validate()?;
        let spec = discriminator_spec(config);
        let tensors = init_tensors(&spec, "discriminator", seed)?;
        Self::from_tensors(config, &tensors, device)
    }

    /// A discriminator holding `tensors` (checkpoint names and shapes).
    pub fn from_tensors(
        config: &ModelConfig,
        tensors: &TensorMap,
        device: &Device,
    ) -> Result<Self> {
        config.validate()?;
        Ok(Self {
            config: config.clone(),
            net: Network::from_tensors(discriminator_spec(config), tensors, device)?,
        })
    }

    /// Selects the convolution/BatchNorm implementation.
    pub fn set_kernels(&mut self, kernels: Kernels) {
        self.net.kernels = kernels;
    }

    /// Raw logits (no sigmoid), one per image.
    pub fn forward(&self, x: &Tensor, labels: Option<&Tensor>, train: bool) -> Result<Tensor> {
        let n = x.dim(0)?;
        check_labels(&self.config, labels, n)?;
        let (last, hidden) = self
            .net
            .blocks
            .split_last()
            .expect("a discriminator has layers");
        let mut h = x.clone();
        for block in hidden {
            h = block.forward(&h, train, self.net.kernels)?;
        }
        let logits = last.forward(&h, train, self.net.kernels)?.reshape(n)?;
        match labels {
            None => Ok(logits),
            Some(l) => {
                let projection = (self.net.embed(l)? * ops::sum_spatial(&h)?)?.sum(1)?;
                Ok((logits + projection)?)
            }
        }
    }
}

/// Converts class ids to the integer tensor the embeddings take.
pub fn labels_tensor(labels: &[u32], device: &Device) -> Result<Tensor> {
    Ok(Tensor::from_slice(labels, labels.len(), device)?.to_dtype(DType::U32)?)
}
