//! Running a [`Trainer`] to completion with its outputs: sample grids, metrics, loss plot,
//! periodic atomic checkpoints, and a clean stop on request (Ctrl-C).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::watch::{RunEvaluator, TensorBoard};
use super::Trainer;
use crate::error::{Result, TrainError};
use crate::eval::EvalMetric;
use crate::metrics::{EvalMetrics, MetricsLog, StepMetrics};
use crate::progress::Progress;
use crate::{animate, plot, samples};

pub use gantry_models::run_layout::{RunPaths, RUN_OUTPUTS};

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub enum RunOutcome {
    /// The step budget was reached; `final/` holds the result.
    Finished {
        step: u64,
        last_sample: Option<PathBuf>,
    },
    /// A stop was requested; `checkpoint/` holds the state at `step`.
    Stopped { step: u64 },
}

/// Which of a run's outputs `out` already holds (a fresh run must not mix its files with them).
pub fn existing_run_outputs(out: &Path) -> Vec<&'static str> {
    RUN_OUTPUTS
        .into_iter()
        .filter(|name| gantry_models::atomic::recover_dir(&out.join(name)).exists())
        .collect()
}

/// The exclusive lock of a run folder, held by the trainer writing into it for as long as the
/// value lives (and released by the OS when the process dies, even by kill -9): two trainers
/// never write into one folder at once.
#[derive(Debug)]
pub struct RunLock {
    _file: std::fs::File,
}

impl RunLock {
    /// The lock file's name inside the run folder.
    pub const FILE: &'static str = ".gantry-lock";

    /// Takes the lock of `out` (which must exist), or says that another trainer holds it.
    pub fn acquire(out: &Path) -> Result<Self> {
        use rustix::fs::{flock, FlockOperation};
        let path = out.join(Self::FILE);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| TrainError::io(&path, e))?;
        match flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(Self { _file: file }),
            Err(rustix::io::Errno::WOULDBLOCK) => Err(TrainError::RunInUse {
                out: out.to_path_buf(),
            }),
            Err(e) => Err(TrainError::io(&path, e.into())),
        }
    }
}

/// Makes sure `out` exists and is writable before any work is done.
pub fn prepare_out_dir(out: &Path) -> Result<()> {
    std::fs::create_dir_all(out.join("samples")).map_err(|e| TrainError::io(out, e))?;
    gantry_models::atomic::remove_stale_temps(out);
    let probe = out.join(".write-test");
    std::fs::write(&probe, b"").map_err(|e| TrainError::io(out, e))?;
    let _ = std::fs::remove_file(probe);
    Ok(())
}

/// The step being trained (1 for the first), for messages from signal handlers.
pub static STEP_IN_PROGRESS: AtomicU64 = AtomicU64::new(0);

/// What rank 0 (or a single process) writes while it trains.
struct Outputs {
    log: MetricsLog,
    history: Vec<StepMetrics>,
    tensorboard: TensorBoard,
    evaluator: Option<RunEvaluator>,
    last_sample: Option<PathBuf>,
}

impl Outputs {
    fn open(trainer: &Trainer, paths: &RunPaths, progress: &mut dyn Progress) -> Result<Self> {
        prepare_out_dir(&paths.out)?;
        let (log, history) = MetricsLog::open(&paths.metrics(), trainer.state.step)?;
        let tensorboard = TensorBoard::open(trainer, paths)?;
        let evaluator = match trainer.config.eval_every {
            0 => None,
            _ => Some(RunEvaluator::new(trainer, paths, &history, &mut |line| {
                eprintln!("{line}")
            })?),
        };
        if trainer.collective().size() > 1 {
            progress.line(&format!(
                "data-parallel on {}: each rank trains {} of every global batch of {}",
                trainer.collective().describe(),
                match trainer.collective().size() {
                    2 => "half".to_string(),
                    n => format!("1/{n}"),
                },
                trainer.config.batch_size
            ));
        }
        Ok(Self {
            log,
            history,
            tensorboard,
            evaluator,
            last_sample: None,
        })
    }
}

