//! Command-line options of `trainer train` and how they become a run (fresh or resumed).

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use candle_core::Device;
use clap::Args;
use gantry_models::{resolve_checkpoint, AdamConfig, Checkpoint, Kernels, ModelConfig};

use crate::data::{self, DatasetKind, Fit, Split};
use crate::error::{Result, TrainError};
use crate::loss::LossKind;
use crate::train::run::{prepare_out_dir, run, RunOutcome, RunPaths};
use crate::train::{TrainConfig, Trainer};

/// `trainer train` options. Without `--resume`, `--dataset` and `--out` are required; with it,
/// only the options that do not change the run's meaning may be given.
#[derive(Debug, Clone, Args, Default)]
pub struct TrainArgs {
    /// Data set layout: mnist, fashion-mnist, cifar10 or folder (PNG/JPEG tree, subfolder = class).
    #[arg(long)]
    pub dataset: Option<DatasetKind>,
    /// Folder holding the data set (default: data/<dataset>).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Output folder: samples/, metrics.jsonl, losses.png, checkpoint/, final/.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Continue the run in this folder (or checkpoint) with its data order and optimiser state.
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Image side in pixels: a power of two from 16 to 256 [default: 32].
    #[arg(long)]
    pub image_size: Option<usize>,
    /// Image channels, 1 or 3 [default: the data set's].
    #[arg(long)]
    pub channels: Option<usize>,
    /// How images reach the square size: crop (resize + centre crop) or pad [default: crop].
    #[arg(long)]
    pub fit: Option<Fit>,
    /// Images per batch [default: 128].
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Passes over the data set [default: 5].
    #[arg(long)]
    pub epochs: Option<u64>,
    /// Stop after this many steps even if epochs remain.
    #[arg(long)]
    pub max_steps: Option<u64>,
    /// Seed of weights, data order and latents [default: 0].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Adam learning rate [default: 0.0002].
    #[arg(long)]
    pub lr: Option<f64>,
    /// Adam beta1 [default: 0.5].
    #[arg(long)]
    pub beta1: Option<f64>,
    /// Adam beta2 [default: 0.999].
    #[arg(long)]
    pub beta2: Option<f64>,
    /// Latent size [default: 100].
    #[arg(long)]
    pub latent_dim: Option<usize>,
    /// Generator width ngf [default: 64].
    #[arg(long)]
    pub g_width: Option<usize>,
    /// Discriminator width ndf [default: 64].
    #[arg(long)]
    pub d_width: Option<usize>,
    /// Adversarial loss: bce (non-saturating) or hinge [default: bce].
    #[arg(long)]
    pub loss: Option<LossKind>,
    /// Keep an exponential moving average of G with this decay (e.g. 0.999); used for samples and export.
    #[arg(long)]
    pub ema: Option<f64>,
    /// Train a class-conditional pair on the data set's labels.
    #[arg(long)]
    pub conditional: bool,
    /// Write a sample grid every N steps [default: 500].
    #[arg(long)]
    pub sample_every: Option<u64>,
    /// Write a checkpoint every N steps [default: 500].
    #[arg(long)]
    pub checkpoint_every: Option<u64>,
    /// cpu or cuda [default: cpu].
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Convolution kernels: fast (Gantry's GEMM kernels on CPU) or candle.
    #[arg(long, default_value = "fast")]
    pub kernels: Kernels,
    /// Print a plain progress line every N steps when not on a terminal.
    #[arg(long, default_value_t = 50)]
    pub log_every: u64,
}

/// The device named on the command line.
pub fn select_device(name: &str) -> Result<Device> {
    match name {
        "cpu" => Ok(Device::Cpu),
        "cuda" if cfg!(feature = "cuda") => Device::new_cuda(0).map_err(|e| {
            TrainError::option("--device", format!("cannot use CUDA device 0: {e}"))
        }),
        "cuda" => Err(TrainError::option(
            "--device",
            "CUDA is not compiled into this trainer; rebuild with `cargo build --release --features cuda`",
        )),
        other => Err(TrainError::option("--device", format!("unknown device `{other}` (expected cpu or cuda)"))),
    }
}

/// A run ready to start: the trainer and where it writes.
pub struct PreparedRun {
    pub trainer: Trainer,
    pub paths: RunPaths,
    pub resumed_from: Option<PathBuf>,
}

/// Turns options into a fresh or resumed trainer, checking everything before any output is written.
pub fn prepare(args: &TrainArgs) -> Result<PreparedRun> {
    let device = select_device(&args.device)?;
    let mut prepared = match &args.resume {
        Some(path) => prepare_resume(args, path, &device)?,
        None => prepare_fresh(args, &device)?,
    };
    prepared.trainer.set_kernels(args.kernels);
    Ok(prepared)
}

fn prepare_fresh(args: &TrainArgs, device: &Device) -> Result<PreparedRun> {
    let dataset = args.dataset.ok_or_else(|| {
        TrainError::option(
            "--dataset",
            "required (mnist, fashion-mnist, cifar10 or folder) unless --resume is given",
        )
    })?;
    let out = args
        .out
        .clone()
        .ok_or_else(|| TrainError::option("--out", "required unless --resume is given"))?;
    if resolve_checkpoint(&out).is_ok() {
        return Err(TrainError::option(
            "--out",
            format!(
                "{} already holds a checkpoint; continue it with `trainer train --resume {}` or choose another --out",
                out.display(),
                out.display()
            ),
        ));
    }
    let image_size = args.image_size.unwrap_or(32);
    let batch_size = args.batch_size.unwrap_or(128);
    if batch_size == 0 {
        return Err(TrainError::option(
            "--batch-size",
            "must be at least 2, got 0",
        ));
    }
    let adam = AdamConfig {
        lr: args.lr.unwrap_or(2e-4),
        beta1: args.beta1.unwrap_or(0.5),
        beta2: args.beta2.unwrap_or(0.999),
        ..AdamConfig::default()
    };
    let config = TrainConfig {
        dataset,
        data_dir: args
            .data_dir
            .clone()
            .unwrap_or_else(|| Path::new("data").join(dataset.name())),
        fit: args.fit.unwrap_or_default(),
        batch_size,
        epochs: args.epochs.unwrap_or(5),
        max_steps: args.max_steps,
        seed: args.seed.unwrap_or(0),
        adam,
        loss: args.loss.unwrap_or_default(),
        ema: args.ema,
        conditional: args.conditional,
        sample_every: args.sample_every.unwrap_or(500),
        checkpoint_every: args.checkpoint_every.unwrap_or(500),
    };
    let mut model = ModelConfig {
        latent_dim: args.latent_dim.unwrap_or(100),
        image_size,
        channels: args.channels.unwrap_or(dataset.default_channels()),
        g_width: args.g_width.unwrap_or(64),
        d_width: args.d_width.unwrap_or(64),
        ..ModelConfig::default()
    };
    model.validate().map_err(|e| {
        let msg = e.to_string();
        let flag = if msg.contains("image_size") {
            "--image-size"
        } else if msg.contains("channels") {
            "--channels"
        } else {
            "--model"
        };
        TrainError::option(flag, msg)
    })?;
    let data = data::load(
        &config.data_spec(model.image_size, model.channels),
        Split::Train,
    )?;
    if config.conditional {
        model.num_classes = Some(data.class_names.len());
    }
    prepare_out_dir(&out)?;
    let trainer = Trainer::new(config, model, data, device)?;
    Ok(PreparedRun {
        trainer,
        paths: RunPaths { out },
        resumed_from: None,
    })
}

fn prepare_resume(args: &TrainArgs, path: &Path, device: &Device) -> Result<PreparedRun> {
    let fixed: [(&str, bool); 16] = [
        ("--dataset", args.dataset.is_some()),
        ("--out", args.out.is_some()),
        ("--image-size", args.image_size.is_some()),
        ("--channels", args.channels.is_some()),
        ("--fit", args.fit.is_some()),
        ("--batch-size", args.batch_size.is_some()),
        ("--seed", args.seed.is_some()),
        ("--lr", args.lr.is_some()),
        ("--beta1", args.beta1.is_some()),
        ("--beta2", args.beta2.is_some()),
        ("--latent-dim", args.latent_dim.is_some()),
        ("--g-width", args.g_width.is_some()),
        ("--d-width", args.d_width.is_some()),
        ("--loss", args.loss.is_some()),
        ("--ema", args.ema.is_some()),
        ("--conditional", args.conditional),
    ];
    if let Some((flag, _)) = fixed.iter().find(|(_, given)| *given) {
        return Err(TrainError::option(
            *flag,
            "cannot be changed when resuming (the checkpoint fixes it); only --epochs, --max-steps, --data-dir, --sample-every, --checkpoint-every, --device and --kernels may be given",
        ));
    }
    let dir =
        resolve_checkpoint(path).map_err(|e| TrainError::option("--resume", e.to_string()))?;
    let ckpt = Checkpoint::load(&dir)?;
    let mut config: TrainConfig =
        serde_json::from_value(ckpt.meta.training.clone()).map_err(|e| {
            TrainError::data(
                dir.join("config.json"),
                format!("training options are unreadable: {e}"),
            )
        })?;
    if let Some(e) = args.epochs {
        config.epochs = e;
    }
    if args.max_steps.is_some() {
        config.max_steps = args.max_steps;
    }
    if let Some(d) = &args.data_dir {
        config.data_dir = d.clone();
    }
    if let Some(s) = args.sample_every {
        config.sample_every = s;
    }
    if let Some(c) = args.checkpoint_every {
        config.checkpoint_every = c;
    }
    let model = &ckpt.meta.model;
    let data = data::load(
        &config.data_spec(model.image_size, model.channels),
        Split::Train,
    )?;
    let out = if path.join("config.json").is_file() {
        dir.parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."))
    } else {
        path.to_path_buf()
    };
    prepare_out_dir(&out)?;
    let trainer = Trainer::from_checkpoint(&ckpt, config, data, device)?;
    Ok(PreparedRun {
        trainer,
        paths: RunPaths { out },
        resumed_from: Some(dir),
    })
}

/// Runs a prepared run until done or `stop` is set.
pub fn execute(
    prepared: &mut PreparedRun,
    stop: &AtomicBool,
    log_every: u64,
) -> Result<RunOutcome> {
    run(&mut prepared.trainer, &prepared.paths, stop, log_every)
}

/// `trainer eval` options.
#[derive(Debug, Clone, Args)]
pub struct EvalArgs {
    /// Checkpoint or run folder to evaluate (its generator(s) in eval and train mode).
    #[arg(long, conflicts_with = "images", required_unless_present = "images")]
    pub checkpoint: Option<PathBuf>,
    /// Instead: a folder of generated images (e.g. PyTorch's samples).
    #[arg(long)]
    pub images: Option<PathBuf>,
    /// Data set whose test split is the reference [the checkpoint's].
    #[arg(long)]
    pub dataset: Option<DatasetKind>,
    /// Its folder [the checkpoint's, else data/<dataset>].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Image size for --images [32].
    #[arg(long)]
    pub image_size: Option<usize>,
    /// Channels for --images [the data set's].
    #[arg(long)]
    pub channels: Option<usize>,
    /// How real images are fitted to the size [the checkpoint's, else crop].
    #[arg(long)]
    pub fit: Option<Fit>,
    /// Generated samples per variant.
    #[arg(long, default_value_t = 10_000)]
    pub n: usize,
    /// Seed of the sample latents.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Where to write the report [<run folder>/eval.json, or <images>/eval.json].
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// `trainer classifier` options.
#[derive(Debug, Clone, Args)]
pub struct ClassifierArgs {
    #[arg(long)]
    pub dataset: DatasetKind,
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    #[arg(long, default_value_t = 32)]
    pub image_size: usize,
    #[arg(long)]
    pub channels: Option<usize>,
    #[arg(long, default_value = "crop")]
    pub fit: Fit,
    #[arg(long, default_value_t = crate::eval::CLASSIFIER_EPOCHS)]
    pub epochs: usize,
    /// Retrain even when a cached classifier exists.
    #[arg(long)]
    pub force: bool,
}

fn plain_spec(
    kind: DatasetKind,
    dir: Option<&PathBuf>,
    size: usize,
    channels: Option<usize>,
    fit: Fit,
) -> Result<data::DataSpec> {
    if !(16..=256).contains(&size) || !size.is_power_of_two() {
        return Err(TrainError::option(
            "--image-size",
            format!("must be a power of two between 16 and 256, got {size}"),
        ));
    }
    Ok(data::DataSpec {
        kind,
        dir: dir
            .cloned()
            .unwrap_or_else(|| Path::new("data").join(kind.name())),
        image_size: size,
        channels: channels.unwrap_or(kind.default_channels()),
        fit,
    })
}

/// Runs `trainer eval`; returns the report and where it was written.
pub fn run_eval(
    args: &EvalArgs,
    log: &mut dyn FnMut(String),
) -> Result<(crate::eval::EvalReport, PathBuf)> {
    use crate::eval::{evaluate, EvalSource};
    let (source, spec, default_out) = match (&args.checkpoint, &args.images) {
        (Some(path), _) => {
            let dir = resolve_checkpoint(path)
                .map_err(|e| TrainError::option("--checkpoint", e.to_string()))?;
            let meta = Checkpoint::read_meta(&dir)?;
            let trained: Option<TrainConfig> = serde_json::from_value(meta.training.clone()).ok();
            let kind = args
                .dataset
                .or(trained.as_ref().map(|t| t.dataset))
                .ok_or_else(|| {
                    TrainError::option(
                        "--dataset",
                        "required: the checkpoint does not name its data set",
                    )
                })?;
            let spec = data::DataSpec {
                kind,
                dir: args
                    .data_dir
                    .clone()
                    .or(trained.as_ref().map(|t| t.data_dir.clone()))
                    .unwrap_or_else(|| Path::new("data").join(kind.name())),
                image_size: meta.model.image_size,
                channels: meta.model.channels,
                fit: args
                    .fit
                    .or(trained.as_ref().map(|t| t.fit))
                    .unwrap_or_default(),
            };
            let run_dir = dir.parent().map(Path::to_path_buf).unwrap_or_default();
            (
                EvalSource::Checkpoint(path.clone()),
                spec,
                run_dir.join("eval.json"),
            )
        }
        (None, Some(images)) => {
            let kind = args
                .dataset
                .ok_or_else(|| TrainError::option("--dataset", "required with --images"))?;
            let spec = plain_spec(
                kind,
                args.data_dir.as_ref(),
                args.image_size.unwrap_or(32),
                args.channels,
                args.fit.unwrap_or_default(),
            )?;
            (
                EvalSource::Images(images.clone()),
                spec,
                images.join("eval.json"),
            )
        }
        (None, None) => {
            return Err(TrainError::option(
                "--checkpoint",
                "give --checkpoint or --images",
            ))
        }
    };
    let report = evaluate(&source, &spec, args.n, args.seed, &Device::Cpu, log)?;
    let out = args.out.clone().unwrap_or(default_out);
    let mut json = serde_json::to_vec_pretty(&report).expect("report serialises");
    json.push(b'\n');
    gantry_models::atomic::write_file_atomic(&out, &json)?;
    Ok((report, out))
}

/// Runs `trainer classifier`: trains (or with a cache, reports) the evaluation classifier.
pub fn run_classifier(
    args: &ClassifierArgs,
    log: &mut dyn FnMut(String),
) -> Result<crate::eval::classifier::ClassifierInfo> {
    use crate::eval::classifier;
    let spec = plain_spec(
        args.dataset,
        args.data_dir.as_ref(),
        args.image_size,
        args.channels,
        args.fit,
    )?;
    let model = if args.force {
        classifier::train(&spec, args.epochs, &Device::Cpu, log)?
    } else {
        classifier::load_or_train(&spec, args.epochs, &Device::Cpu, log)?
    };
    log(format!(
        "classifier: {} ({:.2}% test accuracy)",
        classifier::cache_path(&spec).display(),
        model.info.test_accuracy * 100.0
    ));
    Ok(model.info)
}
