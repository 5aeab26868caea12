//! One GAN update: the discriminator on real and detached fake batches, then the generator
//! through the freshly updated discriminator, then the EMA; on any number of shards
//! (micro-batches of this rank's slice of the global batch) and ranks. Its parts:
//! [`Networks::discriminator_update`], [`Networks::generator_update`] and the gather of the
//! step's scalars with the finite check ([`gather_and_check`]).

use std::time::{Duration, Instant};

use candle_core::{Device, Tensor, Var};

use super::ema;
use super::networks::Networks;
use crate::augment::Augment;
use crate::distributed::{self, all_reduce_gradients, Collective, Solo};
use crate::error::{Result, TrainError};
use crate::loss::LossKind;

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

/// What one shard's discriminator pass leaves for the rest of the step, on the device.
struct ShardScalars {
    weight: f64,
    loss_d: Tensor,
    d_real: Tensor,
    d_fake: Tensor,
    r1: Option<Tensor>,
}

/// What the discriminator update leaves for the generator update and the gather.
struct DiscriminatorPass {
    /// Each shard's `G(z)` (with G's graph, for G's update).
    fakes: Vec<Tensor>,
    scalars: Vec<ShardScalars>,
    /// Whether this rank's D gradients were finite.
    grads_finite: bool,
}

/// This rank's share of a step's global means, gathered from every rank in one transfer; the
/// gradient flags say whether this rank's gradients were finite (a NaN image can leave the
/// losses finite).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct StepScalars {
    loss_d: f32,
    loss_g: f32,
    d_real: f32,
    d_fake: f32,
    /// 1 when a gradient of D was not finite on this rank.
    bad_d_grads: f32,
    /// 1 when a gradient of G was not finite on this rank.
    bad_g_grads: f32,
    r1: f32,
}

impl StepScalars {
    /// Values per rank in the gathered buffer.
    const LEN: usize = 7;

    fn to_array(self) -> [f32; Self::LEN] {
        [
            self.loss_d,
            self.loss_g,
            self.d_real,
            self.d_fake,
            self.bad_d_grads,
            self.bad_g_grads,
            self.r1,
        ]
    }

    fn from_slice(v: &[f32]) -> Self {
        Self {
            loss_d: v[0],
            loss_g: v[1],
            d_real: v[2],
            d_fake: v[3],
            bad_d_grads: v[4],
            bad_g_grads: v[5],
            r1: v[6],
        }
    }

    /// The sum over ranks.
    fn sum(all: &[Self]) -> Self {
        let mut total = [0f32; Self::LEN];
        for rank in all {
            for (sum, x) in total.iter_mut().zip(rank.to_array()) {
                *sum += x;
            }
        }
        Self::from_slice(&total)
    }
}

/// `loss` scaled by a shard's share of the global batch (untouched for a whole batch).
fn scaled(loss: Tensor, weight: f64) -> Result<Tensor> {
    Ok(if weight == 1.0 {
        loss
    } else {
        (loss * weight)?
    })
}

/// DiffAugment of `x` for a part and purpose of step `step` (the identity when off).
fn augmented(
    augment: Option<(Augment, u64)>,
    step: u64,
    x: &Tensor,
    shard: &Shard,
    purpose: &str,
) -> Result<Tensor> {
    match augment {
        Some((policy, seed)) if !policy.is_off() => {
            let stream = format!("augment/step-{step}/part-{}/{purpose}", shard.index);
            policy.apply(x, &mut gantry_models::init::rng_for(seed, &stream))
        }
        _ => Ok(x.clone()),
    }
}

/// All-reduces one network's summed shard gradients over the ranks (timed into `sync`).
fn reduce(
    device: &Device,
    name: &str,
    collective: &dyn Collective,
    grads: Option<Vec<Option<Tensor>>>,
    params: &[&Var],
    sync: &mut Duration,
) -> Result<distributed::ReducedGradients> {
    let grads = grads.unwrap_or_else(|| vec![None; params.len()]);
    let timed = Instant::now();
    let reduced = phase(device, name, || {
        all_reduce_gradients(collective, grads, params)
    })?;
    *sync += timed.elapsed();
    Ok(reduced)
}

