//! The `runtime` binary: files it writes, what it reports, and clean one-line errors naming
//! the flag on bad input. Two modules, so that a run can leave one out (`--skip generate::`: the
//! serve part of scripts/mutants.sh, whose code the generate tests never reach).

use std::path::{Path, PathBuf};

use gantry_exporter::OutputFormat;
use gantry_testkit::export_tiny_model;

mod generate;
mod serve;

/// Runs `runtime` with `args`.
fn runtime(args: &[&str]) -> std::process::Output {
    gantry_testkit::run(env!("CARGO_BIN_EXE_runtime"), args)
}

fn model(dir: &Path, num_classes: Option<usize>, output: OutputFormat) -> PathBuf {
    export_tiny_model(dir, num_classes, output)
}
