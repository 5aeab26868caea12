//! The layout of a run folder, in one place: what `trainer train` writes and what the trainer,
//! the exporter and the checkpoint resolver read.

use std::path::PathBuf;

/// The latest checkpoint, replaced as training goes on.
pub const CHECKPOINT_DIR: &str = "checkpoint";
/// The checkpoint of a finished run.
pub const FINAL_DIR: &str = "final";
/// The checkpoint with the lowest FID of the evaluations during training.
pub const BEST_DIR: &str = "best";
/// One JSON line of metrics per step.
pub const METRICS_FILE: &str = "metrics.jsonl";
/// Sample grids, one per sampled step.
pub const SAMPLES_DIR: &str = "samples";
/// The loss curves.
pub const LOSSES_PLOT: &str = "losses.png";
/// TensorBoard event files.
pub const TENSORBOARD_DIR: &str = "tb";
/// The sample grids over the run as an animation.
pub const PROGRESS_GIF: &str = "progress.gif";

/// What a run writes into its folder; a folder holding any of these holds a run.
pub const RUN_OUTPUTS: [&str; 8] = [
    CHECKPOINT_DIR,
    FINAL_DIR,
    BEST_DIR,
    METRICS_FILE,
    SAMPLES_DIR,
    LOSSES_PLOT,
    TENSORBOARD_DIR,
    PROGRESS_GIF,
];

/// Where a run writes its outputs.
#[derive(Debug, Clone)]
pub struct RunPaths {
    /// The run folder.
    pub out: PathBuf,
}

impl RunPaths {
    /// The folder of sample grids.
    pub fn samples_dir(&self) -> PathBuf {
        self.out.join(SAMPLES_DIR)
    }
    /// The sample grid of `step`.
    pub fn sample(&self, step: u64) -> PathBuf {
        self.samples_dir().join(format!("step_{step:06}.png"))
    }
    /// The metrics log.
    pub fn metrics(&self) -> PathBuf {
        self.out.join(METRICS_FILE)
    }
    /// The loss plot.
    pub fn losses_plot(&self) -> PathBuf {
        self.out.join(LOSSES_PLOT)
    }
    /// The latest checkpoint.
    pub fn checkpoint(&self) -> PathBuf {
        self.out.join(CHECKPOINT_DIR)
    }
    /// The final checkpoint.
    pub fn final_dir(&self) -> PathBuf {
        self.out.join(FINAL_DIR)
    }
    /// The checkpoint with the lowest FID of the evaluations during training.
    pub fn best(&self) -> PathBuf {
        self.out.join(BEST_DIR)
    }
    /// TensorBoard event files.
    pub fn tensorboard(&self) -> PathBuf {
        self.out.join(TENSORBOARD_DIR)
    }
    /// The sample grids over the run as an animation.
    pub fn progress_gif(&self) -> PathBuf {
        self.out.join(PROGRESS_GIF)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every path a run writes is its named entry of the run folder (`RUN_OUTPUTS`), and the
    /// grids are named by zero-padded step.
    #[test]
    fn run_paths_are_the_run_outputs() {
        let run = RunPaths {
            out: PathBuf::from("runs/x"),
        };
        let paths = [
            run.checkpoint(),
            run.final_dir(),
            run.best(),
            run.metrics(),
            run.samples_dir(),
            run.losses_plot(),
            run.tensorboard(),
            run.progress_gif(),
        ];
        let expected: Vec<PathBuf> = RUN_OUTPUTS.iter().map(|name| run.out.join(name)).collect();
        assert_eq!(paths.to_vec(), expected);
        assert_eq!(
            run.sample(12),
            PathBuf::from("runs/x/samples/step_000012.png")
        );
    }
}
