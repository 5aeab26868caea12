//! What a run reports while it trains besides `metrics.jsonl`: TensorBoard event files, and
//! evaluations every `eval_every` steps that keep the lowest-FID checkpoint in `best/`.
//! Neither touches the training state: an evaluation samples in eval mode from its own latent
//! stream, so a run trains the same weights with or without them.

use std::time::Instant;

use gantry_models::Checkpoint;

use super::Trainer;
use crate::error::Result;
use crate::eval::Evaluator;
use crate::metrics::{EvalMetrics, StepMetrics};
use crate::tensorboard::EventWriter;
use gantry_models::run_layout::RunPaths;

/// The seed of the latents evaluations sample from (as `trainer eval`'s default).
const EVAL_SEED: u64 = 0;

/// Scores the generator during training and keeps the best checkpoint.
pub struct RunEvaluator {
    evaluator: Evaluator,
    /// The lowest FID of the run so far (`None` before the first evaluation).
    best_fid: Option<f64>,
    /// Whether `best/` must be rewritten at the next evaluation whatever its FID: it is missing,
    /// or it comes from steps a killed run made after the checkpoint this run resumed from.
    best_is_stale: bool,
}

impl RunEvaluator {
    /// Loads (or trains) the classifier of the run's data and the test statistics; the best
    /// FID so far comes from the run's history (`metrics.jsonl` up to the resumed step).
    pub fn new(
        trainer: &Trainer,
        paths: &RunPaths,
        history: &[StepMetrics],
        log: &mut dyn FnMut(String),
    ) -> Result<Self> {
        let spec = trainer
            .config
            .data_spec(trainer.model.image_size, trainer.model.channels);
        let evaluator = Evaluator::new(
            &spec,
            trainer.config.eval_samples,
            EVAL_SEED,
            trainer.device(),
            log,
        )?;
        let best_fid = history
            .iter()
            .filter_map(|m| m.eval.as_ref().map(|e| e.fid))
            .min_by(f64::total_cmp);
        let best_dir = gantry_models::atomic::recover_dir(&paths.best());
        let best_step = Checkpoint::load_generator(&best_dir).ok().map(|c| c.step());
        let best_is_stale = match best_step {
            None => true,
            Some(step) => step > trainer.state.step || best_fid.is_none(),
        };
        Ok(Self {
            evaluator,
            best_fid,
            best_is_stale,
        })
    }

    /// Scores the sampling generator (and the raw one when an EMA is kept) and, when its FID
    /// is the lowest so far, saves the run's state as `best/`.
    pub fn evaluate(&mut self, trainer: &Trainer, paths: &RunPaths) -> Result<EvalMetrics> {
        let start = Instant::now();
        trainer.recalibrate_ema()?;
        let exported =
            self.evaluator
                .score_generator(trainer.sampling_generator(), false, "sampled/eval")?;
        let fid_raw = match &trainer.nets.generator_ema {
            Some(_) => Some(self.evaluator.fid_of_generator(&trainer.nets.generator)?),
            None => None,
        };
        let better = self.best_fid.is_none_or(|best| exported.fid < best);
        if better || self.best_is_stale {
            trainer.checkpoint()?.save(&paths.best())?;
            self.best_is_stale = false;
        }
        if better {
            self.best_fid = Some(exported.fid);
        }
        Ok(EvalMetrics {
            fid: exported.fid,
            fid_raw,
            swd: Some(exported.swd.mean),
            classes_covered: exported.coverage.classes_over_5_percent,
            label_entropy_bits: exported.coverage.label_entropy_bits,
            samples: self.evaluator.samples,
            seconds: start.elapsed().as_secs_f64(),
        })
    }
}

/// The run's TensorBoard writer, when the run writes event files.
pub struct TensorBoard {
    writer: Option<EventWriter>,
}

impl TensorBoard {
    /// Opens a new event file in `<run>/tb/` for a run at the trainer's step (after dropping
    /// later events of earlier files), or nothing when TensorBoard output is off.
    pub fn open(trainer: &Trainer, paths: &RunPaths) -> Result<Self> {
        let writer = trainer
            .config
            .tensorboard
            .then(|| EventWriter::open(&paths.tensorboard(), trainer.state.step))
            .transpose()?;
        Ok(Self { writer })
    }

    /// The step's scalars (and its evaluation's).
    pub fn step(&mut self, m: &StepMetrics) -> Result<()> {
        match &mut self.writer {
            Some(w) => Ok(w.scalars(m.step, &m.scalars())?),
            None => Ok(()),
        }
    }

    /// The sample grid of `step`.
    pub fn samples(&mut self, step: u64, grid: &image::DynamicImage) -> Result<()> {
        match &mut self.writer {
            Some(w) => Ok(w.image(step, "samples", grid)?),
            None => Ok(()),
        }
    }
}
