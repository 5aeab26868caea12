//! The GAN training state machine: one [`Trainer::step`] is one discriminator update on a real
//! and a detached fake batch, then one generator update through the freshly updated
//! discriminator. Everything random comes from `(seed, purpose)` streams, so a run resumed from
//! a checkpoint continues exactly as an uninterrupted one would.

pub mod config;
pub mod run;

use std::time::Instant;

use candle_core::{Device, Tensor};
use gantry_models::checkpoint::CheckpointMeta;
use gantry_models::init::{normal_vec, rng_for};
use gantry_models::{
    Adam, Checkpoint, Discriminator, Generator, Kernels, ModelConfig, TrainerState,
};

pub use config::TrainConfig;

use crate::data::{Dataset, EpochOrder};
use crate::error::{Result, TrainError};
use crate::metrics::StepMetrics;

/// Batches and batch size of the EMA generator's BatchNorm recalibration.
const RECALIBRATION_BATCHES: usize = 16;
const RECALIBRATION_BATCH: usize = 128;

/// `n` latent vectors drawn from N(0, 1) out of the stream `(seed, purpose)`.
pub fn latents(seed: u64, purpose: &str, n: usize, dim: usize, device: &Device) -> Result<Tensor> {
    let data = normal_vec(&mut rng_for(seed, purpose), n * dim, 0.0, 1.0);
    Ok(Tensor::from_vec(data, (n, dim), device)?)
}

/// Runs one phase of a step under the profiler's name `phase: {name}`. When profiling on a GPU
/// the phase waits for its kernels, so that the time is the phase's and not just its launches.
fn phase<T>(device: &Device, name: &str, f: impl FnOnce() -> T) -> T {
    gantry_models::profile::span(
        || format!("phase: {name}"),
        || {
            let out = f();
            if gantry_models::profile::enabled() && !device.is_cpu() {
                // Only for the profile's timing; an error here resurfaces at the step's end.
                let _ = device.synchronize();
            }
            out
        },
    )
}

/// The mean of `sigmoid(logits)`, left on the device.
fn mean_sigmoid(logits: &Tensor) -> Result<Tensor> {
    Ok(candle_nn::ops::sigmoid(logits)?.mean_all()?)
}

fn finite(what: &'static str, value: f32, step: u64) -> Result<f32> {
    if value.is_finite() {
        Ok(value)
    } else {
        Err(TrainError::NonFinite { what, value, step })
    }
}

/// A training run in memory: both networks, their optimisers, the EMA generator and the position.
pub struct Trainer {
    pub config: TrainConfig,
    pub model: ModelConfig,
    pub generator: Generator,
    pub discriminator: Discriminator,
    /// Exponential moving average of the generator (when `config.ema` is set).
    pub generator_ema: Option<Generator>,
    pub opt_g: Adam,
    pub opt_d: Adam,
    pub state: TrainerState,
    pub data: Dataset,
    order: EpochOrder,
    permutation: Vec<usize>,
    device: Device,
}

impl Trainer {
    /// A fresh run: networks initialised from the seed, optimisers at zero.
    pub fn new(
        config: TrainConfig,
        model: ModelConfig,
        data: Dataset,
        device: &Device,
    ) -> Result<Self> {
        validate(&config, &model, &data)?;
        let generator = Generator::new(&model, config.seed, device)?;
        let discriminator = Discriminator::new(&model, config.seed, device)?;
        let generator_ema = match config.ema {
            Some(_) => Some(Generator::from_tensors(
                &model,
                &generator.net.to_tensors()?,
                device,
            )?),
            None => None,
        };
        let opt_g = Adam::new(generator.net.parameters(), config.adam)?;
        let opt_d = Adam::new(discriminator.net.parameters(), config.adam)?;
        let state = TrainerState {
            step: 0,
            epoch: 0,
            batch_in_epoch: 0,
            seed: config.seed,
            elapsed_seconds: 0.0,
        };
        Ok(Self::assemble(
            config,
            model,
            generator,
            discriminator,
            generator_ema,
            opt_g,
            opt_d,
            state,
            data,
            device,
        ))
    }

