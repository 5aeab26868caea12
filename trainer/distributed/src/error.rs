//! Error type of data-parallel training.

use std::path::PathBuf;

/// What can go wrong between ranks.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DistributedError {
    /// A rank failed, ranks disagree, replicas drifted, or the transport failed.
    #[error("{0}")]
    Failed(String),
    /// A file the job needs (NCCL's id) is missing or malformed.
    #[error("{}: {message}", path.display())]
    Data { path: PathBuf, message: String },
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl DistributedError {
    /// A data error on `path`.
    pub fn data(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Self::Data {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// Result alias of this crate.
pub type Result<T, E = DistributedError> = std::result::Result<T, E>;
