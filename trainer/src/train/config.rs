//! Training options, stored in the checkpoint so a resumed run continues with the same ones.
//! [`TrainConfig::default`] is the one place the defaults are written down.

use std::path::{Path, PathBuf};

use gantry_models::AdamConfig;
use serde::{Deserialize, Serialize};

use crate::augment::Augment;
use crate::data::{DataSpec, DatasetKind, Fit};
use crate::error::{Result, Setting, TrainError};
use crate::eval::EvalMetric;
use crate::loss::LossKind;

/// Everything that defines a training run besides the model shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub dataset: DatasetKind,
    pub data_dir: PathBuf,
    #[serde(default)]
    pub fit: Fit,
    pub batch_size: usize,
    /// Micro-batches per step whose gradients are averaged before one update (gradient
    /// accumulation; with data parallelism, per rank). `batch_size` stays the global batch.
    #[serde(default = "one")]
    pub accumulate: usize,
    pub epochs: u64,
    /// Stop after this many steps even if epochs remain.
    pub max_steps: Option<u64>,
    pub seed: u64,
    /// Adam for G, and for D unless `lr_d` is set.
    pub adam: AdamConfig,
    /// D's own learning rate (two time-scale update rule, Heusel et al. 2017); `None`: `adam.lr`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr_d: Option<f64>,
    #[serde(default)]
    pub loss: LossKind,
    /// Discriminator updates per generator update, each on its own batch (SNGAN: 5). A step is
    /// one generator update, so a step reads `d_steps` batches.
    #[serde(default = "one")]
    pub d_steps: usize,
    /// Decay of the generator's exponential moving average; `None` keeps no EMA.
    #[serde(default)]
    pub ema: Option<f64>,
    /// Train a class-conditional pair on the data set's labels.
    #[serde(default)]
    pub conditional: bool,
    /// DiffAugment applied to real and generated images before D.
    #[serde(default)]
    pub augment: Augment,
    /// Weight gamma of the R1 gradient penalty on real images (`None`: off).
    #[serde(default)]
    pub r1: Option<f64>,
    /// Apply R1 every this many steps, scaled by it (lazy regularisation).
    #[serde(default = "r1_every")]
    pub r1_every: u64,
    /// Write a sample grid every this many steps (0: only at the end).
    pub sample_every: u64,
    /// Write a checkpoint every this many steps (0: only at the end and on Ctrl-C).
    pub checkpoint_every: u64,
    /// Write TensorBoard event files into `<run>/tb/`.
    #[serde(default = "enabled")]
    pub tensorboard: bool,
    /// Evaluate the generator (FID, class coverage) every this many steps and keep the best
    /// checkpoint in `<run>/best/` (0: never).
    #[serde(default)]
    pub eval_every: u64,
    /// Generated samples per evaluation during training.
    #[serde(default = "default_eval_samples")]
    pub eval_samples: usize,
    /// The features evaluations during training score in (Gantry's classifier, or the
    /// standard Inception network: about a minute per 1000 samples on 2 CPU cores).
    #[serde(default)]
    pub eval_metric: EvalMetric,
}

/// Most discriminator updates per generator update.
pub const MAX_D_STEPS: usize = 100;

fn r1_every() -> u64 {
    crate::r1::DEFAULT_EVERY
}

fn one() -> usize {
    1
}

fn enabled() -> bool {
    true
}

fn default_eval_samples() -> usize {
    2000
}

impl Default for TrainConfig {
    /// The DCGAN recipe on MNIST: batch 128, 5 epochs, Adam 2e-4 (0.5, 0.999), BCE, no EMA.
    fn default() -> Self {
        Self::for_dataset(DatasetKind::Mnist)
    }
}

impl TrainConfig {
    /// The defaults for `dataset`, read from `data/<dataset>`.
    pub fn for_dataset(dataset: DatasetKind) -> Self {
        Self {
            dataset,
            data_dir: Self::default_data_dir(dataset),
            fit: Fit::default(),
            batch_size: 128,
            accumulate: 1,
            epochs: 5,
            max_steps: None,
            seed: 0,
            adam: AdamConfig::default(),
            loss: LossKind::default(),
            d_steps: 1,
            lr_d: None,
            ema: None,
            conditional: false,
            augment: Augment::OFF,
            r1: None,
            r1_every: r1_every(),
            sample_every: 500,
            checkpoint_every: 500,
            tensorboard: true,
            eval_every: 0,
            eval_samples: default_eval_samples(),
            eval_metric: EvalMetric::default(),
        }
    }

    /// D's Adam settings: `adam` with `lr_d` when set.
    pub fn adam_d(&self) -> AdamConfig {
        AdamConfig {
            lr: self.lr_d.unwrap_or(self.adam.lr),
            ..self.adam
        }
    }

    /// Where a data set is looked for unless told otherwise: `data/<name>`.
    pub fn default_data_dir(dataset: DatasetKind) -> PathBuf {
        Path::new("data").join(dataset.name())
    }

