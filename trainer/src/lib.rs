//! Gantry's training library: the training step (`train::step`: D update, G update, the gather
//! and finite check), the EMA, the run loop with its samples, plots, evaluations and
//! checkpoints, DiffAugment, R1 and the recipes. Its parts with a job of their own are crates,
//! re-exported here under their module names: data sets ([`data`]), metrics ([`eval`]),
//! data-parallel engines ([`distributed`]) and TensorBoard files ([`tensorboard`]). The
//! `trainer` command is the `gantry-trainer-cli` package.

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
