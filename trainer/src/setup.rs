//! Turning settings into a run, fresh or resumed, with everything checked before any output is
//! written; and the other commands' entry points (evaluation, classifier). The `trainer`
//! binary maps its flags onto these.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use candle_core::Device;
use gantry_models::{resolve_checkpoint, Checkpoint, Kernels, ModelConfig};

use crate::data::{self, DataSpec, DatasetKind, Fit, Split};
use crate::distributed::{agree, Collective, Solo};
use crate::error::{Result, Setting, TrainError};
use crate::eval::standard::{
    self, ExtractProgress, InceptionEvaluator, InceptionOptions, InceptionReport,
};
use crate::eval::{self, classifier, EvalMetric, EvalReport, EvalSource};
use crate::train::run::{
    existing_run_outputs, prepare_out_dir, run, RunLock, RunOutcome, RunPaths,
};
use crate::train::{TrainConfig, Trainer};

/// Where training runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceKind {
    #[default]
    Cpu,
    /// The first CUDA device (needs a build with the `cuda` feature).
    Cuda,
}

impl std::str::FromStr for DeviceKind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda),
            other => Err(format!("unknown device `{other}` (expected cpu or cuda)")),
        }
    }
}

impl DeviceKind {
    /// The name on the command line and in messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::Cpu => "cpu",
            Self::Cuda => "cuda",
        }
    }
}

/// The candle device of `kind` (the first GPU for CUDA).
pub fn select_device(kind: DeviceKind) -> Result<Device> {
    select_device_ordinal(kind, 0)
}

/// The candle device of `kind`; for CUDA the GPU numbered `ordinal` (a rank's local rank).
pub fn select_device_ordinal(kind: DeviceKind, ordinal: usize) -> Result<Device> {
    match kind {
        DeviceKind::Cpu => Ok(Device::Cpu),
        DeviceKind::Cuda if cfg!(feature = "cuda") => Device::new_cuda(ordinal).map_err(|e| {
            TrainError::invalid(
                Setting::Device,
                format!("cannot use CUDA device {ordinal}: {e}"),
            )
        }),
        DeviceKind::Cuda => Err(TrainError::invalid(
            Setting::Device,
            "CUDA is not compiled into this trainer; rebuild with `cargo build --release --features cuda`",
        )),
    }
}

/// A run ready to start: the trainer, where it writes, and the lock of that folder.
pub struct PreparedRun {
    pub trainer: Trainer,
    pub paths: RunPaths,
    pub resumed_from: Option<PathBuf>,
    /// The run folder's lock, held by the process that writes (rank 0 of a data-parallel job).
    _lock: Option<RunLock>,
}

/// What a resumed run may change: its budget, its output intervals and where its data is.
/// Everything else is fixed by the checkpoint.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ResumeChanges {
    pub epochs: Option<u64>,
    pub max_steps: Option<u64>,
    pub data_dir: Option<PathBuf>,
    pub sample_every: Option<u64>,
    pub checkpoint_every: Option<u64>,
    pub accumulate: Option<usize>,
    pub tensorboard: Option<bool>,
    pub eval_every: Option<u64>,
    pub eval_samples: Option<usize>,
    pub eval_metric: Option<EvalMetric>,
}

impl ResumeChanges {
    fn apply(&self, config: &mut TrainConfig) {
        if let Some(e) = self.epochs {
            config.epochs = e;
        }
        if self.max_steps.is_some() {
            config.max_steps = self.max_steps;
        }
        if let Some(d) = &self.data_dir {
            config.data_dir = d.clone();
        }
        if let Some(s) = self.sample_every {
            config.sample_every = s;
        }
        if let Some(c) = self.checkpoint_every {
            config.checkpoint_every = c;
        }
        if let Some(k) = self.accumulate {
            config.accumulate = k;
        }
        if let Some(t) = self.tensorboard {
            config.tensorboard = t;
        }
        if let Some(e) = self.eval_every {
            config.eval_every = e;
        }
        if let Some(n) = self.eval_samples {
            config.eval_samples = n;
        }
        if let Some(m) = self.eval_metric {
            config.eval_metric = m;
        }
    }
}

