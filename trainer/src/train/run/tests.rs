//! A run on its own (no CLI): its outputs on their steps, a stop request, what a folder holds.

use std::collections::BTreeSet;
use std::sync::atomic::AtomicBool;

use candle_core::Device;
use gantry_models::Checkpoint;

use super::*;
use crate::metrics::StepMetrics;
use crate::train::tests::{eight_images, small_model};
use crate::train::TrainConfig;

/// The progress of a run as a test sees it: at each finished step, the step the signal
/// handlers were told, and the step of the checkpoint on disk (written after the progress
/// hears of a step); sets `stop` once step `stop_after` is done.
struct Watch<'a> {
    paths: RunPaths,
    stop: &'a AtomicBool,
    stop_after: Option<u64>,
    seen: Vec<(u64, u64, Option<u64>)>,
    lines: Vec<String>,
}

impl Progress for Watch<'_> {
    fn step(&mut self, m: &StepMetrics) {
        let checkpoint = Checkpoint::load_generator(&self.paths.checkpoint())
            .ok()
            .map(|c| c.step());
        let told = STEP_IN_PROGRESS.load(Ordering::SeqCst);
        self.seen.push((m.step, told, checkpoint));
        if Some(m.step) == self.stop_after {
            self.stop.store(true, Ordering::SeqCst);
        }
    }
    fn line(&mut self, line: &str) {
        self.lines.push(line.to_string());
    }
}

/// One run at a time: the step told to the signal handlers is process-wide.
static ONE_RUN: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Trains the eight-image fixture (two steps an epoch) with `config` into `out`, stopping after
/// step `stop_after` if given; returns the outcome and what the progress saw.
fn train(
    config: TrainConfig,
    out: &Path,
    stop_after: Option<u64>,
) -> (RunOutcome, Vec<(u64, u64, Option<u64>)>) {
    let config = TrainConfig {
        batch_size: 4,
        ..config
    };
    let mut trainer = Trainer::new(config, small_model(), eight_images(0), &Device::Cpu).unwrap();
    let paths = RunPaths {
        out: out.to_path_buf(),
    };
    let stop = AtomicBool::new(false);
    let mut watch = Watch {
        paths: paths.clone(),
        stop: &stop,
        stop_after,
        seen: Vec::new(),
        lines: Vec::new(),
    };
    let _one = ONE_RUN.lock().unwrap_or_else(|e| e.into_inner());
    let outcome = run(&mut trainer, &paths, &stop, &mut watch).unwrap();
    // One process trains alone, and says nothing of data parallelism (or of evaluations:
    // there are none).
    assert!(watch.lines.is_empty(), "{:?}", watch.lines);
    (outcome, watch.seen)
}

fn names_in(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

fn metric_steps(paths: &RunPaths) -> Vec<u64> {
    std::fs::read_to_string(paths.metrics())
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["step"]
                .as_u64()
                .unwrap()
        })
        .collect()
}

fn checkpoint_step(dir: &Path) -> u64 {
    Checkpoint::load_generator(dir).unwrap().step()
}

