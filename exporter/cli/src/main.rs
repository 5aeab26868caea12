//! `exporter`: writes a Gantry checkpoint's generator as an ONNX model. See `exporter --help`.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use gantry_exporter::calibration::DEFAULT_CALIBRATION_BATCHES;
use gantry_exporter::{
    export_with_gate, CalibrationOptions, ExportError, ExportOptions, ExportSetting, GraphOptions,
    OutputFormat, Precision, TritonOptions, WeightsChoice, DEFAULT_OPSET,
};
use gantry_models::RunCheckpoint;

mod quality;

#[derive(Clone, Copy, ValueEnum)]
enum PrecisionArg {
    Fp32,
    Fp16,
    Bf16,
    Int8,
}

#[derive(Clone, Copy, ValueEnum)]
enum WhichArg {
    Latest,
    Best,
    Final,
}

#[derive(Clone, Copy, ValueEnum)]
enum OutputArg {
    Float,
    Uint8,
}

/// Export a trained generator to ONNX (validated before it is written).
#[derive(Parser)]
#[command(name = "exporter", version)]
struct Cli {
    /// Checkpoint directory, or a run directory (the checkpoint --which names).
    #[arg(long)]
    checkpoint: PathBuf,
    /// Which checkpoint of a run directory: latest, best (lowest FID of the evaluations during
    /// training, `trainer train --eval-every N`) or final.
    #[arg(long, value_enum, default_value = "latest")]
    which: WhichArg,
    /// ONNX file to write.
    #[arg(long, required_unless_present = "triton_repo")]
    out: Option<PathBuf>,
    /// ONNX opset (13..=21).
    #[arg(long, default_value_t = DEFAULT_OPSET)]
    opset: i64,
    /// fp32; fp16 (weights and compute, float32 input/output: for GPU providers); bf16
    /// (weights stored in bf16, computed in fp32: ONNX Runtime's CPU provider has no bf16
    /// kernels); int8 (QDQ convolutions calibrated on the generator's activations: ~2x fp32 on
    /// CPUs with VNNI; TensorRT builds an int8 engine from it).
    #[arg(long, value_enum, default_value = "fp32")]
    precision: PrecisionArg,
    /// int8: batches of 64 latents to calibrate the activation ranges on.
    #[arg(long, default_value_t = DEFAULT_CALIBRATION_BATCHES)]
    calibration_batches: usize,
    /// int8: seed of the calibration latents.
    #[arg(long, default_value_t = 0)]
    calibration_seed: u64,
    /// int8: use this saved calibration (from --save-calibration) instead of measuring one.
    #[arg(long)]
    calibration: Option<PathBuf>,
    /// int8: save the calibration used (JSON) to this file.
    #[arg(long)]
    save_calibration: Option<PathBuf>,
    /// int8/bf16/fp16: before writing, generate --quality-samples images with the fp32 and the
    /// reduced model from the same latents; report PSNR and the Inception FID/KID of each against
    /// the training data; refuse to write the model if its FID is more than --max-fid-rise above.
    #[arg(long)]
    check_quality: bool,
    /// Images per model for --check-quality.
    #[arg(long, default_value_t = 2000, requires = "check_quality")]
    quality_samples: usize,
    /// Largest FID rise (percent of the fp32 model's FID) --check-quality lets through.
    #[arg(long, default_value_t = 3.0, requires = "check_quality")]
    max_fid_rise: f64,
    /// Lowest PSNR (dB, 8-bit pixels) against the fp32 model's images --check-quality lets
    /// through: FID alone can fall for images far from fp32's when fp32 is far from the data.
    #[arg(long, default_value_t = 30.0, requires = "check_quality")]
    min_psnr: f64,
    /// What --check-quality scores against: an image folder or an `.npz` statistics file
    /// [default: the test split of the checkpoint's training data].
    #[arg(long, requires = "check_quality")]
    quality_reference: Option<PathBuf>,
    /// Keep BatchNormalization nodes instead of folding them into the convolutions.
    #[arg(long)]
    no_fold_batchnorm: bool,
    /// Output float NCHW in [-1, 1], or uint8 NHWC ready to write as PNG.
    #[arg(long, value_enum, default_value = "float")]
    output: OutputArg,
    /// Export the EMA generator (the default when the checkpoint has one).
    #[arg(long, conflicts_with = "no_ema")]
    use_ema: bool,
    /// Export the raw generator even when EMA weights exist.
    #[arg(long)]
    no_ema: bool,
    /// Also write a Triton Inference Server model repository entry under this folder.
    #[arg(long, requires = "name")]
    triton_repo: Option<PathBuf>,
    /// Model name in the Triton repository.
    #[arg(long)]
    name: Option<String>,
    /// Triton max_batch_size.
    #[arg(long, default_value_t = 1024)]
    max_batch_size: usize,
}