impl Networks {
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
        self.train_step_with_extra_d(&[], shards, options, step, collective)
    }

    /// [`Networks::train_step_sharded`] preceded by one more D update on each batch of
    /// `extra_d` (`--d-steps N`: N - 1 extra updates, each on its own real batch and latents,
    /// before the usual one on `shards`, whose fakes G's update then uses). The scalars are the
    /// last D update's; R1 applies to the last D update of its steps; a non-finite gradient in
    /// any of the updates fails the step.
    pub fn train_step_with_extra_d(
        &mut self,
        extra_d: &[Vec<Shard>],
        shards: &[Shard],
        options: StepOptions,
        step: u64,
        collective: &dyn Collective,
    ) -> Result<StepLosses> {
        // Lazy R1: on every `every`-th step, weighted by `every` (gamma / 2 * every * penalty).
        let r1_weight = match options.r1 {
            Some((gamma, every)) if step % every.max(1) == 0 => Some(gamma / 2.0 * every as f64),
            _ => None,
        };
        let device = match shards.first() {
            Some(s) => s.real.device().clone(),
            None => Device::Cpu,
        };
        let mut sync = Duration::ZERO;
        // G's spectral norm (`g_spectral_norm`): one power iteration per step, before the
        // forward passes that make this step's fakes (D's updates and G's own use them).
        phase(&device, "0 G power iteration", || {
            self.generator.power_iteration()
        })?;
        let mut extra_finite = true;
        for (round, d_shards) in extra_d.iter().enumerate() {
            let pass = self.discriminator_update(
                d_shards,
                &options,
                (step, Some(round)),
                None,
                collective,
                &device,
                &mut sync,
            )?;
            extra_finite &= pass.grads_finite;
        }
        let mut d = self.discriminator_update(
            shards,
            &options,
            (step, None),
            r1_weight,
            collective,
            &device,
            &mut sync,
        )?;
        d.grads_finite &= extra_finite;
        let (losses_g, g_grads_finite) = self.generator_update(
            shards, &d.fakes, &options, step, collective, &device, &mut sync,
        )?;
        let local = local_scalars(&d, &losses_g, g_grads_finite)?;
        let timed = Instant::now();
        let every = collective.all_gather_f32(&local.to_array())?;
        sync += timed.elapsed();
        let global = gather_and_check(&every, collective, step)?;
        Ok(StepLosses {
            loss_d: global.loss_d,
            loss_g: global.loss_g,
            d_real: global.d_real,
            d_fake: global.d_fake,
            r1_penalty: r1_weight.map(|_| global.r1),
            sync_seconds: if collective.size() > 1 {
                sync.as_secs_f64()
            } else {
                0.0
            },
        })
    }

    /// D's update: per shard `G(z)`, D on the (augmented) real and detached fake images, the
    /// loss (plus the R1 penalty on its steps) scaled by the shard's share, backward; the
    /// gradients summed over shards and ranks; one Adam step. `at` is the step and, for the
    /// extra updates of `--d-steps`, which one (it names their augmentation draws).
    #[allow(clippy::too_many_arguments)]
    fn discriminator_update(
        &mut self,
        shards: &[Shard],
        options: &StepOptions,
        at: (u64, Option<usize>),
        r1_weight: Option<f64>,
        collective: &dyn Collective,
        device: &Device,
        sync: &mut Duration,
    ) -> Result<DiscriminatorPass> {
        let (loss, augment) = (options.loss, options.augment);
        let (step, round) = at;
        let purpose = |what: &str| match round {
            Some(r) => format!("d{r}-{what}"),
            None => what.to_string(),
        };
        phase(device, "0 D power iteration", || {
            self.discriminator.power_iteration()
        })?;
        let mut fakes = Vec::with_capacity(shards.len());
        let mut scalars = Vec::with_capacity(shards.len());
        let mut grads_d: Option<Vec<Option<Tensor>>> = None;
        for shard in shards {
            let labels = shard.labels.as_ref();
            let fake = phase(device, "1 G forward", || {
                self.generator.forward(&shard.z, labels, true)
            })?;
            let (real, d_real, d_fake, loss_d) = phase(device, "2 D forward (real, fake)", || {
                let real = augmented(augment, step, &shard.real, shard, &purpose("real"))?;
                let d_real = self.discriminator.forward(&real, labels, true)?;
                let fake = augmented(augment, step, &fake.detach(), shard, &purpose("fake"))?;
                let d_fake = self.discriminator.forward(&fake, labels, true)?;
                let loss_d = loss.discriminator(&d_real, &d_fake)?;
                Ok::<_, TrainError>((real, d_real, d_fake, loss_d))
            })?;
            let penalty = match r1_weight {
                Some(_) => Some(phase(device, "2b R1 penalty", || {
                    crate::r1::penalty(&mut self.discriminator, &real, labels)
                })?),
                None => None,
            };
            let grads = phase(device, "3 D backward", || {
                let total = match (&penalty, r1_weight) {
                    (Some(p), Some(w)) => (&loss_d + (p * w)?)?,
                    _ => loss_d.clone(),
                };
                scaled(total, shard.weight)?
                    .backward()
                    .map_err(TrainError::from)
            })?;
            grads_d = Some(accumulate(grads_d, self.opt_d.gradients(&grads))?);
            scalars.push(ShardScalars {
                weight: shard.weight,
                loss_d: loss_d.detach(),
                d_real: mean_sigmoid(&d_real.detach())?,
                d_fake: mean_sigmoid(&d_fake.detach())?,
                r1: penalty.map(|p| p.detach()),
            });
            fakes.push(fake);
        }
        let params_d: Vec<&Var> = self.opt_d.params().collect();
        let reduced = reduce(
            device,
            "3b D all-reduce",
            collective,
            grads_d,
            &params_d,
            sync,
        )?;
        phase(device, "4 D Adam", || self.opt_d.step_with(&reduced.grads))?;
        Ok(DiscriminatorPass {
            fakes,
            scalars,
            grads_finite: reduced.local_finite,
        })
    }

    /// G's update through the freshly updated D (D's parameters held constant: G's gradients
    /// need only flow through it), summed over shards and ranks, one Adam step, then the EMA.
    /// Returns each shard's G loss and whether this rank's G gradients were finite.
    #[allow(clippy::too_many_arguments)]
    fn generator_update(
        &mut self,
        shards: &[Shard],
        fakes: &[Tensor],
        options: &StepOptions,
        step: u64,
        collective: &dyn Collective,
        device: &Device,
        sync: &mut Duration,
    ) -> Result<(Vec<Tensor>, bool)> {
        let (loss, augment) = (options.loss, options.augment);
        let mut grads_g: Option<Vec<Option<Tensor>>> = None;
        let mut losses_g = Vec::with_capacity(shards.len());
        for (shard, fake) in shards.iter().zip(fakes) {
            let loss_g = phase(device, "5 D forward (G update)", || {
                let fake = augmented(augment, step, fake, shard, "fake-for-g")?;
                let d_fake_for_g =
                    self.discriminator
                        .forward_frozen(&fake, shard.labels.as_ref(), true)?;
                loss.generator(&d_fake_for_g)
            })?;
            let grads = phase(device, "6 G backward (through D)", || {
                scaled(loss_g.clone(), shard.weight)?
                    .backward()
                    .map_err(TrainError::from)
            })?;
            grads_g = Some(accumulate(grads_g, self.opt_g.gradients(&grads))?);
            losses_g.push(loss_g.detach());
        }
        let params_g: Vec<&Var> = self.opt_g.params().collect();
        let reduced = reduce(
            device,
            "6b G all-reduce",
            collective,
            grads_g,
            &params_g,
            sync,
        )?;
        phase(device, "7 G Adam + EMA", || {
            self.opt_g.step_with(&reduced.grads)?;
            match (options.ema_decay, &self.generator_ema) {
                (Some(decay), Some(avg)) => ema::update(&self.generator, avg, decay, step),
                _ => Ok(()),
            }
        })?;
        Ok((losses_g, reduced.local_finite))
    }
}