/// Refuses a fresh run into a folder that holds (part of) a run.
fn check_no_run(out: &Path) -> Result<()> {
    let found = existing_run_outputs(out);
    if found.is_empty() && resolve_checkpoint(out).is_err() {
        return Ok(());
    }
    Err(TrainError::RunExists {
        out: out.to_path_buf(),
        found: if found.is_empty() {
            vec!["a checkpoint"]
        } else {
            found
        },
    })
}

/// A fresh run of `model` trained as `config` says, writing into `out` (which must not hold
/// any of a run's outputs yet). For conditional runs the class count comes from the data set.
/// Everything is checked, and the data loaded, before the folder is created and locked.
pub fn prepare_fresh(
    config: TrainConfig,
    model: ModelConfig,
    out: &Path,
    kernels: Kernels,
    device: &Device,
) -> Result<PreparedRun> {
    prepare_fresh_on(config, model, out, kernels, device, Box::new(Solo))
}

/// [`prepare_fresh`] as one rank of a data-parallel job: rank 0 checks, creates and locks the
/// folder; every rank loads the data; if any rank fails, all do (naming it); then the ranks
/// check that they agree and take rank 0's weights (see [`Trainer::join`]).
pub fn prepare_fresh_on(
    config: TrainConfig,
    mut model: ModelConfig,
    out: &Path,
    kernels: Kernels,
    device: &Device,
    collective: Box<dyn Collective>,
) -> Result<PreparedRun> {
    let lead = collective.rank() == 0;
    let mine = (|| -> Result<_> {
        if lead {
            check_no_run(out)?;
        }
        config.validate()?;
        model.validate()?;
        let data = data::load(
            &config.data_spec(model.image_size, model.channels),
            Split::Train,
        )?;
        if config.conditional {
            model.num_classes = Some(data.class_names.len());
        }
        let mut trainer = Trainer::new(config, model, data, device)?;
        trainer.set_kernels(kernels);
        let lock = if lead {
            std::fs::create_dir_all(out).map_err(|e| TrainError::io(out, e))?;
            let lock = RunLock::acquire(out)?;
            // Another trainer may have started into the folder since the first check.
            check_no_run(out)?;
            prepare_out_dir(out)?;
            Some(lock)
        } else {
            None
        };
        Ok((trainer, lock))
    })();
    let (mut trainer, lock) = agree(collective.as_ref(), mine)?;
    trainer.join(collective)?;
    Ok(PreparedRun {
        trainer,
        paths: RunPaths {
            out: out.to_path_buf(),
        },
        resumed_from: None,
        _lock: lock,
    })
}

/// Continues the run in `path` (its folder or a checkpoint) with `changes`.
pub fn prepare_resume(
    path: &Path,
    changes: &ResumeChanges,
    kernels: Kernels,
    device: &Device,
) -> Result<PreparedRun> {
    prepare_resume_on(path, changes, kernels, device, Box::new(Solo))
}

/// [`prepare_resume`] as one rank of a data-parallel job (every rank reads the checkpoint, so
/// the run folder must be on a file system all ranks see; the number of ranks may differ from
/// the run that wrote it).
pub fn prepare_resume_on(
    path: &Path,
    changes: &ResumeChanges,
    kernels: Kernels,
    device: &Device,
    collective: Box<dyn Collective>,
) -> Result<PreparedRun> {
    let lead = collective.rank() == 0;
    let mine = (|| -> Result<_> {
        let dir = resolve_checkpoint(path)
            .map_err(|e| TrainError::invalid(Setting::Resume, e.to_string()))?;
        let ckpt = Checkpoint::load(&dir)?;
        let stored = dir.join(gantry_models::checkpoint::CONFIG_FILE);
        let mut config: TrainConfig =
            serde_json::from_value(ckpt.meta.training.clone()).map_err(|e| {
                TrainError::data(&stored, format!("training options are unreadable: {e}"))
            })?;
        // A bad stored value is the checkpoint's fault, not an option the user gave.
        config
            .validate()
            .map_err(|e| TrainError::data(&stored, format!("stored {e}")))?;
        changes.apply(&mut config);
        config.validate()?;
        let model = &ckpt.meta.model;
        let data = data::load(
            &config.data_spec(model.image_size, model.channels),
            Split::Train,
        )?;
        let out = if path.join(gantry_models::checkpoint::CONFIG_FILE).is_file() {
            dir.parent()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| PathBuf::from("."))
        } else {
            path.to_path_buf()
        };
        let mut trainer = Trainer::from_checkpoint(&ckpt, config, data, device)?;
        trainer.set_kernels(kernels);
        // The lock first: preparing the folder removes stale temp files, which would be another
        // running trainer's checkpoint in the making.
        let lock = if lead {
            std::fs::create_dir_all(&out).map_err(|e| TrainError::io(&out, e))?;
            let lock = RunLock::acquire(&out)?;
            prepare_out_dir(&out)?;
            Some(lock)
        } else {
            None
        };
        Ok((trainer, lock, out, dir))
    })();
    let (mut trainer, lock, out, dir) = agree(collective.as_ref(), mine)?;
    trainer.join(collective)?;
    Ok(PreparedRun {
        trainer,
        paths: RunPaths { out },
        resumed_from: Some(dir),
        _lock: lock,
    })
}