    /// Continues the run saved in `ckpt` (a complete checkpoint from [`Checkpoint::load`]).
    pub fn from_checkpoint(
        ckpt: &Checkpoint,
        config: TrainConfig,
        data: Dataset,
        device: &Device,
    ) -> Result<Self> {
        let model = ckpt.meta.model.clone();
        validate(&config, &model, &data)?;
        let missing =
            |what: &str| TrainError::option("--resume", format!("checkpoint has no {what}"));
        let generator = Generator::from_tensors(&model, &ckpt.generator, device)?;
        let d_tensors = ckpt
            .discriminator
            .as_ref()
            .ok_or_else(|| missing("discriminator"))?;
        let discriminator = Discriminator::from_tensors(&model, d_tensors, device)?;
        let generator_ema = match (config.ema, &ckpt.generator_ema) {
            (None, _) => None,
            (Some(_), Some(ema)) => Some(Generator::from_tensors(&model, ema, device)?),
            (Some(_), None) => Some(Generator::from_tensors(&model, &ckpt.generator, device)?),
        };
        let mut opt_g = Adam::new(generator.net.parameters(), config.adam)?;
        let mut opt_d = Adam::new(discriminator.net.parameters(), config.adam)?;
        let (tg, mg) = ckpt
            .optimizer_g
            .as_ref()
            .ok_or_else(|| missing("generator optimizer state"))?;
        opt_g.load_state(
            tg,
            mg,
            std::path::Path::new(gantry_models::checkpoint::OPTIMIZER_G_FILE),
        )?;
        let (td, md) = ckpt
            .optimizer_d
            .as_ref()
            .ok_or_else(|| missing("discriminator optimizer state"))?;
        opt_d.load_state(
            td,
            md,
            std::path::Path::new(gantry_models::checkpoint::OPTIMIZER_D_FILE),
        )?;
        let state = ckpt
            .trainer_state
            .clone()
            .ok_or_else(|| missing("trainer state"))?;
        Ok(Self::assemble(
            config,
            model,
            generator,
            discriminator,
            generator_ema,
            opt_g,
            opt_d,
            state,
            data,
            device,
        ))
    }

    #[allow(clippy::too_many_arguments)]
    fn assemble(
        config: TrainConfig,
        model: ModelConfig,
        generator: Generator,
        discriminator: Discriminator,
        generator_ema: Option<Generator>,
        opt_g: Adam,
        opt_d: Adam,
        state: TrainerState,
        data: Dataset,
        device: &Device,
    ) -> Self {
        let order = EpochOrder {
            len: data.len(),
            batch_size: config.batch_size,
            seed: config.seed,
        };
        let permutation = order.permutation(state.epoch);
        Self {
            config,
            model,
            generator,
            discriminator,
            generator_ema,
            opt_g,
            opt_d,
            state,
            data,
            order,
            permutation,
            device: device.clone(),
        }
    }

    /// Selects the convolution/BatchNorm implementation of all networks.
    pub fn set_kernels(&mut self, kernels: Kernels) {
        self.generator.set_kernels(kernels);
        self.discriminator.set_kernels(kernels);
        if let Some(g) = &mut self.generator_ema {
            g.set_kernels(kernels);
        }
    }

    /// Batches per epoch of this data set and batch size.
    pub fn batches_per_epoch(&self) -> usize {
        self.order.batches_per_epoch()
    }

    /// Steps the whole run takes.
    pub fn total_steps(&self) -> u64 {
        self.config.total_steps(self.batches_per_epoch())
    }

    /// Whether the run has reached its step budget.
    pub fn is_done(&self) -> bool {
        self.state.step >= self.total_steps()
    }