/// This rank's share of the global means (each shard's scalars weighted by its share), read
/// from the device in one transfer, with the gradient flags.
fn local_scalars(
    d: &DiscriminatorPass,
    losses_g: &[Tensor],
    g_finite: bool,
) -> Result<StepScalars> {
    let mut local = StepScalars {
        bad_d_grads: f32::from(u8::from(!d.grads_finite)),
        bad_g_grads: f32::from(u8::from(!g_finite)),
        ..StepScalars::default()
    };
    if d.scalars.is_empty() {
        return Ok(local);
    }
    let mut parts = Vec::with_capacity(5 * d.scalars.len());
    for (s, loss_g) in d.scalars.iter().zip(losses_g) {
        let r1 = match &s.r1 {
            Some(p) => p.clone(),
            None => s.loss_d.zeros_like()?,
        };
        parts.extend([
            s.loss_d.clone(),
            loss_g.clone(),
            s.d_real.clone(),
            s.d_fake.clone(),
            r1,
        ]);
    }
    let values = Tensor::stack(&parts, 0)?.to_vec1::<f32>()?;
    for (s, v) in d.scalars.iter().zip(values.chunks(5)) {
        let share = |x: f32| {
            if s.weight == 1.0 {
                x
            } else {
                (s.weight as f32) * x
            }
        };
        local.loss_d += share(v[0]);
        local.loss_g += share(v[1]);
        local.d_real += share(v[2]);
        local.d_fake += share(v[3]);
        local.r1 += share(v[4]);
    }
    Ok(local)
}

