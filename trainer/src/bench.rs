//! `trainer bench`: times the training step on synthetic data (like the PyTorch reference in
//! `bench/torch_dcgan.py`) and, with profiling, where the time goes.

use std::time::{Duration, Instant};

use candle_core::Device;
use gantry_models::{profile, Arch, Kernels, ModelConfig};
use rand::RngCore;

use crate::augment::Augment;
use crate::data::{Dataset, DatasetKind};
use crate::error::{Result, Setting, TrainError};
use crate::loss::LossKind;
use crate::train::{TrainConfig, Trainer};

/// One benchmark configuration: the training step of an architecture (what
/// `bench/torch_dcgan.py` and `bench/torch_resnet.py` time) plus the recipe options that are on.
#[derive(Debug, Clone)]
pub struct BenchSpec {
    pub arch: Arch,
    pub image_size: usize,
    pub channels: usize,
    pub g_width: usize,
    pub d_width: usize,
    /// D updates per step, each on its own batch.
    pub d_steps: usize,
    pub loss: LossKind,
    pub batch_size: usize,
    pub steps: usize,
    pub warmup: usize,
    pub kernels: Kernels,
    /// EMA decay of G, if any.
    pub ema: Option<f64>,
    /// Spectral normalisation of D.
    pub spectral_norm: bool,
    /// DiffAugment policy.
    pub augment: Augment,
    /// R1 gamma, if any, applied every `r1_every` steps.
    pub r1: Option<f64>,
    pub r1_every: u64,
}

/// What a benchmark measured.
#[derive(Debug, Clone)]
pub struct BenchResult {
    /// Median step time.
    pub median: Duration,
    pub img_per_sec: f64,
    /// Mean step time: what lazy options (R1 every N steps) cost on average.
    pub mean: Duration,
    /// Images per second at the mean step time.
    pub mean_img_per_sec: f64,
    /// Profiled spans `(name, calls per step, time per step)`, when profiling was on.
    pub spans: Vec<(String, f64, Duration)>,
}

fn synthetic_data(spec: &BenchSpec) -> Dataset {
    let n = spec.batch_size * 4 * spec.d_steps.max(1);
    let mut pixels = vec![0u8; n * spec.channels * spec.image_size * spec.image_size];
    gantry_models::init::rng_for(0, "bench-data").fill_bytes(&mut pixels);
    Dataset {
        name: "synthetic".into(),
        image_size: spec.image_size,
        channels: spec.channels,
        pixels,
        labels: vec![0; n],
        class_names: vec!["noise".into()],
    }
}

/// The trainer a benchmark times: `spec`'s networks and options on synthetic data (only its
/// steps run: the run's budget and output intervals do not apply).
fn bench_trainer(spec: &BenchSpec, device: &Device) -> Result<Trainer> {
    let model = ModelConfig {
        arch: spec.arch,
        image_size: spec.image_size,
        channels: spec.channels,
        g_width: spec.g_width,
        d_width: spec.d_width,
        spectral_norm: spec.spectral_norm,
        ..ModelConfig::default()
    };
    let config = TrainConfig {
        data_dir: "synthetic".into(),
        batch_size: spec.batch_size,
        ema: spec.ema,
        d_steps: spec.d_steps,
        loss: spec.loss,
        augment: spec.augment,
        r1: spec.r1,
        r1_every: spec.r1_every,
        ..TrainConfig::for_dataset(DatasetKind::Folder)
    };
    let mut trainer = Trainer::new(config, model, synthetic_data(spec), device)?;
    trainer.set_kernels(spec.kernels);
    Ok(trainer)
}