/// Runs a prepared run until done or `stop` is set, reporting to `progress` (on rank 0).
pub fn execute(
    prepared: &mut PreparedRun,
    stop: &AtomicBool,
    progress: &mut dyn crate::progress::Progress,
) -> Result<RunOutcome> {
    run(&mut prepared.trainer, &prepared.paths, stop, progress)
}

/// How real images are loaded for an evaluation or the classifier: `dataset` from `dir` (else
/// `data/<dataset>`), at `image_size`, with `channels` (else the data set's own).
pub fn data_spec(
    dataset: DatasetKind,
    dir: Option<&Path>,
    image_size: usize,
    channels: Option<usize>,
    fit: Fit,
) -> Result<DataSpec> {
    let shape = ModelConfig {
        image_size,
        channels: channels.unwrap_or(dataset.default_channels()),
        ..ModelConfig::default()
    };
    shape.validate()?;
    Ok(DataSpec {
        kind: dataset,
        dir: dir.map_or_else(|| TrainConfig::default_data_dir(dataset), Path::to_path_buf),
        image_size: shape.image_size,
        channels: shape.channels,
        fit,
    })
}

/// What `trainer eval` scores and against what.
#[derive(Debug, Clone)]
pub struct EvalRequest {
    pub source: EvalSource,
    /// The data set whose test split is the reference (a checkpoint's own when `None`).
    pub dataset: Option<DatasetKind>,
    pub data_dir: Option<PathBuf>,
    /// Image size and channels of an image folder (a checkpoint fixes its own).
    pub image_size: usize,
    pub channels: Option<usize>,
    pub fit: Option<Fit>,
    /// Generated samples per variant.
    pub samples: usize,
    pub seed: u64,
    /// The report file (default: `eval.json` in the run or image folder).
    pub out: Option<PathBuf>,
    /// Which features the scores are computed in.
    pub metric: EvalMetric,
    /// How the Inception metrics are computed (with [`EvalMetric::Inception`]).
    pub inception: InceptionOptions,
    /// Write the Inception reference statistics to this `.npz` file too.
    pub save_reference: Option<PathBuf>,
}

/// The report of an evaluation, by metric.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(untagged)]
pub enum EvalOutcome {
    Classifier(EvalReport),
    Inception(InceptionReport),
}

