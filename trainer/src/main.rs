//! `trainer`: trains Gantry's DCGAN. See `trainer --help` and the README.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use gantry_trainer::cli::{execute, prepare, TrainArgs};
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
    Train(TrainArgs),
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
        Some(dir) => eprintln!("resuming {} at step {} of {}", dir.display(), t.state.step, t.total_steps()),
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Train(args) => train(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
