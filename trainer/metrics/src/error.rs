//! Error type of the metrics.

use std::path::PathBuf;

/// The value of an evaluation that is out of range or does not fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum MetricSetting {
    /// The number of samples scored.
    SampleCount,
    /// The reference data set.
    Dataset,
    /// The images scored.
    Images,
    /// Reference statistics (a `.npz` file) that do not fit the evaluation.
    Reference,
    /// The largest relative FID rise a reduced-precision export may have.
    MaxFidRise,
    /// The lowest PSNR against fp32 a reduced-precision export may have.
    MinPsnr,
}

/// What can go wrong scoring samples.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MetricsError {
    /// A file (classifier, reference, image) is missing, unreadable or malformed.
    #[error("{}: {message}", path.display())]
    Data { path: PathBuf, message: String },
    /// A value is out of range or does not fit the model or data.
    #[error("{problem}")]
    Invalid {
        setting: MetricSetting,
        problem: String,
    },
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Loading the evaluation data failed.
    #[error(transparent)]
    Dataset(#[from] gantry_data::DataError),
    /// The model, its tensors or a checkpoint failed.
    #[error(transparent)]
    Model(#[from] gantry_models::ModelError),
    /// ONNX Runtime (which runs the Inception network) failed.
    #[error(transparent)]
    Runtime(#[from] gantry_runtime::RuntimeError),
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl MetricsError {
    /// A data error on `path`.
    pub fn data(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Self::Data {
            path: path.into(),
            message: message.into(),
        }
    }

    /// An out-of-range `setting`.
    pub fn invalid(setting: MetricSetting, problem: impl Into<String>) -> Self {
        Self::Invalid {
            setting,
            problem: problem.into(),
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
pub type Result<T, E = MetricsError> = std::result::Result<T, E>;
