//! Error type of the runtime library.

use std::path::PathBuf;

/// An error from ONNX Runtime (or another library underneath), kept as the `source()` of the
/// Gantry error it caused.
pub type SourceError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A value of a request that can be out of range (the CLI maps each to its flag).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RequestField {
    /// The number of images.
    Count,
    /// Images per inference call.
    BatchSize,
    /// The class of a conditional model's images.
    Class,
    /// The truncation threshold of the latents.
    Truncation,
    /// The number of images along an interpolation.
    Steps,
    /// Latent vectors given explicitly.
    Latents,
    /// Labels given explicitly.
    Labels,
    /// Timed runs of a benchmark.
    Iterations,
}

impl std::fmt::Display for RequestField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Count => "image count",
            Self::BatchSize => "batch size",
            Self::Class => "class",
            Self::Truncation => "truncation",
            Self::Steps => "interpolation steps",
            Self::Latents => "latents",
            Self::Labels => "labels",
            Self::Iterations => "iterations",
        })
    }
}

/// Everything that can go wrong loading a model or generating images.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    /// The ONNX Runtime shared library could not be found or loaded.
    #[error("ONNX Runtime library: {message}")]
    Library {
        message: String,
        #[source]
        source: Option<SourceError>,
    },
    /// The model file is missing or is not a usable ONNX file.
    #[error("{}: {message}", path.display())]
    Model {
        path: PathBuf,
        message: String,
        #[source]
        source: Option<SourceError>,
    },
    /// The model's inputs/outputs do not look like a GAN generator.
    #[error("{}: unsupported model signature: {message}", path.display())]
    Signature { path: PathBuf, message: String },
    /// An execution provider explicitly asked for could not be used.
    #[error("execution provider {provider}: {message}")]
    Provider {
        provider: crate::Provider,
        message: String,
    },
    /// A value of the request is out of range or does not fit the model.
    #[error("{field}: {problem}")]
    InvalidRequest {
        field: RequestField,
        problem: String,
    },
    /// The operation needs a model of another kind (e.g. float output).
    #[error("{0}")]
    Unsupported(String),
    /// The model produced NaN or infinite values (its weights are probably not finite); no
    /// image is made from them.
    #[error("{}: the model produced {count} NaN or infinite value(s) of {total}; its weights are probably not finite (did training diverge?)", path.display())]
    NonFiniteOutput {
        path: PathBuf,
        count: usize,
        total: usize,
    },
    /// ONNX Runtime failed while running the model.
    #[error("inference failed")]
    Inference(#[source] SourceError),
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Encoding an image failed.
    #[error("{}: cannot encode image: {message}", path.display())]
    Encode { path: PathBuf, message: String },
}

impl From<gantry_files::FileError> for RuntimeError {
    fn from(e: gantry_files::FileError) -> Self {
        match e {
            gantry_files::FileError::Io { path, source } => Self::Io { path, source },
            gantry_files::FileError::Encode { path, message } => Self::Encode { path, message },
            other => Self::Encode {
                path: PathBuf::new(),
                message: other.to_string(),
            },
        }
    }
}

impl RuntimeError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn invalid(field: RequestField, problem: impl Into<String>) -> Self {
        Self::InvalidRequest {
            field,
            problem: problem.into(),
        }
    }

    pub(crate) fn inference(source: impl Into<SourceError>) -> Self {
        Self::Inference(source.into())
    }

    pub(crate) fn library(message: impl Into<String>, source: Option<SourceError>) -> Self {
        Self::Library {
            message: message.into(),
            source,
        }
    }
}

/// Result alias of this crate.
pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_values_not_flags_and_keep_the_cause() {
        let e = RuntimeError::invalid(RequestField::Count, "must be at least 1, got 0");
        assert_eq!(e.to_string(), "image count: must be at least 1, got 0");
        let cause = std::io::Error::other("device lost");
        let e = RuntimeError::inference(cause);
        assert_eq!(e.to_string(), "inference failed");
        let source = std::error::Error::source(&e).expect("the cause is kept");
        assert_eq!(source.to_string(), "device lost");
    }
}
