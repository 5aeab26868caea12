//! Error type of file writing and image encoding.

use std::path::PathBuf;

/// What can go wrong writing a file or encoding an image.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FileError {
    /// Writing, syncing or renaming failed.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// An image could not be encoded.
    #[error("{}: cannot encode the image ({message})", path.display())]
    Encode { path: PathBuf, message: String },
}

impl FileError {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}

/// Result alias of this crate.
pub type Result<T, E = FileError> = std::result::Result<T, E>;
