//! Gantry's models: the DCGAN (Radford et al. 2015) and SNGAN ResNet (Miyato et al. 2018)
//! generators and discriminators in candle.
//!
//! One [`spec`] describes the layers; the candle networks here and the ONNX graph in
//! `gantry-exporter` are both built from it. Checkpoints ([`checkpoint`]) hold the weights,
//! BatchNorm statistics, optimiser state and trainer position.

#![forbid(unsafe_code)]

pub mod adam;
/// Crash-safe writes (the `gantry-files` crate, shared with the runtime).
pub use gantry_files::atomic;
pub mod candle_ops;
pub mod checkpoint;
pub mod config;
pub mod error;
pub mod gan;
pub mod init;
pub mod network;
pub mod run_layout;
pub mod spec;
pub mod tensors;
#[cfg(test)]
mod test_util;

pub use adam::{Adam, AdamConfig};
pub use checkpoint::{
    resolve_checkpoint, resolve_run_checkpoint, Checkpoint, CheckpointMeta, RunCheckpoint,
    TrainerState,
};
pub use config::{Arch, ModelConfig};
pub use error::{ConfigField, ModelError, Result};
pub use gan::{cycling_labels, labels_tensor, Discriminator, Generator};
pub use gantry_kernels::{profile, Backend, Kernels};
pub use spec::{discriminator_spec, generator_spec, NetworkSpec};
pub use tensors::TensorMap;
