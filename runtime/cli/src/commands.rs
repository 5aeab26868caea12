//! The work behind the `runtime` subcommands.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use gantry_runtime::output::{self, NpyWriter};
use gantry_runtime::{GenerateRequest, Generator, LatentStream, Provider};
use indicatif::{ProgressBar, ProgressStyle};

/// Images kept for the grid (the first ones generated).
pub const GRID_LIMIT: usize = 256;

/// File format of `generate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// `000000.png`, ... plus `grid.png`.
    Png,
    /// One `samples.npy` (uint8 `[N, H, W, C]`) plus `grid.png`.
    Npy,
}

/// What `generate` wrote.
#[derive(Debug, Clone)]
pub struct GenerateSummary {
    pub images: usize,
    pub grid: PathBuf,
    pub npy: Option<PathBuf>,
    pub seconds: f64,
}

/// Makes `dir` (and parents) and checks that files can be created in it.
fn prepare_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("{}", dir.display()))?;
    let probe = dir.join(".gantry-write-test");
    std::fs::File::create(&probe).with_context(|| format!("{}", dir.display()))?;
    let _ = std::fs::remove_file(probe);
    Ok(())
}

/// Generates `request.count` images into `out` batch by batch (bounded memory), showing progress
/// for large requests on a terminal.
pub fn generate_to_dir(
    generator: &Generator,
    request: &GenerateRequest,
    out: &Path,
    format: Format,
) -> anyhow::Result<GenerateSummary> {
    request.validate()?;
    generator.labels(request.class, 0, 1)?;
    prepare_dir(out)?;
    let start = Instant::now();
    let bar = (request.count > 1024 && std::io::stderr().is_terminal()).then(|| {
        ProgressBar::new(request.count as u64).with_style(
            ProgressStyle::with_template("{bar:30} {pos}/{len} images {per_sec} (ETA {eta})")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        )
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
            .min(batch.count());
        grid_images.extend((0..keep).filter_map(|i| batch.image(i)));
        if let Some(bar) = &bar {
            bar.inc(batch.count() as u64);
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
) -> anyhow::Result<()> {
    let frames = generator.interpolate(seeds.0, seeds.1, steps, class)?;
    for path in std::iter::once(out).chain(gif) {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).with_context(|| format!("{}", parent.display()))?;
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
) -> anyhow::Result<BenchResult> {
    ensure!(batch_size >= 1, "--batch-size must be at least 1");
    ensure!(iterations >= 1, "--iterations must be at least 1");
    let z = LatentStream::new(0, generator.latent_dim(), None).next_batch(batch_size);
    let labels = generator.labels(None, 0, batch_size)?;
    generator.open_lanes()?;
    for _ in 0..warmup {
        generator.generate_from_latents(&z, labels.as_ref())?;
    }
    let mut times = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let t = Instant::now();
        generator.generate_from_latents(&z, labels.as_ref())?;
        times.push(t.elapsed());
    }
    times.sort();
    let median = times[times.len() / 2];
    Ok(BenchResult {
        batch_size,
        median,
        img_per_sec: batch_size as f64 / median.as_secs_f64(),
    })
}

/// What `runtime info` prints: the model's interface and metadata, the providers.
pub fn info_lines(generator: &Generator) -> Vec<String> {
    let info = generator.info();
    let mut lines = vec![format!("model: {}", info.path.display())];
    lines.extend(info.producer.iter().map(|p| format!("producer: {p}")));
    // Third-party exports carry no `gantry.precision`: their weights' type says it.
    let precision = info
        .metadata
        .get("gantry.precision")
        .map_or("unknown (not a Gantry export)", String::as_str);
    lines.push(format!("precision: {precision}"));
    lines.extend(info.inputs.iter().map(|i| format!("input  {i}")));
    lines.extend(info.outputs.iter().map(|o| format!("output {o}")));
    lines.extend(
        info.metadata
            .iter()
            .map(|(k, v)| format!("metadata {k} = {v}")),
    );
    let available: Vec<&str> = Provider::ALL
        .into_iter()
        .filter(|p| p.is_compiled_in())
        .map(Provider::ort_name)
        .collect();
    lines.push(format!("providers available: {}", available.join(", ")));
    lines.push(format!("provider chosen: {}", generator.providers().active));
    lines.extend(
        generator
            .providers()
            .skipped
            .iter()
            .map(|(p, why)| format!("provider skipped: {p}: {why}")),
    );
    lines.push(match generator.batch_lanes() {
        1 => "batch lanes: off".to_string(),
        n => format!("batch lanes: {n} (batches of {n} or more images)"),
    });
    lines
}
