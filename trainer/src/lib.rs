//! Gantry's trainer: data sets, the DCGAN training loop, checkpoints, sample grids and plots.

#![forbid(unsafe_code)]

pub mod animate;
pub mod augment;
pub mod bench;
pub mod error;
pub mod faults;
pub mod loss;
pub mod metrics;
pub mod plot;
pub mod preset;
pub mod progress;
pub mod r1;
pub mod sample;
pub mod samples;
pub mod setup;
pub mod train;

/// The data sets (the `gantry-data` crate).
pub use gantry_data as data;
/// Data-parallel engines behind one collective interface (the `gantry-distributed` crate).
pub use gantry_distributed as distributed;
/// Sample quality: FID, coverage, SWD (the `gantry-metrics` crate).
pub use gantry_metrics as eval;
/// TensorBoard event files (the `gantry-tensorboard` crate).
pub use gantry_tensorboard as tensorboard;

pub use error::{Result, Setting, TrainError};
pub use train::{TrainConfig, Trainer};
