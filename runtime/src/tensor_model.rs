//! Any ONNX model with float32 outputs, run on the provider asked for: what programs other than
//! generators need from ONNX Runtime (the training side's Inception feature network, the
//! exporter's int8 calibration), without their own copy of library loading and provider
//! registration.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ndarray::{ArrayViewD, IxDyn};
use ort::session::Session;
use ort::session::SessionInputValue;
use ort::value::TensorRef;

use crate::error::{Result, RuntimeError};
use crate::providers::{self, ProviderChoice, ProviderOptions, ProviderReport};
use crate::session::{commit_guarded, GraphOptimization};
use crate::{library, Provider};

/// A loaded model whose outputs are float32: one float input and one output for [`run`]
/// ([`TensorModel::from_bytes`]), any inputs and outputs for [`TensorModel::run_all`]
/// ([`TensorModel::open`]).
///
/// [`run`]: TensorModel::run
pub struct TensorModel {
    session: Mutex<Session>,
    name: PathBuf,
    inputs: Vec<String>,
    outputs: Vec<String>,
    report: ProviderReport,
}

/// One input of [`TensorModel::run_all`]: its values and shape.
#[derive(Debug, Clone, Copy)]
pub enum Feed<'a> {
    F32(&'a [f32], &'a [usize]),
    I64(&'a [i64], &'a [usize]),
}

/// One output of [`TensorModel::run_all`].
#[derive(Debug, Clone, PartialEq)]
pub struct Fetched {
    pub name: String,
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
}

impl std::fmt::Debug for TensorModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TensorModel")
            .field("name", &self.name)
            .field("inputs", &self.inputs)
            .field("outputs", &self.outputs)
            .field("provider", &self.report.active)
            .finish()
    }
}

impl TensorModel {
    /// Loads the model serialised in `bytes` (`name` stands for it in errors), with
    /// `intra_threads` threads per run (`None`: one per core) on the providers `choice` asks for;
    /// refuses a model without exactly one input and one output.
    pub fn from_bytes(
        bytes: &[u8],
        name: &Path,
        choice: ProviderChoice,
        options: &ProviderOptions,
        intra_threads: Option<usize>,
    ) -> Result<Self> {
        let model = Self::open(bytes, name, choice, options, intra_threads)?;
        for (what, names) in [("input", &model.inputs), ("output", &model.outputs)] {
            if names.len() != 1 {
                return Err(RuntimeError::Signature {
                    path: name.to_path_buf(),
                    message: format!("expected one {what}, found {}", names.len()),
                });
            }
        }
        Ok(model)
    }

    /// Loads a model with any number of inputs and outputs, as [`TensorModel::from_bytes`].
    pub fn open(
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
        let session = commit_guarded(name, || builder.commit_from_memory(bytes))?;
        let inputs = session
            .inputs()
            .iter()
            .map(|i| i.name().to_string())
            .collect();
        let outputs = session
            .outputs()
            .iter()
            .map(|o| o.name().to_string())
            .collect();
        Ok(Self {
            session: Mutex::new(session),
            name: name.to_path_buf(),
            inputs,
            outputs,
            report,
        })
    }

    /// The names of the model's outputs, in order.
    pub fn output_names(&self) -> &[String] {
        &self.outputs
    }

    /// The provider that runs the model (and those skipped on the way).
    pub fn providers(&self) -> &ProviderReport {
        &self.report
    }

    /// Whether the model runs on ONNX Runtime's CPU provider.
    pub fn is_on_cpu(&self) -> bool {
        self.report.active == Provider::Cpu
    }

    /// Runs the model on `feeds` (name, values) and returns every output, in the model's order.
    pub fn run_all(&self, feeds: &[(&str, Feed<'_>)]) -> Result<Vec<Fetched>> {
        let mut inputs: Vec<(String, SessionInputValue<'_>)> = Vec::with_capacity(feeds.len());
        for (name, feed) in feeds {
            let value = match *feed {
                Feed::F32(values, shape) => TensorRef::from_array_view(self.view(values, shape)?)
                    .map_err(RuntimeError::inference)?
                    .into_dyn(),
                Feed::I64(values, shape) => TensorRef::from_array_view(self.view(values, shape)?)
                    .map_err(RuntimeError::inference)?
                    .into_dyn(),
            };
            inputs.push((name.to_string(), value.into()));
        }
        let mut session = self.session.lock().unwrap_or_else(|e| e.into_inner());
        let outputs = session.run(inputs).map_err(RuntimeError::inference)?;
        self.outputs
            .iter()
            .map(|name| {
                let value = outputs.get(name.as_str()).ok_or_else(|| {
                    RuntimeError::inference(format!("the model gave no output `{name}`"))
                })?;
                let array = value
                    .try_extract_array::<f32>()
                    .map_err(RuntimeError::inference)?;
                Ok(Fetched {
                    name: name.clone(),
                    shape: array.shape().to_vec(),
                    values: array.as_standard_layout().iter().copied().collect(),
                })
            })
            .collect()
    }

    fn view<'a, T>(&self, values: &'a [T], shape: &[usize]) -> Result<ArrayViewD<'a, T>> {
        ArrayViewD::from_shape(IxDyn(shape), values).map_err(|e| {
            RuntimeError::Unsupported(format!(
                "{}: {} values do not make an input of shape {shape:?}: {e}",
                self.name.display(),
                values.len()
            ))
        })
    }

    /// Runs a one-input, one-output model on `input` of `shape`; returns the output's shape and
    /// values.
    pub fn run(&self, input: &[f32], shape: &[usize]) -> Result<(Vec<usize>, Vec<f32>)> {
        let view = self.view(input, shape)?;
        let value = TensorRef::from_array_view(view).map_err(RuntimeError::inference)?;
        let mut session = self.session.lock().unwrap_or_else(|e| e.into_inner());
        let outputs = session
            .run(ort::inputs![self.inputs[0].as_str() => value])
            .map_err(RuntimeError::inference)?;
        let out = outputs.get(self.outputs[0].as_str()).ok_or_else(|| {
            RuntimeError::inference(format!("the model gave no output `{}`", self.outputs[0]))
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