/// Samples on every `sample_every`-th step and at the end, a checkpoint on every
/// `checkpoint_every`-th (on disk from the step after it) and at the end, one metrics line per
/// step, the final checkpoint, loss plot and animation; the signal handlers are told each step
/// before it runs.
#[test]
fn a_run_writes_its_outputs_on_their_steps_and_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let config = TrainConfig {
        max_steps: Some(5),
        sample_every: 2,
        checkpoint_every: 3,
        tensorboard: true,
        ..TrainConfig::default()
    };
    let (outcome, seen) = train(config, &out, None);
    let paths = RunPaths { out: out.clone() };
    assert_eq!(
        outcome,
        RunOutcome::Finished {
            step: 5,
            last_sample: Some(paths.sample(5)),
        }
    );
    let want: Vec<(u64, u64, Option<u64>)> = vec![
        (1, 1, None),
        (2, 2, None),
        (3, 3, None),
        (4, 4, Some(3)),
        (5, 5, Some(3)),
    ];
    assert_eq!(seen, want, "(step, step told, checkpoint on disk)");
    let samples: BTreeSet<String> = ["step_000002.png", "step_000004.png", "step_000005.png"]
        .map(String::from)
        .into();
    assert_eq!(names_in(&paths.samples_dir()), samples);
    assert_eq!(metric_steps(&paths), [1, 2, 3, 4, 5]);
    assert_eq!(checkpoint_step(&paths.checkpoint()), 5);
    assert_eq!(checkpoint_step(&paths.final_dir()), 5);
    assert_eq!(
        existing_run_outputs(&out),
        [
            "checkpoint",
            "final",
            "metrics.jsonl",
            "samples",
            "losses.png",
            "tb",
            "progress.gif"
        ]
    );
    // TensorBoard gets every step's scalars and every sample grid.
    let tagged = |tag: &str| -> Vec<i64> {
        let files = crate::tensorboard::event_files(&out.join("tb")).unwrap();
        files
            .iter()
            .flat_map(|f| crate::tensorboard::read_events(f).unwrap())
            .filter(|e| {
                e.summary
                    .as_ref()
                    .is_some_and(|s| s.value.iter().any(|v| v.tag == tag))
            })
            .map(|e| e.step)
            .collect()
    };
    assert_eq!(tagged("loss_d"), [1, 2, 3, 4, 5]);
    assert_eq!(tagged("samples"), [2, 4, 5]);
}

/// A stop request is seen after the step in progress: that step's outputs are written, then a
/// checkpoint of it (even with periodic checkpoints off), and no final result.
#[test]
fn a_stop_request_ends_the_run_after_its_step_with_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let config = TrainConfig {
        max_steps: Some(10),
        sample_every: 2,
        checkpoint_every: 0,
        tensorboard: false,
        ..TrainConfig::default()
    };
    let (outcome, seen) = train(config, &out, Some(3));
    let paths = RunPaths { out: out.clone() };
    assert_eq!(outcome, RunOutcome::Stopped { step: 4 });
    assert!(seen.iter().all(|&(_, _, ckpt)| ckpt.is_none()), "{seen:?}");
    assert_eq!(metric_steps(&paths), [1, 2, 3, 4]);
    let samples: BTreeSet<String> = ["step_000002.png", "step_000004.png"]
        .map(String::from)
        .into();
    assert_eq!(names_in(&paths.samples_dir()), samples);
    assert_eq!(checkpoint_step(&paths.checkpoint()), 4);
    assert_eq!(
        existing_run_outputs(&out),
        ["checkpoint", "metrics.jsonl", "samples", "losses.png"]
    );
    // `trainer animate` of the stopped run: a frame per grid up to its checkpoint's step,
    // into the run folder by default; a folder without grids is not a run.
    assert_eq!(
        crate::animate::animate_run(&out, None).unwrap(),
        (paths.progress_gif(), 2)
    );
    std::fs::remove_dir_all(paths.samples_dir()).unwrap();
    let err = crate::animate::animate_run(&out, None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("has no samples/ folder"), "{err}");
}

/// An empty folder holds no run; the folder is made (with `samples/`) and left writable, and a
/// temporary file a killed writer left is removed; a folder that cannot be made is named.
#[test]
fn the_run_folder_is_prepared_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("new");
    assert!(existing_run_outputs(&out).is_empty());
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join(".metrics.jsonl.tmp-1234"), b"half").unwrap();
    prepare_out_dir(&out).unwrap();
    assert!(out.join("samples").is_dir());
    assert_eq!(existing_run_outputs(&out), ["samples"]);
    assert_eq!(names_in(&out), BTreeSet::from(["samples".to_string()]));
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"").unwrap();
    let err = prepare_out_dir(&file.join("run")).unwrap_err().to_string();
    assert!(err.contains("a-file"), "{err}");
}
