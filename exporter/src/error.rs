//! Error type of the exporter library.

use std::path::PathBuf;

/// What can go wrong exporting a generator.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The checkpoint is missing, unreadable or does not match its config.
    #[error(transparent)]
    Checkpoint(#[from] gantry_models::ModelError),
    /// An option is invalid (the flag is named).
    #[error("{flag}: {message}")]
    Option { flag: String, message: String },
    /// Writing the output failed.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The written file failed the structural check (a bug in the exporter).
    #[error("{}: exported graph failed verification: {message}", path.display())]
    Verify { path: PathBuf, message: String },
}

impl ExportError {
    /// An invalid option `flag`.
    pub fn option(flag: &str, message: impl Into<String>) -> Self {
        Self::Option {
            flag: flag.to_string(),
            message: message.into(),
        }
    }
}

/// Result alias of this crate.
pub type Result<T, E = ExportError> = std::result::Result<T, E>;
