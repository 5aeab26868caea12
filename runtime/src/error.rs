//! Error type of the runtime library.

use std::path::PathBuf;

/// Everything that can go wrong loading a model or generating images.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The ONNX Runtime shared library could not be found or loaded.
    #[error("ONNX Runtime library: {0}")]
    Library(String),
    /// The model file is missing or is not a usable ONNX file.
    #[error("{}: {message}", path.display())]
    Model { path: PathBuf, message: String },
    /// The model's inputs/outputs do not look like a GAN generator.
    #[error("{}: unsupported model signature: {message}", path.display())]
    Signature { path: PathBuf, message: String },
    /// An execution provider explicitly asked for could not be used.
    #[error("execution provider {provider}: {message}")]
    Provider { provider: String, message: String },
    /// An argument is out of range (the message names it).
    #[error("{0}")]
    Invalid(String),
    /// ONNX Runtime failed while running the model.
    #[error("inference failed: {0}")]
    Inference(String),
    /// Writing an output failed.
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

impl RuntimeError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}

/// Result alias of this crate.
pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;
