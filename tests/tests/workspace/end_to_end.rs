//! The whole path through the libraries: `gantry-trainer` trains a run, `gantry-exporter`
//! exports its EMA generator, `gantry-runtime` generates from the file, and the images are the
//! ones the trained candle generator makes for the same latents.

use std::sync::atomic::AtomicBool;

use candle_core::{Device, Tensor};
use gantry_exporter::{
    export, ExportOptions, GraphOptions, OutputFormat, Precision, WeightsChoice,
};
use gantry_models::{Checkpoint, Generator as CandleGenerator, Kernels};
use gantry_runtime::{Generator, LatentStream, ProviderChoice};
use gantry_testkit::{tiny_config, write_mnist_fixture};
use gantry_trainer::setup::{execute, prepare_fresh};
use gantry_trainer::train::run::RunOutcome;

use crate::training::config;

#[test]
fn train_export_generate_gives_the_trained_generators_images() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("mnist");
    write_mnist_fixture(&data, 40);
    let out = tmp.path().join("run");
    let mut cfg = config(&data);
    cfg.max_steps = Some(6);
    cfg.sample_every = 3;
    cfg.ema = Some(0.9);
    let model = tiny_config(16, 1, None);
    let mut run = prepare_fresh(cfg, model, &out, Kernels::Fast, &Device::Cpu).unwrap();
    let mut lines = gantry_trainer::progress::LogLines::new(run.trainer.total_steps(), 50);
    let outcome = execute(&mut run, &AtomicBool::new(false), &mut lines).unwrap();
    assert!(
        matches!(outcome, RunOutcome::Finished { step: 6, .. }),
        "{outcome:?}"
    );
    for f in [
        "samples/step_000003.png",
        "samples/step_000006.png",
        "final/config.json",
    ] {
        assert!(out.join(f).is_file(), "missing {f}");
    }

    let onnx = tmp.path().join("g.onnx");
    let report = export(&ExportOptions {
        checkpoint: out.clone(),
        which: Default::default(),
        out: Some(onnx.clone()),
        opset: 17,
        graph: GraphOptions {
            precision: Precision::Fp32,
            fold_batchnorm: true,
            output: OutputFormat::Float,
        },
        weights: WeightsChoice::Auto,
        triton: None,
        calibration: Default::default(),
    })
    .unwrap();
    assert!(report.used_ema, "a run with an EMA exports it");

    let g = Generator::builder()
        .model(&onnx)
        .providers(ProviderChoice::Auto)
        .build()
        .unwrap();
    // Every metadata key, with the run's values.
    let meta = &g.info().metadata;
    for (key, value) in [
        ("gantry.format_version", "1"),
        ("gantry.latent_dim", "16"),
        ("gantry.image_size", "16"),
        ("gantry.channels", "1"),
        ("gantry.num_classes", "0"),
        ("gantry.output", "float"),
        ("gantry.training_steps", "6"),
        ("gantry.dataset", "mnist"),
        ("gantry.normalization", "tanh [-1,1]"),
        ("gantry.precision", "fp32"),
        ("gantry.batchnorm_folded", "true"),
        ("gantry.weights", "ema"),
        ("gantry.arch", "dcgan"),
    ] {
        assert_eq!(meta.get(key).map(String::as_str), Some(value), "{key}");
    }
    assert_eq!(meta.len(), gantry_exporter::METADATA_KEYS.len());
    let z = LatentStream::new(3, 16, None).next_batch(8);
    let images = g.raw_output(&z, None).unwrap();

    // The same latents through the checkpoint's EMA generator in candle (eval mode).
    let ckpt = Checkpoint::load_generator(&out.join("final")).unwrap();
    let ema = ckpt.generator_ema.as_ref().unwrap();
    let mut candle = CandleGenerator::from_tensors(&ckpt.meta.model, ema, &Device::Cpu).unwrap();
    candle.set_kernels(Kernels::Candle);
    let zt = Tensor::from_slice(z.as_slice().unwrap(), (8, 16), &Device::Cpu).unwrap();
    let want: Vec<f32> = candle
        .forward(&zt, None, false)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let got: Vec<f32> = images.iter().copied().collect();
    assert_eq!(got.len(), want.len());
    // fp32 with BatchNorm folded: float rounding only (as the export parity tests: 1e-4).
    let diff = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(diff < 1e-4, "runtime vs trained generator: {diff}");
}
