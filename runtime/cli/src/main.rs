//! `runtime`: generate images from a generator ONNX file. See `runtime --help` and the README.

#![forbid(unsafe_code)]

mod commands;
mod flags;
mod serve;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use commands::Format;
use gantry_runtime::{
    GenerateRequest, Generator, ProviderChoice, ProviderOptions, DEFAULT_BATCH_SIZE,
};

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

/// The generator ONNX file.
#[derive(Args)]
struct ModelArg {
    /// Generator ONNX file (Gantry's or any DCGAN-style export).
    #[arg(long)]
    model: PathBuf,
}

#[derive(Subcommand)]
enum Command {
    /// Generate images: out/000000.png ... and out/grid.png (or out/samples.npy).
    Generate {
        #[command(flatten)]
        model: ModelArg,
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
        #[arg(long, default_value_t = DEFAULT_BATCH_SIZE)]
        batch_size: usize,
        /// Class of every image (class-conditional models; default: the classes in turn).
        #[arg(long)]
        class: Option<usize>,
        /// Redraw latent values whose magnitude exceeds this (e.g. 1.5; at least 0.01).
        #[arg(long)]
        truncation: Option<f32>,
        /// png (numbered files) or npy (one uint8 [N, H, W, C] array).
        #[arg(long, value_enum, default_value = "png")]
        format: Format,
    },
    /// Walk the latent space between two seeds: one image strip (and optionally a GIF).
    Interpolate {
        #[command(flatten)]
        model: ModelArg,
        /// Images along the path, both ends included.
        #[arg(long, default_value_t = 16)]
        steps: usize,
        /// Seed of the latent the walk starts from.
        #[arg(long, default_value_t = 1)]
        seed_a: u64,
        /// Seed of the latent the walk ends at.
        #[arg(long, default_value_t = 2)]
        seed_b: u64,
        /// Class of every image (class-conditional models; default: 0).
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
        #[command(flatten)]
        model: ModelArg,
    },
    /// Serve models over the Open Inference Protocol (KServe v2 / Triton) on HTTP and gRPC,
    /// with dynamic batching, /metrics, PNG endpoints and a web page at /.
    Serve(serve::ServeArgs),
    /// Measure images per second after warm-up.
    Bench {
        #[command(flatten)]
        model: ModelArg,
        /// Images per run.
        #[arg(long, default_value_t = DEFAULT_BATCH_SIZE)]
        batch_size: usize,
        /// Untimed runs first.
        #[arg(long, default_value_t = 5)]
        warmup: usize,
        /// Timed runs (the median is reported).
        #[arg(long, default_value_t = 30)]
        iterations: usize,
    },
}

fn load(engine: &EngineArgs, model: &ModelArg) -> anyhow::Result<Generator> {
    let generator = builder(engine, &model.model).build()?;
    eprintln!("provider: {}", generator.providers());
    Ok(generator)
}

/// A generator for `path` with the engine flags' providers and threads.
fn builder(engine: &EngineArgs, path: &std::path::Path) -> gantry_runtime::GeneratorBuilder {
    let mut options = ProviderOptions::default();
    options.device_id = engine.device_id;
    options.trt_cache = engine.trt_cache.clone();
    let mut b = Generator::builder()
        .model(path)
        .providers(engine.ep)
        .provider_options(options);
    if let Some(lib) = &engine.ort_lib {
        b = b.ort_library(lib);
    }
    if let Some(t) = engine.threads {
        b = b.intra_threads(t);
    }
    if let Some(l) = engine.lanes {
        b = b.batch_lanes(l);
    }
    b
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
            let mut request = GenerateRequest::new(count, seed);
            request.class = class;
            request.truncation = truncation;
            request.batch_size = batch_size;
            request.validate()?;
            let generator = load(&cli.engine, &model)?;
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
            for line in commands::info_lines(&generator) {
                println!("{line}");
            }
        }
        Command::Serve(args) => serve::run(args, |path| builder(&cli.engine, path).build())?,
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
                model.model.display(),
                r.batch_size,
                r.median.as_secs_f64() * 1e3,
                r.img_per_sec,
                generator.providers().active
            );
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", flags::render(&e));
            ExitCode::FAILURE
        }
    }
}
