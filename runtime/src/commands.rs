//! The work behind the `runtime` subcommands, reusable by other programs.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use crate::error::{Result, RuntimeError};
use crate::generator::{GenerateRequest, Generator};
use crate::latent::LatentStream;
use crate::output::{self, NpyWriter, GRID_LIMIT};

/// File format of `generate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `000000.png`, ... plus `grid.png`.
    Png,
    /// One `samples.npy` (uint8 `[N, H, W, C]`) plus `grid.png`.
    Npy,
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "png" => Ok(Self::Png),
            "npy" => Ok(Self::Npy),
            other => Err(format!("unknown format `{other}` (expected png or npy)")),
        }
    }
}

/// What `generate` wrote.
#[derive(Debug, Clone)]
pub struct GenerateSummary {
    pub images: usize,
    pub grid: PathBuf,
    pub npy: Option<PathBuf>,
    pub seconds: f64,
}

/// Generates `request.count` images into `out` batch by batch (bounded memory), showing progress
/// for large requests on a terminal.
pub fn generate_to_dir(
    generator: &Generator,
    request: &GenerateRequest,
    out: &Path,
    format: Format,
) -> Result<GenerateSummary> {
    output::prepare_dir(out)?;
    let start = Instant::now();
    let bar = (request.count > 1024 && std::io::stderr().is_terminal()).then(|| {
        let bar = ProgressBar::new(request.count as u64);
        bar.set_style(
            ProgressStyle::with_template("{bar:30} {pos}/{len} images {per_sec} (ETA {eta})")
                .expect("valid template"),
        );
        bar
    });
    let npy_path = out.join("samples.npy");
    let mut npy = match format {
        Format::Npy => Some(NpyWriter::create(&npy_path, request.count)?),
        Format::Png => None,
    };
    let mut grid_images = Vec::new();
    generator.generate_each(request, |first, batch| {
        match &mut npy {
            Some(w) => w.append(&batch)?,
            None => output::write_pngs(out, first, &batch)?,
        }
        let keep = GRID_LIMIT
            .saturating_sub(grid_images.len())
            .min(batch.count);
        grid_images.extend((0..keep).map(|i| batch.image(i)));
        if let Some(bar) = &bar {
            bar.inc(batch.count as u64);
        }
        Ok(())
    })?;
    if let Some(w) = npy {
        w.finish()?;
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let grid = out.join("grid.png");
    output::save_png(&output::grid(&grid_images, 2), &grid)?;
    Ok(GenerateSummary {
        images: request.count,
        grid,
        npy: (format == Format::Npy).then_some(npy_path),
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// Writes the interpolation strip (one row) to `out`, and optionally an animated GIF.
pub fn interpolate_to_files(
    generator: &Generator,
    seeds: (u64, u64),
    steps: usize,
    class: Option<usize>,
    out: &Path,
    gif: Option<&Path>,
) -> Result<()> {
    let frames = generator.interpolate(seeds.0, seeds.1, steps, class)?;
    for path in std::iter::once(out).chain(gif) {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| RuntimeError::io(parent, e))?;
        }
    }
    output::save_png(&output::grid_with_columns(&frames, frames.len(), 2), out)?;
    if let Some(gif) = gif {
        output::save_gif(&frames, gif, 80)?;
    }
    Ok(())
}

/// Throughput of one batch size.
#[derive(Debug, Clone)]
pub struct BenchResult {
    pub batch_size: usize,
    /// Median time per batch.
    pub median: Duration,
    pub img_per_sec: f64,
}

/// Times `iterations` runs of a batch after `warmup` untimed ones (latents prepared up front;
/// the time covers inference and conversion to bytes).
pub fn bench(
    generator: &Generator,
    batch_size: usize,
    warmup: usize,
    iterations: usize,
) -> Result<BenchResult> {
    if batch_size == 0 || iterations == 0 {
        return Err(RuntimeError::Invalid(
            "--batch-size and --iterations must be at least 1".into(),
        ));
    }
    let z = LatentStream::new(0, generator.latent_dim(), None).next_batch(batch_size);
    let labels = generator.info().signature.label_input.as_ref().map(|_| {
        ndarray::Array1::from_iter(
            (0..batch_size).map(|i| (i % generator.info().num_classes.unwrap_or(1)) as i64),
        )
    });
    generator.open_lanes()?;
    for _ in 0..warmup {
        generator.generate_from_latents(&z, labels.as_ref())?;
    }
    let mut times: Vec<Duration> = (0..iterations)
        .map(|_| {
            let t = Instant::now();
            generator
                .generate_from_latents(&z, labels.as_ref())
                .map(|_| t.elapsed())
        })
        .collect::<Result<_>>()?;
    times.sort();
    let median = times[times.len() / 2];
    Ok(BenchResult {
        batch_size,
        median,
        img_per_sec: batch_size as f64 / median.as_secs_f64(),
    })
}
