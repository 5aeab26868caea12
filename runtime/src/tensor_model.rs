//! Any ONNX model with one float32 input and one float32 output, run on the provider asked
//! for: what programs other than generators need from ONNX Runtime (the training side's
//! Inception feature network is one), without their own copy of library loading and provider
//! registration.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ndarray::{ArrayViewD, IxDyn};
use ort::session::Session;
use ort::value::TensorRef;

use crate::error::{Result, RuntimeError};
use crate::providers::{self, ProviderChoice, ProviderOptions, ProviderReport};
use crate::session::GraphOptimization;
use crate::{library, Provider};

/// A loaded float-in, float-out model.
pub struct TensorModel {
    session: Mutex<Session>,
    name: PathBuf,
    input: String,
    output: String,
    report: ProviderReport,
}

impl std::fmt::Debug for TensorModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TensorModel")
            .field("name", &self.name)
            .field("input", &self.input)
            .field("output", &self.output)
            .field("provider", &self.report.active)
            .finish()
    }
}

impl TensorModel {
    /// Loads the model serialised in `bytes` (`name` stands for it in errors), with
    /// `intra_threads` threads per run (`None`: one per core) on the providers `choice` asks for.
    pub fn from_bytes(
        bytes: &[u8],
        name: &Path,
        choice: ProviderChoice,
        options: &ProviderOptions,
        intra_threads: Option<usize>,
    ) -> Result<Self> {
        library::ensure_loaded(None)?;
        let configure = |e: ort::Error| RuntimeError::Model {
            path: name.to_path_buf(),
            message: "cannot configure an ONNX Runtime session".into(),
            source: Some(e.into()),
        };
        let mut builder = Session::builder(library::environment()?)
            .map_err(configure)?
            .with_optimization_level(GraphOptimization::All.level())
            .map_err(|e| configure(e.into()))?;
        if let Some(t) = intra_threads {
            builder = builder
                .with_intra_threads(t)
                .map_err(|e| configure(e.into()))?;
        }
        let report = providers::register(&mut builder, choice, options)?;
        let session = builder
            .commit_from_memory(bytes)
            .map_err(|e| RuntimeError::Model {
                path: name.to_path_buf(),
                message: "not a loadable ONNX model".into(),
                source: Some(e.into()),
            })?;
        let one = |what: &str, names: Vec<String>| -> Result<String> {
            match <[String; 1]>::try_from(names) {
                Ok([n]) => Ok(n),
                Err(names) => Err(RuntimeError::Signature {
                    path: name.to_path_buf(),
                    message: format!("expected one {what}, found {}", names.len()),
                }),
            }
        };
        let input = one(
            "input",
            session
                .inputs()
                .iter()
                .map(|i| i.name().to_string())
                .collect(),
        )?;
        let output = one(
            "output",
            session
                .outputs()
                .iter()
                .map(|o| o.name().to_string())
                .collect(),
        )?;
        Ok(Self {
            session: Mutex::new(session),
            name: name.to_path_buf(),
            input,
            output,
            report,
        })
    }

    /// The provider that runs the model (and those skipped on the way).
    pub fn providers(&self) -> &ProviderReport {
        &self.report
    }

    /// Whether the model runs on ONNX Runtime's CPU provider.
    pub fn is_on_cpu(&self) -> bool {
        self.report.active == Provider::Cpu
    }

    /// Runs the model on `input` of `shape`; returns the output's shape and values.
    pub fn run(&self, input: &[f32], shape: &[usize]) -> Result<(Vec<usize>, Vec<f32>)> {
        let view = ArrayViewD::from_shape(IxDyn(shape), input).map_err(|e| {
            RuntimeError::Unsupported(format!(
                "{}: {} values do not make an input of shape {shape:?}: {e}",
                self.name.display(),
                input.len()
            ))
        })?;
        let value = TensorRef::from_array_view(view).map_err(RuntimeError::inference)?;
        let mut session = self.session.lock().unwrap_or_else(|e| e.into_inner());
        let outputs = session
            .run(ort::inputs![self.input.as_str() => value])
            .map_err(RuntimeError::inference)?;
        let out = outputs.get(self.output.as_str()).ok_or_else(|| {
            RuntimeError::inference(format!("the model gave no output `{}`", self.output))
        })?;
        let array = out
            .try_extract_array::<f32>()
            .map_err(RuntimeError::inference)?;
        Ok((
            array.shape().to_vec(),
            array.as_standard_layout().iter().copied().collect(),
        ))
    }
}
