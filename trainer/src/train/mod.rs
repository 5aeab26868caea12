//! The GAN training state machine: one [`Trainer::step`] ([`Networks::train_step`] on the next
//! batch) is one discriminator update on a real and a detached fake batch (`--d-steps N`: N of
//! them, each on its own batch), then one generator update through the freshly updated
//! discriminator. Everything random comes from `(seed, purpose)` streams, so a run resumed from
//! a checkpoint continues exactly as an uninterrupted one would.

pub mod config;
pub mod ema;
mod networks;
pub mod run;
mod step;
pub mod watch;

use std::time::Instant;

use candle_core::{Device, Tensor};
use gantry_models::checkpoint::CheckpointMeta;
use gantry_models::init::normal_vec;
use gantry_models::spec::TensorRole;
use gantry_models::{cycling_labels, Checkpoint, Generator, Kernels, ModelConfig, TrainerState};

pub use config::TrainConfig;
pub use ema::ema_decay_at;
pub use networks::Networks;
pub use step::{Shard, StepLosses, StepOptions};

use crate::data::{Dataset, EpochOrder};
use crate::distributed::{self, Collective, Solo};
use crate::error::{Result, Setting, TrainError};
use crate::faults::{self, Fault};
use crate::metrics::StepMetrics;

/// Batches and batch size of the EMA generator's BatchNorm recalibration.
const RECALIBRATION_BATCHES: usize = 16;
const RECALIBRATION_BATCH: usize = 128;

pub use gantry_models::init::latents;