    /// The device the networks live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// One training step; returns its metrics. On a NaN or infinite loss nothing is written and
    /// the error says at which step.
    ///
    /// The step's scalars (losses, mean D outputs) stay on the device until its end and are read
    /// in one transfer: on a GPU each read waits for every queued kernel, so reading a loss
    /// between the forward and backward passes would leave the GPU idle while the host queues
    /// the rest of the step.
    pub fn step(&mut self) -> Result<StepMetrics> {
        let start = Instant::now();
        let step = self.state.step;
        let indices = self
            .order
            .batch(&self.permutation, self.state.batch_in_epoch as usize)
            .to_vec();
        let (real, labels) = self.data.batch(&indices, &self.device)?;
        let labels = self.config.conditional.then_some(labels);
        let z = latents(
            self.config.seed,
            &format!("latent/step-{step}"),
            indices.len(),
            self.model.latent_dim,
            &self.device,
        )?;
        let loss = self.config.loss;
        let device = self.device.clone();

        let fake = phase(&device, "1 G forward", || {
            self.generator.forward(&z, labels.as_ref(), true)
        })?;
        let (d_real, d_fake, loss_d) = phase(&device, "2 D forward (real, fake)", || {
            let d_real = self.discriminator.forward(&real, labels.as_ref(), true)?;
            let d_fake = self
                .discriminator
                .forward(&fake.detach(), labels.as_ref(), true)?;
            let loss_d = loss.discriminator(&d_real, &d_fake)?;
            Ok::<_, TrainError>((d_real, d_fake, loss_d))
        })?;
        let grads_d = phase(&device, "3 D backward", || loss_d.backward())?;
        phase(&device, "4 D Adam", || self.opt_d.step(&grads_d))?;

        // D's parameters are constants here: G's update needs gradients only through D.
        let loss_g = phase(&device, "5 D forward (G update)", || {
            let d_fake_for_g = self
                .discriminator
                .forward_frozen(&fake, labels.as_ref(), true)?;
            loss.generator(&d_fake_for_g)
        })?;
        let grads_g = phase(&device, "6 G backward (through D)", || loss_g.backward())?;
        phase(&device, "7 G Adam + EMA", || {
            self.opt_g.step(&grads_g)?;
            self.update_ema()
        })?;

        let scalars = Tensor::stack(
            &[
                loss_d.detach(),
                loss_g.detach(),
                mean_sigmoid(&d_real.detach())?,
                mean_sigmoid(&d_fake.detach())?,
            ],
            0,
        )?
        .to_vec1::<f32>()?;
        let loss_d_value = finite("loss_d", scalars[0], step + 1)?;
        let loss_g_value = finite("loss_g", scalars[1], step + 1)?;
        let (d_real_p, d_fake_p) = (scalars[2], scalars[3]);
        self.advance();
        let seconds = start.elapsed().as_secs_f64();
        self.state.elapsed_seconds += seconds;
        Ok(StepMetrics {
            step: self.state.step,
            epoch: self.state.epoch,
            loss_d: loss_d_value,
            loss_g: loss_g_value,
            d_real: d_real_p,
            d_fake: d_fake_p,
            img_per_sec: (indices.len() as f64 / seconds) as f32,
            seconds: self.state.elapsed_seconds,
        })
    }

    fn advance(&mut self) {
        self.state.step += 1;
        self.state.batch_in_epoch += 1;
        if self.state.batch_in_epoch as usize >= self.batches_per_epoch() {
            self.state.epoch += 1;
            self.state.batch_in_epoch = 0;
            self.permutation = self.order.permutation(self.state.epoch);
        }
    }

    /// EMA of parameters with warm-up; BatchNorm running statistics are copied, not averaged
    /// (and recalibrated for the EMA weights when samples or checkpoints are taken).
    fn update_ema(&mut self) -> Result<()> {
        let (Some(decay), Some(ema)) = (self.config.ema, &self.generator_ema) else {
            return Ok(());
        };
        // Warm-up (TensorFlow's ExponentialMovingAverage with num_updates): early on the average
        // follows the weights closely instead of holding on to the random initialisation.
        let t = self.state.step as f64;
        let decay = decay.min((1.0 + t) / (10.0 + t));
        let params: Vec<_> = self
            .generator
            .net
            .parameters()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        for ((name, live), (_, avg)) in self.generator.net.all_vars().iter().zip(ema.net.all_vars())
        {
            let next = if params.contains(name) {
                ((avg.as_tensor() * decay)? + (live.as_tensor() * (1.0 - decay))?)?
            } else {
                live.as_tensor().copy()?
            };
            avg.set(&next)?;
        }
        Ok(())
    }

    /// The generator used for samples and export: the EMA one when kept.
    pub fn sampling_generator(&self) -> &Generator {
        self.generator_ema.as_ref().unwrap_or(&self.generator)
    }

