//! The command line: every flag, its help, and its default (read from the library's defaults,
//! `TrainConfig::default()` and `ModelConfig::default()`, so they are written down once).

use std::path::PathBuf;

use clap::parser::ValueSource;
use clap::{ArgMatches, Args, CommandFactory, Parser, Subcommand};
use gantry_models::{Arch, Kernels, ModelConfig};
use gantry_runtime::ProviderChoice;
use gantry_trainer::augment::Augment;
use gantry_trainer::data::{DatasetKind, Fit};
use gantry_trainer::eval::inception::ResizeFilter;
use gantry_trainer::eval::EvalMetric;
use gantry_trainer::loss::LossKind;
use gantry_trainer::preset::Preset;
use gantry_trainer::setup::{DeviceKind, ResumeChanges};
use gantry_trainer::TrainConfig;

fn defaults() -> TrainConfig {
    TrainConfig::default()
}

fn model_defaults() -> ModelConfig {
    ModelConfig::default()
}

#[derive(Parser)]
#[command(
    name = "trainer",
    version,
    about = "Train GAN generators (DCGAN, SNGAN ResNet) for Gantry"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Train (or resume training) a GAN (DCGAN or SNGAN ResNet) on a data set.
    Train(Box<TrainArgs>),
    /// Time training steps on synthetic data (img/s), optionally with a per-layer breakdown.
    Bench(BenchArgs),
    /// Write a grid of samples from a checkpoint.
    Sample(SampleArgs),
    /// FID and class coverage of a checkpoint's samples (or an image folder) against the test split.
    Eval(EvalArgs),
    /// Train (and cache next to the data) the classifier `eval` scores with.
    Classifier(ClassifierArgs),
}

/// `trainer train`: a fresh run needs `--dataset` and `--out`; `--resume` continues a run and
/// takes only the schedule options.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Continue the run in this folder (or checkpoint) with its data order and optimiser state.
    #[arg(long)]
    pub resume: Option<PathBuf>,
    #[command(flatten)]
    pub run: RunArgs,
    #[command(flatten)]
    pub schedule: ScheduleArgs,
    /// Where to train: cpu or cuda (a build with --features cuda or cudnn).
    #[arg(long, default_value = "cpu")]
    pub device: DeviceKind,
    /// Convolution kernels: fast (Gantry's GEMM kernels on CPU, cuDNN on CUDA) or candle.
    #[arg(long, default_value = "fast")]
    pub kernels: Kernels,
    /// Print a plain progress line every N steps when not on a terminal.
    #[arg(long, default_value_t = 50)]
    pub log_every: u64,
    /// Be one rank of a data-parallel job started by an MPI launcher (`mpirun -np N trainer
    /// train ... --distributed`); needs a trainer built with `--features mpi`.
    #[arg(long)]
    pub distributed: bool,
}

