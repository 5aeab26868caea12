//! The GAN training state machine: one [`Trainer::step`] ([`Networks::train_step`] on the next
//! batch) is one discriminator update on a real and a detached fake batch, then one generator
//! update through the freshly updated discriminator. Everything random comes from `(seed, purpose)` streams, so a run resumed from
//! a checkpoint continues exactly as an uninterrupted one would.

pub mod config;
pub mod run;
pub mod watch;

use std::time::Instant;

use candle_core::{Device, Tensor};
use gantry_models::checkpoint::{CheckpointMeta, OPTIMIZER_D_FILE, OPTIMIZER_G_FILE};
use gantry_models::init::normal_vec;
use gantry_models::spec::TensorRole;
use gantry_models::{
    cycling_labels, Adam, Checkpoint, Discriminator, Generator, Kernels, ModelConfig, TrainerState,
};

pub use config::TrainConfig;

use crate::augment::Augment;
use crate::data::{Dataset, EpochOrder};
use crate::distributed::{self, all_reduce_gradients, Collective, Solo};
use crate::error::{Result, Setting, TrainError};
use crate::faults::{self, Fault};
use crate::loss::LossKind;
use crate::metrics::StepMetrics;

/// Batches and batch size of the EMA generator's BatchNorm recalibration.
const RECALIBRATION_BATCHES: usize = 16;
const RECALIBRATION_BATCH: usize = 128;

pub use gantry_models::init::latents;

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

/// Adds `more` to the gradients accumulated so far (the first micro-batch's are taken as they
/// are, so a step of one micro-batch does no extra arithmetic).
fn accumulate(
    sum: Option<Vec<Option<Tensor>>>,
    more: Vec<Option<Tensor>>,
) -> Result<Vec<Option<Tensor>>> {
    let Some(sum) = sum else {
        return Ok(more);
    };
    sum.into_iter()
        .zip(more)
        .map(|(a, b)| match (a, b) {
            (Some(a), Some(b)) => Ok(Some((a + b)?)),
            (a, b) => Ok(a.or(b)),
        })
        .collect()
}

/// One shard of a step: images, labels and latents of a micro-batch of this rank's slice of the
/// global batch, and its share of the global batch (`rows / global rows`).
#[derive(Debug, Clone)]
pub struct Shard {
    pub real: Tensor,
    pub labels: Option<Tensor>,
    pub z: Tensor,
    pub weight: f64,
    /// The part of the global batch it is (`rank * accumulate + micro-batch`), which names its
    /// random draws: the same part draws the same on any number of ranks.
    pub index: usize,
}

/// The four scalars of a step, read from the device in one transfer at its end.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepLosses {
    pub loss_d: f32,
    pub loss_g: f32,
    /// Mean D(x) on the real batch.
    pub d_real: f32,
    /// Mean D(G(z)) before the discriminator update.
    pub d_fake: f32,
    /// Seconds spent in collective operations (all-reduce, gather), waiting for other ranks
    /// included; 0 in a single process.
    pub sync_seconds: f64,
    /// `E|grad_x D(x)|^2` on the real batch, on the steps that apply R1.
    pub r1_penalty: Option<f32>,
}

/// The scalars a step gathers from every rank.
const SLOTS: usize = 7;

