//! Error type of the data sets.

use std::path::PathBuf;

/// What can go wrong reading a data set.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataError {
    /// A data file or folder is missing, unreadable or malformed (the message says how).
    #[error("{}: {message}", path.display())]
    Data { path: PathBuf, message: String },
    /// Reading a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Building a batch tensor failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl DataError {
    /// A data error on `path`.
    pub fn data(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Self::Data {
            path: path.into(),
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
pub type Result<T, E = DataError> = std::result::Result<T, E>;
