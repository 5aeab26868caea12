//! Training options, stored in the checkpoint so a resumed run continues with the same ones.

use std::path::PathBuf;

use gantry_models::AdamConfig;
use serde::{Deserialize, Serialize};

use crate::data::{DataSpec, DatasetKind, Fit};
use crate::loss::LossKind;

/// Everything that defines a training run besides the model shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub dataset: DatasetKind,
    pub data_dir: PathBuf,
    #[serde(default)]
    pub fit: Fit,
    pub batch_size: usize,
    pub epochs: u64,
    /// Stop after this many steps even if epochs remain.
    pub max_steps: Option<u64>,
    pub seed: u64,
    pub adam: AdamConfig,
    #[serde(default)]
    pub loss: LossKind,
    /// Decay of the generator's exponential moving average; `None` keeps no EMA.
    #[serde(default)]
    pub ema: Option<f64>,
    /// Train a class-conditional pair on the data set's labels.
    #[serde(default)]
    pub conditional: bool,
    /// Write a sample grid every this many steps (0: only at the end).
    pub sample_every: u64,
    /// Write a checkpoint every this many steps (0: only at the end and on Ctrl-C).
    pub checkpoint_every: u64,
}

impl TrainConfig {
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

    /// Total steps of the run given the number of batches per epoch.
    pub fn total_steps(&self, batches_per_epoch: usize) -> u64 {
        let by_epochs = self.epochs * batches_per_epoch as u64;
        self.max_steps.map_or(by_epochs, |m| m.min(by_epochs))
    }
}
