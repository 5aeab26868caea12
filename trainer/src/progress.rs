//! Training progress: an indicatif bar on a terminal, plain log lines otherwise.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::metrics::StepMetrics;

/// Reports steps as they complete.
pub struct Progress {
    bar: Option<ProgressBar>,
    total: u64,
    plain_every: u64,
    img_per_sec: f32,
}

impl Progress {
    /// A reporter for a run of `total` steps starting at `start`; the bar is used when stderr is
    /// a terminal, plain lines every `plain_every` steps otherwise.
    pub fn new(start: u64, total: u64, plain_every: u64) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {bar:30.cyan/blue} {pos}/{len} steps {msg} (ETA {eta})",
                )
                .expect("valid template"),
            );
            bar.set_position(start);
            bar.reset_eta();
            bar.enable_steady_tick(Duration::from_millis(250));
            bar
        });
        Self {
            bar,
            total,
            plain_every: plain_every.max(1),
            img_per_sec: 0.0,
        }
    }

    /// Records a finished step.
    pub fn step(&mut self, m: &StepMetrics) {
        self.img_per_sec = if self.img_per_sec == 0.0 {
            m.img_per_sec
        } else {
            0.9 * self.img_per_sec + 0.1 * m.img_per_sec
        };
        let text = format!(
            "epoch {} loss_d {:.3} loss_g {:.3} D(x) {:.2} D(G(z)) {:.2} {:.0} img/s",
            m.epoch, m.loss_d, m.loss_g, m.d_real, m.d_fake, self.img_per_sec
        );
        match &self.bar {
            Some(bar) => {
                bar.set_position(m.step);
                bar.set_message(text);
            }
            None if m.step % self.plain_every == 0 || m.step == self.total || m.step == 1 => {
                let left = self.total.saturating_sub(m.step) as f64;
                let eta = m.seconds / m.step.max(1) as f64 * left;
                eprintln!("step {}/{} {text} eta {:.0}s", m.step, self.total, eta);
            }
            None => {}
        }
    }

    /// Prints a line without breaking the bar.
    pub fn println(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
    }

    /// Removes the bar.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
