//! `trainer`: trains Gantry's DCGAN. See `trainer --help` and the README.

#![forbid(unsafe_code)]

mod args;
mod flags;
mod progress;

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context};
use args::{BenchArgs, ClassifierArgs, Cli, Command, EvalArgs, SampleArgs, TrainArgs};
use clap::{ArgMatches, CommandFactory, FromArgMatches};
use gantry_trainer::bench::{bench_train, BenchSpec};
use gantry_trainer::distributed::{Collective, RankEnv, Solo};
use gantry_trainer::eval::standard::{describe, InceptionOptions};
use gantry_trainer::eval::{EvalMetric, EvalSource};
use gantry_trainer::preset::describe_recipe;
use gantry_trainer::setup::{
    data_spec, execute, prepare_fresh_on, prepare_resume_on, run_classifier, run_eval,
    select_device, select_device_ordinal, DeviceKind, EvalOutcome, EvalRequest,
};
use gantry_trainer::train::run::{RunOutcome, STEP_IN_PROGRESS};

/// candle runs its element-wise CPU ops on a thread pool of its own that spins while idle; beside
/// rayon's pool (which Gantry's kernels and GEMMs use) it oversubscribes small machines. The
/// remaining candle element-wise work is small, so it runs on the calling thread: 20% less CPU
/// time per training step on 2 cores (docs/benchmarks.md). `CANDLE_NUM_THREADS` still overrides.
fn tune_threads() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
}

fn bench(args: BenchArgs) -> anyhow::Result<()> {
    let device = select_device(args.device)?;
    let spec = BenchSpec {
        arch: args.arch,
        image_size: args.image_size,
        channels: args.channels,
        g_width: args.g_width,
        d_width: args.d_width,
        d_steps: args.d_steps,
        loss: args.loss,
        batch_size: args.batch_size,
        steps: args.steps,
        warmup: args.warmup,
        kernels: args.kernels,
        ema: args.ema,
        spectral_norm: args.spectral_norm,
        augment: args.augment,
        r1: args.r1,
        r1_every: args.r1_every,
    };
    let r = bench_train(&spec, &device, args.profile)?;
    let kernels = format!("{:?}", args.kernels).to_lowercase();
    println!(
        "RESULT gantry-train img{}x{} b{} {} {kernels}: {:.2} ms/step {:.0} img/s",
        args.image_size,
        args.channels,
        args.batch_size,
        args.device.name(),
        r.median.as_secs_f64() * 1e3,
        r.img_per_sec
    );
    println!(
        "MEAN {:.2} ms/step {:.0} img/s",
        r.mean.as_secs_f64() * 1e3,
        r.mean_img_per_sec
    );
    for (name, calls, time) in &r.spans {
        println!(
            "  {:>9.2} ms  {calls:>4.1}x  {name}",
            time.as_secs_f64() * 1e3
        );
    }
    Ok(())
}

/// The collective and device of a run: a single process; or, with `--distributed`, NCCL
/// across GPUs (`--device cuda` in a build with `nccl`) or MPI (a build with `mpi`; on GPUs it
/// stages the buffers through host memory). A rank uses the GPU of its local rank.
fn connect(
    distributed: bool,
    kind: DeviceKind,
) -> anyhow::Result<(Box<dyn Collective>, candle_core::Device)> {
    if !distributed {
        return Ok((Box::new(Solo), select_device(kind)?));
    }
    let local_rank = RankEnv::from_env().map_or(0, |r| r.local_rank);
    let device = select_device_ordinal(kind, local_rank)?;
    #[cfg(feature = "nccl")]
    if kind == DeviceKind::Cuda {
        let ranks = RankEnv::from_env().context(
            "--distributed: no rank in the environment (start the ranks with mpirun, srun, or RANK, WORLD_SIZE and LOCAL_RANK set)",
        )?;
        let id_file = std::env::var_os("GANTRY_NCCL_ID_FILE").context(
            "--distributed on GPUs: set GANTRY_NCCL_ID_FILE to a path unique to the job that every rank can see (rank 0 writes NCCL's id there)",
        )?;
        let nccl = gantry_trainer::distributed::nccl::NcclCollective::init(
            ranks,
            &device,
            id_file.into(),
        )?;
        return Ok((Box::new(nccl), device));
    }
    #[cfg(feature = "mpi")]
    {
        share_cores_between_local_ranks();
        let mpi = gantry_trainer::distributed::mpi::MpiCollective::init()?;
        Ok((Box::new(mpi), device))
    }
    #[cfg(not(feature = "mpi"))]
    {
        let _ = device;
        bail!("--distributed needs a trainer built with MPI: `cargo build --release --features mpi` (with Debian's openmpi-bin, libopenmpi-dev and libclang-dev installed), or with `--features nccl` for GPUs")
    }
}