/// Trains until the budget is reached or `stop` is set, writing outputs under `paths` (whose
/// lock the caller holds: see [`crate::setup::execute`]). In a data-parallel job every rank
/// trains and only rank 0 writes; the ranks agree on stopping after each step.
pub(crate) fn run(
    trainer: &mut Trainer,
    paths: &RunPaths,
    stop: &AtomicBool,
    progress: &mut dyn Progress,
) -> Result<RunOutcome> {
    let mut outputs = match trainer.is_lead() {
        true => Some(Outputs::open(trainer, paths, progress)?),
        false => None,
    };
    let result = (|| -> Result<RunOutcome> {
        let mut stopping = trainer.check_replicas(stop.load(Ordering::SeqCst))?;
        while !trainer.is_done() {
            if stopping {
                trainer.sync_buffers()?;
                if let Some(o) = &outputs {
                    save_checkpoint(trainer, paths, &o.history)?;
                }
                return Ok(RunOutcome::Stopped {
                    step: trainer.state.step,
                });
            }
            STEP_IN_PROGRESS.store(trainer.state.step + 1, Ordering::SeqCst);
            let mut m = trainer.step().map_err(|e| with_kept_checkpoint(e, paths))?;
            stopping = trainer.check_replicas(stop.load(Ordering::SeqCst))?;
            let cfg = &trainer.config;
            let due = |every: u64| every > 0 && m.step % every == 0;
            let eval_due = cfg.eval_every > 0 && (due(cfg.eval_every) || trainer.is_done());
            let (sample_due, checkpoint_due) = (due(cfg.sample_every), due(cfg.checkpoint_every));
            if eval_due || sample_due || checkpoint_due {
                trainer.sync_buffers()?;
            }
            let Some(o) = &mut outputs else {
                continue;
            };
            if let (true, Some(evaluator)) = (eval_due, &mut o.evaluator) {
                let eval = evaluator.evaluate(trainer, paths)?;
                progress.line(&eval_line(m.step, &eval));
                m.eval = Some(eval);
            }
            o.log.append(&m)?;
            o.tensorboard.step(&m)?;
            progress.step(&m);
            o.history.push(m);
            if sample_due {
                o.last_sample = Some(write_samples(trainer, paths, &mut o.tensorboard)?);
            }
            if checkpoint_due {
                save_checkpoint(trainer, paths, &o.history)?;
            }
        }
        trainer.sync_buffers()?;
        let Some(o) = &mut outputs else {
            return Ok(RunOutcome::Finished {
                step: trainer.state.step,
                last_sample: None,
            });
        };
        if o.last_sample.as_ref() != Some(&paths.sample(trainer.state.step)) {
            o.last_sample = Some(write_samples(trainer, paths, &mut o.tensorboard)?);
        }
        let ckpt = trainer.checkpoint()?;
        ckpt.save(&paths.checkpoint())?;
        ckpt.save(&paths.final_dir())?;
        plot::plot_losses(&o.history, &paths.losses_plot())?;
        let frames = animate::sample_frames(&paths.samples_dir(), trainer.state.step)?;
        animate::write_gif(&frames, &paths.progress_gif())?;
        Ok(RunOutcome::Finished {
            step: trainer.state.step,
            last_sample: o.last_sample.clone(),
        })
    })();
    if outputs.is_some() {
        progress.finish();
    }
    result
}

/// The line an evaluation prints.
fn eval_line(step: u64, eval: &EvalMetrics) -> String {
    let opt = |v: Option<f64>, digits: usize| v.map_or("-".into(), |v| format!("{v:.digits$}"));
    match eval.metric {
        EvalMetric::Classifier => {
            let raw = eval
                .fid_raw
                .map(|f| format!(" (raw generator {f:.2})"))
                .unwrap_or_default();
            let agreement = eval
                .class_agreement
                .map(|a| format!(", class agreement {:.1}%", a * 100.0))
                .unwrap_or_default();
            format!(
                "step {step}: FID {:.2}{raw}, SWD {}, {} classes >= 5%{agreement}, {:.1} s for {} samples",
                eval.fid,
                opt(eval.swd, 1),
                eval.classes_covered.map_or("-".into(), |c| c.to_string()),
                eval.seconds,
                eval.samples
            )
        }
        EvalMetric::Inception => format!(
            "step {step}: Inception FID {:.2}, KID {} ± {}, precision {}, recall {}, {:.1} s for {} samples",
            eval.fid,
            opt(eval.inception_kid, 5),
            opt(eval.inception_kid_std, 5),
            opt(eval.inception_precision, 3),
            opt(eval.inception_recall, 3),
            eval.seconds,
            eval.samples
        ),
    }
}

/// Says in a divergence error what is left on disk to resume from.
fn with_kept_checkpoint(e: TrainError, paths: &RunPaths) -> TrainError {
    match e {
        TrainError::NonFinite {
            on,
            what,
            value,
            step,
            ..
        } => {
            let kept = match gantry_models::Checkpoint::load_generator(&paths.checkpoint()).ok() {
                Some(ckpt) => format!(
                    "the last checkpoint (step {}) is kept in {}",
                    ckpt.step(),
                    paths.checkpoint().display()
                ),
                None => "no checkpoint had been written yet".into(),
            };
            TrainError::NonFinite {
                on,
                what,
                value,
                step,
                kept,
            }
        }
        other => other,
    }
}

fn save_checkpoint(trainer: &Trainer, paths: &RunPaths, history: &[StepMetrics]) -> Result<()> {
    trainer.checkpoint()?.save(&paths.checkpoint())?;
    plot::plot_losses(history, &paths.losses_plot())
}

/// Writes the fixed-latent sample grid of the current step (and hands it to TensorBoard);
/// returns its path.
pub fn write_samples(
    trainer: &Trainer,
    paths: &RunPaths,
    tensorboard: &mut TensorBoard,
) -> Result<PathBuf> {
    trainer.recalibrate_ema()?;
    let (_, _, cols) = trainer.sample_inputs()?;
    let images = samples::to_images(&trainer.samples()?)?;
    let path = paths.sample(trainer.state.step);
    let grid = samples::grid(&images, cols, 2);
    samples::save_png(&grid, &path)?;
    tensorboard.samples(trainer.state.step, &grid)?;
    Ok(path)
}

#[cfg(test)]
mod tests;
