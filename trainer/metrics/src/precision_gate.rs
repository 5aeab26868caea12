//! The quality gate of reduced-precision exports (`exporter --check-quality`): the fp32 export
//! and the reduced one generate images from the same latents (and labels); the gate reports the
//! PSNR of the reduced images against the fp32 ones (8-bit pixels, peak 255) and the Inception
//! FID and KID of each set against the data, and refuses the reduced model when its FID is more
//! than `max_fid_rise` (relative) above the fp32 model's or its PSNR is below `min_psnr`.
//!
//! With the same latents both sets differ only by the precision, so the FID difference is the
//! precision's cost and not the sampling noise between two independent sets. FID alone is no
//! gate: against data an fp32 model is far from, other images can score lower (a model with
//! every activation clipped, PSNR 9 dB, scored 10% *below* its fp32 model in the CLI test), so
//! the reduced images must also stay close to the fp32 ones.

use std::cell::RefCell;
use std::path::Path;

use gantry_data::{DataSpec, DatasetKind, Fit};
use gantry_exporter::{GateVerdict, QualityGate};
use gantry_models::CheckpointMeta;
use gantry_runtime::{Generator, LatentStream, Provider, ProviderChoice};
use ndarray::Array1;

use crate::inception::Image8;
use crate::standard::{describe, ExtractProgress, InceptionEvaluator, InceptionScores};
use crate::{MetricSetting, MetricsError, Result};

/// Latents per generation batch.
const BATCH: usize = 250;

/// Both models' scores and their agreement.
#[derive(Debug, Clone)]
pub struct PrecisionComparison {
    /// PSNR (dB) of the reduced model's 8-bit images against the fp32 model's.
    pub psnr: f64,
    pub reference: InceptionScores,
    pub candidate: InceptionScores,
}

impl PrecisionComparison {
    /// `(candidate FID - reference FID) / reference FID`.
    pub fn fid_rise(&self) -> f64 {
        (self.candidate.fid - self.reference.fid) / self.reference.fid
    }
}

/// The gate: an Inception evaluator (network, data reference, sample count and seed) and the
/// largest relative FID rise it lets through.
pub struct PrecisionGate {
    evaluator: InceptionEvaluator,
    max_fid_rise: f64,
    min_psnr: f64,
    progress: RefCell<Box<dyn ExtractProgress>>,
}

impl PrecisionGate {
    /// A gate scoring `evaluator.samples` images per model; refuses `max_fid_rise` outside
    /// `0..=1` (a rise of more than 100% is no gate) and `min_psnr` outside `0..=100` dB.
    pub fn new(
        evaluator: InceptionEvaluator,
        max_fid_rise: f64,
        min_psnr: f64,
        progress: Box<dyn ExtractProgress>,
    ) -> Result<Self> {
        if !(0.0..=1.0).contains(&max_fid_rise) {
            return Err(MetricsError::invalid(
                MetricSetting::MaxFidRise,
                format!("{max_fid_rise} is not a fraction in 0..=1"),
            ));
        }
        if !(0.0..=100.0).contains(&min_psnr) {
            return Err(MetricsError::invalid(
                MetricSetting::MinPsnr,
                format!("{min_psnr} dB is not in 0..=100"),
            ));
        }
        Ok(Self {
            evaluator,
            max_fid_rise,
            min_psnr,
            progress: RefCell::new(progress),
        })
    }

    /// Generates the same samples with both models and scores them.
    pub fn compare(&self, reference: &Path, candidate: &Path) -> Result<PrecisionComparison> {
        let ev = &self.evaluator;
        let a = generate(reference, ev.samples, ev.seed)?;
        let b = generate(candidate, ev.samples, ev.seed)?;
        let psnr = psnr8(&a, &b)?;
        let mut progress = self.progress.borrow_mut();
        let reference = ev.score_images(&a, "fp32", progress.as_mut())?;
        let candidate = ev.score_images(&b, "reduced", progress.as_mut())?;
        Ok(PrecisionComparison {
            psnr,
            reference,
            candidate,
        })
    }
}