/// What a step does besides the plain update.
#[derive(Debug, Clone, Copy, Default)]
pub struct StepOptions {
    pub loss: LossKind,
    /// Decay of the generator's moving average, when one is kept.
    pub ema_decay: Option<f64>,
    /// DiffAugment: the policy and the run's seed.
    pub augment: Option<(Augment, u64)>,
    /// R1: gamma and the lazy interval in steps.
    pub r1: Option<(f64, u64)>,
}

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

    /// One GAN update on a given batch: D on `real` and a detached `G(z)`, then G through the
    /// freshly updated D (its parameters held constant), then the EMA (after the update that
    /// makes it step `step + 1`). Returns the scalars, read in one transfer at the end: on a GPU
    /// each read waits for every queued kernel, so reading a loss between the forward and
    /// backward passes would leave the GPU idle while the host queues the rest of the step.
    pub fn train_step(
        &mut self,
        real: &Tensor,
        labels: Option<&Tensor>,
        z: &Tensor,
        loss: LossKind,
        ema_decay: Option<f64>,
        step: u64,
    ) -> Result<StepLosses> {
        let shard = Shard {
            real: real.clone(),
            labels: labels.cloned(),
            z: z.clone(),
            weight: 1.0,
            index: 0,
        };
        let options = StepOptions {
            loss,
            ema_decay,
            ..StepOptions::default()
        };
        self.train_step_sharded(&[shard], options, step, &Solo)
    }

    /// [`Networks::train_step`] on a batch split into shards: this process's micro-batches
    /// (gradient accumulation) of its slice of the global batch (data parallelism). Each
    /// shard's mean loss is weighted by its share of the global batch, so the summed gradients
    /// are those of the global batch's mean loss; they are summed over the ranks with one
    /// all-reduce per network, and every rank applies the same update. BatchNorm normalises
    /// each shard with its own statistics (as DistributedDataParallel does per process). The
    /// scalars are the global batch's; a non-finite one names the rank it came from.
    /// `options` add DiffAugment (draws named by step, part and purpose) and the lazy R1
    /// penalty to the plain update.
    pub fn train_step_sharded(
        &mut self,
        shards: &[Shard],
        options: StepOptions,
        step: u64,
        collective: &dyn Collective,
    ) -> Result<StepLosses> {
        let StepOptions {
            loss,
            ema_decay,
            augment,
            r1,
        } = options;
        // Lazy R1: on every `every`-th step, weighted by `every` (gamma / 2 * every * penalty).
        let r1_weight = match r1 {
            Some((gamma, every)) if step % every.max(1) == 0 => Some(gamma / 2.0 * every as f64),
            _ => None,
        };
        let augmented = |x: &Tensor, shard: &Shard, purpose: &str| -> Result<Tensor> {
            match augment {
                Some((policy, seed)) if !policy.is_off() => {
                    let stream = format!("augment/step-{step}/part-{}/{purpose}", shard.index);
                    policy.apply(x, &mut gantry_models::init::rng_for(seed, &stream))
                }
                _ => Ok(x.clone()),
            }
        };
        let device = match shards.first() {
            Some(s) => s.real.device().clone(),
            None => Device::Cpu,
        };
        let scaled = |loss: Tensor, weight: f64| -> Result<Tensor> {
            Ok(if weight == 1.0 {
                loss
            } else {
                (loss * weight)?
            })
        };
        phase(&device, "0 D power iteration", || {
            self.discriminator.power_iteration()
        })?;
        let mut fakes = Vec::with_capacity(shards.len());
        let mut scalars = Vec::with_capacity(shards.len());
        let mut grads_d: Option<Vec<Option<Tensor>>> = None;
        for shard in shards {
            let labels = shard.labels.as_ref();
            let fake = phase(&device, "1 G forward", || {
                self.generator.forward(&shard.z, labels, true)
            })?;
            let (real, d_real, d_fake, loss_d) =
                phase(&device, "2 D forward (real, fake)", || {
                    let real = augmented(&shard.real, shard, "real")?;
                    let d_real = self.discriminator.forward(&real, labels, true)?;
                    let fake = augmented(&fake.detach(), shard, "fake")?;
                    let d_fake = self.discriminator.forward(&fake, labels, true)?;
                    let loss_d = loss.discriminator(&d_real, &d_fake)?;
                    Ok::<_, TrainError>((real, d_real, d_fake, loss_d))
                })?;
            let penalty = match r1_weight {
                Some(_) => Some(phase(&device, "2b R1 penalty", || {
                    crate::r1::penalty(&mut self.discriminator, &real, labels)
                })?),
                None => None,
            };
            let grads = phase(&device, "3 D backward", || {
                let total = match (&penalty, r1_weight) {
                    (Some(p), Some(w)) => (&loss_d + (p * w)?)?,
                    _ => loss_d.clone(),
                };
                scaled(total, shard.weight)?
                    .backward()
                    .map_err(TrainError::from)
            })?;
            grads_d = Some(accumulate(grads_d, self.opt_d.gradients(&grads))?);
            scalars.push((
                shard.weight,
                loss_d.detach(),
                mean_sigmoid(&d_real.detach())?,
                mean_sigmoid(&d_fake.detach())?,
                penalty.map(|p| p.detach()),
            ));
            fakes.push(fake);
        }
        let params_d: Vec<&candle_core::Var> = self.opt_d.params().collect();
        let grads_d = grads_d.unwrap_or_else(|| vec![None; params_d.len()]);
        let mut sync = std::time::Duration::ZERO;
        let timed = Instant::now();
        let reduced_d = phase(&device, "3b D all-reduce", || {
            all_reduce_gradients(collective, grads_d, &params_d)
        })?;
        sync += timed.elapsed();
        phase(&device, "4 D Adam", || {
            self.opt_d.step_with(&reduced_d.grads)
        })?;

        // D's parameters are constants here: G's update needs gradients only through D.
        let mut grads_g: Option<Vec<Option<Tensor>>> = None;
        let mut losses_g = Vec::with_capacity(shards.len());
        for (shard, fake) in shards.iter().zip(&fakes) {
            let loss_g = phase(&device, "5 D forward (G update)", || {
                let fake = augmented(fake, shard, "fake-for-g")?;
                let d_fake_for_g =
                    self.discriminator
                        .forward_frozen(&fake, shard.labels.as_ref(), true)?;
                loss.generator(&d_fake_for_g)
            })?;
            let grads = phase(&device, "6 G backward (through D)", || {
                scaled(loss_g.clone(), shard.weight)?
                    .backward()
                    .map_err(TrainError::from)
            })?;
            grads_g = Some(accumulate(grads_g, self.opt_g.gradients(&grads))?);
            losses_g.push(loss_g.detach());
        }
        let params_g: Vec<&candle_core::Var> = self.opt_g.params().collect();
        let grads_g = grads_g.unwrap_or_else(|| vec![None; params_g.len()]);
        let timed = Instant::now();
        let reduced_g = phase(&device, "6b G all-reduce", || {
            all_reduce_gradients(collective, grads_g, &params_g)
        })?;
        sync += timed.elapsed();
        phase(&device, "7 G Adam + EMA", || {
            self.opt_g.step_with(&reduced_g.grads)?;
            self.update_ema(ema_decay, step)
        })?;

        // This rank's share of the global means, in one transfer, whether its gradients were
        // finite (a NaN image can leave the losses finite), and its R1 penalty; then every
        // rank's. Slots: loss_d, loss_g, d_real, d_fake, bad D grads, bad G grads, R1.
        let mut local = [0f32; SLOTS];
        local[4] = f32::from(u8::from(!reduced_d.local_finite));
        local[5] = f32::from(u8::from(!reduced_g.local_finite));
        if !scalars.is_empty() {
            let mut parts = Vec::with_capacity(5 * scalars.len());
            for ((_, loss_d, d_real, d_fake, r1), loss_g) in scalars.iter().zip(&losses_g) {
                let r1 = match r1 {
                    Some(p) => p.clone(),
                    None => loss_d.zeros_like()?,
                };
                parts.extend([
                    loss_d.clone(),
                    loss_g.clone(),
                    d_real.clone(),
                    d_fake.clone(),
                    r1,
                ]);
            }
            let values = Tensor::stack(&parts, 0)?.to_vec1::<f32>()?;
            for ((weight, ..), v) in scalars.iter().zip(values.chunks(5)) {
                for (slot, x) in [0, 1, 2, 3, 6].into_iter().zip(v) {
                    local[slot] += if *weight == 1.0 {
                        *x
                    } else {
                        (*weight as f32) * x
                    };
                }
            }
        }
        let timed = Instant::now();
        let every = collective.all_gather_f32(&local)?;
        sync += timed.elapsed();
        let mut global = [0f32; SLOTS];
        for rank in every.chunks(SLOTS) {
            for (sum, x) in global.iter_mut().zip(rank) {
                *sum += x;
            }
        }
        // In the order they arise in the step: a NaN that reached D's weights through the
        // all-reduce makes every rank's later values NaN, so the first is the culprit's.
        let checks = [
            (0, "loss_d"),
            (4, "a gradient of D"),
            (1, "loss_g"),
            (5, "a gradient of G"),
        ];
        for (i, what) in checks {
            let bad: Vec<usize> = every
                .chunks(SLOTS)
                .enumerate()
                .filter(|(_, v)| !v[i].is_finite() || (i >= 4 && v[i] != 0.0))
                .map(|(rank, _)| rank)
                .collect();
            if let Some(&rank) = bad.first() {
                let on = if collective.size() > 1 {
                    format!(" on {}", crate::distributed::rank_list(&bad))
                } else {
                    String::new()
                };
                return Err(TrainError::NonFinite {
                    on,
                    what,
                    value: if i >= 4 {
                        f32::NAN
                    } else {
                        every[rank * SLOTS + i]
                    },
                    step: step + 1,
                    kept: "nothing of this step was written".into(),
                });
            }
        }
        Ok(StepLosses {
            loss_d: global[0],
            loss_g: global[1],
            d_real: global[2],
            d_fake: global[3],
            r1_penalty: r1_weight.map(|_| global[6]),
            sync_seconds: if collective.size() > 1 {
                sync.as_secs_f64()
            } else {
                0.0
            },
        })
    }

    /// EMA of the generator's parameters (by their role in the spec) with warm-up, after the
    /// update of step `step + 1`; BatchNorm running statistics and other buffers are copied,
    /// not averaged (and recalibrated for the EMA weights when samples or checkpoints are
    /// taken).
    fn update_ema(&mut self, decay: Option<f64>, step: u64) -> Result<()> {
        let (Some(decay), Some(ema)) = (decay, &self.generator_ema) else {
            return Ok(());
        };
        let decay = ema_decay_at(decay, step);
        let live = self.generator.net.vars_with_roles();
        for ((_, live, role), (_, avg)) in live.iter().zip(ema.net.all_vars()) {
            let next = match role {
                TensorRole::Parameter => {
                    ((avg.as_tensor() * decay)? + (live.as_tensor() * (1.0 - decay))?)?
                }
                TensorRole::Buffer => live.as_tensor().copy()?,
            };
            avg.set(&next)?;
        }
        Ok(())
    }
}

