//! Sample quality: FID on features of Gantry's own classifier, class coverage, and the
//! classifier-free sliced Wasserstein distance of image patches (`trainer classifier`,
//! `trainer eval`).

#![forbid(unsafe_code)]

pub mod classifier;
pub mod coverage;
mod error;
pub mod fid;
pub mod image_folder;
pub mod inception;
pub mod kid;
pub mod npz;
pub mod precision_gate;
pub mod standard;
pub mod swd;

pub use error::{MetricSetting, MetricsError, Result};

use std::path::PathBuf;

use candle_core::{Device, Tensor};
use gantry_models::{Checkpoint, Generator, ModelConfig};
use serde::Serialize;

use crate::error::MetricSetting as Setting;
use classifier::{Classifier, ClassifierInfo};
use coverage::Coverage;
use fid::{frechet_distance, GaussianStats};
use gantry_data::{self as data, DataSpec, Split};
use gantry_models::init::latents;
use swd::{PatchReference, Swd};

/// Which features scores are computed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EvalMetric {
    /// Gantry's own small classifier of the data set (cheap; FID, class coverage, SWD).
    #[default]
    Classifier,
    /// The standard FID Inception-v3 (FID, KID, precision/recall comparable with papers).
    Inception,
}

impl std::fmt::Display for EvalMetric {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Classifier => "classifier",
            Self::Inception => "inception",
        })
    }
}

impl std::str::FromStr for EvalMetric {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s {
            "classifier" => Ok(Self::Classifier),
            "inception" => Ok(Self::Inception),
            other => Err(format!("unknown metric `{other}`: classifier or inception")),
        }
    }
}

/// Epochs the evaluation classifier trains for when it is not cached yet.
pub const CLASSIFIER_EPOCHS: usize = 4;

/// Scores of one way of sampling.
#[derive(Debug, Clone, Serialize)]
pub struct VariantScore {
    /// `ema/eval`, `raw/train`, ... (weights / BatchNorm mode), or `images`.
    pub variant: String,
    pub fid: f64,
    pub coverage: Coverage,
    /// Sliced Wasserstein distance of Laplacian-pyramid patches (x1000), which needs no
    /// classifier: the measure of texture and detail where the classifier knows few classes.
    pub swd: Swd,
}

/// `eval.json`.
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    pub source: PathBuf,
    pub training_steps: Option<u64>,
    pub dataset: String,
    pub samples: usize,
    pub classifier: ClassifierInfo,
    pub classifier_path: PathBuf,
    /// FID of real training images against the test split: the floor a perfect generator reaches
    /// at this sample count.
    pub reference_fid_train_vs_test: f64,
    /// SWD of the same real training images against the test split.
    pub reference_swd_train_vs_test: Swd,
    pub results: Vec<VariantScore>,
}

/// What to evaluate.
#[derive(Debug, Clone)]
pub enum EvalSource {
    /// A checkpoint (or run folder): its generator(s) in eval and train mode.
    Checkpoint(PathBuf),
    /// A folder of generated PNG/JPEG images (e.g. the PyTorch reference's samples).
    Images(PathBuf),
}

/// The first `limit` images of `data`.
fn images_of(data: &data::Dataset, limit: usize, device: &Device) -> Result<Tensor> {
    let idx: Vec<usize> = (0..data.len().min(limit)).collect();
    Ok(data.batch(&idx, device)?.0)
}

fn stats_of(classifier: &Classifier, images: &Tensor) -> Result<GaussianStats> {
    let (features, _) = classifier.features_and_probs(images)?;
    Ok(GaussianStats::from_rows(&features, classifier::FEATURE_DIM))
}

/// `n` samples of `generator` (labels cycling through the classes for conditional models) in
/// batches of 128, and the labels asked for; `train_mode` normalises with batch statistics.
pub(crate) fn sample(
    generator: &Generator,
    n: usize,
    seed: u64,
    train_mode: bool,
    device: &Device,
) -> Result<(Tensor, Option<Vec<u32>>)> {
    let cfg: &ModelConfig = &generator.config;
    let labels: Option<Vec<u32>> = cfg
        .num_classes
        .map(|k| (0..n).map(|i| (i % k) as u32).collect());
    let z = latents(seed, "eval", n, cfg.latent_dim, device)?;
    Ok((generator.generate_batched(&z, 128, train_mode)?, labels))
}

/// What scoring needs once per data set: the classifier and the test split's feature
/// statistics. Built once, it scores any number of generators (`trainer eval`, and the
/// evaluations during training).
pub struct Evaluator {
    classifier: Classifier,
    real: GaussianStats,
    real_patches: PatchReference,
    /// Generated samples per score.
    pub samples: usize,
    /// Seed of the latents the samples come from.
    pub seed: u64,
    device: Device,
}

impl Evaluator {
    /// Loads (or trains and caches) the classifier of `data_spec` and the statistics of its
    /// test split; scores will use `samples` samples from the latents of `seed`.
    pub fn new(
        data_spec: &DataSpec,
        samples: usize,
        seed: u64,
        device: &Device,
        log: &mut dyn FnMut(String),
    ) -> Result<Self> {
        if samples < 2 {
            return Err(MetricsError::invalid(
                Setting::SampleCount,
                format!("must be at least 2 (a covariance needs two samples), got {samples}"),
            ));
        }
        let classifier = classifier::load_or_train(data_spec, CLASSIFIER_EPOCHS, device, log)?;
        let test = data::load(data_spec, Split::Test)?;
        let test_images = images_of(&test, usize::MAX, device)?;
        let real = stats_of(&classifier, &test_images)?;
        let real_patches =
            PatchReference::new(&swd::Images::from_tensor(&test_images)?, samples, seed)?;
        Ok(Self {
            classifier,
            real,
            real_patches,
            samples,
            seed,
            device: device.clone(),
        })
    }

