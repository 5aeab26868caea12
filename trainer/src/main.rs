//! `trainer`: trains Gantry's DCGAN. See `trainer --help` and the README.

use std::process::ExitCode;

/// Keeps glibc's allocator from handing the multi-megabyte tensors of every training step back
/// to the kernel and page-faulting them in again on the next step: with these settings the
/// 32x32 benchmark makes 7x fewer page faults and uses 17% less CPU time (docs/benchmarks.md).
fn tune_allocator() {
    // SAFETY: mallopt only changes allocator parameters; called before any other thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TOP_PAD, 64 << 20);
    }
}
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use gantry_models::Kernels;
use gantry_trainer::bench::{bench_train, BenchSpec};
use gantry_trainer::cli::{
    execute, prepare, run_classifier, run_eval, select_device, ClassifierArgs, EvalArgs, TrainArgs,
};
use gantry_trainer::train::run::RunOutcome;

#[derive(Parser)]
#[command(name = "trainer", version, about = "Train DCGAN generators for Gantry")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train (or resume training) a DCGAN on a data set.
    Train(Box<TrainArgs>),
    /// Time training steps on synthetic data (img/s), optionally with a per-layer breakdown.
    Bench(BenchArgs),
    /// Write a grid of samples from a checkpoint.
    Sample(SampleArgs),
    /// FID and class coverage of a checkpoint's samples (or an image folder) against the test split.
    Eval(EvalArgs),
    /// Train (and cache next to the data) the classifier `eval` scores with.
    Classifier(ClassifierArgs),
}

#[derive(clap::Args)]
struct SampleArgs {
    /// Checkpoint or run directory.
    #[arg(long)]
    checkpoint: std::path::PathBuf,
    /// Output PNG.
    #[arg(long, default_value = "samples.png")]
    out: std::path::PathBuf,
    /// Number of images.
    #[arg(long, default_value_t = 64)]
    n: usize,
    /// Seed of the latents.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Use batch statistics (train mode) instead of the running ones (eval mode, as exported).
    #[arg(long)]
    train_mode: bool,
    /// Use the raw generator even when the checkpoint has EMA weights.
    #[arg(long)]
    raw: bool,
}

#[derive(clap::Args)]
struct BenchArgs {
    /// Image side.
    #[arg(long, default_value_t = 32)]
    image_size: usize,
    /// Image channels.
    #[arg(long, default_value_t = 1)]
    channels: usize,
    /// Batch size.
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Timed steps (the median is reported).
    #[arg(long, default_value_t = 10)]
    steps: usize,
    /// Untimed warm-up steps.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Kernels: fast or candle.
    #[arg(long, default_value = "fast")]
    kernels: Kernels,
    /// cpu or cuda.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Print where the time goes (phases of the step, and each convolution's kernels).
    #[arg(long)]
    profile: bool,
}

fn bench(args: BenchArgs) -> anyhow::Result<()> {
    let device = select_device(&args.device)?;
    let spec = BenchSpec {
        image_size: args.image_size,
        channels: args.channels,
        batch_size: args.batch_size,
        steps: args.steps,
        warmup: args.warmup,
        kernels: args.kernels,
    };
    let r = bench_train(&spec, &device, args.profile)?;
    let kernels = format!("{:?}", args.kernels).to_lowercase();
    println!(
        "RESULT gantry-train img{}x{} b{} {} {kernels}: {:.2} ms/step {:.0} img/s",
        args.image_size,
        args.channels,
        args.batch_size,
        args.device,
        r.median.as_secs_f64() * 1e3,
        r.img_per_sec
    );
    for (name, calls, time) in &r.spans {
        println!(
            "  {:>9.2} ms  {calls:>4.1}x  {name}",
            time.as_secs_f64() * 1e3
        );
    }
    Ok(())
}

fn train(args: TrainArgs) -> anyhow::Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            eprintln!("\nsecond interrupt: exiting now (the last checkpoint is intact)");
            std::process::exit(130);
        }
        eprintln!("\ninterrupt: finishing the current step and writing a checkpoint (Ctrl-C again to quit at once)");
    })
    .context("cannot install the Ctrl-C handler")?;
    let mut prepared = prepare(&args)?;
    let t = &prepared.trainer;
    let out = prepared.paths.out.display().to_string();
    match &prepared.resumed_from {
        Some(dir) => eprintln!(
            "resuming {} at step {} of {}",
            dir.display(),
            t.state.step,
            t.total_steps()
        ),
        None => eprintln!(
            "training {}x{}x{} DCGAN on {} ({} images, {} steps/epoch) for {} steps into {out}",
            t.model.image_size,
            t.model.image_size,
            t.model.channels,
            t.data.name,
            t.data.len(),
            t.batches_per_epoch(),
            t.total_steps()
        ),
    }
    match execute(&mut prepared, &stop, args.log_every)? {
        RunOutcome::Finished { step, last_sample } => {
            eprintln!("finished at step {step}: {out}/final");
            if let Some(p) = last_sample {
                println!("samples: {}", p.display());
            }
        }
        RunOutcome::Stopped { step } => {
            eprintln!("stopped at step {step}; checkpoint written to {out}/checkpoint");
            println!("resume with: trainer train --resume {out}");
        }
    }
    Ok(())
}

/// candle runs its element-wise CPU ops on a thread pool of its own that spins while idle; beside
/// rayon's pool (which Gantry's kernels and GEMMs use) it oversubscribes small machines. The
/// remaining candle element-wise work is small, so it runs on the calling thread: 20% less CPU
/// time per training step on 2 cores (docs/benchmarks.md). `CANDLE_NUM_THREADS` still overrides.
fn tune_threads() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
}

fn main() -> ExitCode {
    tune_threads();
    tune_allocator();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Train(args) => train(*args),
        Command::Bench(args) => bench(args),
        Command::Eval(a) => run_eval(&a, &mut |line| eprintln!("{line}"))
            .map(|(report, out)| {
                for r in &report.results {
                    println!(
                        "{}: FID {:.3}  classes>=5% {}  entropy {:.3} bits  confidence {:.3}{}",
                        r.variant,
                        r.fid,
                        r.coverage.classes_over_5_percent,
                        r.coverage.label_entropy_bits,
                        r.coverage.mean_confidence,
                        r.coverage
                            .class_agreement
                            .map(|a| format!("  class agreement {:.1}%", a * 100.0))
                            .unwrap_or_default()
                    );
                }
                println!(
                    "reference (train vs test): FID {:.3}",
                    report.reference_fid_train_vs_test
                );
                println!("report: {}", out.display());
            })
            .map_err(Into::into),
        Command::Classifier(a) => run_classifier(&a, &mut |line| eprintln!("{line}"))
            .map(|_| ())
            .map_err(Into::into),
        Command::Sample(a) => gantry_trainer::sample::write_grid(
            &a.checkpoint,
            &a.out,
            a.n,
            a.seed,
            a.train_mode,
            a.raw,
        )
        .map(|()| println!("samples: {}", a.out.display()))
        .map_err(Into::into),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