/// The EMA decay used after the update of step `step + 1`: `decay`, warmed up as TensorFlow's
/// ExponentialMovingAverage with `num_updates` (`min(decay, (1 + t) / (10 + t))`), so that early
/// on the average follows the weights instead of holding on to the random initialisation.
pub fn ema_decay_at(decay: f64, step: u64) -> f64 {
    let t = step as f64;
    decay.min((1.0 + t) / (10.0 + t))
}

/// A training run in memory: the networks, the data and the position.
pub struct Trainer {
    pub config: TrainConfig,
    pub model: ModelConfig,
    pub nets: Networks,
    pub state: TrainerState,
    pub data: Dataset,
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

    /// One training step on the next batch of the data order; returns its metrics. On a NaN or
    /// infinite loss nothing is written and the error says at which step.
    pub fn step(&mut self) -> Result<StepMetrics> {
        let start = Instant::now();
        let step = self.state.step;
        let indices = self
            .order
            .batch(&self.permutation, self.state.batch_in_epoch as usize)
            .to_vec();
        let z = latents(
            self.config.seed,
            &format!("latent/step-{step}"),
            indices.len(),
            self.model.latent_dim,
            &self.device,
        )?;
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
        let losses =
            self.nets
                .train_step_sharded(&shards, options, step, self.collective.as_ref())?;
        if faults::injected(Fault::Drift, rank, step + 1) {
            if let Some(first) = self.nets.opt_g.params().next() {
                first.set(&(first.as_tensor() + 1e-3)?)?;
            }
        }
        self.advance();
        let seconds = start.elapsed().as_secs_f64();
        self.state.elapsed_seconds += seconds;
        Ok(StepMetrics {
            step: self.state.step,
            epoch: self.state.epoch,
            loss_d: losses.loss_d,
            loss_g: losses.loss_g,
            d_real: losses.d_real,
            d_fake: losses.d_fake,
            img_per_sec: (indices.len() as f64 / seconds) as f32,
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

    fn advance(&mut self) {
        self.state.step += 1;
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
mod tests {
    use super::*;
    use gantry_models::init::{normal_vec, rng_for};

    /// A conditional run whose model does not have the data's classes says so in words.
    #[test]
    fn a_class_count_mismatch_is_said_in_words() {
        let data = Dataset {
            name: "fixture".into(),
            image_size: 16,
            channels: 1,
            pixels: vec![0; 4 * 256],
            labels: vec![0, 1, 2, 0],
            class_names: vec!["a".into(), "b".into(), "c".into()],
        };
        let config = TrainConfig {
            conditional: true,
            ..TrainConfig::default()
        };
        for (classes, says) in [(Some(2), "the model has 2"), (None, "unconditional")] {
            let model = ModelConfig {
                image_size: 16,
                g_width: 4,
                d_width: 4,
                num_classes: classes,
                ..ModelConfig::default()
            };
            let err = validate(&config, &model, &data).unwrap_err().to_string();
            assert!(err.contains("3 classes") && err.contains(says), "{err}");
            assert!(!err.contains("Some("), "{err}");
        }
    }

    /// Taking samples or a checkpoint gives the EMA generator BatchNorm statistics of its own
    /// weights: after recalibration they are no longer the live generator's copies.
    #[test]
    fn the_ema_gets_its_own_batchnorm_statistics() {
        let dev = Device::Cpu;
        let data = Dataset {
            name: "fixture".into(),
            image_size: 16,
            channels: 1,
            pixels: (0..8 * 256).map(|i| (i * 31 % 256) as u8).collect(),
            labels: vec![0; 8],
            class_names: vec!["a".into()],
        };
        let model = ModelConfig {
            image_size: 16,
            g_width: 4,
            d_width: 4,
            latent_dim: 8,
            ..ModelConfig::default()
        };
        let config = TrainConfig {
            ema: Some(0.5),
            batch_size: 4,
            ..TrainConfig::default()
        };
        let mut t = Trainer::new(config, model, data, &dev).unwrap();
        t.step().unwrap();
        let stats = |g: &Generator| -> Vec<Vec<f32>> {
            g.net
                .vars_with_roles()
                .into_iter()
                .filter(|(name, _, _)| name.contains("running"))
                .map(|(_, v, _)| v.as_tensor().to_vec1::<f32>().unwrap())
                .collect()
        };
        let ema = t.nets.generator_ema.as_ref().unwrap();
        assert_eq!(stats(ema), stats(&t.nets.generator), "copies after a step");
        t.recalibrate_ema().unwrap();
        let (own, live) = (
            stats(t.nets.generator_ema.as_ref().unwrap()),
            stats(&t.nets.generator),
        );
        assert_eq!(own.len(), live.len());
        assert!(own.iter().zip(&live).all(|(a, b)| a != b), "recalibrated");
    }

    #[test]
    fn the_ema_decay_warms_up_then_holds() {
        assert_eq!(ema_decay_at(0.999, 0), 0.1);
        assert_eq!(ema_decay_at(0.999, 90), 0.91);
        assert_eq!(ema_decay_at(0.999, 1_000_000), 0.999);
        assert_eq!(ema_decay_at(0.5, 5), 0.4);
        assert_eq!(ema_decay_at(0.5, 8), 0.5);
    }

    /// After a step the EMA holds `d * before + (1 - d) * live` for every parameter (with the
    /// warmed-up `d`) and a copy of every buffer (BatchNorm statistics).
    #[test]
    fn the_ema_averages_parameters_and_copies_buffers() {
        let dev = Device::Cpu;
        let model = ModelConfig {
            image_size: 16,
            g_width: 4,
            d_width: 4,
            latent_dim: 8,
            ..ModelConfig::default()
        };
        let config = TrainConfig {
            ema: Some(0.5),
            ..TrainConfig::default()
        };
        let mut nets = Networks::new(&config, &model, &dev).unwrap();
        let tensor = |shape: &[usize], seed: &str| {
            let n = shape.iter().product();
            Tensor::from_vec(normal_vec(&mut rng_for(1, seed), n, 0.0, 0.5), shape, &dev).unwrap()
        };
        let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for step in 0..3u64 {
            let before = nets
                .generator_ema
                .as_ref()
                .unwrap()
                .net
                .to_tensors()
                .unwrap();
            let (real, z) = (tensor(&[4, 1, 16, 16], "real"), tensor(&[4, 8], "z"));
            nets.train_step(&real, None, &z, LossKind::Bce, config.ema, step)
                .unwrap();
            let d = ema_decay_at(0.5, step) as f32;
            let ema = nets
                .generator_ema
                .as_ref()
                .unwrap()
                .net
                .to_tensors()
                .unwrap();
            let roles = nets.generator.net.vars_with_roles();
            assert_eq!(roles.len(), ema.len());
            for (name, live, role) in roles {
                let (live, avg, old) = (
                    flat(live.as_tensor()),
                    flat(&ema[&name]),
                    flat(&before[&name]),
                );
                assert_eq!(live.len(), avg.len());
                for ((l, a), o) in live.iter().zip(&avg).zip(&old) {
                    let want = match role {
                        TensorRole::Parameter => d * o + (1.0 - d) * l,
                        TensorRole::Buffer => *l,
                    };
                    assert!(
                        (a - want).abs() <= 1e-6,
                        "step {step} {name}: {a} vs {want}"
                    );
                }
            }
        }
    }
}