/// What fixes a run: given when it starts, then stored in its checkpoint (not allowed with
/// `--resume`).
#[derive(Debug, Args)]
#[group(id = RUN_SETTINGS, multiple = true)]
pub struct RunArgs {
    /// Data set layout: mnist, fashion-mnist, cifar10 or folder (PNG/JPEG tree, subfolder = class).
    #[arg(long, required_unless_present = "resume")]
    pub dataset: Option<DatasetKind>,
    /// Output folder: samples/, metrics.jsonl, losses.png, checkpoint/, final/.
    #[arg(long, required_unless_present = "resume")]
    pub out: Option<PathBuf>,
    /// Image side in pixels: a power of two from 16 to 256.
    #[arg(long, default_value_t = model_defaults().image_size)]
    pub image_size: usize,
    /// Image channels, 1 or 3 [default: the data set's].
    #[arg(long)]
    pub channels: Option<usize>,
    /// How images reach the square size: crop (resize + centre crop) or pad (centre-pad).
    #[arg(long, default_value_t = defaults().fit)]
    pub fit: Fit,
    /// Images per batch.
    #[arg(long, default_value_t = defaults().batch_size)]
    pub batch_size: usize,
    /// Seed of weights, data order and latents.
    #[arg(long, default_value_t = defaults().seed)]
    pub seed: u64,
    /// Adam learning rate [default: the preset's: gantry 4e-4, dcgan 2e-4].
    #[arg(long, allow_negative_numbers = true)]
    pub lr: Option<f64>,
    /// D's Adam learning rate, for a two time-scale update (TTUR) [default: --lr].
    #[arg(long, value_name = "LR", allow_negative_numbers = true)]
    pub lr_d: Option<f64>,
    /// Adam beta1 [default: the preset's: 0.5; sngan 0].
    #[arg(long, allow_negative_numbers = true)]
    pub beta1: Option<f64>,
    /// Adam beta2 [default: the preset's: 0.999; sngan 0.9].
    #[arg(long, allow_negative_numbers = true)]
    pub beta2: Option<f64>,
    /// Network architecture: dcgan (Radford et al.: transposed 4x4 convolutions) or resnet (the
    /// SNGAN ResNet: residual blocks of 3x3 convolutions, 32 px and up; its blocks have
    /// 4 * --g-width and 2 * --d-width channels).
    #[arg(long, default_value_t = model_defaults().arch)]
    pub arch: Arch,
    /// Latent size.
    #[arg(long, default_value_t = model_defaults().latent_dim)]
    pub latent_dim: usize,
    /// Generator width (ngf).
    #[arg(long, default_value_t = model_defaults().g_width)]
    pub g_width: usize,
    /// Discriminator width (ndf).
    #[arg(long, default_value_t = model_defaults().d_width)]
    pub d_width: usize,
    /// Adversarial loss: bce (non-saturating, on logits) or hinge [default: the preset's: bce;
    /// sngan hinge].
    #[arg(long)]
    pub loss: Option<LossKind>,
    /// Discriminator updates per generator update, each on its own batch [default: the
    /// preset's: 1; sngan 5].
    #[arg(long)]
    pub d_steps: Option<usize>,
    /// Training recipe whose defaults apply to --lr, --beta1, --beta2, --loss, --d-steps, --ema
    /// and --spectral-norm when they are not given: gantry (spectral norm, lr 4e-4, EMA 0.999;
    /// chosen by measurement, docs/quality.md), dcgan (the DCGAN paper's recipe: lr 2e-4, no
    /// spectral norm, no EMA) or sngan (Miyato et al.: hinge, spectral norm, 5 D steps, lr 2e-4,
    /// betas (0, 0.9); with EMA 0.999).
    #[arg(long, default_value_t = Preset::default())]
    pub preset: Preset,
    /// Exponential moving average of G with this decay (e.g. 0.999), used for samples and export,
    /// or off [default: the preset's].
    #[arg(long, value_name = "DECAY|off", value_parser = parse_ema, allow_negative_numbers = true)]
    pub ema: Option<Ema>,
    /// Train a class-conditional pair on the data set's labels.
    #[arg(long)]
    pub conditional: bool,
    /// Spectral normalisation of D's weights, on or off (one power iteration per step)
    /// [default: the preset's; alone: on].
    #[arg(long, value_name = "on|off", num_args = 0..=1, default_missing_value = "on",
          value_parser = parse_on_off)]
    pub spectral_norm: Option<bool>,
    /// Spectral normalisation of G's weights too, as BigGAN (one power iteration per step; the
    /// exported generator holds the normalised weights, so nothing changes when serving it).
    #[arg(long)]
    pub g_spectral_norm: bool,
    /// R1 gradient penalty on real images with this gamma (e.g. 10), lazily every --r1-every steps.
    #[arg(long, value_name = "GAMMA", allow_negative_numbers = true)]
    pub r1: Option<f64>,
    /// Apply R1 every N steps, weighted by N (StyleGAN2's lazy regularisation).
    #[arg(long, default_value_t = defaults().r1_every)]
    pub r1_every: u64,
    /// DiffAugment before D, on real and generated images: a comma list of translation, cutout,
    /// color (Zhao et al. 2020; for small data sets), or off.
    #[arg(long, default_value_t = defaults().augment)]
    pub augment: Augment,
}

/// The group id of [`RunArgs`].
pub const RUN_SETTINGS: &str = "run_settings";