    /// The classifier's description.
    pub fn classifier_info(&self) -> &ClassifierInfo {
        &self.classifier.info
    }

    /// FID and SWD of `data`'s first `samples` images against the test split.
    pub fn reference_scores(&self, data: &data::Dataset) -> Result<(f64, Swd)> {
        let images = images_of(data, self.samples, &self.device)?;
        let stats = stats_of(&self.classifier, &images)?;
        let swd = self
            .real_patches
            .distance(&swd::Images::from_tensor(&images)?)?;
        Ok((frechet_distance(&stats, &self.real), swd))
    }

    /// Scores images (`[N, C, H, W]` in [-1, 1]); `asked` are the classes a conditional
    /// generator was asked for.
    pub fn score_images(
        &self,
        images: &Tensor,
        asked: Option<&[u32]>,
        variant: &str,
    ) -> Result<VariantScore> {
        let (fid, probs) = self.fid_and_probs(images)?;
        Ok(VariantScore {
            variant: variant.to_string(),
            fid,
            coverage: coverage::coverage(&probs, self.classifier.info.classes, asked),
            swd: self
                .real_patches
                .distance(&swd::Images::from_tensor(images)?)?,
        })
    }

    /// FID alone of `samples` images of `generator` in eval mode (no SWD: the cheaper score for a
    /// second generator during training).
    pub fn fid_of_generator(&self, generator: &Generator) -> Result<f64> {
        let (images, _) = sample(generator, self.samples, self.seed, false, &self.device)?;
        Ok(self.fid_and_probs(&images)?.0)
    }

    /// FID of `images` against the test split, and the classifier's class probabilities.
    fn fid_and_probs(&self, images: &Tensor) -> Result<(f64, Vec<f32>)> {
        let (features, probs) = self.classifier.features_and_probs(images)?;
        let stats = GaussianStats::from_rows(&features, classifier::FEATURE_DIM);
        Ok((frechet_distance(&self.real, &stats), probs))
    }

    /// Scores `samples` images of `generator` (eval mode uses its running BatchNorm statistics,
    /// as exported; `train_mode` the batch statistics, which also updates the running ones).
    pub fn score_generator(
        &self,
        generator: &Generator,
        train_mode: bool,
        variant: &str,
    ) -> Result<VariantScore> {
        let (images, asked) = sample(generator, self.samples, self.seed, train_mode, &self.device)?;
        self.score_images(&images, asked.as_deref(), variant)
    }
}

/// Evaluates `source` against the test split of `data`, with `n` generated samples.
pub fn evaluate(
    source: &EvalSource,
    data_spec: &DataSpec,
    n: usize,
    seed: u64,
    device: &Device,
    log: &mut dyn FnMut(String),
) -> Result<EvalReport> {
    let evaluator = Evaluator::new(data_spec, n, seed, device, log)?;
    let train = data::load(data_spec, Split::Train)?;
    let (reference_fid, reference_swd) = evaluator.reference_scores(&train)?;
    let mut results = Vec::new();
    let mut steps = None;
    match source {
        EvalSource::Images(dir) => {
            let (images, asked) = image_folder::load(dir, data_spec, &train.class_names, device)?;
            log(format!(
                "scoring {} images from {}{}",
                images.dim(0)?,
                dir.display(),
                if asked.is_some() {
                    " (class subfolders: the classes asked for)"
                } else {
                    ""
                }
            ));
            results.push(evaluator.score_images(&images, asked.as_deref(), "images")?);
        }
        EvalSource::Checkpoint(path) => {
            let dir = gantry_models::resolve_checkpoint(path)?;
            let ckpt = Checkpoint::load_generator(&dir)?;
            steps = Some(ckpt.step());
            let cfg = &ckpt.meta.model;
            if cfg.image_size != data_spec.image_size || cfg.channels != data_spec.channels {
                return Err(MetricsError::invalid(
                    Setting::Dataset,
                    format!(
                        "the model makes {}x{}x{} images but the evaluation data is {}x{}x{}",
                        cfg.image_size,
                        cfg.image_size,
                        cfg.channels,
                        data_spec.image_size,
                        data_spec.image_size,
                        data_spec.channels
                    ),
                ));
            }
            let mut weights = vec![("raw", &ckpt.generator)];
            if let Some(ema) = &ckpt.generator_ema {
                weights.insert(0, ("ema", ema));
            }
            for (name, tensors) in weights {
                let g = Generator::from_tensors(cfg, tensors, device)?;
                for (mode, train_mode) in [("eval", false), ("train", true)] {
                    let s = evaluator.score_generator(&g, train_mode, &format!("{name}/{mode}"))?;
                    log(format!(
                        "{}: FID {:.2}, SWD {:.2}, {} classes >= 5%, entropy {:.3} bits",
                        s.variant,
                        s.fid,
                        s.swd.mean,
                        s.coverage.classes_over_5_percent,
                        s.coverage.label_entropy_bits
                    ));
                    results.push(s);
                }
            }
        }
    }
    let source_path = match source {
        EvalSource::Checkpoint(p) | EvalSource::Images(p) => p.clone(),
    };
    Ok(EvalReport {
        source: source_path,
        training_steps: steps,
        dataset: train.name.clone(),
        samples: n,
        classifier_path: classifier::cache_path(data_spec),
        classifier: evaluator.classifier_info().clone(),
        reference_fid_train_vs_test: reference_fid,
        reference_swd_train_vs_test: reference_swd,
        results,
    })
}
