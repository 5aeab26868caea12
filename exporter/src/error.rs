//! Error type of the exporter library.

use std::path::PathBuf;

/// A setting of an export (the `exporter` binary maps each to its flag).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ExportSetting {
    /// The ONNX file to write.
    Out,
    /// The ONNX opset.
    Opset,
    /// Which generator weights (EMA or raw).
    Weights,
    /// The model's name in a Triton repository.
    TritonName,
    /// Triton's `max_batch_size`.
    MaxBatchSize,
    /// The precision and the options that go with it.
    Precision,
    /// A saved int8 calibration (to read or to write).
    Calibration,
    /// The number of int8 calibration batches.
    CalibrationBatches,
}

impl std::fmt::Display for ExportSetting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Out => "output file",
            Self::Opset => "opset",
            Self::Weights => "weights",
            Self::TritonName => "Triton model name",
            Self::MaxBatchSize => "Triton max batch size",
            Self::Precision => "precision",
            Self::Calibration => "calibration file",
            Self::CalibrationBatches => "calibration batches",
        })
    }
}

/// What can go wrong exporting a generator.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExportError {
    /// The checkpoint is missing, unreadable or does not match its config.
    #[error(transparent)]
    Checkpoint(#[from] gantry_models::ModelError),
    /// A setting is out of range or does not fit the checkpoint.
    #[error("{setting}: {problem}")]
    Invalid {
        setting: ExportSetting,
        problem: String,
    },
    /// The generator's weights do not have the form the graph needs.
    #[error("generator weights: {0}")]
    Weights(String),
    /// Writing the output failed.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The quality gate refused the reduced-precision model (nothing was written).
    #[error("quality check refused the {precision} model (nothing written): {summary}")]
    QualityRefused { precision: String, summary: String },
    /// The quality gate could not run.
    #[error("quality check failed to run: {0}")]
    QualityCheck(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The written file failed the structural check (a bug in the exporter).
    #[error("{}: exported graph failed verification: {message}", path.display())]
    Verify { path: PathBuf, message: String },
}

impl From<gantry_files::FileError> for ExportError {
    fn from(e: gantry_files::FileError) -> Self {
        match e {
            gantry_files::FileError::Io { path, source } => Self::Io { path, source },
            other => Self::Io {
                path: PathBuf::new(),
                source: std::io::Error::other(other.to_string()),
            },
        }
    }
}

impl ExportError {
    /// An out-of-range `setting`.
    pub fn invalid(setting: ExportSetting, problem: impl Into<String>) -> Self {
        Self::Invalid {
            setting,
            problem: problem.into(),
        }
    }
}

/// Result alias of this crate.
pub type Result<T, E = ExportError> = std::result::Result<T, E>;
