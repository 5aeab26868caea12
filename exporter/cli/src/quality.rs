//! `--check-quality`: gantry-metrics' precision gate on the checkpoint's data, with a progress
//! bar over feature extraction.

use std::io::IsTerminal;

use gantry_metrics::precision_gate::{checkpoint_data, PrecisionGate};
use gantry_metrics::standard::{ExtractProgress, InceptionEvaluator, InceptionOptions};
use gantry_models::{resolve_run_checkpoint, Checkpoint, RunCheckpoint};

use crate::{Cli, PrecisionArg};

/// Feature extraction as a bar on a terminal (nothing otherwise).
struct Extraction(Option<indicatif::ProgressBar>);

impl ExtractProgress for Extraction {
    fn begin(&mut self, what: &str, total: usize) {
        if std::io::stderr().is_terminal() {
            let bar = indicatif::ProgressBar::new(total as u64);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{msg} {bar:30.cyan/blue} {pos}/{len} images (ETA {eta})",
                )
                .expect("valid template"),
            );
            bar.set_message(format!("Inception features of {what}"));
            self.0 = Some(bar);
        }
    }
    fn advance(&mut self, done: usize) {
        if let Some(b) = &self.0 {
            b.set_position(done as u64);
        }
    }
    fn end(&mut self) {
        if let Some(b) = self.0.take() {
            b.finish_and_clear();
        }
    }
}

/// The quality gate of `--check-quality`: the Inception evaluator on the checkpoint's own data.
pub fn gate(cli: &Cli, which: RunCheckpoint) -> Result<PrecisionGate, String> {
    if matches!(cli.precision, PrecisionArg::Fp32) {
        return Err("--check-quality compares a reduced precision with fp32: choose --precision int8, bf16 or fp16".into());
    }
    let dir = resolve_run_checkpoint(&cli.checkpoint, which).map_err(|e| e.to_string())?;
    let meta = Checkpoint::read_meta(&dir).map_err(|e| e.to_string())?;
    // A reference given on the command line needs no training data.
    let spec = match &cli.quality_reference {
        Some(_) => None,
        None => Some(checkpoint_data(&meta, &dir).map_err(|e| e.to_string())?),
    };
    let mut progress = Extraction(None);
    let inception = InceptionOptions {
        reference: cli.quality_reference.clone(),
        ..InceptionOptions::default()
    };
    let evaluator = InceptionEvaluator::new(
        spec.as_ref(),
        &inception,
        cli.quality_samples,
        0,
        &candle_core::Device::Cpu,
        &mut |line| eprintln!("{line}"),
        &mut progress,
    )
    .map_err(|e| format!("--check-quality: {e}"))?;
    PrecisionGate::new(
        evaluator,
        cli.max_fid_rise / 100.0,
        cli.min_psnr,
        Box::new(progress),
    )
    .map_err(|e| format!("--max-fid-rise/--min-psnr: {e}"))
}