/// Gives each rank of a machine its share of the cores for Gantry's kernels (rayon), unless
/// RAYON_NUM_THREADS says otherwise: N ranks on a machine with C cores get C/N threads each.
#[cfg(feature = "mpi")]
fn share_cores_between_local_ranks() {
    if std::env::var_os("RAYON_NUM_THREADS").is_some() {
        return;
    }
    let local = [
        "OMPI_COMM_WORLD_LOCAL_SIZE",
        "MPI_LOCALNRANKS",
        "SLURM_NTASKS_PER_NODE",
    ]
    .iter()
    .find_map(|v| std::env::var(v).ok()?.parse::<usize>().ok())
    .unwrap_or(1)
    .max(1);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    std::env::set_var("RAYON_NUM_THREADS", (cores / local).max(1).to_string());
}

fn train(args: &TrainArgs, matches: &ArgMatches) -> anyhow::Result<()> {
    let (collective, device) = connect(args.distributed, args.device)?;
    let (rank, ranks) = (collective.rank(), collective.size());
    let mut prepared = match (&args.resume, &args.run.dataset, &args.run.out) {
        (Some(path), _, _) => {
            let fixed = TrainArgs::given_run_settings(matches);
            if let Some(flag) = fixed.first() {
                bail!(
                    "{flag} cannot be changed when resuming (the checkpoint fixes it); a resumed run takes only {}, --device and --kernels",
                    TrainArgs::schedule_flags().join(", ")
                );
            }
            let changes = args.resume_changes(matches);
            prepare_resume_on(path, &changes, args.kernels, &device, collective)?
        }
        (None, Some(dataset), Some(out)) => prepare_fresh_on(
            args.train_config(*dataset),
            args.model_config(*dataset),
            out,
            args.kernels,
            &device,
            collective,
        )?,
        _ => bail!("--dataset and --out are required unless --resume is given"),
    };
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    ctrlc::set_handler(move || {
        let step = STEP_IN_PROGRESS.load(Ordering::SeqCst);
        let who = if ranks > 1 { format!("rank {rank}: ") } else { String::new() };
        if flag.swap(true, Ordering::SeqCst) {
            eprintln!("\n{who}second interrupt during step {step}: exiting now (the last checkpoint is intact)");
            std::process::exit(130);
        }
        eprintln!("\n{who}interrupt during step {step}: finishing it and writing a checkpoint (interrupt again to quit at once; if another rank died, the launcher ends the job now and the last checkpoint is intact)");
    })
    .context("cannot install the interrupt handler")?;
    let t = &prepared.trainer;
    let out = prepared.paths.out.display().to_string();
    if rank == 0 {
        match &prepared.resumed_from {
            Some(dir) => eprintln!(
                "resuming {} at step {} of {}",
                dir.display(),
                t.state().step,
                t.total_steps()
            ),
            None => eprintln!(
                "training {}x{}x{} {} on {} ({} images, {} steps/epoch) for {} steps into {out}",
                t.model().image_size,
                t.model().image_size,
                t.model().channels,
                t.model().arch,
                t.data().name,
                t.data().len(),
                t.batches_per_epoch().div_ceil(t.config().d_steps.max(1)),
                t.total_steps()
            ),
        }
        eprintln!("recipe: {}", describe_recipe(t.config(), t.model()));
    }
    let mut bar = progress::Bar::new(
        prepared.trainer.state().step,
        prepared.trainer.total_steps(),
        args.log_every,
    );
    let outcome = match execute(&mut prepared, &stop, &mut bar) {
        Ok(outcome) => outcome,
        Err(e) if ranks > 1 => {
            // The other ranks may be waiting for this one: end the whole job.
            eprintln!("error: rank {rank}: {}", flags::render(&e.into()));
            prepared.trainer.collective().abort(1)
        }
        Err(e) => return Err(e.into()),
    };
    if rank != 0 {
        return Ok(());
    }
    match outcome {
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

fn eval(a: EvalArgs) -> anyhow::Result<()> {
    let source = match (a.checkpoint, a.images) {
        (Some(c), _) => EvalSource::Checkpoint(c),
        (None, Some(i)) => EvalSource::Images(i),
        (None, None) => bail!("give --checkpoint or --images"),
    };
    if a.metric != EvalMetric::Inception {
        for (given, flag) in [
            (a.reference.is_some(), "--reference"),
            (a.reference_images.is_some(), "--reference-images"),
            (a.save_reference.is_some(), "--save-reference"),
            (a.inception_weights.is_some(), "--inception-weights"),
        ] {
            if given {
                bail!("{flag} applies to --metric inception");
            }
        }
    }
    let samples = a.n.unwrap_or(match a.metric {
        EvalMetric::Classifier => 10_000,
        EvalMetric::Inception => 2_000,
    });
    let request = EvalRequest {
        source,
        dataset: a.dataset,
        data_dir: a.data_dir,
        image_size: a.image_size,
        channels: a.channels,
        fit: a.fit,
        samples,
        seed: a.seed,
        out: a.out,
        metric: a.metric,
        inception: InceptionOptions {
            resize: a.resize,
            weights: a.inception_weights,
            reference: a.reference,
            reference_images: a.reference_images.unwrap_or(usize::MAX),
            providers: a.inception_providers,
        },
        save_reference: a.save_reference,
    };
    // Lines come between feature extractions, never while a bar is drawn.
    let mut bar = progress::FeatureBar::default();
    let (report, out) = run_eval(&request, &mut |line| eprintln!("{line}"), &mut bar)?;
    match report {
        EvalOutcome::Classifier(report) => print_classifier_report(&report),
        EvalOutcome::Inception(report) => {
            for r in &report.results {
                println!("{}", describe(r));
            }
            println!(
                "against {} ({} images), resize {}, weights SHA-1 {}",
                report.reference,
                report
                    .reference_images
                    .map_or_else(|| "an unknown number of".into(), |n| n.to_string()),
                report.resize,
                report.weights_sha1
            );
        }
    }
    println!("report: {}", out.display());
    Ok(())
}

fn print_classifier_report(report: &gantry_trainer::eval::EvalReport) {
    for r in &report.results {
        println!(
            "{}: FID {:.3}  SWD {:.2} ({})  classes>=5% {}  entropy {:.3} bits  confidence {:.3}{}",
            r.variant,
            r.fid,
            r.swd.mean,
            swd_levels(&r.swd),
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
        "reference (train vs test): FID {:.3}  SWD {:.2} ({})",
        report.reference_fid_train_vs_test,
        report.reference_swd_train_vs_test.mean,
        swd_levels(&report.reference_swd_train_vs_test)
    );
}

/// `64px 1.23, 32px ...`: the SWD of each pyramid level, finest first.
fn swd_levels(swd: &gantry_trainer::eval::swd::Swd) -> String {
    swd.per_level
        .iter()
        .enumerate()
        .map(|(i, d)| format!("{}px {d:.2}", swd.finest_size >> i))
        .collect::<Vec<_>>()
        .join(", ")
}

fn classifier(a: ClassifierArgs) -> anyhow::Result<()> {
    let spec = data_spec(
        a.dataset,
        a.data_dir.as_deref(),
        a.image_size,
        a.channels,
        a.fit,
    )?;
    run_classifier(&spec, a.epochs, a.force, &mut |line| eprintln!("{line}"))?;
    Ok(())
}

fn sample(a: SampleArgs) -> anyhow::Result<()> {
    if let Some(run) = &a.animate {
        let (out, frames) = gantry_trainer::animate::animate_run(run, a.out.as_deref())?;
        println!("animation: {} ({frames} frames)", out.display());
        return Ok(());
    }
    let checkpoint = a
        .checkpoint
        .as_deref()
        .ok_or_else(|| anyhow::anyhow!("--checkpoint or --animate is required"))?;
    let out = a.out.unwrap_or_else(|| "samples.png".into());
    gantry_trainer::sample::write_grid(checkpoint, &out, a.n, a.seed, a.train_mode, a.raw)?;
    println!("samples: {}", out.display());
    Ok(())
}

fn main() -> ExitCode {
    tune_threads();
    gantry_kernels::tune_allocator();
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let result = match cli.command {
        Command::Train(args) => {
            let train_matches = matches.subcommand_matches("train").unwrap_or(&matches);
            train(&args, train_matches)
        }
        Command::Bench(args) => bench(args),
        Command::Eval(a) => eval(a),
        Command::Classifier(a) => classifier(a),
        Command::Sample(a) => sample(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", flags::render(&e));
            ExitCode::FAILURE
        }
    }
}
