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

    /// The line a finished step prints: the first step, every `every`-th and the last, with
    /// the time left at the run's average step time so far.
    pub fn line_for(&mut self, m: &StepMetrics) -> Option<String> {
        let text = self.summary(m);
        if m.step % self.every == 0 || m.step == self.total || m.step == 1 {
            let left = self.total.saturating_sub(m.step) as f64;
            let eta = m.seconds / m.step.max(1) as f64 * left;
            return Some(format!(
                "step {}/{} {text} eta {eta:.0}s",
                m.step, self.total
            ));
        }
        None
    }
}

impl Progress for LogLines {
    fn step(&mut self, m: &StepMetrics) {
        if let Some(line) = self.line_for(m) {
            eprintln!("{line}");
        }
    }

    fn line(&mut self, line: &str) {
        eprintln!("{line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(step: u64, seconds: f64, img_per_sec: f32) -> StepMetrics {
        StepMetrics {
            step,
            epoch: 2,
            loss_d: 1.25,
            loss_g: 0.5,
            d_real: 0.75,
            d_fake: 0.25,
            img_per_sec,
            seconds,
            lr_d: 0.0,
            lr_g: 0.0,
            sync_ms: None,
            r1_penalty: None,
            eval: None,
        }
    }

    #[test]
    fn lines_come_at_the_first_every_nth_and_last_step_with_the_time_left() {
        let mut log = LogLines::new(25, 10);
        let printed: Vec<u64> = (1..=25)
            .filter(|&s| log.line_for(&at(s, 2.0 * s as f64, 100.0)).is_some())
            .collect();
        assert_eq!(printed, [1, 10, 20, 25]);
        // 2 s a step so far, 15 steps left: 30 s.
        let line = LogLines::new(25, 10)
            .line_for(&at(10, 20.0, 100.0))
            .unwrap();
        assert_eq!(
            line,
            "step 10/25 epoch 2 loss_d 1.250 loss_g 0.500 D(x) 0.75 D(G(z)) 0.25 100 img/s eta 30s"
        );
        assert_eq!(LogLines::new(5, 0).every, 1, "every 0 means every step");
    }

    #[test]
    fn the_speed_shown_is_smoothed_from_the_first_step_on() {
        let mut log = LogLines::new(100, 1);
        assert!(log.summary(&at(1, 1.0, 200.0)).ends_with(" 200 img/s"));
        // 0.9 x 200 + 0.1 x 100
        assert!(log.summary(&at(2, 2.0, 100.0)).ends_with(" 190 img/s"));
    }
}
