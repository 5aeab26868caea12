//! Training progress on a terminal: an indicatif bar; elsewhere the library's plain lines.

use std::io::IsTerminal;
use std::time::Duration;

use gantry_trainer::eval::standard::ExtractProgress;
use gantry_trainer::metrics::StepMetrics;
use gantry_trainer::progress::{LogLines, Progress};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A bar when stderr is a terminal, plain lines every `plain_every` steps otherwise.
pub struct Bar {
    bar: Option<ProgressBar>,
    lines: LogLines,
}

impl Bar {
    /// A reporter for a run of `total` steps starting at `start`.
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
            lines: LogLines::new(total, plain_every),
        }
    }
}

impl Progress for Bar {
    fn step(&mut self, m: &StepMetrics) {
        match &self.bar {
            Some(bar) => {
                let text = self.lines.summary(m);
                bar.set_position(m.step);
                bar.set_message(text);
            }
            None => self.lines.step(m),
        }
    }

    fn line(&mut self, line: &str) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None => self.lines.line(line),
        }
    }

    fn finish(&mut self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// Feature extraction on a terminal: a bar per image set; elsewhere a line at its start.
#[derive(Default)]
pub struct FeatureBar {
    bar: Option<ProgressBar>,
}

impl ExtractProgress for FeatureBar {
    fn begin(&mut self, what: &str, total: usize) {
        if !std::io::stderr().is_terminal() {
            eprintln!("Inception features of {total} {what}");
            return;
        }
        let bar = ProgressBar::with_draw_target(Some(total as u64), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} {msg} [{elapsed_precise}] {bar:30.cyan/blue} {pos}/{len} images ({per_sec}, ETA {eta})",
            )
            .expect("valid template"),
        );
        bar.set_message(format!("Inception features: {what}"));
        bar.enable_steady_tick(Duration::from_millis(250));
        self.bar = Some(bar);
    }

    fn advance(&mut self, done: usize) {
        if let Some(bar) = &self.bar {
            bar.set_position(done as u64);
        }
    }

    fn end(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}
