//! Error type of the trainer library.

use std::path::PathBuf;

/// What can go wrong loading data or training.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A data file or folder is missing, unreadable or malformed (the message says how).
    #[error("{}: {message}", path.display())]
    Data { path: PathBuf, message: String },
    /// A command-line option is invalid.
    #[error("{flag}: {message}")]
    Option { flag: String, message: String },
    /// The model, its tensors or a checkpoint failed.
    #[error(transparent)]
    Model(#[from] gantry_models::ModelError),
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// Writing an output failed.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A loss became NaN or infinite.
    #[error("{what} is {value} at step {step}: training diverged and stopped; the last good checkpoint is kept")]
    NonFinite {
        what: &'static str,
        value: f32,
        step: u64,
    },
}

impl TrainError {
    /// A data error on `path`.
    pub fn data(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Self::Data {
            path: path.into(),
            message: message.into(),
        }
    }

    /// An invalid option `flag`.
    pub fn option(flag: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Option {
            flag: flag.into(),
            message: message.into(),
        }
    }

    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}

/// Result alias of this crate.
pub type Result<T, E = TrainError> = std::result::Result<T, E>;
