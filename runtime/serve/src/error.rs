//! Error type of the server: what went wrong with a request, and how each protocol says it.

use gantry_runtime::RuntimeError;

/// Why a request failed. Each kind maps to one HTTP status and one gRPC code.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The request is malformed or does not fit the model (HTTP 400, gRPC INVALID_ARGUMENT).
    #[error("{0}")]
    BadRequest(String),
    /// The request is larger than the server accepts (HTTP 413, gRPC OUT_OF_RANGE).
    #[error("{0}")]
    TooLarge(String),
    /// No such model or version (HTTP 404, gRPC NOT_FOUND).
    #[error("{0}")]
    NotFound(String),
    /// The model's queue is full or the server is stopping (HTTP 503, gRPC UNAVAILABLE).
    #[error("{0}")]
    Unavailable(String),
    /// The request did not finish within the server's per-request timeout (HTTP 504, gRPC
    /// DEADLINE_EXCEEDED).
    #[error("{0}")]
    Timeout(String),
    /// Inference failed (HTTP 500, gRPC INTERNAL).
    #[error("inference failed: {0}")]
    Internal(String),
}

impl ServeError {
    /// A malformed request or one that does not fit the model.
    pub fn bad(message: impl Into<String>) -> Self {
        Self::BadRequest(message.into())
    }

    /// The HTTP status of this error.
    pub fn http_status(&self) -> u16 {
        match self {
            Self::BadRequest(_) => 400,
            Self::NotFound(_) => 404,
            Self::TooLarge(_) => 413,
            Self::Unavailable(_) => 503,
            Self::Timeout(_) => 504,
            Self::Internal(_) => 500,
        }
    }

    /// The gRPC status of this error.
    pub fn grpc_status(&self) -> tonic::Status {
        let message = self.to_string();
        match self {
            Self::BadRequest(_) => tonic::Status::invalid_argument(message),
            Self::NotFound(_) => tonic::Status::not_found(message),
            Self::TooLarge(_) => tonic::Status::out_of_range(message),
            Self::Unavailable(_) => tonic::Status::unavailable(message),
            Self::Timeout(_) => tonic::Status::deadline_exceeded(message),
            Self::Internal(_) => tonic::Status::internal(message),
        }
    }
}

impl From<RuntimeError> for ServeError {
    /// A value out of range is the client's fault; anything else is the server's.
    fn from(e: RuntimeError) -> Self {
        match e {
            RuntimeError::InvalidRequest { .. } => Self::BadRequest(e.to_string()),
            other => Self::Internal(other.to_string()),
        }
    }
}

/// Errors found while loading the models (before the server starts).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// A model repository or its configuration is unusable.
    #[error("{}: {message}", path.display())]
    Repository {
        path: std::path::PathBuf,
        message: String,
    },
    /// A model could not be loaded into ONNX Runtime.
    #[error("model `{name}` version {version}: {source}")]
    Model {
        name: String,
        version: String,
        #[source]
        source: RuntimeError,
    },
}

/// Results of request handling.
pub type Result<T, E = ServeError> = std::result::Result<T, E>;