/// The global scalars from every rank's (`every`, [`StepScalars::LEN`] values per rank),
/// checked in the order they arise in the step: a NaN that reached D's weights through the
/// all-reduce makes every rank's later values NaN, so the first bad value is the culprit's,
/// and the error names its rank.
fn gather_and_check(every: &[f32], collective: &dyn Collective, step: u64) -> Result<StepScalars> {
    let ranks: Vec<StepScalars> = every
        .chunks(StepScalars::LEN)
        .map(StepScalars::from_slice)
        .collect();
    type Check = (&'static str, fn(&StepScalars) -> f32, bool);
    let checks: [Check; 4] = [
        ("loss_d", |s| s.loss_d, false),
        ("a gradient of D", |s| s.bad_d_grads, true),
        ("loss_g", |s| s.loss_g, false),
        ("a gradient of G", |s| s.bad_g_grads, true),
    ];
    for (what, value, is_flag) in checks {
        let bad: Vec<usize> = ranks
            .iter()
            .enumerate()
            .filter(|(_, s)| !value(s).is_finite() || (is_flag && value(s) != 0.0))
            .map(|(rank, _)| rank)
            .collect();
        if let Some(&rank) = bad.first() {
            let on = if collective.size() > 1 {
                format!(" on {}", distributed::rank_list(&bad))
            } else {
                String::new()
            };
            return Err(TrainError::NonFinite {
                on,
                what,
                value: if is_flag {
                    f32::NAN
                } else {
                    value(&ranks[rank])
                },
                step: step + 1,
                kept: "nothing of this step was written".into(),
            });
        }
    }
    Ok(StepScalars::sum(&ranks))
}

#[cfg(test)]
mod tests;
