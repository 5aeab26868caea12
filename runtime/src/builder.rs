//! [`GeneratorBuilder`]: loads ONNX Runtime and a model, registers providers, checks the model.

use std::collections::BTreeMap;
use std::path::PathBuf;

use ort::session::Session;

use crate::error::{Result, RuntimeError};
use crate::generator::Generator;
use crate::lanes::Lanes;
use crate::library;
use crate::providers::{self, Provider, ProviderChoice, ProviderOptions};
use crate::session::{GraphOptimization, SessionSpec};
use crate::signature::{self, ModelInfo, TensorInfo};

/// Configures and loads a [`Generator`]; start with [`Generator::builder`].
#[derive(Debug, Clone, Default)]
pub struct GeneratorBuilder {
    model: Option<PathBuf>,
    ort_library: Option<PathBuf>,
    providers: ProviderChoice,
    provider_options: ProviderOptions,
    intra_threads: Option<usize>,
    batch_lanes: Option<usize>,
    optimization: GraphOptimization,
}

impl GeneratorBuilder {
    /// The ONNX file to load (required).
    pub fn model(mut self, path: impl Into<PathBuf>) -> Self {
        self.model = Some(path.into());
        self
    }

    /// An explicit ONNX Runtime library (else `ORT_DYLIB_PATH`, else `.ort/lib` as
    /// [`library::candidates`] lists).
    pub fn ort_library(mut self, path: impl Into<PathBuf>) -> Self {
        self.ort_library = Some(path.into());
        self
    }

    /// Which execution providers to try (default: TensorRT, CUDA, CPU).
    pub fn providers(mut self, choice: ProviderChoice) -> Self {
        self.providers = choice;
        self
    }

    /// Provider settings (device id, TensorRT cache, ...).
    pub fn provider_options(mut self, options: ProviderOptions) -> Self {
        self.provider_options = options;
        self
    }

    /// Graph optimisation level (default: all).
    pub fn graph_optimization(mut self, level: GraphOptimization) -> Self {
        self.optimization = level;
        self
    }

    /// Threads ONNX Runtime uses inside one run (default: all cores).
    pub fn intra_threads(mut self, threads: usize) -> Self {
        self.intra_threads = Some(threads);
        self
    }

    /// On the CPU provider, batches of at least `lanes` images run as `lanes` single-threaded
    /// sessions at once, each on a slice of the batch (default: as many as
    /// [`intra_threads`](Self::intra_threads), else one per core; 1 turns lanes off). Ignored on
    /// GPU providers. Faster because ONNX Runtime leaves parts of each operator (such as
    /// ConvTranspose's col2im) on one thread, while lanes keep every core busy for the whole
    /// graph. They open on the second batch large enough to use them, so that a one-batch job
    /// does not pay for opening them.
    pub fn batch_lanes(mut self, lanes: usize) -> Self {
        self.batch_lanes = Some(lanes);
        self
    }

    /// Loads the library and the model, registers providers and checks the model's signature.
    pub fn build(self) -> Result<Generator> {
        let path = self.model.clone().ok_or_else(|| RuntimeError::Model {
            path: PathBuf::new(),
            message: "no model file given".into(),
            source: None,
        })?;
        if !path.is_file() {
            return Err(RuntimeError::Model {
                path,
                message: "no such file".into(),
                source: None,
            });
        }
        library::ensure_loaded(self.ort_library.as_deref())?;
        let spec = SessionSpec::new(&path, self.optimization);
        let mut builder = spec.builder(self.intra_threads)?;
        let report = providers::register(&mut builder, self.providers, &self.provider_options)?;
        let session = spec.open(builder)?;
        let inputs: Vec<TensorInfo> = session
            .inputs()
            .iter()
            .map(|o| TensorInfo::from_ort(o.name(), o.dtype()))
            .collect();
        let outputs: Vec<TensorInfo> = session
            .outputs()
            .iter()
            .map(|o| TensorInfo::from_ort(o.name(), o.dtype()))
            .collect();
        let signature = signature::detect(&path, &inputs, &outputs)?;
        let (metadata, producer) = read_metadata(&session);
        // TensorRT runs the QDQ nodes of an int8 model only with its int8 mode on: open again.
        let int8 = metadata.get("gantry.precision").map(String::as_str) == Some("int8");
        if report.active == Provider::TensorRt && int8 && !self.provider_options.trt_int8 {
            drop(session);
            let mut again = self;
            again.provider_options.trt_int8 = true;
            return again.build();
        }
        let info = ModelInfo::new(&path, signature, inputs, outputs, metadata, producer);
        let lanes = if report.active == Provider::Cpu {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            Lanes::new(
                spec,
                self.batch_lanes.or(self.intra_threads).unwrap_or(cores),
            )
        } else {
            Lanes::none()
        };
        Ok(Generator::from_parts(session, lanes, info, report))
    }
}

/// The model's custom metadata and producer (empty when ONNX Runtime cannot read them).
fn read_metadata(session: &Session) -> (BTreeMap<String, String>, Option<String>) {
    let Ok(meta) = session.metadata() else {
        return (BTreeMap::new(), None);
    };
    let keys = meta.custom_keys().unwrap_or_default();
    let map = keys
        .into_iter()
        .filter_map(|k| meta.custom(&k).map(|v| (k, v)))
        .collect();
    (map, meta.producer())
}

impl Generator {
    /// Starts configuring a generator.
    pub fn builder() -> GeneratorBuilder {
        GeneratorBuilder::default()
    }
}