    /// Labels and latents of the fixed sample grid: 8 columns; one row per class for conditional
    /// models, else 8 rows.
    pub fn sample_inputs(&self) -> Result<(Tensor, Option<Tensor>, usize)> {
        let cols = 8;
        let rows = match (self.config.conditional, self.model.num_classes) {
            (true, Some(n)) => n,
            _ => 8,
        };
        let z = latents(
            self.config.seed,
            "samples",
            rows * cols,
            self.model.latent_dim,
            &self.device,
        )?;
        let labels = if self.config.conditional {
            let l: Vec<u32> = (0..rows * cols).map(|i| (i / cols) as u32).collect();
            Some(Tensor::from_vec(l, rows * cols, &self.device)?)
        } else {
            None
        };
        Ok((z, labels, cols))
    }

    /// Gives the EMA generator BatchNorm statistics of its own (see
    /// [`Generator::recalibrate_batchnorm`]); the live generator's are kept as they are.
    pub fn recalibrate_ema(&self) -> Result<()> {
        let Some(ema) = &self.generator_ema else {
            return Ok(());
        };
        let mut rng = gantry_models::init::rng_for(self.config.seed, "bn-recalibration");
        let classes = self.model.num_classes.filter(|_| self.config.conditional);
        ema.recalibrate_batchnorm(RECALIBRATION_BATCHES, RECALIBRATION_BATCH, |n| {
            let z = normal_vec(&mut rng, n * self.model.latent_dim, 0.0, 1.0);
            let z = Tensor::from_vec(z, (n, self.model.latent_dim), &self.device)?;
            let labels = classes
                .map(|k| {
                    Tensor::from_vec(
                        (0..n).map(|i| (i % k) as u32).collect::<Vec<_>>(),
                        n,
                        &self.device,
                    )
                })
                .transpose()?;
            Ok((z, labels))
        })?;
        Ok(())
    }

    /// The fixed sample batch from the sampling generator in eval mode: `[N, C, H, W]`.
    pub fn samples(&self) -> Result<Tensor> {
        let (z, labels, _) = self.sample_inputs()?;
        Ok(self
            .sampling_generator()
            .forward(&z, labels.as_ref(), false)?)
    }

    /// A complete checkpoint of the current state (the EMA generator's BatchNorm statistics are
    /// recalibrated first).
    pub fn checkpoint(&self) -> Result<Checkpoint> {
        self.recalibrate_ema()?;
        let training = serde_json::to_value(&self.config).expect("config serialises");
        Ok(Checkpoint {
            meta: CheckpointMeta::new(self.model.clone(), Some(self.data.name.clone()), training),
            generator: self.generator.net.to_tensors()?,
            generator_ema: self
                .generator_ema
                .as_ref()
                .map(|g| g.net.to_tensors())
                .transpose()?,
            discriminator: Some(self.discriminator.net.to_tensors()?),
            optimizer_g: Some(self.opt_g.state()?),
            optimizer_d: Some(self.opt_d.state()?),
            trainer_state: Some(self.state.clone()),
        })
    }
}

fn validate(config: &TrainConfig, model: &ModelConfig, data: &Dataset) -> Result<()> {
    if config.batch_size < 2 {
        return Err(TrainError::option(
            "--batch-size",
            format!(
                "must be at least 2 (BatchNorm needs two images), got {}",
                config.batch_size
            ),
        ));
    }
    if data.len() < 2 {
        return Err(TrainError::option(
            "--dataset",
            "the data set needs at least two images",
        ));
    }
    if data.image_size != model.image_size || data.channels != model.channels {
        return Err(TrainError::option(
            "--image-size",
            format!(
                "data is {}x{}x{} but the model is {}x{}x{}",
                data.image_size,
                data.image_size,
                data.channels,
                model.image_size,
                model.image_size,
                model.channels
            ),
        ));
    }
    if config.conditional {
        let classes = data.class_names.len();
        if model.num_classes != Some(classes) {
            return Err(TrainError::option(
                "--conditional",
                format!(
                    "the data set has {classes} classes but the model expects {:?}",
                    model.num_classes
                ),
            ));
        }
    }
    if let Some(d) = config.ema {
        if !(0.0..1.0).contains(&d) {
            return Err(TrainError::option(
                "--ema",
                format!("decay must be in [0, 1), got {d}"),
            ));
        }
    }
    Ok(())
}