/// What a run's schedule is: may be changed when resuming.
#[derive(Debug, Args)]
pub struct ScheduleArgs {
    /// Folder holding the data set [default: data/DATASET].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Passes over the data set.
    #[arg(long, default_value_t = defaults().epochs)]
    pub epochs: u64,
    /// Stop after this many steps even if epochs remain.
    #[arg(long)]
    pub max_steps: Option<u64>,
    /// Write a sample grid every N steps (0: only at the end).
    #[arg(long, default_value_t = defaults().sample_every)]
    pub sample_every: u64,
    /// Write a checkpoint every N steps (0: only at the end and on Ctrl-C).
    #[arg(long, default_value_t = defaults().checkpoint_every)]
    pub checkpoint_every: u64,
    /// Split each batch into K micro-batches whose gradients are averaged before one update
    /// (per rank with --distributed; --batch-size stays the global batch).
    #[arg(long, default_value_t = defaults().accumulate)]
    pub accumulate: usize,
    /// TensorBoard event files in OUT/tb/: on or off.
    #[arg(long, default_value = "on", value_parser = parse_on_off, action = clap::ArgAction::Set)]
    pub tensorboard: bool,
    /// Evaluate FID and class coverage every N steps and keep the best checkpoint in OUT/best/ (0: never).
    #[arg(long, default_value_t = defaults().eval_every)]
    pub eval_every: u64,
    /// Generated samples per evaluation during training.
    #[arg(long, default_value_t = defaults().eval_samples)]
    pub eval_samples: usize,
    /// What evaluations during training score in: classifier (Gantry's own, seconds) or
    /// inception (the standard FID Inception-v3: FID, KID, precision/recall; about a minute
    /// per 1000 samples on 2 cores, the reference cached after the first).
    #[arg(long, default_value_t = defaults().eval_metric)]
    pub eval_metric: EvalMetric,
}

/// `--ema`'s value: a decay, or no average.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Ema(pub Option<f64>);

/// A decay such as `0.999`, or `off`.
fn parse_ema(s: &str) -> Result<Ema, String> {
    if s == "off" {
        return Ok(Ema(None));
    }
    s.parse::<f64>()
        .map(|decay| Ema(Some(decay)))
        .map_err(|_| format!("expected a decay such as 0.999, or off; got `{s}`"))
}

/// `on` or `off`.
fn parse_on_off(s: &str) -> Result<bool, String> {
    match s {
        "on" => Ok(true),
        "off" => Ok(false),
        other => Err(format!("expected on or off, got `{other}`")),
    }
}

/// Whether the flag of `id` was given on the command line (not just defaulted).
fn given(matches: &ArgMatches, id: &str) -> bool {
    matches!(
        matches.value_source(id),
        Some(ValueSource::CommandLine | ValueSource::EnvVariable)
    )
}

/// The long flag of the argument `id` of `trainer train`.
fn long_flag(id: &str) -> String {
    format!("--{}", id.replace('_', "-"))
}

impl TrainArgs {
    /// The run-fixing flags given on the command line (an error with `--resume`).
    pub fn given_run_settings(train: &ArgMatches) -> Vec<String> {
        let cmd = Cli::command();
        let Some(sub) = cmd.find_subcommand("train") else {
            return Vec::new();
        };
        sub.get_groups()
            .filter(|g| g.get_id() == RUN_SETTINGS)
            .flat_map(|g| g.get_args())
            .filter(|id| given(train, id.as_str()))
            .map(|id| long_flag(id.as_str()))
            .collect()
    }

    /// The schedule flags a resume may give, by name.
    pub fn schedule_flags() -> Vec<String> {
        [
            "data_dir",
            "epochs",
            "max_steps",
            "sample_every",
            "checkpoint_every",
            "accumulate",
            "tensorboard",
            "eval_every",
            "eval_samples",
            "eval_metric",
        ]
        .into_iter()
        .map(long_flag)
        .collect()
    }

    /// The fresh run's training config: the defaults with the given flags.
    pub fn train_config(&self, dataset: DatasetKind) -> TrainConfig {
        let (run, schedule) = (&self.run, &self.schedule);
        let mut config = TrainConfig::for_dataset(dataset);
        if let Some(dir) = &schedule.data_dir {
            config.data_dir = dir.clone();
        }
        config.fit = run.fit;
        config.batch_size = run.batch_size;
        config.epochs = schedule.epochs;
        config.max_steps = schedule.max_steps;
        config.seed = run.seed;
        config.adam.lr = run.lr.unwrap_or(run.preset.lr());
        config.lr_d = run.lr_d;
        let (beta1, beta2) = run.preset.betas();
        config.adam.beta1 = run.beta1.unwrap_or(beta1);
        config.adam.beta2 = run.beta2.unwrap_or(beta2);
        config.loss = run.loss.unwrap_or(run.preset.loss());
        config.d_steps = run.d_steps.unwrap_or(run.preset.d_steps());
        config.ema = run.ema.map_or(run.preset.ema(), |ema| ema.0);
        config.conditional = run.conditional;
        config.augment = run.augment;
        config.r1 = run.r1;
        config.r1_every = run.r1_every;
        config.sample_every = schedule.sample_every;
        config.checkpoint_every = schedule.checkpoint_every;
        config.accumulate = schedule.accumulate;
        config.tensorboard = schedule.tensorboard;
        config.eval_every = schedule.eval_every;
        config.eval_samples = schedule.eval_samples;
        config.eval_metric = schedule.eval_metric;
        config
    }

