//! Sample grids from a checkpoint (`trainer sample`), in eval mode (running BatchNorm
//! statistics, as exported) or train mode (batch statistics).

use std::path::Path;

use candle_core::{Device, Tensor};
use gantry_models::{resolve_checkpoint, Checkpoint, Generator};

use crate::error::{Result, Setting, TrainError};
use crate::samples;
use crate::train::latents;

/// Loads the sampling generator of a checkpoint: the EMA one when present (unless `raw`).
pub fn load_generator(path: &Path, raw: bool, device: &Device) -> Result<(Generator, Checkpoint)> {
    let dir = resolve_checkpoint(path)?;
    let ckpt = Checkpoint::load_generator(&dir)?;
    let tensors = match (&ckpt.generator_ema, raw) {
        (Some(ema), false) => ema,
        _ => &ckpt.generator,
    };
    let g = Generator::from_tensors(&ckpt.meta.model, tensors, device)?;
    Ok((g, ckpt))
}

/// Images from `generator` for `n` latents of `seed` (labels cycling through the classes of a
/// conditional model), in batches of `batch`; `train_mode` uses batch statistics.
pub fn generate(
    generator: &Generator,
    n: usize,
    seed: u64,
    batch: usize,
    train_mode: bool,
    device: &Device,
) -> Result<Tensor> {
    if n == 0 {
        return Err(TrainError::invalid(
            Setting::SampleCount,
            "must be at least 1, got 0",
        ));
    }
    let z = latents(
        seed,
        "sample-command",
        n,
        generator.config.latent_dim,
        device,
    )?;
    Ok(generator.generate_batched(&z, batch, train_mode)?)
}

/// Writes a grid of `n` samples to `out`.
pub fn write_grid(
    path: &Path,
    out: &Path,
    n: usize,
    seed: u64,
    train_mode: bool,
    raw: bool,
) -> Result<()> {
    let device = Device::Cpu;
    let (g, _) = load_generator(path, raw, &device)?;
    let images = samples::to_images(&generate(&g, n, seed, 128, train_mode, &device)?)?;
    let cols = match g.config.num_classes {
        Some(k) if n % k == 0 => k,
        _ => (n as f64).sqrt().ceil() as usize,
    };
    samples::save_png(&samples::grid(&images, cols, 2), out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Dataset;
    use crate::train::{TrainConfig, Trainer};
    use gantry_models::ModelConfig;

    /// A checkpoint of an untrained 16x16 generator in `dir`, conditional on 4 classes or not.
    fn checkpoint(dir: &Path, classes: Option<usize>) {
        let k = classes.unwrap_or(1);
        let data = Dataset {
            name: "fixture".into(),
            image_size: 16,
            channels: 1,
            pixels: vec![0; 8 * 256],
            labels: (0..8).map(|i| (i % k) as u32).collect(),
            class_names: (0..k).map(|i| format!("class {i}")).collect(),
        };
        let model = ModelConfig {
            image_size: 16,
            g_width: 4,
            d_width: 4,
            latent_dim: 8,
            num_classes: classes,
            ..ModelConfig::default()
        };
        let config = TrainConfig {
            conditional: classes.is_some(),
            batch_size: 4,
            ..TrainConfig::default()
        };
        let t = Trainer::new(config, model, data, &Device::Cpu).unwrap();
        t.checkpoint().unwrap().save(dir).unwrap();
    }

    /// A grid's width in 16-pixel cells with `gantry-files`' padding of 2.
    fn columns(png: &Path) -> u32 {
        let (width, _) = image::image_dimensions(png).unwrap();
        (width - 2) / 18
    }

    /// A conditional model's grid has one column per class when the count fills whole rows
    /// (each column one class); otherwise, and for unconditional models, it is as square as
    /// the count allows. Zero samples are refused by name.
    #[test]
    fn grids_have_a_column_per_class_when_rows_fill() {
        let dir = tempfile::tempdir().unwrap();
        let (conditional, plain) = (dir.path().join("c"), dir.path().join("p"));
        checkpoint(&conditional, Some(4));
        checkpoint(&plain, None);
        let out = dir.path().join("grid.png");
        for (ckpt, n, cols) in [(&conditional, 8, 4), (&conditional, 6, 3), (&plain, 8, 3)] {
            write_grid(ckpt, &out, n, 0, false, false).unwrap();
            assert_eq!(columns(&out), cols, "{n} samples of {ckpt:?}");
        }
        let err = write_grid(&plain, &out, 0, 0, false, false).unwrap_err();
        assert!(err.to_string().contains("at least 1, got 0"), "{err}");
    }

    /// The sampling generator is the checkpoint's EMA unless the raw one is asked for (or there
    /// is no EMA).
    #[test]
    fn the_ema_generator_samples_unless_raw_is_asked() {
        let dir = tempfile::tempdir().unwrap();
        let data = crate::train::tests::eight_images(0);
        let config = TrainConfig {
            ema: Some(0.5),
            batch_size: 4,
            ..TrainConfig::default()
        };
        let mut t = Trainer::new(
            config,
            crate::train::tests::small_model(),
            data,
            &Device::Cpu,
        )
        .unwrap();
        t.step().unwrap();
        let ckpt = t.checkpoint().unwrap();
        ckpt.save(dir.path()).unwrap();
        let weights = |raw| {
            let (g, _) = load_generator(dir.path(), raw, &Device::Cpu).unwrap();
            g.net.to_tensors().unwrap()
        };
        let same = |a: &gantry_models::TensorMap, b: &gantry_models::TensorMap| {
            a.len() == b.len()
                && a.iter().all(|(k, v)| {
                    let w = &b[k];
                    (v - w)
                        .unwrap()
                        .abs()
                        .unwrap()
                        .sum_all()
                        .unwrap()
                        .to_scalar::<f32>()
                        .unwrap()
                        == 0.0
                })
        };
        let ema = ckpt.generator_ema.as_ref().unwrap();
        assert!(same(&weights(false), ema));
        assert!(same(&weights(true), &ckpt.generator));
        assert!(!same(ema, &ckpt.generator), "one step made them differ");
    }
}
