//! Gantry's models: the DCGAN generator and discriminator (Radford et al. 2015) in candle.
//!
//! One [`spec`] describes the layers; the candle networks here and the ONNX graph in
//! `gantry-exporter` are both built from it. Checkpoints ([`checkpoint`]) hold the weights,
//! BatchNorm statistics, optimiser state and trainer position.

pub mod adam;
pub mod atomic;
pub mod checkpoint;
pub mod config;
pub mod error;
pub mod gan;
pub mod init;
pub mod kernels;
pub mod network;
pub mod ops;
pub mod profile;
pub mod spec;
pub mod tensors;

pub use adam::{Adam, AdamConfig};
pub use checkpoint::{resolve_checkpoint, Checkpoint, CheckpointMeta, TrainerState};
pub use config::ModelConfig;
pub use error::{ModelError, Result};
pub use gan::{labels_tensor, Discriminator, Generator};
pub use ops::Kernels;
pub use spec::{discriminator_spec, generator_spec, NetworkSpec};
pub use tensors::TensorMap;