/// A training run in memory: the networks, the data and the position.
pub struct Trainer {
    config: TrainConfig,
    model: ModelConfig,
    nets: Networks,
    state: TrainerState,
    data: Dataset,
    order: EpochOrder,
    permutation: Vec<usize>,
    device: Device,
    collective: Box<dyn Collective>,
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
        let nets = Networks::new(&config, &model, device)?;
        let state = TrainerState {
            step: 0,
            epoch: 0,
            batch_in_epoch: 0,
            seed: config.seed,
            elapsed_seconds: 0.0,
        };
        Self::assemble(config, model, nets, state, data, device)
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
        let nets = Networks::from_checkpoint(ckpt, &config, device)?;
        let state = ckpt.trainer_state.clone().ok_or_else(|| {
            TrainError::Model(gantry_models::ModelError::checkpoint(
                gantry_models::checkpoint::TRAINER_STATE_FILE,
                "missing: this checkpoint cannot be resumed",
            ))
        })?;
        Self::assemble(config, model, nets, state, data, device)
    }

    fn assemble(
        config: TrainConfig,
        model: ModelConfig,
        nets: Networks,
        mut state: TrainerState,
        data: Dataset,
        device: &Device,
    ) -> Result<Self> {
        let order = EpochOrder {
            len: data.len(),
            batch_size: config.batch_size,
            seed: config.seed,
        };
        // A position past the end of an epoch (a smaller data set on resume, or an edited
        // trainer_state.json) continues with the next epoch instead of reading past the data.
        if state.batch_in_epoch as usize >= order.batches_per_epoch() {
            state.epoch += 1;
            state.batch_in_epoch = 0;
        }
        let permutation = order.permutation(state.epoch);
        if config.r1.is_some() {
            crate::r1::enable();
        }
        Ok(Self {
            config,
            model,
            nets,
            state,
            data,
            order,
            permutation,
            device: device.clone(),
            collective: Box::new(Solo),
        })
    }

    /// Makes this trainer one rank of a data-parallel job: checks that every rank has the same
    /// settings and data, that the global batch splits into every rank's micro-batches, then
    /// gives every rank rank 0's weights, EMA and optimiser state (one broadcast).
    pub fn join(&mut self, collective: Box<dyn Collective>) -> Result<()> {
        if collective.size() == 1 {
            // Nothing to agree on: skip fingerprinting the whole data set at start-up.
            self.collective = collective;
            return Ok(());
        }
        let mut settings = self.config.clone();
        // Where the data lives may differ between machines; what it holds may not.
        settings.data_dir = Default::default();
        let settings = serde_json::to_vec(&(&settings, &self.model)).expect("config serialises");
        let labels: Vec<u8> = self
            .data
            .labels
            .iter()
            .flat_map(|l| l.to_le_bytes())
            .collect();
        let state = serde_json::to_vec(&self.state).expect("state serialises");
        distributed::check_same_everywhere(
            collective.as_ref(),
            &[
                (
                    "settings (flags or checkpoint)",
                    distributed::fingerprint(&settings),
                ),
                (
                    "data (images or labels)",
                    distributed::fingerprint(&self.data.pixels)
                        ^ distributed::fingerprint(&labels).rotate_left(1),
                ),
                (
                    "run positions (checkpoint step)",
                    distributed::fingerprint(&state),
                ),
            ],
        )?;
        check_sharding(
            self.config.batch_size,
            collective.size(),
            self.config.accumulate,
        )?;
        let vars = self.all_state_vars();
        distributed::broadcast_vars(collective.as_ref(), &vars)?;
        self.collective = collective;
        Ok(())
    }

    /// Every variable of the training state: the networks' parameters and buffers, the EMA's,
    /// and the optimisers' moments, in a fixed order.
    fn all_state_vars(&self) -> Vec<candle_core::Var> {
        let nets = &self.nets;
        let mut vars: Vec<candle_core::Var> = Vec::new();
        vars.extend(nets.generator.net.all_vars().into_iter().map(|(_, v)| v));
        vars.extend(
            nets.discriminator
                .net
                .all_vars()
                .into_iter()
                .map(|(_, v)| v),
        );
        if let Some(ema) = &nets.generator_ema {
            vars.extend(ema.net.all_vars().into_iter().map(|(_, v)| v));
        }
        vars.extend(nets.opt_g.moments().cloned());
        vars.extend(nets.opt_d.moments().cloned());
        vars
    }

    /// The run's settings.
    pub fn config(&self) -> &TrainConfig {
        &self.config
    }

    /// The model's shape.
    pub fn model(&self) -> &ModelConfig {
        &self.model
    }

    /// The networks, optimisers and EMA.
    pub fn networks(&self) -> &Networks {
        &self.nets
    }

    /// The position in the run (step, epoch, batch) and its elapsed time.
    pub fn state(&self) -> &TrainerState {
        &self.state
    }

    /// The training data.
    pub fn data(&self) -> &Dataset {
        &self.data
    }

    /// The collective this trainer runs on ([`Solo`] unless it [joined](Trainer::join) a job).
    pub fn collective(&self) -> &dyn Collective {
        self.collective.as_ref()
    }

    /// Whether this process writes the run's outputs (rank 0).
    pub fn is_lead(&self) -> bool {
        self.collective.rank() == 0
    }

    /// Sets the BatchNorm running statistics of G and D on every rank to their mean over the
    /// ranks (each rank measures them on its own slice); done before samples, evaluations and
    /// checkpoints, so that what rank 0 writes describes the whole batch.
    pub fn sync_buffers(&self) -> Result<()> {
        if self.collective.size() == 1 {
            return Ok(());
        }
        let buffers: Vec<candle_core::Var> =
            [&self.nets.generator.net, &self.nets.discriminator.net]
                .into_iter()
                .flat_map(|net| net.vars_with_roles())
                .filter(|(_, _, role)| *role == TensorRole::Buffer)
                .map(|(_, v, _)| v)
                .collect();
        Ok(distributed::average_vars(
            self.collective.as_ref(),
            &buffers,
        )?)
    }

    /// After a step of a data-parallel job: checks that every rank holds bitwise the same
    /// weights (an error names the ranks that differ from rank 0 and the step), and agrees on
    /// stopping: returns true on every rank when any rank's `stop` was set.
    pub fn check_replicas(&self, stop: bool) -> Result<bool> {
        let params: Vec<candle_core::Var> = self
            .nets
            .opt_g
            .params()
            .chain(self.nets.opt_d.params())
            .cloned()
            .collect();
        Ok(distributed::check_replicas(
            self.collective.as_ref(),
            &params,
            stop,
            self.state.step,
        )?)
    }

    /// Selects the convolution/BatchNorm implementation of all networks.
    pub fn set_kernels(&mut self, kernels: Kernels) {
        self.nets.set_kernels(kernels);
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

    /// One training step on the next batch of the data order (`d_steps` batches: the extra D
    /// updates' first); returns its metrics. On a NaN or infinite loss nothing is written and the
    /// error says at which step.
    pub fn step(&mut self) -> Result<StepMetrics> {
        let start = Instant::now();
        let step = self.state.step;
        // `--d-steps N`: N - 1 extra D updates, each on the next batch and its own latents.
        let mut extra_d = Vec::with_capacity(self.config.d_steps.saturating_sub(1));
        let mut images = 0;
        for round in 1..self.config.d_steps {
            let (indices, z) = self.next_batch(&format!("latent/step-{step}/d-{round}"))?;
            images += indices.len();
            extra_d.push(self.shards(&indices, &z)?);
        }
        let (indices, z) = self.next_batch(&format!("latent/step-{step}"))?;
        images += indices.len();
        let mut shards = self.shards(&indices, &z)?;
        let rank = self.collective.rank();
        if faults::injected(Fault::Nan, rank, step + 1) {
            for shard in &mut shards {
                shard.real = (&shard.real * f64::NAN)?;
            }
        }
        let options = StepOptions {
            loss: self.config.loss,
            ema_decay: self.config.ema,
            augment: Some((self.config.augment, self.config.seed)),
            r1: self.config.r1.map(|gamma| (gamma, self.config.r1_every)),
        };
        let losses = self.nets.train_step_with_extra_d(
            &extra_d,
            &shards,
            options,
            step,
            self.collective.as_ref(),
        )?;
        if faults::injected(Fault::Drift, rank, step + 1) {
            if let Some(first) = self.nets.opt_g.params().next() {
                first.set(&(first.as_tensor() + 1e-3)?)?;
            }
        }
        self.state.step += 1;
        let seconds = start.elapsed().as_secs_f64();
        self.state.elapsed_seconds += seconds;
        Ok(StepMetrics {
            step: self.state.step,
            epoch: self.state.epoch,
            loss_d: losses.loss_d,
            loss_g: losses.loss_g,
            d_real: losses.d_real,
            d_fake: losses.d_fake,
            img_per_sec: (images as f64 / seconds) as f32,
            seconds: self.state.elapsed_seconds,
            lr_d: self.nets.opt_d.config.lr,
            lr_g: self.nets.opt_g.config.lr,
            sync_ms: (self.collective.size() > 1).then_some(losses.sync_seconds * 1e3),
            r1_penalty: losses.r1_penalty.map(f64::from),
            eval: None,
        })
    }

    /// This rank's micro-batches of the global batch `indices` (with latents `z`): the batch is
    /// cut into `ranks x accumulate` consecutive parts, rank `r` taking parts `r*k .. (r+1)*k`,
    /// so the union of the ranks' parts is the batch a single process would use. Parts left
    /// empty by a short last batch are skipped.
    fn shards(&self, indices: &[usize], z: &Tensor) -> Result<Vec<Shard>> {
        let n = indices.len();
        let k = self.config.accumulate.max(1);
        let parts = self.collective.size() * k;
        let bound = |part: usize| part * n / parts;
        let first = self.collective.rank() * k;
        let (lo, hi) = (bound(first), bound(first + k));
        let (real, labels) = self.data.batch(&indices[lo..hi], &self.device)?;
        let labels = self.config.conditional.then_some(labels);
        let mut shards = Vec::with_capacity(k);
        for part in first..first + k {
            let (start, len) = (bound(part) - lo, bound(part + 1) - bound(part));
            if len == 0 {
                continue;
            }
            let whole = len == n;
            let cut = |t: &Tensor| -> Result<Tensor> {
                Ok(if whole {
                    t.clone()
                } else {
                    t.narrow(0, start, len)?
                })
            };
            shards.push(Shard {
                real: cut(&real)?,
                labels: labels.as_ref().map(&cut).transpose()?,
                z: if whole {
                    z.clone()
                } else {
                    z.narrow(0, lo + start, len)?
                },
                weight: len as f64 / n as f64,
                index: part,
            });
        }
        Ok(shards)
    }

    /// The global batch at the current data position with latents from the stream `purpose`;
    /// the position moves on by one batch.
    fn next_batch(&mut self, purpose: &str) -> Result<(Vec<usize>, Tensor)> {
        let indices = self
            .order
            .batch(&self.permutation, self.state.batch_in_epoch as usize)
            .to_vec();
        let z = latents(
            self.config.seed,
            purpose,
            indices.len(),
            self.model.latent_dim,
            &self.device,
        )?;
        self.advance_batch();
        Ok((indices, z))
    }

    /// Moves the data position on by one batch (to the next epoch's order at the end of one).
    fn advance_batch(&mut self) {
        self.state.batch_in_epoch += 1;
        if self.state.batch_in_epoch as usize >= self.batches_per_epoch() {
            self.state.epoch += 1;
            self.state.batch_in_epoch = 0;
            self.permutation = self.order.permutation(self.state.epoch);
        }
    }

    /// The generator used for samples and export: the EMA one when kept.
    pub fn sampling_generator(&self) -> &Generator {
        self.nets
            .generator_ema
            .as_ref()
            .unwrap_or(&self.nets.generator)
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
        let Some(ema) = &self.nets.generator_ema else {
            return Ok(());
        };
        let mut rng = gantry_models::init::rng_for(self.config.seed, "bn-recalibration");
        ema.recalibrate_batchnorm(RECALIBRATION_BATCHES, RECALIBRATION_BATCH, |n| {
            let z = normal_vec(&mut rng, n * self.model.latent_dim, 0.0, 1.0);
            let z = Tensor::from_vec(z, (n, self.model.latent_dim), &self.device)?;
            Ok((z, cycling_labels(&self.model, 0, n, &self.device)?))
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
            generator: self.nets.generator.net.to_tensors()?,
            generator_ema: self
                .nets
                .generator_ema
                .as_ref()
                .map(|g| g.net.to_tensors())
                .transpose()?,
            discriminator: Some(self.nets.discriminator.net.to_tensors()?),
            optimizer_g: Some(self.nets.opt_g.state()?),
            optimizer_d: Some(self.nets.opt_d.state()?),
            trainer_state: Some(self.state.clone()),
        })
    }
}