impl QualityGate for PrecisionGate {
    fn check(
        &self,
        reference: &Path,
        candidate: &Path,
    ) -> std::result::Result<GateVerdict, Box<dyn std::error::Error + Send + Sync>> {
        let c = self.compare(reference, candidate)?;
        let rise = c.fid_rise();
        let passed = rise <= self.max_fid_rise && c.psnr >= self.min_psnr;
        let summary = format!(
            "PSNR vs fp32 {:.1} dB (limit {:.1}); FID {:+.2}% (limit +{:.1}%); {}; {}",
            c.psnr,
            self.min_psnr,
            100.0 * rise,
            100.0 * self.max_fid_rise,
            describe(&c.reference),
            describe(&c.candidate),
        );
        Ok(GateVerdict { passed, summary })
    }
}

/// The data a checkpoint was trained on (its `training` record's `dataset`, `data_dir` and
/// `fit`), at the model's size: what the gate scores against.
pub fn checkpoint_data(meta: &CheckpointMeta, checkpoint: &Path) -> Result<DataSpec> {
    let t = &meta.training;
    let missing = |what: &str| MetricsError::Data {
        path: checkpoint.to_path_buf(),
        message: format!("the checkpoint does not record its training data set ({what})"),
    };
    let kind: DatasetKind = serde_json::from_value(t["dataset"].clone())
        .map_err(|e| missing(&format!("dataset: {e}")))?;
    let fit: Fit = match t.get("fit") {
        Some(v) => serde_json::from_value(v.clone()).map_err(|e| missing(&format!("fit: {e}")))?,
        None => Fit::default(),
    };
    let dir = t["data_dir"]
        .as_str()
        .map_or_else(|| Path::new("data").join(kind.name()), Into::into);
    Ok(DataSpec {
        kind,
        dir,
        image_size: meta.model.image_size,
        channels: meta.model.channels,
        fit,
    })
}

/// `n` images of the model at `path` on the CPU from latents of `seed`, labels cycling through
/// the classes, as 8-bit images.
fn generate(path: &Path, n: usize, seed: u64) -> Result<Vec<Image8>> {
    let g = Generator::builder()
        .model(path)
        .providers(ProviderChoice::Only(Provider::Cpu))
        .build()?;
    let mut latents = LatentStream::new(seed, g.latent_dim(), None);
    let classes = g.info().num_classes;
    let mut images = Vec::with_capacity(n);
    let mut first = 0;
    while first < n {
        let count = BATCH.min(n - first);
        let z = latents.next_batch(count);
        let labels =
            classes.map(|k| Array1::from_iter((first..first + count).map(|i| (i % k) as i64)));
        let batch = g.generate_from_latents(&z, labels.as_ref())?;
        let (h, w, c) = (batch.height(), batch.width(), batch.channels());
        images.extend(batch.pixels().chunks(h * w * c).map(|p| Image8 {
            width: w,
            height: h,
            channels: c,
            pixels: p.to_vec(),
        }));
        first += count;
    }
    Ok(images)
}

/// PSNR (peak 255) of `b` against `a`, over every pixel of every image.
fn psnr8(a: &[Image8], b: &[Image8]) -> Result<f64> {
    let (mut sum, mut count) = (0.0f64, 0usize);
    for (x, y) in a.iter().zip(b) {
        if x.pixels.len() != y.pixels.len() {
            return Err(MetricsError::invalid(
                MetricSetting::Images,
                "the two models' images differ in size",
            ));
        }
        sum += x
            .pixels
            .iter()
            .zip(&y.pixels)
            .map(|(p, q)| (*p as f64 - *q as f64).powi(2))
            .sum::<f64>();
        count += x.pixels.len();
    }
    let mse = sum / count.max(1) as f64;
    Ok(if mse == 0.0 {
        f64::INFINITY
    } else {
        10.0 * (255.0f64.powi(2) / mse).log10()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(pixels: Vec<u8>) -> Image8 {
        Image8 {
            width: pixels.len(),
            height: 1,
            channels: 1,
            pixels,
        }
    }

    #[test]
    fn psnr_is_the_8_bit_definition() {
        let a = [image(vec![0, 100, 200, 255])];
        assert_eq!(psnr8(&a, &a).unwrap(), f64::INFINITY);
        // One pixel off by 2 in 4: MSE 1, PSNR 20 log10(255) = 48.13 dB.
        let b = [image(vec![0, 102, 200, 255])];
        assert!((psnr8(&a, &b).unwrap() - 48.1308).abs() < 1e-3);
        assert!(psnr8(&a, &[image(vec![0, 1])]).is_err());
    }
}
