//! `runtime`: generate images from a generator ONNX file. See `runtime --help` and the README.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use gantry_runtime::commands::{self, Format};
use gantry_runtime::{GenerateRequest, Generator, Provider, ProviderChoice, ProviderOptions};

#[derive(Parser)]
#[command(
    name = "runtime",
    version,
    about = "Generate images from a GAN generator ONNX file with ONNX Runtime"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    engine: EngineArgs,
}

#[derive(Args)]
struct EngineArgs {
    /// Execution provider: auto (TensorRT, then CUDA, then CPU), tensorrt, cuda or cpu.
    #[arg(long, global = true, default_value = "auto")]
    ep: ProviderChoice,
    /// GPU ordinal for CUDA/TensorRT.
    #[arg(long, global = true, default_value_t = 0)]
    device_id: i32,
    /// TensorRT engine cache folder.
    #[arg(long, global = true)]
    trt_cache: Option<PathBuf>,
    /// ONNX Runtime library (default: ORT_DYLIB_PATH, then .ort/lib from `make ort`).
    #[arg(long, global = true)]
    ort_lib: Option<PathBuf>,
    /// Threads ONNX Runtime uses within a run (default: all cores).
    #[arg(long, global = true)]
    threads: Option<usize>,
    /// CPU: split batches of at least this many images over as many single-threaded sessions
    /// running at once (default: --threads, else one per core; 1 turns it off).
    #[arg(long, global = true)]
    lanes: Option<usize>,
}

#[derive(Subcommand)]
enum Command {
    /// Generate images: out/000000.png ... and out/grid.png (or out/samples.npy).
    Generate {
        /// Generator ONNX file.
        #[arg(long)]
        model: PathBuf,
        /// Number of images.
        #[arg(short = 'n', long = "count", default_value_t = 64)]
        count: usize,
        /// Output folder.
        #[arg(long, default_value = "out")]
        out: PathBuf,
        /// Seed of the latents (same seed and model => identical images on the same provider).
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Images per inference call.
        #[arg(long, default_value_t = 64)]
        batch_size: usize,
        /// Class of every image (class-conditional models).
        #[arg(long)]
        class: Option<usize>,
        /// Redraw latent values whose magnitude exceeds this (e.g. 1.5).
        #[arg(long)]
        truncation: Option<f32>,
        /// png or npy.
        #[arg(long, default_value = "png")]
        format: Format,
    },
    /// Walk the latent space between two seeds: one image strip (and optionally a GIF).
    Interpolate {
        #[arg(long)]
        model: PathBuf,
        #[arg(long, default_value_t = 16)]
        steps: usize,
        #[arg(long, default_value_t = 1)]
        seed_a: u64,
        #[arg(long, default_value_t = 2)]
        seed_b: u64,
        #[arg(long)]
        class: Option<usize>,
        /// The strip (PNG).
        #[arg(long, default_value = "walk.png")]
        out: PathBuf,
        /// Also write an animated GIF here.
        #[arg(long)]
        gif: Option<PathBuf>,
    },
    /// Show inputs, outputs, metadata, and the available and chosen providers.
    Info {
        #[arg(long)]
        model: PathBuf,
    },
    /// Measure images per second after warm-up.
    Bench {
        #[arg(long)]
        model: PathBuf,
        #[arg(long, default_value_t = 64)]
        batch_size: usize,
        #[arg(long, default_value_t = 5)]
        warmup: usize,
        #[arg(long, default_value_t = 30)]
        iterations: usize,
    },
}

fn load(engine: &EngineArgs, model: &PathBuf) -> anyhow::Result<Generator> {
    let mut b = Generator::builder()
        .model(model)
        .providers(engine.ep)
        .provider_options(ProviderOptions {
            device_id: engine.device_id,
            trt_cache: engine.trt_cache.clone(),
            ..ProviderOptions::default()
        });
    if let Some(lib) = &engine.ort_lib {
        b = b.ort_library(lib);
    }
    if let Some(t) = engine.threads {
        b = b.intra_threads(t);
    }
    if let Some(l) = engine.lanes {
        b = b.batch_lanes(l);
    }
    let generator = b.build()?;
    eprintln!("provider: {}", generator.providers());
    Ok(generator)
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Generate {
            model,
            count,
            out,
            seed,
            batch_size,
            class,
            truncation,
            format,
        } => {
            let generator = load(&cli.engine, &model)?;
            let request = GenerateRequest {
                count,
                seed,
                class,
                truncation,
                batch_size,
            };
            let s = commands::generate_to_dir(&generator, &request, &out, format)?;
            eprintln!(
                "generated {} images in {:.2}s ({:.0} img/s)",
                s.images,
                s.seconds,
                s.images as f64 / s.seconds
            );
            if let Some(npy) = s.npy {
                println!("array: {}", npy.display());
            }
            println!("grid: {}", s.grid.display());
        }
        Command::Interpolate {
            model,
            steps,
            seed_a,
            seed_b,
            class,
            out,
            gif,
        } => {
            let generator = load(&cli.engine, &model)?;
            commands::interpolate_to_files(
                &generator,
                (seed_a, seed_b),
                steps,
                class,
                &out,
                gif.as_deref(),
            )?;
            println!("strip: {}", out.display());
            if let Some(g) = gif {
                println!("animation: {}", g.display());
            }
        }
        Command::Info { model } => {
            let generator = load(&cli.engine, &model)?;
            let info = generator.info();
            println!("model: {}", info.path.display());
            if let Some(p) = &info.producer {
                println!("producer: {p}");
            }
            for i in &info.inputs {
                println!("input  {i}");
            }
            for o in &info.outputs {
                println!("output {o}");
            }
            for (k, v) in &info.metadata {
                println!("metadata {k} = {v}");
            }
            let available: Vec<&str> = [Provider::TensorRt, Provider::Cuda, Provider::Cpu]
                .into_iter()
                .filter(|p| p.is_compiled_in())
                .map(|p| p.ort_name())
                .collect();
            println!("providers available: {}", available.join(", "));
            println!(
                "provider chosen: {}",
                generator.providers().active.ort_name()
            );
            for (p, why) in &generator.providers().skipped {
                println!("provider skipped: {}: {why}", p.ort_name());
            }
            match generator.batch_lanes() {
                1 => println!("batch lanes: off"),
                n => println!("batch lanes: {n} (batches of {n} or more images)"),
            }
        }
        Command::Bench {
            model,
            batch_size,
            warmup,
            iterations,
        } => {
            let generator = load(&cli.engine, &model)?;
            let r = commands::bench(&generator, batch_size, warmup, iterations)?;
            println!(
                "RESULT runtime {} b{}: {:.3} ms/batch {:.0} img/s ({})",
                model.display(),
                r.batch_size,
                r.median.as_secs_f64() * 1e3,
                r.img_per_sec,
                generator.providers().active.ort_name()
            );
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