/// Checks that a global batch of `batch_size` splits into `ranks x accumulate` micro-batches
/// of at least two images (BatchNorm needs two).
pub fn check_sharding(batch_size: usize, ranks: usize, accumulate: usize) -> Result<()> {
    let parts = ranks * accumulate.max(1);
    if batch_size < 2 * parts {
        return Err(TrainError::invalid(
            Setting::Accumulate,
            format!(
                "a batch of {batch_size} split over {ranks} rank(s) x {accumulate} micro-batch(es) leaves fewer than 2 images per micro-batch (BatchNorm needs 2); use a larger --batch-size"
            ),
        ));
    }
    Ok(())
}

/// Checks the config, the model and that they fit the data.
fn validate(config: &TrainConfig, model: &ModelConfig, data: &Dataset) -> Result<()> {
    config.validate()?;
    model.validate()?;
    if data.len() < 2 {
        return Err(TrainError::data(
            &config.data_dir,
            "the data set needs at least two images",
        ));
    }
    if data.image_size != model.image_size || data.channels != model.channels {
        return Err(TrainError::invalid(
            Setting::ImageSize,
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
            return Err(TrainError::invalid(
                Setting::Conditional,
                match model.num_classes {
                    Some(n) => format!("the data set has {classes} classes but the model has {n}"),
                    None => {
                        format!("the data set has {classes} classes but the model is unconditional")
                    }
                },
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests;
