//! Gantry's trainer: data sets, the DCGAN training loop, checkpoints, sample grids and plots.

#![forbid(unsafe_code)]

pub mod animate;
pub mod augment;
pub mod bench;
pub mod data;
pub mod distributed;
pub mod error;
pub mod eval;
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
pub mod tensorboard;
pub mod train;

#[cfg(test)]
mod fuzz;

pub use error::{Result, Setting, TrainError};
pub use train::{TrainConfig, Trainer};