/// The flag that sets an export setting.
fn flag(setting: ExportSetting) -> &'static str {
    match setting {
        ExportSetting::Out => "--out",
        ExportSetting::Opset => "--opset",
        ExportSetting::Weights => "--use-ema",
        ExportSetting::TritonName => "--name",
        ExportSetting::MaxBatchSize => "--max-batch-size",
        ExportSetting::Precision => "--precision",
        ExportSetting::Calibration => "--calibration/--save-calibration",
        ExportSetting::CalibrationBatches => "--calibration-batches",
        _ => "an option",
    }
}

/// The one-line message of an error, naming flags where the library names settings.
fn render(e: &ExportError) -> String {
    match e {
        ExportError::Invalid { setting, problem } => format!("{} {problem}", flag(*setting)),
        other => {
            let mut text = other.to_string();
            let mut source = std::error::Error::source(other);
            while let Some(s) = source {
                let s_text = s.to_string();
                if !text.contains(&s_text) {
                    text = format!("{text}: {s_text}");
                }
                source = s.source();
            }
            text
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let which = match cli.which {
        WhichArg::Latest => RunCheckpoint::Latest,
        WhichArg::Best => RunCheckpoint::Best,
        WhichArg::Final => RunCheckpoint::Final,
    };
    let gate = match cli.check_quality.then(|| quality::gate(&cli, which)) {
        Some(Err(e)) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
        Some(Ok(g)) => Some(g),
        None => None,
    };
    let opts = ExportOptions {
        checkpoint: cli.checkpoint,
        which,
        out: cli.out,
        opset: cli.opset,
        graph: GraphOptions {
            precision: match cli.precision {
                PrecisionArg::Fp32 => Precision::Fp32,
                PrecisionArg::Fp16 => Precision::Fp16,
                PrecisionArg::Bf16 => Precision::Bf16,
                PrecisionArg::Int8 => Precision::Int8,
            },
            fold_batchnorm: !cli.no_fold_batchnorm,
            output: match cli.output {
                OutputArg::Float => OutputFormat::Float,
                OutputArg::Uint8 => OutputFormat::Uint8,
            },
        },
        weights: if cli.use_ema {
            WeightsChoice::Ema
        } else if cli.no_ema {
            WeightsChoice::Raw
        } else {
            WeightsChoice::Auto
        },
        triton: cli.triton_repo.map(|repo| TritonOptions {
            repo,
            name: cli.name.unwrap_or_default(),
            max_batch_size: cli.max_batch_size,
        }),
        calibration: CalibrationOptions {
            batches: cli.calibration_batches,
            seed: cli.calibration_seed,
            load: cli.calibration,
            save: cli.save_calibration,
        },
    };
    let gate = gate
        .as_ref()
        .map(|g| g as &dyn gantry_exporter::QualityGate);
    match export_with_gate(&opts, gate) {
        Ok(r) => {
            let weights = if r.used_ema { "EMA" } else { "raw" };
            if let Some(out) = &r.out {
                println!(
                    "exported {} ({} bytes, {} nodes, {weights} weights) from {}",
                    out.display(),
                    r.bytes,
                    r.nodes,
                    r.checkpoint.display()
                );
            }
            if let Some(q) = &r.quality {
                println!("quality: {q}");
            }
            if let Some(c) = &r.calibration {
                println!("int8 calibration: {}", c.describe());
            }
            if let Some(dir) = &r.triton_dir {
                println!("Triton model repository entry: {}", dir.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {}", render(&e));
            ExitCode::FAILURE
        }
    }
}
