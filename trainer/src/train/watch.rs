//! What a run reports while it trains besides `metrics.jsonl`: TensorBoard event files, and
//! evaluations every `eval_every` steps that keep the lowest-FID checkpoint in `best/`.
//! Neither touches the training state: an evaluation samples in eval mode from its own latent
//! stream, so a run trains the same weights with or without them.

use std::time::Instant;

use gantry_models::Checkpoint;

use super::Trainer;
use crate::error::Result;
use crate::eval::standard::{InceptionEvaluator, InceptionOptions, Quiet};
use crate::eval::{EvalMetric, Evaluator};
use crate::metrics::{EvalMetrics, StepMetrics};
use crate::tensorboard::EventWriter;
use gantry_models::run_layout::RunPaths;

/// The seed of the latents evaluations sample from (as `trainer eval`'s default).
const EVAL_SEED: u64 = 0;

/// The scorer of a run's evaluations.
enum Scorer {
    Classifier(Evaluator),
    Inception(InceptionEvaluator),
}

/// Scores the generator during training and keeps the best checkpoint.
pub struct RunEvaluator {
    scorer: Scorer,
    /// The lowest FID of the run so far in this metric (`None` before the first evaluation).
    best_fid: Option<f64>,
    /// Whether `best/` must be rewritten at the next evaluation whatever its FID: it is missing,
    /// or it comes from steps a killed run made after the checkpoint this run resumed from.
    best_is_stale: bool,
}

impl RunEvaluator {
    /// Loads (or trains) the classifier of the run's data and the test statistics, or the
    /// Inception network and the test split's (cached) features; the best FID so far comes
    /// from the run's history (`metrics.jsonl` up to the resumed step, evaluations of the same
    /// metric).
    pub fn new(
        trainer: &Trainer,
        paths: &RunPaths,
        history: &[StepMetrics],
        log: &mut dyn FnMut(String),
    ) -> Result<Self> {
        let spec = trainer
            .config
            .data_spec(trainer.model.image_size, trainer.model.channels);
        let metric = trainer.config.eval_metric;
        let scorer = match metric {
            EvalMetric::Classifier => Scorer::Classifier(Evaluator::new(
                &spec,
                trainer.config.eval_samples,
                EVAL_SEED,
                trainer.device(),
                log,
            )?),
            EvalMetric::Inception => Scorer::Inception(InceptionEvaluator::new(
                Some(&spec),
                &InceptionOptions::default(),
                trainer.config.eval_samples,
                EVAL_SEED,
                trainer.device(),
                log,
                &mut Quiet,
            )?),
        };
        let best_fid = history
            .iter()
            .filter_map(|m| m.eval.as_ref())
            .filter(|e| e.metric == metric)
            .map(|e| e.fid)
            .min_by(f64::total_cmp);
        let best_dir = gantry_models::atomic::recover_dir(&paths.best());
        let best_step = Checkpoint::load_generator(&best_dir).ok().map(|c| c.step());
        let best_is_stale = match best_step {
            None => true,
            Some(step) => step > trainer.state.step || best_fid.is_none(),
        };
        Ok(Self {
            scorer,
            best_fid,
            best_is_stale,
        })
    }

    /// Scores the sampling generator (and, with the classifier, the raw one when an EMA is
    /// kept) and, when its FID is the lowest so far, saves the run's state as `best/`.
    pub fn evaluate(&mut self, trainer: &Trainer, paths: &RunPaths) -> Result<EvalMetrics> {
        let start = Instant::now();
        trainer.recalibrate_ema()?;
        let mut metrics = match &self.scorer {
            Scorer::Classifier(evaluator) => {
                let exported = evaluator.score_generator(
                    trainer.sampling_generator(),
                    false,
                    "sampled/eval",
                )?;
                let fid_raw = match &trainer.nets.generator_ema {
                    Some(_) => Some(evaluator.fid_of_generator(&trainer.nets.generator)?),
                    None => None,
                };
                EvalMetrics {
                    fid: exported.fid,
                    fid_raw,
                    swd: Some(exported.swd.mean),
                    classes_covered: Some(exported.coverage.classes_over_5_percent),
                    label_entropy_bits: Some(exported.coverage.label_entropy_bits),
                    class_agreement: exported.coverage.class_agreement,
                    metric: EvalMetric::Classifier,
                    inception_fid: None,
                    inception_kid: None,
                    inception_kid_std: None,
                    inception_precision: None,
                    inception_recall: None,
                    samples: evaluator.samples,
                    seconds: 0.0,
                }
            }
            Scorer::Inception(evaluator) => {
                let s = evaluator.score_generator(
                    trainer.sampling_generator(),
                    "sampled/eval",
                    &mut Quiet,
                )?;
                EvalMetrics {
                    fid: s.fid,
                    fid_raw: None,
                    swd: None,
                    classes_covered: None,
                    label_entropy_bits: None,
                    class_agreement: None,
                    metric: EvalMetric::Inception,
                    inception_fid: Some(s.fid),
                    inception_kid: s.kid,
                    inception_kid_std: s.kid_std,
                    inception_precision: s.precision,
                    inception_recall: s.recall,
                    samples: evaluator.samples,
                    seconds: 0.0,
                }
            }
        };
        let better = self.best_fid.is_none_or(|best| metrics.fid < best);
        if better || self.best_is_stale {
            trainer.checkpoint()?.save(&paths.best())?;
            self.best_is_stale = false;
        }
        if better {
            self.best_fid = Some(metrics.fid);
        }
        metrics.seconds = start.elapsed().as_secs_f64();
        Ok(metrics)
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
