//! The DCGAN generator and discriminator as candle modules built from the layer spec.

use candle_core::{DType, Device, Tensor};

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::init::init_tensors;
use crate::network::Network;
use crate::spec::{discriminator_spec, generator_spec, Conditioning};
use crate::tensors::TensorMap;
use gantry_kernels::Kernels;

/// Checks labels against a conditional config: present exactly when the model is conditional.
fn check_labels(cfg: &ModelConfig, labels: Option<&Tensor>, batch: usize) -> Result<()> {
    match (cfg.num_classes, labels) {
        (None, None) => Ok(()),
        (None, Some(_)) => Err(ModelError::Input(
            "labels were given to an unconditional model".into(),
        )),
        (Some(_), None) => Err(ModelError::Input(
            "a class-conditional model needs labels".into(),
        )),
        (Some(_), Some(l)) if l.dims() != [batch] => Err(ModelError::Input(format!(
            "labels have shape {:?}, expected [{batch}]",
            l.dims()
        ))),
        (Some(_), Some(_)) => Ok(()),
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

    /// One power iteration of the spectral normalisation of every layer (a no-op without
    /// `g_spectral_norm`); the trainer calls it once per step, before G's first forward pass.
    pub fn power_iteration(&self) -> Result<()> {
        self.net.power_iteration()
    }

    /// The tensors as inference uses them (what the exporter writes): spectrally normalised
    /// weights divided by their sigma, their `u` vectors left out; the others as they are.
    pub fn inference_tensors(&self) -> Result<TensorMap> {
        self.net.inference_tensors()
    }

    /// [`Generator::inference_tensors`] of the generator held in `tensors`, computed on the CPU.
    pub fn inference_tensors_of(config: &ModelConfig, tensors: &TensorMap) -> Result<TensorMap> {
        Self::from_tensors(config, tensors, &Device::Cpu)?.inference_tensors()
    }

    /// Generates images. `train` selects batch statistics (and updates the running ones);
    /// eval mode (`false`) uses the running statistics, as the exported model does.
    pub fn forward(&self, z: &Tensor, labels: Option<&Tensor>, train: bool) -> Result<Tensor> {
        let (n, latent) = z.dims2()?;
        if latent != self.config.latent_dim {
            return Err(ModelError::Input(format!(
                "latents have {latent} dims, the model expects {}",
                self.config.latent_dim
            )));
        }
        check_labels(&self.config, labels, n)?;
        let concatenated = matches!(
            self.net.spec.conditioning,
            Some(Conditioning::ConcatEmbedding { .. })
        );
        let mut h = match labels {
            Some(l) if concatenated => Tensor::cat(&[z, &self.net.embed(l)?], 1)?,
            _ => z.clone(),
        };
        h = h.reshape((n, self.config.generator_input_dim(), 1, 1))?;
        self.net.forward(&h, labels, train, false)
    }
}

impl Generator {
    /// Images for latents `z` (`[N, latent_dim]`), run in batches of `batch` (bounded memory),
    /// conditional models getting labels that cycle through the classes (image `i`: class
    /// `i % num_classes`); detached from autograd. `train` normalises with batch statistics.
    pub fn generate_batched(&self, z: &Tensor, batch: usize, train: bool) -> Result<Tensor> {
        let n = z.dim(0)?;
        if n == 0 || batch == 0 {
            return Err(ModelError::Input(format!(
                "{n} latents in batches of {batch}: both must be at least 1"
            )));
        }
        let mut parts = Vec::with_capacity(n.div_ceil(batch));
        for start in (0..n).step_by(batch) {
            let len = batch.min(n - start);
            let labels = cycling_labels(&self.config, start, len, z.device())?;
            parts.push(
                self.forward(&z.narrow(0, start, len)?, labels.as_ref(), train)?
                    .detach(),
            );
        }
        Ok(Tensor::cat(&parts, 0)?)
    }

    /// Replaces every BatchNorm's running statistics by their average over `batches` train-mode
    /// batches of `batch` latents (drawn from `latent`), so eval mode normalises with statistics
    /// that belong to these weights. Needed for an EMA generator, whose copied statistics were
    /// measured on the live weights ("standing statistics", as BigGAN does).
    pub fn recalibrate_batchnorm(
        &self,
        batches: usize,
        batch: usize,
        mut latent: impl FnMut(usize) -> Result<(Tensor, Option<Tensor>)>,
    ) -> Result<()> {
        for i in 0..batches {
            self.net.set_bn_momentum(1.0 / (i + 1) as f64);
            let (z, labels) = latent(batch)?;
            self.forward(&z, labels.as_ref(), true)?;
        }
        self.net.set_bn_momentum(crate::spec::BN_MOMENTUM);
        Ok(())
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
        self.forward_impl(x, labels, train, false)
    }

    /// One power iteration of the spectral normalisation of every layer (a no-op without it);
    /// the trainer calls it once per step, before D's forward passes.
    pub fn power_iteration(&self) -> Result<()> {
        self.net.power_iteration()
    }

    /// Logits with D's parameters held constant: gradients reach `x` (the generator's images)
    /// but no time is spent on gradients of D's own weights, which a generator update discards.
    pub fn forward_frozen(
        &self,
        x: &Tensor,
        labels: Option<&Tensor>,
        train: bool,
    ) -> Result<Tensor> {
        self.forward_impl(x, labels, train, true)
    }

    fn forward_impl(
        &self,
        x: &Tensor,
        labels: Option<&Tensor>,
        train: bool,
        frozen: bool,
    ) -> Result<Tensor> {
        let n = x.dim(0)?;
        check_labels(&self.config, labels, n)?;
        if let (Some(Conditioning::Projection { .. }), Some(l)) =
            (&self.net.spec.conditioning, labels)
        {
            return self.projected_logits(x, l, train, frozen);
        }
        let input = match (labels, &self.net.spec.conditioning) {
            (Some(l), Some(Conditioning::LabelMaps { num_classes: k })) => {
                let k = *k;
                let (_, _, h, w) = x.dims4()?;
                let one_hot = Tensor::eye(k, x.dtype(), x.device())?.index_select(l, 0)?;
                let maps = one_hot.reshape((n, k, 1, 1))?.broadcast_as((n, k, h, w))?;
                Tensor::cat(&[x, &maps], 1)?
            }
            _ => x.clone(),
        };
        let logits = self.net.forward(&input, None, train, frozen)?;
        Ok(logits.reshape(n)?)
    }

    /// A projection discriminator's logits: `linear(h) + <embedding[label], h>` with `h` the
    /// pooled features (the last stage's input).
    fn projected_logits(
        &self,
        x: &Tensor,
        labels: &Tensor,
        train: bool,
        frozen: bool,
    ) -> Result<Tensor> {
        let n = x.dim(0)?;
        let (logits, features) = self.net.forward_with_features(x, None, train, frozen)?;
        let h = features.reshape((n, ()))?;
        let table = self.net.embedding_table(frozen)?.ok_or_else(|| {
            ModelError::Input("a projection discriminator without its embedding".into())
        })?;
        let projection = (table.embedding(labels)? * h)?.sum(1)?;
        Ok((logits.reshape(n)? + projection)?)
    }
}

/// The labels of images `first..first + n` that cycle through a conditional model's classes
/// (image `i` gets class `i % num_classes`); `None` for an unconditional model.
pub fn cycling_labels(
    cfg: &ModelConfig,
    first: usize,
    n: usize,
    device: &Device,
) -> Result<Option<Tensor>> {
    cfg.num_classes
        .map(|k| {
            let ids: Vec<u32> = (first..first + n).map(|i| (i % k) as u32).collect();
            labels_tensor(&ids, device)
        })
        .transpose()
}

/// Converts class ids to the integer tensor the embeddings take.
pub fn labels_tensor(labels: &[u32], device: &Device) -> Result<Tensor> {
    Ok(Tensor::from_slice(labels, labels.len(), device)?.to_dtype(DType::U32)?)
}

#[cfg(test)]
mod tests;
