//! How a run reports its progress: every finished step and the lines worth a person's eye
//! (evaluations, the data-parallel layout). The library prints plain lines ([`LogLines`]);
//! the `trainer` command draws a progress bar on a terminal.

use crate::metrics::StepMetrics;

/// Receives a run's progress.
pub trait Progress {
    /// A finished step.
    fn step(&mut self, m: &StepMetrics);
    /// A line to show (without breaking a progress bar).
    fn line(&mut self, line: &str);
    /// The run ended (finished, stopped or failed).
    fn finish(&mut self) {}
}

/// Plain lines on stderr: the first step, every `every`-th and the last, each with its ETA.
pub struct LogLines {
    total: u64,
    every: u64,
    img_per_sec: f32,
}

impl LogLines {
    /// A reporter for a run of `total` steps, a line every `every` steps.
    pub fn new(total: u64, every: u64) -> Self {
        Self {
            total,
            every: every.max(1),
            img_per_sec: 0.0,
        }
    }

    /// The step's summary (losses, D outputs, smoothed speed), as a bar's message or a line.
    pub fn summary(&mut self, m: &StepMetrics) -> String {
        self.img_per_sec = if self.img_per_sec == 0.0 {
            m.img_per_sec
        } else {
            0.9 * self.img_per_sec + 0.1 * m.img_per_sec
        };
        format!(
            "epoch {} loss_d {:.3} loss_g {:.3} D(x) {:.2} D(G(z)) {:.2} {:.0} img/s",
            m.epoch, m.loss_d, m.loss_g, m.d_real, m.d_fake, self.img_per_sec
        )
    }
}

impl Progress for LogLines {
    fn step(&mut self, m: &StepMetrics) {
        let text = self.summary(m);
        if m.step % self.every == 0 || m.step == self.total || m.step == 1 {
            let left = self.total.saturating_sub(m.step) as f64;
            let eta = m.seconds / m.step.max(1) as f64 * left;
            eprintln!("step {}/{} {text} eta {eta:.0}s", m.step, self.total);
        }
    }

    fn line(&mut self, line: &str) {
        eprintln!("{line}");
    }
}
