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
