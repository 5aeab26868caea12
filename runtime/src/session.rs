//! Opening ONNX Runtime sessions of one model file with one set of options.

use std::path::{Path, PathBuf};

use ort::session::builder::{GraphOptimizationLevel, PrepackedWeights, SessionBuilder};
use ort::session::Session;

use crate::error::{Result, RuntimeError, SourceError};
use crate::library;

/// How much ONNX Runtime rewrites the graph before running it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum GraphOptimization {
    /// No rewrites (a reference for checking that optimisations keep the results).
    Disabled,
    /// Constant folding and redundant-node removal.
    Basic,
    /// Plus operator fusions.
    Extended,
    /// Everything, including layout optimisations (the default).
    #[default]
    All,
}

impl GraphOptimization {
    pub(crate) fn level(self) -> GraphOptimizationLevel {
        match self {
            GraphOptimization::Disabled => GraphOptimizationLevel::Disable,
            GraphOptimization::Basic => GraphOptimizationLevel::Level1,
            GraphOptimization::Extended => GraphOptimizationLevel::Level2,
            GraphOptimization::All => GraphOptimizationLevel::All,
        }
    }
}

/// Everything needed to open another session of the same model: sessions opened from one spec
/// share their pre-packed (re-laid-out) weights.
pub(crate) struct SessionSpec {
    path: PathBuf,
    optimization: GraphOptimization,
    prepacked: PrepackedWeights,
}

impl SessionSpec {
    pub(crate) fn new(path: &Path, optimization: GraphOptimization) -> Self {
        Self {
            path: path.to_path_buf(),
            optimization,
            prepacked: PrepackedWeights::new(),
        }
    }

    /// A session builder with this spec's options and `intra_threads` threads per run
    /// (`None`: ONNX Runtime's default, one per core). Providers are registered by the caller.
    pub(crate) fn builder(&self, intra_threads: Option<usize>) -> Result<SessionBuilder> {
        let mut builder = Session::builder(library::environment()?)
            .map_err(|e| self.error(e))?
            .with_optimization_level(self.optimization.level())
            .map_err(|e| self.error(e.into()))?
            .with_prepacked_weights(&self.prepacked)
            .map_err(|e| self.error(e.into()))?;
        if let Some(t) = intra_threads {
            builder = builder
                .with_intra_threads(t)
                .map_err(|e| self.error(e.into()))?;
        }
        Ok(builder)
    }

    /// Loads the model into a session made by [`SessionSpec::builder`].
    pub(crate) fn open(&self, mut builder: SessionBuilder) -> Result<Session> {
        commit_guarded(&self.path, || builder.commit_from_file(&self.path))
    }

    fn error(&self, e: ort::Error) -> RuntimeError {
        RuntimeError::Model {
            path: self.path.clone(),
            message: "cannot configure an ONNX Runtime session".into(),
            source: Some(e.into()),
        }
    }
}

/// Runs `commit` (ONNX Runtime loading the model at `path`) with a model that is not loadable
/// as an error naming the file. The `ort` bindings panic ("infallible") when ONNX Runtime
/// refuses to describe an input or output it loaded (a dimension below -1, found by fuzzing):
/// that panic is caught and becomes the same error, so a hostile file cannot bring down the
/// application that opens it.
pub(crate) fn commit_guarded(
    path: &Path,
    commit: impl FnOnce() -> ort::Result<Session>,
) -> Result<Session> {
    let not_loadable = |source: Option<SourceError>, detail: String| RuntimeError::Model {
        path: path.to_path_buf(),
        message: format!("not a loadable ONNX model{detail}"),
        source,
    };
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(commit)) {
        Ok(Ok(session)) => Ok(session),
        Ok(Err(e)) => Err(not_loadable(Some(e.into()), String::new())),
        Err(panic) => {
            let why = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("the ONNX Runtime bindings failed");
            Err(not_loadable(
                None,
                format!(" (its inputs or outputs: {why})"),
            ))
        }
    }
}
