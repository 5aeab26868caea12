//! Error type of the models crate.

use std::path::PathBuf;

/// Everything that can go wrong building, running or (de)serialising a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The model configuration is invalid (the message names the field).
    #[error("invalid model config: {0}")]
    Config(String),
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A checkpoint file exists but its content is unusable.
    #[error("{}: {message}", path.display())]
    Checkpoint { path: PathBuf, message: String },
}

impl ModelError {
    /// Shorthand for an I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    /// Shorthand for a checkpoint content error on `path`.
    pub fn checkpoint(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Self::Checkpoint {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// Result alias of this crate.
pub type Result<T, E = ModelError> = std::result::Result<T, E>;
