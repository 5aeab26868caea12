//! Error type of the models crate.

use std::path::PathBuf;

/// A field of [`crate::ModelConfig`] (programs map them to their own option names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ConfigField {
    ImageSize,
    Channels,
    LatentDim,
    GeneratorWidth,
    DiscriminatorWidth,
    NumClasses,
    LabelEmbedDim,
}

impl std::fmt::Display for ConfigField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::ImageSize => "image size",
            Self::Channels => "channels",
            Self::LatentDim => "latent size",
            Self::GeneratorWidth => "generator width",
            Self::DiscriminatorWidth => "discriminator width",
            Self::NumClasses => "number of classes",
            Self::LabelEmbedDim => "label embedding size",
        })
    }
}

/// Everything that can go wrong building, running or (de)serialising a model.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// A field of the model configuration is out of range.
    #[error("invalid model: {field} {problem}")]
    InvalidConfig { field: ConfigField, problem: String },
    /// The inputs given to a network do not fit it (latent size, labels).
    #[error("{0}")]
    Input(String),
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
    /// Shorthand for an out-of-range config field.
    pub fn invalid(field: ConfigField, problem: impl Into<String>) -> Self {
        Self::InvalidConfig {
            field,
            problem: problem.into(),
        }
    }

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

impl From<gantry_files::FileError> for ModelError {
    /// Writing a file failed: the path and the cause.
    fn from(e: gantry_files::FileError) -> Self {
        match e {
            gantry_files::FileError::Io { path, source } => Self::Io { path, source },
            other => Self::Io {
                path: std::path::PathBuf::new(),
                source: std::io::Error::other(other.to_string()),
            },
        }
    }
}