    /// Checks every value; the error names the setting.
    pub fn validate(&self) -> Result<()> {
        let bad = |setting, problem: String| Err(TrainError::invalid(setting, problem));
        if self.batch_size < 2 {
            return bad(
                Setting::BatchSize,
                format!(
                    "must be at least 2 (BatchNorm needs two images), got {}",
                    self.batch_size
                ),
            );
        }
        if self.accumulate == 0 {
            return bad(Setting::Accumulate, "must be at least 1, got 0".into());
        }
        if self.batch_size >= 2 {
            super::check_sharding(self.batch_size, 1, self.accumulate)?;
        }
        if self.epochs == 0 {
            return bad(Setting::Epochs, "must be at least 1, got 0".into());
        }
        if !(1..=MAX_D_STEPS).contains(&self.d_steps) {
            return bad(
                Setting::DSteps,
                format!("must be between 1 and {MAX_D_STEPS}, got {}", self.d_steps),
            );
        }
        if self.max_steps == Some(0) {
            return bad(Setting::MaxSteps, "must be at least 1, got 0".into());
        }
        for (setting, lr) in [
            (Setting::LearningRate, self.adam.lr),
            (Setting::DiscriminatorLearningRate, self.adam_d().lr),
        ] {
            if !(lr.is_finite() && lr > 0.0) {
                return bad(setting, format!("must be a positive number, got {lr}"));
            }
        }
        for (setting, beta) in [
            (Setting::Beta1, self.adam.beta1),
            (Setting::Beta2, self.adam.beta2),
        ] {
            if !(0.0..1.0).contains(&beta) {
                return bad(setting, format!("must be in [0, 1), got {beta}"));
            }
        }
        if self.eval_every > 0 && self.eval_samples < 2 {
            return bad(
                Setting::EvalSamples,
                format!(
                    "evaluations need at least 2 samples (a covariance needs two), got {}",
                    self.eval_samples
                ),
            );
        }
        if let Some(gamma) = self.r1 {
            if !(gamma.is_finite() && gamma > 0.0) {
                return bad(
                    Setting::R1,
                    format!("gamma must be a positive number, got {gamma}"),
                );
            }
        }
        if self.r1_every == 0 {
            return bad(Setting::R1Every, "must be at least 1, got 0".into());
        }
        if let Some(d) = self.ema {
            if !(0.0..1.0).contains(&d) {
                return bad(Setting::Ema, format!("decay must be in [0, 1), got {d}"));
            }
        }
        Ok(())
    }

    /// How the data set is loaded for a model of `image_size` x `channels`.
    pub fn data_spec(&self, image_size: usize, channels: usize) -> DataSpec {
        DataSpec {
            kind: self.dataset,
            dir: self.data_dir.clone(),
            image_size,
            channels,
            fit: self.fit,
        }
    }

    /// Total steps of the run given the number of batches per epoch: each step reads
    /// `d_steps` batches, so `epochs` passes take `epochs * batches / d_steps` steps (rounded up).
    pub fn total_steps(&self, batches_per_epoch: usize) -> u64 {
        let batches = self.epochs.saturating_mul(batches_per_epoch as u64);
        let by_epochs = batches.div_ceil(self.d_steps.max(1) as u64);
        self.max_steps.map_or(by_epochs, |m| m.min(by_epochs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setting_of(c: &TrainConfig) -> Option<Setting> {
        match c.validate() {
            Err(TrainError::Invalid { setting, .. }) => Some(setting),
            _ => None,
        }
    }

    #[test]
    fn defaults_are_valid_and_each_bad_value_is_named() {
        let ok = TrainConfig::default();
        assert_eq!(setting_of(&ok), None);
        assert_eq!(ok.data_dir, Path::new("data/mnist"));
        type Change = fn(&mut TrainConfig);
        let cases: Vec<(Change, Setting)> = vec![
            (|c| c.batch_size = 1, Setting::BatchSize),
            (|c| c.epochs = 0, Setting::Epochs),
            (|c| c.d_steps = 0, Setting::DSteps),
            (|c| c.d_steps = 101, Setting::DSteps),
            (|c| c.accumulate = 0, Setting::Accumulate),
            (|c| c.accumulate = 65, Setting::Accumulate),
            (|c| c.max_steps = Some(0), Setting::MaxSteps),
            (|c| c.adam.lr = -1.0, Setting::LearningRate),
            (|c| c.adam.lr = f64::NAN, Setting::LearningRate),
            (|c| c.adam.lr = f64::INFINITY, Setting::LearningRate),
            (|c| c.lr_d = Some(0.0), Setting::DiscriminatorLearningRate),
            (
                |c| c.lr_d = Some(f64::NAN),
                Setting::DiscriminatorLearningRate,
            ),
            (|c| c.adam.beta1 = 1.5, Setting::Beta1),
            (|c| c.adam.beta2 = 1.0, Setting::Beta2),
            (|c| c.ema = Some(1.0), Setting::Ema),
            (|c| c.r1 = Some(-1.0), Setting::R1),
            (|c| c.r1_every = 0, Setting::R1Every),
            (
                |c| {
                    c.eval_every = 10;
                    c.eval_samples = 1;
                },
                Setting::EvalSamples,
            ),
        ];
        for (change, setting) in cases {
            let mut c = ok.clone();
            change(&mut c);
            assert_eq!(setting_of(&c), Some(setting), "{c:?}");
        }
        // The limits themselves are accepted: one sample when nothing is evaluated, two when
        // something is; gamma must be above 0 (not at it).
        let edges: Vec<Change> = vec![
            |c| c.eval_samples = 1,
            |c| {
                c.eval_every = 10;
                c.eval_samples = 2;
            },
            |c| c.r1 = Some(f64::MIN_POSITIVE),
        ];
        for change in edges {
            let mut c = ok.clone();
            change(&mut c);
            assert_eq!(setting_of(&c), None, "{c:?}");
        }
        let mut zero_gamma = ok.clone();
        zero_gamma.r1 = Some(0.0);
        assert_eq!(setting_of(&zero_gamma), Some(Setting::R1));
    }
}