/// Runs `warmup + steps` training steps of `spec`'s architecture and options on `device`; the
/// median and the mean of the timed steps are reported (images per second count the real
/// images D sees: `batch * d_steps` per step). With `profile_spans`, also the
/// per-phase and per-kernel breakdown.
pub fn bench_train(spec: &BenchSpec, device: &Device, profile_spans: bool) -> Result<BenchResult> {
    if spec.steps == 0 {
        return Err(TrainError::invalid(
            Setting::Steps,
            "must be at least 1, got 0",
        ));
    }
    let mut trainer = bench_trainer(spec, device)?;
    for _ in 0..spec.warmup {
        trainer.step()?;
    }
    profile::take();
    profile::set_enabled(profile_spans);
    let mut times = Vec::with_capacity(spec.steps);
    for _ in 0..spec.steps {
        let start = Instant::now();
        trainer.step()?;
        times.push(start.elapsed());
    }
    profile::set_enabled(false);
    let steps = spec.steps.max(1) as f64;
    let spans = profile::take()
        .into_iter()
        .map(|(name, calls, total)| (name, calls as f64 / steps, total.div_f64(steps)))
        .collect();
    let mean = times.iter().sum::<Duration>().div_f64(steps);
    times.sort();
    let median = times[times.len() / 2];
    let images = (spec.batch_size * spec.d_steps.max(1)) as f64;
    Ok(BenchResult {
        median,
        mean,
        img_per_sec: images / median.as_secs_f64(),
        mean_img_per_sec: images / mean.as_secs_f64(),
        spans,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny(steps: usize, d_steps: usize) -> BenchSpec {
        BenchSpec {
            arch: Arch::Dcgan,
            image_size: 16,
            channels: 1,
            g_width: 4,
            d_width: 4,
            d_steps,
            loss: LossKind::Bce,
            batch_size: 2,
            steps,
            warmup: 1,
            kernels: Kernels::Fast,
            ema: None,
            spectral_norm: false,
            augment: Augment::default(),
            r1: None,
            r1_every: 16,
        }
    }

    /// Every setting of the spec reaches the trainer it times.
    #[test]
    fn the_benchmarked_trainer_has_the_spec_s_settings() {
        let spec = BenchSpec {
            arch: Arch::Resnet,
            image_size: 32,
            channels: 3,
            g_width: 2,
            d_width: 3,
            d_steps: 2,
            loss: LossKind::Hinge,
            batch_size: 4,
            steps: 1,
            warmup: 0,
            kernels: Kernels::Candle,
            ema: Some(0.9),
            spectral_norm: true,
            augment: "translation".parse().unwrap(),
            r1: Some(0.5),
            r1_every: 3,
        };
        let t = bench_trainer(&spec, &Device::Cpu).unwrap();
        let m = t.model();
        assert_eq!(
            (
                m.arch,
                m.image_size,
                m.channels,
                m.g_width,
                m.d_width,
                m.spectral_norm
            ),
            (Arch::Resnet, 32, 3, 2, 3, true)
        );
        let c = t.config();
        assert_eq!(c.data_dir, std::path::Path::new("synthetic"));
        assert_eq!(
            (c.batch_size, c.d_steps, c.loss, c.ema),
            (4, 2, LossKind::Hinge, Some(0.9))
        );
        assert_eq!((c.augment, c.r1, c.r1_every), (spec.augment, Some(0.5), 3));
        assert_eq!(t.networks().generator.net.kernels, Kernels::Candle);
        assert_eq!(
            t.data().len(),
            4 * 4 * 2,
            "four global batches of d_steps batches"
        );
    }

    #[test]
    fn the_result_is_the_median_step_and_images_per_second_count_every_d_batch() {
        let spec = tiny(8, 3);
        let started = std::time::Instant::now();
        let r = bench_train(&spec, &Device::Cpu, false).unwrap();
        let wall = started.elapsed();
        let images = (spec.batch_size * spec.d_steps) as f64;
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * b;
        assert!(close(r.img_per_sec, images / r.median.as_secs_f64()));
        assert!(close(r.mean_img_per_sec, images / r.mean.as_secs_f64()));
        assert!(r.median > Duration::ZERO);
        // The mean is the steps' total over their count, so at most the whole call's time
        // over the count, however loaded the machine (a sum or a product would not be: the
        // timed steps are most of the call).
        assert!(r.mean > Duration::ZERO);
        assert!(
            r.mean <= wall / spec.steps as u32,
            "the mean of {} steps ({:?}) exceeds the call's {wall:?} over the count",
            spec.steps,
            r.mean
        );
        // Profiling (process-wide, so checked by the CLI's test in its own process) is off.
        assert!(r.spans.is_empty(), "profiling off: no spans");
        // Five D updates a step need five batches of synthetic images (SNGAN's recipe).
        let r = bench_train(&tiny(1, 5), &Device::Cpu, false).unwrap();
        assert!(r.img_per_sec > 0.0);
        let err = bench_train(&tiny(0, 1), &Device::Cpu, false).unwrap_err();
        assert!(err.to_string().contains("at least 1"), "{err}");
    }
}