    /// The fresh run's model (the class count comes from the data for conditional runs).
    pub fn model_config(&self, dataset: DatasetKind) -> ModelConfig {
        ModelConfig {
            arch: self.run.arch,
            latent_dim: self.run.latent_dim,
            image_size: self.run.image_size,
            channels: self.run.channels.unwrap_or(dataset.default_channels()),
            g_width: self.run.g_width,
            d_width: self.run.d_width,
            spectral_norm: self
                .run
                .spectral_norm
                .unwrap_or(self.run.preset.spectral_norm()),
            g_spectral_norm: self.run.g_spectral_norm,
            ..ModelConfig::default()
        }
    }

    /// What a resume changes: the schedule flags given on the command line.
    pub fn resume_changes(&self, train: &ArgMatches) -> ResumeChanges {
        let s = &self.schedule;
        ResumeChanges {
            epochs: given(train, "epochs").then_some(s.epochs),
            max_steps: s.max_steps,
            data_dir: s.data_dir.clone(),
            sample_every: given(train, "sample_every").then_some(s.sample_every),
            checkpoint_every: given(train, "checkpoint_every").then_some(s.checkpoint_every),
            accumulate: given(train, "accumulate").then_some(s.accumulate),
            tensorboard: given(train, "tensorboard").then_some(s.tensorboard),
            eval_every: given(train, "eval_every").then_some(s.eval_every),
            eval_samples: given(train, "eval_samples").then_some(s.eval_samples),
            eval_metric: given(train, "eval_metric").then_some(s.eval_metric),
        }
    }
}

#[derive(Debug, Args)]
pub struct SampleArgs {
    /// Checkpoint or run directory.
    #[arg(long, required_unless_present = "animate", conflicts_with = "animate")]
    pub checkpoint: Option<PathBuf>,
    /// Instead of a grid: animate this run's sample grids over its steps into a GIF
    /// [default --out: RUN/progress.gif].
    #[arg(long, value_name = "RUN")]
    pub animate: Option<PathBuf>,
    /// Output PNG (or GIF with --animate) [default: samples.png].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Number of images.
    #[arg(long, default_value_t = 64)]
    pub n: usize,
    /// Seed of the latents.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Use batch statistics (train mode) instead of the running ones (eval mode, as exported).
    #[arg(long)]
    pub train_mode: bool,
    /// Use the raw generator even when the checkpoint has EMA weights.
    #[arg(long)]
    pub raw: bool,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Image side.
    /// Network architecture: dcgan or resnet.
    #[arg(long, default_value_t = model_defaults().arch)]
    pub arch: Arch,
    /// Generator width (resnet: blocks of 4x this many channels).
    #[arg(long, default_value_t = model_defaults().g_width)]
    pub g_width: usize,
    /// Discriminator width (resnet: blocks of 2x this many channels).
    #[arg(long, default_value_t = model_defaults().d_width)]
    pub d_width: usize,
    /// Discriminator updates per step, each on its own batch.
    #[arg(long, default_value_t = 1)]
    pub d_steps: usize,
    /// Adversarial loss: bce or hinge.
    #[arg(long, default_value_t = defaults().loss)]
    pub loss: LossKind,
    #[arg(long, default_value_t = model_defaults().image_size)]
    pub image_size: usize,
    /// Image channels.
    #[arg(long, default_value_t = model_defaults().channels)]
    pub channels: usize,
    /// Batch size.
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// Timed steps (the median is reported).
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    /// Untimed warm-up steps.
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// Kernels: fast or candle.
    #[arg(long, default_value = "fast")]
    pub kernels: Kernels,
    /// cpu or cuda.
    #[arg(long, default_value = "cpu")]
    pub device: DeviceKind,
    /// Print where the time goes (phases of the step, and each convolution's kernels).
    #[arg(long)]
    pub profile: bool,
    /// Time the step with an EMA of G at this decay (the bare DCGAN step, what the PyTorch
    /// reference times, has none).
    #[arg(long, value_name = "DECAY", allow_negative_numbers = true)]
    pub ema: Option<f64>,
    /// Time the step with spectral normalisation of D.
    #[arg(long)]
    pub spectral_norm: bool,
    /// Time the step with this DiffAugment policy.
    #[arg(long, default_value_t = defaults().augment)]
    pub augment: Augment,
    /// Time the step with the R1 penalty at this gamma, every --r1-every steps (see the mean).
    #[arg(long, value_name = "GAMMA", allow_negative_numbers = true)]
    pub r1: Option<f64>,
    /// R1's interval in steps.
    #[arg(long, default_value_t = defaults().r1_every)]
    pub r1_every: u64,
}