/// The data set a request scores against (`None`: an image folder scored against an explicit
/// reference) and the default report path.
fn eval_target(request: &EvalRequest) -> Result<(Option<DataSpec>, PathBuf)> {
    match &request.source {
        EvalSource::Checkpoint(path) => {
            let dir = resolve_checkpoint(path)
                .map_err(|e| TrainError::invalid(Setting::Checkpoint, e.to_string()))?;
            let meta = Checkpoint::read_meta(&dir)?;
            let trained: Option<TrainConfig> = serde_json::from_value(meta.training.clone()).ok();
            let run_dir = dir.parent().map(Path::to_path_buf).unwrap_or_default();
            let out = run_dir.join("eval.json");
            let Some(kind) = request.dataset.or(trained.as_ref().map(|t| t.dataset)) else {
                if request.metric == EvalMetric::Inception && request.inception.reference.is_some()
                {
                    return Ok((None, out));
                }
                return Err(TrainError::invalid(
                    Setting::Dataset,
                    "required: the checkpoint does not name its data set",
                ));
            };
            let spec = DataSpec {
                kind,
                dir: request
                    .data_dir
                    .clone()
                    .or(trained.as_ref().map(|t| t.data_dir.clone()))
                    .unwrap_or_else(|| TrainConfig::default_data_dir(kind)),
                image_size: meta.model.image_size,
                channels: meta.model.channels,
                fit: request
                    .fit
                    .or(trained.as_ref().map(|t| t.fit))
                    .unwrap_or_default(),
            };
            Ok((Some(spec), out))
        }
        EvalSource::Images(images) => {
            let out = images.join("eval.json");
            let Some(kind) = request.dataset else {
                if request.metric == EvalMetric::Inception && request.inception.reference.is_some()
                {
                    return Ok((None, out));
                }
                return Err(TrainError::invalid(
                    Setting::Dataset,
                    "required to score an image folder (or, with the inception metric, a --reference)",
                ));
            };
            let spec = data_spec(
                kind,
                request.data_dir.as_deref(),
                request.image_size,
                request.channels,
                request.fit.unwrap_or_default(),
            )?;
            Ok((Some(spec), out))
        }
    }
}

/// Runs an evaluation and writes its report; returns the report and where it was written.
/// `progress` shows the Inception network's feature extraction.
pub fn run_eval(
    request: &EvalRequest,
    log: &mut dyn FnMut(String),
    progress: &mut dyn ExtractProgress,
) -> Result<(EvalOutcome, PathBuf)> {
    let (spec, default_out) = eval_target(request)?;
    let out = request.out.clone().unwrap_or(default_out);
    if let Some(stats) = &request.save_reference {
        if request.metric != EvalMetric::Inception {
            return Err(TrainError::invalid(
                Setting::Dataset,
                "reference statistics are saved for the inception metric only",
            ));
        }
        check_writable_parent(stats)?;
    }
    check_writable_parent(&out)?;
    let report = match (request.metric, spec) {
        (EvalMetric::Classifier, Some(spec)) => EvalOutcome::Classifier(eval::evaluate(
            &request.source,
            &spec,
            request.samples,
            request.seed,
            &Device::Cpu,
            log,
        )?),
        (EvalMetric::Classifier, None) => {
            return Err(TrainError::invalid(
                Setting::Dataset,
                "the classifier metric needs a data set",
            ))
        }
        (EvalMetric::Inception, spec) => {
            let evaluator = InceptionEvaluator::new(
                spec.as_ref(),
                &request.inception,
                request.samples,
                request.seed,
                &Device::Cpu,
                log,
                progress,
            )?;
            let report = standard::evaluate_inception(&request.source, &evaluator, log, progress)?;
            if let Some(stats) = &request.save_reference {
                evaluator.reference().save(stats)?;
                log(format!("reference statistics: {}", stats.display()));
            }
            EvalOutcome::Inception(report)
        }
    };
    let mut json = serde_json::to_vec_pretty(&report).map_err(|e| {
        TrainError::io(
            &out,
            std::io::Error::other(format!("cannot serialise: {e}")),
        )
    })?;
    json.push(b'\n');
    gantry_models::atomic::write_file_atomic(&out, &json)?;
    Ok((report, out))
}

/// An error unless the folder `path` would be written in exists.
fn check_writable_parent(path: &Path) -> Result<()> {
    match path.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(dir) if !dir.is_dir() => Err(TrainError::io(
            path,
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("the folder {} does not exist", dir.display()),
            ),
        )),
        _ => Ok(()),
    }
}

/// Trains the evaluation classifier for `spec` (or, with a cache and without `force`, loads it).
pub fn run_classifier(
    spec: &DataSpec,
    epochs: usize,
    force: bool,
    log: &mut dyn FnMut(String),
) -> Result<classifier::ClassifierInfo> {
    let model = if force {
        classifier::train(spec, epochs, &Device::Cpu, log)?
    } else {
        classifier::load_or_train(spec, epochs, &Device::Cpu, log)?
    };
    log(format!(
        "classifier: {} ({:.2}% test accuracy)",
        classifier::cache_path(spec).display(),
        model.info.test_accuracy * 100.0
    ));
    Ok(model.info)
}

#[cfg(test)]
mod tests;
