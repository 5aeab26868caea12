//! The two networks of a GAN with their optimisers and the generator's moving average.

use candle_core::Device;
use gantry_models::checkpoint::{OPTIMIZER_D_FILE, OPTIMIZER_G_FILE};
use gantry_models::{Adam, Checkpoint, Discriminator, Generator, Kernels, ModelConfig};

use super::TrainConfig;
use crate::error::{Result, TrainError};

/// The two networks of a GAN with their optimisers, and the generator's moving average.
pub struct Networks {
    pub generator: Generator,
    pub discriminator: Discriminator,
    /// Exponential moving average of the generator (when the config keeps one).
    pub generator_ema: Option<Generator>,
    pub opt_g: Adam,
    pub opt_d: Adam,
}

impl Networks {
    /// Fresh networks initialised from `config.seed`, optimisers at zero.
    pub fn new(config: &TrainConfig, model: &ModelConfig, device: &Device) -> Result<Self> {
        let generator = Generator::new(model, config.seed, device)?;
        let discriminator = Discriminator::new(model, config.seed, device)?;
        let generator_ema = match config.ema {
            Some(_) => Some(Generator::from_tensors(
                model,
                &generator.net.to_tensors()?,
                device,
            )?),
            None => None,
        };
        let opt_g = Adam::new(generator.net.parameters(), config.adam)?;
        let opt_d = Adam::new(discriminator.net.parameters(), config.adam_d())?;
        Ok(Self {
            generator,
            discriminator,
            generator_ema,
            opt_g,
            opt_d,
        })
    }

    /// The networks and optimiser state saved in a complete checkpoint.
    pub fn from_checkpoint(
        ckpt: &Checkpoint,
        config: &TrainConfig,
        device: &Device,
    ) -> Result<Self> {
        let model = &ckpt.meta.model;
        let missing = |what: &str| {
            TrainError::Model(gantry_models::ModelError::checkpoint(
                gantry_models::checkpoint::CONFIG_FILE,
                format!("the checkpoint has no {what}"),
            ))
        };
        let generator = Generator::from_tensors(model, &ckpt.generator, device)?;
        let d_tensors = ckpt
            .discriminator
            .as_ref()
            .ok_or_else(|| missing("discriminator"))?;
        let discriminator = Discriminator::from_tensors(model, d_tensors, device)?;
        let generator_ema = match (config.ema, &ckpt.generator_ema) {
            (None, _) => None,
            (Some(_), Some(ema)) => Some(Generator::from_tensors(model, ema, device)?),
            (Some(_), None) => Some(Generator::from_tensors(model, &ckpt.generator, device)?),
        };
        let mut opt_g = Adam::new(generator.net.parameters(), config.adam)?;
        let mut opt_d = Adam::new(discriminator.net.parameters(), config.adam_d())?;
        for (opt, state, file, what) in [
            (
                &mut opt_g,
                &ckpt.optimizer_g,
                OPTIMIZER_G_FILE,
                "generator optimizer state",
            ),
            (
                &mut opt_d,
                &ckpt.optimizer_d,
                OPTIMIZER_D_FILE,
                "discriminator optimizer state",
            ),
        ] {
            let (tensors, meta) = state.as_ref().ok_or_else(|| missing(what))?;
            opt.load_state(tensors, meta, std::path::Path::new(file))?;
        }
        Ok(Self {
            generator,
            discriminator,
            generator_ema,
            opt_g,
            opt_d,
        })
    }

    /// Selects the convolution/BatchNorm implementation of all networks.
    pub fn set_kernels(&mut self, kernels: Kernels) {
        self.generator.set_kernels(kernels);
        self.discriminator.set_kernels(kernels);
        if let Some(g) = &mut self.generator_ema {
            g.set_kernels(kernels);
        }
    }
}