/// `trainer eval` options.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// Checkpoint or run folder to evaluate (its generator(s) in eval and train mode).
    #[arg(long, conflicts_with = "images", required_unless_present = "images")]
    pub checkpoint: Option<PathBuf>,
    /// Instead: a folder of generated images (e.g. PyTorch's samples).
    #[arg(long)]
    pub images: Option<PathBuf>,
    /// Data set whose test split is the reference [default: the checkpoint's].
    #[arg(long)]
    pub dataset: Option<DatasetKind>,
    /// Its folder [default: the checkpoint's, else data/DATASET].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Image size for --images.
    #[arg(long, default_value_t = model_defaults().image_size)]
    pub image_size: usize,
    /// Channels for --images [default: the data set's].
    #[arg(long)]
    pub channels: Option<usize>,
    /// How real images are fitted to the size [default: the checkpoint's, else crop].
    #[arg(long)]
    pub fit: Option<Fit>,
    /// Generated samples per variant [default: 10000 with the classifier, 2000 with inception]
    /// (with inception and --images: at most this many of the folder's images, in name order).
    #[arg(long)]
    pub n: Option<usize>,
    /// Seed of the sample latents (and of KID's subsets).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Where to write the report [default: eval.json in the run folder, or in the image folder].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Features to score in: classifier (Gantry's own, cheap) or inception (the standard FID
    /// Inception-v3: FID, KID, precision/recall comparable with papers and other tools).
    #[arg(long, default_value_t = EvalMetric::Classifier)]
    pub metric: EvalMetric,
    /// Resize to 299x299 for inception: nv-bilinear (StyleGAN2-ADA, clean-fid legacy_tensorflow)
    /// or pil-bicubic (clean-fid clean).
    #[arg(long, default_value_t = ResizeFilter::NvBilinear)]
    pub resize: ResizeFilter,
    /// Score against this image folder or .npz statistics file (mu, sigma) instead of the data
    /// set's test split (inception).
    #[arg(long)]
    pub reference: Option<PathBuf>,
    /// At most this many reference images [default: all].
    #[arg(long)]
    pub reference_images: Option<usize>,
    /// Also write the reference statistics (mu, sigma, features) to this .npz file (inception).
    #[arg(long)]
    pub save_reference: Option<PathBuf>,
    /// The FID Inception weights [default: .tools/inception/default_1.pt, from
    /// scripts/fetch-inception.sh].
    #[arg(long)]
    pub inception_weights: Option<PathBuf>,
    /// Where ONNX Runtime runs the Inception network: cpu, cuda, tensorrt or auto.
    #[arg(long, default_value = "cpu")]
    pub inception_providers: ProviderChoice,
}

/// `trainer classifier` options.
#[derive(Debug, Args)]
pub struct ClassifierArgs {
    /// Data set to classify: mnist, fashion-mnist, cifar10 or folder.
    #[arg(long)]
    pub dataset: DatasetKind,
    /// Its folder [default: data/DATASET].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Image side the classifier sees (the generators' it will score).
    #[arg(long, default_value_t = model_defaults().image_size)]
    pub image_size: usize,
    /// Image channels [default: the data set's].
    #[arg(long)]
    pub channels: Option<usize>,
    /// How images reach the square size: crop or pad.
    #[arg(long, default_value_t = defaults().fit)]
    pub fit: Fit,
    /// Training epochs.
    #[arg(long, default_value_t = gantry_trainer::eval::CLASSIFIER_EPOCHS)]
    pub epochs: usize,
    /// Retrain even when a cached classifier exists.
    #[arg(long)]
    pub force: bool,
}
