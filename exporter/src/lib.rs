//! Gantry's exporter: a checkpoint's generator becomes an ONNX model that any ONNX consumer
//! accepts (ONNX Runtime, the `onnx` checker, Netron, Triton), built from the same layer spec
//! as the candle network and written with candle-onnx's protobuf types.
//!
//! The ONNX interface (also in the README):
//! - input `z`: float32 `[N, latent_dim]`; conditional models also take `label`: int64 `[N]`;
//! - output `image`: float32 `[N, C, H, W]` in [-1, 1], or uint8 `[N, H, W, C]` with `--output uint8`;
//! - `metadata_props`: the `gantry.*` keys listed in [`METADATA_KEYS`].

#![forbid(unsafe_code)]

pub mod calibration;
pub mod error;
pub mod fold;
pub mod graph;
pub mod proto;
pub mod quant;
pub mod triton;
pub mod verify;

use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};

use candle_onnx::onnx::{
    tensor_proto::DataType, type_proto, GraphProto, ModelProto, OperatorSetIdProto,
    StringStringEntryProto, TypeProto, ValueInfoProto,
};
use gantry_models::{resolve_run_checkpoint, Checkpoint, ModelConfig, RunCheckpoint};
use prost::Message;

pub use calibration::{Calibration, CalibrationOptions};
pub use error::{ExportError, ExportSetting, Result};
pub use graph::{
    GraphOptions, Lowering, OutputFormat, Precision, BATCH_DIM, INPUT_LABEL, INPUT_Z, OUTPUT_IMAGE,
};

/// Opsets the exporter can target (every op it uses has the same semantics across them).
pub const SUPPORTED_OPSETS: RangeInclusive<i64> = 13..=21;
/// Default opset.
pub const DEFAULT_OPSET: i64 = 17;
/// Version of the `gantry.*` metadata contract.
pub const METADATA_FORMAT_VERSION: &str = "1";
/// Metadata keys every exported model carries, in the order they are written.
pub const METADATA_KEYS: [&str; 14] = [
    "gantry.format_version",
    "gantry.arch",
    "gantry.latent_dim",
    "gantry.image_size",
    "gantry.channels",
    "gantry.num_classes",
    "gantry.output",
    "gantry.training_steps",
    "gantry.dataset",
    "gantry.normalization",
    "gantry.precision",
    "gantry.calibration",
    "gantry.batchnorm_folded",
    "gantry.weights",
];

/// Which generator weights to export.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WeightsChoice {
    /// The EMA weights when the checkpoint has them, else the raw ones.
    #[default]
    Auto,
    /// The EMA weights (an error if the checkpoint has none).
    Ema,
    /// The raw (non-averaged) weights.
    Raw,
}

/// Where to write a Triton model repository entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TritonOptions {
    pub repo: PathBuf,
    pub name: String,
    pub max_batch_size: usize,
}

/// Everything an export needs.
#[derive(Debug, Clone)]
pub struct ExportOptions {
    /// A checkpoint directory or a run directory (meaning the checkpoint `which` says).
    pub checkpoint: PathBuf,
    /// Which of a run directory's checkpoints.
    pub which: RunCheckpoint,
    /// The ONNX file to write (optional when a Triton repository is written).
    pub out: Option<PathBuf>,
    pub opset: i64,
    pub graph: GraphOptions,
    pub weights: WeightsChoice,
    pub triton: Option<TritonOptions>,
    /// How an int8 export is calibrated (ignored by the other precisions, which refuse a
    /// calibration file to read or write).
    pub calibration: CalibrationOptions,
}

/// What a quality gate concluded about a reduced-precision model.
#[derive(Debug, Clone, PartialEq)]
pub struct GateVerdict {
    /// Whether the model may be written.
    pub passed: bool,
    /// One line with the measurements (and the reason for a refusal).
    pub summary: String,
}

/// A check a reduced-precision export must pass before it is written: it gets the fp32 export
/// of the same weights and the reduced one, both as ONNX files (`gantry-metrics`'
/// `PrecisionGate` compares their images on the same latents and their Inception FID).
pub trait QualityGate {
    /// Compares `candidate` with `reference`.
    fn check(
        &self,
        reference: &Path,
        candidate: &Path,
    ) -> std::result::Result<GateVerdict, Box<dyn std::error::Error + Send + Sync>>;
}

/// What an export produced.
#[derive(Debug, Clone)]
pub struct ExportReport {
    pub checkpoint: PathBuf,
    pub out: Option<PathBuf>,
    pub bytes: usize,
    pub used_ema: bool,
    pub nodes: usize,
    pub triton_dir: Option<PathBuf>,
    /// The calibration of an int8 export.
    pub calibration: Option<Calibration>,
    /// The quality gate's summary, when one ran.
    pub quality: Option<String>,
}

/// The IR version matching an opset (ONNX's versioning table).
pub fn ir_version(opset: i64) -> i64 {
    match opset {
        ..=14 => 7,
        15..=18 => 8,
        19..=20 => 9,
        _ => 10,
    }
}

/// The `gantry.*` metadata of an export, as (key, value) pairs (keys: [`METADATA_KEYS`]).
/// `calibration` is the int8 calibration (`gantry.calibration` says how it was made, "none"
/// for the other precisions).
pub fn metadata(
    cfg: &ModelConfig,
    ckpt: &Checkpoint,
    opts: &GraphOptions,
    used_ema: bool,
    calibration: Option<&Calibration>,
) -> Vec<(&'static str, String)> {
    vec![
        ("gantry.format_version", METADATA_FORMAT_VERSION.to_string()),
        ("gantry.arch", cfg.arch.name().to_string()),
        ("gantry.latent_dim", cfg.latent_dim.to_string()),
        ("gantry.image_size", cfg.image_size.to_string()),
        ("gantry.channels", cfg.channels.to_string()),
        (
            "gantry.num_classes",
            cfg.num_classes.unwrap_or(0).to_string(),
        ),
        ("gantry.output", opts.output.name().to_string()),
        ("gantry.training_steps", ckpt.step().to_string()),
        (
            "gantry.dataset",
            ckpt.meta.dataset.clone().unwrap_or_default(),
        ),
        ("gantry.normalization", "tanh [-1,1]".to_string()),
        ("gantry.precision", opts.precision.name().to_string()),
        (
            "gantry.calibration",
            calibration.map_or("none".into(), Calibration::describe),
        ),
        ("gantry.batchnorm_folded", opts.fold_batchnorm.to_string()),
        (
            "gantry.weights",
            if used_ema { "ema" } else { "raw" }.to_string(),
        ),
    ]
}

/// What [`build_model`] built.
pub struct BuiltModel {
    pub model: ModelProto,
    pub used_ema: bool,
    /// The calibration of an int8 model.
    pub calibration: Option<Calibration>,
}

/// A model proto of `graph` with the exporter's opset, IR version and producer.
fn model_proto(graph: GraphProto, opset: i64) -> ModelProto {
    ModelProto {
        ir_version: ir_version(opset),
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: opset,
        }],
        producer_name: "gantry-exporter".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        domain: "ai.gantry".into(),
        graph: Some(graph),
        ..Default::default()
    }
}

/// The calibration of an int8 export of `cfg` with weights `tensors`: read from
/// `opts.load` (and refused unless measured on this very graph) or measured.
fn calibrate(
    cfg: &ModelConfig,
    tensors: &gantry_models::TensorMap,
    opset: i64,
    opts: &CalibrationOptions,
) -> Result<Calibration> {
    let fp32 = GraphOptions {
        precision: Precision::Fp32,
        fold_batchnorm: true,
        output: OutputFormat::Float,
    };
    let mut graph = graph::generator_graph(cfg, tensors, &fp32, Lowering::Calibrating)?;
    let fingerprint = calibration::fingerprint(&graph.encode_to_vec());
    if let Some(path) = &opts.load {
        let c = Calibration::read(path)?;
        c.check_model(path, &fingerprint)?;
        return Ok(c);
    }
    // Every tensor a node makes becomes an output (all are float32 in this graph).
    let float = TypeProto {
        denotation: String::new(),
        value: Some(type_proto::Value::TensorType(type_proto::Tensor {
            elem_type: DataType::Float as i32,
            shape: None,
        })),
    };
    graph.output = graph
        .node
        .iter()
        .flat_map(|n| n.output.iter())
        .map(|name| ValueInfoProto {
            name: name.clone(),
            r#type: Some(float.clone()),
            doc_string: String::new(),
        })
        .collect();
    let bytes = model_proto(graph, opset).encode_to_vec();
    Calibration::measure(&bytes, fingerprint, cfg, opts)
}

/// The ONNX model of a loaded checkpoint's generator (int8 models calibrated as `calibration`
/// says).
pub fn build_model(
    ckpt: &Checkpoint,
    opset: i64,
    opts: &GraphOptions,
    weights: WeightsChoice,
    calibration: &CalibrationOptions,
) -> Result<BuiltModel> {
    if !SUPPORTED_OPSETS.contains(&opset) {
        return Err(ExportError::invalid(
            ExportSetting::Opset,
            format!(
                "{opset} is not supported (choose {}..={})",
                SUPPORTED_OPSETS.start(),
                SUPPORTED_OPSETS.end()
            ),
        ));
    }
    let (tensors, used_ema) = match (weights, &ckpt.generator_ema) {
        (WeightsChoice::Raw, _) | (WeightsChoice::Auto, None) => (&ckpt.generator, false),
        (WeightsChoice::Auto | WeightsChoice::Ema, Some(ema)) => (ema, true),
        (WeightsChoice::Ema, None) => {
            return Err(ExportError::invalid(
                ExportSetting::Weights,
                "the checkpoint has no EMA weights (it was trained without an EMA)",
            ))
        }
    };
    let cfg = &ckpt.meta.model;
    // A spectrally normalised generator is written with each weight already divided by its
    // sigma (candle's own computation, so the graph equals what training sampled with).
    let normalized;
    let tensors = if cfg.g_spectral_norm {
        normalized = gantry_models::Generator::inference_tensors_of(cfg, tensors)?;
        &normalized
    } else {
        tensors
    };
    let (lowering, calibration) = if opts.precision == Precision::Int8 {
        let c = calibrate(cfg, tensors, opset, calibration)?;
        (Lowering::Int8(c.clone()), Some(c))
    } else {
        (Lowering::Plain, None)
    };
    let graph = graph::generator_graph(cfg, tensors, opts, lowering)?;
    let model = ModelProto {
        model_version: ckpt.step() as i64,
        doc_string: format!(
            "Gantry {} generator {}x{}x{}, latent {}",
            cfg.arch.name(),
            cfg.image_size,
            cfg.image_size,
            cfg.channels,
            cfg.latent_dim
        ),
        metadata_props: metadata(cfg, ckpt, opts, used_ema, calibration.as_ref())
            .into_iter()
            .map(|(key, value)| StringStringEntryProto {
                key: key.to_string(),
                value,
            })
            .collect(),
        ..model_proto(graph, opset)
    };
    Ok(BuiltModel {
        model,
        used_ema,
        calibration,
    })
}

/// The interface an exported model of `cfg` must have.
pub fn expectation(cfg: &ModelConfig, opset: i64, output: OutputFormat) -> verify::Expectation {
    let mut inputs = vec![(
        INPUT_Z.to_string(),
        DataType::Float as i32,
        vec![None, Some(cfg.latent_dim)],
    )];
    if cfg.num_classes.is_some() {
        inputs.push((INPUT_LABEL.to_string(), DataType::Int64 as i32, vec![None]));
    }
    let (c, s) = (Some(cfg.channels), Some(cfg.image_size));
    let out = match output {
        OutputFormat::Float => (
            OUTPUT_IMAGE.to_string(),
            DataType::Float as i32,
            vec![None, c, s, s],
        ),
        OutputFormat::Uint8 => (
            OUTPUT_IMAGE.to_string(),
            DataType::Uint8 as i32,
            vec![None, s, s, c],
        ),
    };
    verify::Expectation {
        opset,
        inputs,
        outputs: vec![out],
    }
}

/// Writes `bytes` to a temp file beside `out`, reads it back with candle-onnx, verifies it, and
/// only then renames it to `out`: no partial or unverified file is ever left at `out`.
fn write_verified(out: &Path, bytes: &[u8], want: &verify::Expectation) -> Result<()> {
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| ExportError::Io {
            path: parent.to_path_buf(),
            source: e,
        })?;
    }
    gantry_files::write_file_checked(out, bytes, |tmp| {
        let back = candle_onnx::read_file(tmp).map_err(|e| ExportError::Verify {
            path: out.to_path_buf(),
            message: format!("cannot read it back: {e}"),
        })?;
        verify::verify(&back, want).map_err(|message| ExportError::Verify {
            path: out.to_path_buf(),
            message,
        })
    })
}

/// Refuses an output path where writing would destroy something: inside a checkpoint folder
/// (whose files the trainer replaces as a whole), a folder, or an existing file that is not an
/// ONNX model (a checkpoint's weights, say).
fn check_out_path(out: &Path) -> Result<()> {
    let parent = out.parent().filter(|p| !p.as_os_str().is_empty());
    if let Some(dir) = parent.filter(|p| p.join(gantry_models::checkpoint::CONFIG_FILE).is_file()) {
        return Err(ExportError::invalid(
            ExportSetting::Out,
            format!(
                "{} is inside the checkpoint folder {}; write the model elsewhere",
                out.display(),
                dir.display()
            ),
        ));
    }
    if out.is_dir() {
        return Err(ExportError::invalid(
            ExportSetting::Out,
            format!("{} is a folder", out.display()),
        ));
    }
    if out.exists() {
        let is_onnx = std::fs::read(out)
            .ok()
            .and_then(|bytes| ModelProto::decode(bytes.as_slice()).ok())
            .is_some_and(|m| m.graph.is_some() && !m.opset_import.is_empty());
        if !is_onnx {
            return Err(ExportError::invalid(
                ExportSetting::Out,
                format!(
                    "{} exists and is not an ONNX model; refusing to replace it",
                    out.display()
                ),
            ));
        }
    }
    Ok(())
}

/// Exports the generator of `opts.checkpoint` as described by `opts`. Every setting and the
/// output path are checked before anything is written.
pub fn export(opts: &ExportOptions) -> Result<ExportReport> {
    export_with_gate(opts, None)
}

/// Runs `gate` on the fp32 and the reduced model (written to a temporary folder, removed after).
fn run_gate(
    gate: &dyn QualityGate,
    ckpt: &Checkpoint,
    opts: &ExportOptions,
    reduced: &[u8],
) -> Result<String> {
    let fp32 = GraphOptions {
        precision: Precision::Fp32,
        ..opts.graph
    };
    let reference = build_model(ckpt, opts.opset, &fp32, opts.weights, &opts.calibration)?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let dir = std::env::temp_dir().join(format!("gantry-gate-{}-{stamp}", std::process::id()));
    let io = |path: &Path, e: std::io::Error| ExportError::Io {
        path: path.to_path_buf(),
        source: e,
    };
    std::fs::create_dir_all(&dir).map_err(|e| io(&dir, e))?;
    let (a, b) = (dir.join("fp32.onnx"), dir.join("reduced.onnx"));
    let verdict = std::fs::write(&a, reference.model.encode_to_vec())
        .and_then(|_| std::fs::write(&b, reduced))
        .map_err(|e| io(&dir, e))
        .and_then(|_| gate.check(&a, &b).map_err(ExportError::QualityCheck));
    let _ = std::fs::remove_dir_all(&dir);
    let verdict = verdict?;
    if !verdict.passed {
        return Err(ExportError::QualityRefused {
            precision: opts.graph.precision.name().into(),
            summary: verdict.summary,
        });
    }
    Ok(verdict.summary)
}

/// [`export`], with a reduced-precision model written only if `gate` passes it (an fp32 export
/// skips the gate: it is the reference).
pub fn export_with_gate(
    opts: &ExportOptions,
    gate: Option<&dyn QualityGate>,
) -> Result<ExportReport> {
    if opts.out.is_none() && opts.triton.is_none() {
        return Err(ExportError::invalid(
            ExportSetting::Out,
            "required unless a Triton repository is written",
        ));
    }
    if let Some(out) = &opts.out {
        check_out_path(out)?;
    }
    if let Some(t) = &opts.triton {
        triton::check_name(&t.name)?;
    }
    check_precision_options(opts)?;
    let dir = resolve_run_checkpoint(&opts.checkpoint, opts.which)?;
    let ckpt = Checkpoint::load_generator(&dir)?;
    let BuiltModel {
        model,
        used_ema,
        calibration,
    } = build_model(
        &ckpt,
        opts.opset,
        &opts.graph,
        opts.weights,
        &opts.calibration,
    )?;
    let bytes = model.encode_to_vec();
    let quality = match gate {
        Some(g) if opts.graph.precision != Precision::Fp32 => {
            Some(run_gate(g, &ckpt, opts, &bytes)?)
        }
        _ => None,
    };
    let want = expectation(&ckpt.meta.model, opts.opset, opts.graph.output);
    if let Some(out) = &opts.out {
        write_verified(out, &bytes, &want)?;
    }
    let triton_dir = match &opts.triton {
        Some(t) => {
            let back = ModelProto::decode(bytes.as_slice()).map_err(|e| ExportError::Verify {
                path: t.repo.clone(),
                message: format!("cannot decode the encoded model: {e}"),
            })?;
            verify::verify(&back, &want).map_err(|message| ExportError::Verify {
                path: t.repo.clone(),
                message,
            })?;
            let config = triton::config_pbtxt(
                &t.name,
                &ckpt.meta.model,
                opts.graph.output,
                t.max_batch_size,
            );
            Some(triton::write_repository(&t.repo, &t.name, &bytes, &config)?)
        }
        None => None,
    };
    if let (Some(path), Some(c)) = (&opts.calibration.save, &calibration) {
        c.write(path)?;
    }
    Ok(ExportReport {
        checkpoint: dir,
        out: opts.out.clone(),
        bytes: bytes.len(),
        used_ema,
        nodes: model.graph.as_ref().map_or(0, |g| g.node.len()),
        triton_dir,
        calibration,
        quality,
    })
}

/// Refuses precision options that do not go together, before anything is read or written:
/// calibration files with a precision that is not calibrated, int8 with BatchNorm unfolded, a
/// calibration file to write over something that is not one.
fn check_precision_options(opts: &ExportOptions) -> Result<()> {
    let cal = &opts.calibration;
    if opts.graph.precision != Precision::Int8 {
        if cal.load.is_some() || cal.save.is_some() {
            return Err(ExportError::invalid(
                ExportSetting::Calibration,
                format!(
                    "only int8 exports are calibrated, not {}",
                    opts.graph.precision.name()
                ),
            ));
        }
        return Ok(());
    }
    if !opts.graph.fold_batchnorm {
        return Err(ExportError::invalid(
            ExportSetting::Precision,
            "int8 needs BatchNorm folded into the convolutions",
        ));
    }
    calibration::check_batches(cal.batches)?;
    if let Some(save) = &cal.save {
        let replaceable = !save.exists()
            || std::fs::read(save)
                .ok()
                .and_then(|b| serde_json::from_slice::<Calibration>(&b).ok())
                .is_some();
        if save.is_dir() || !replaceable {
            return Err(ExportError::invalid(
                ExportSetting::Calibration,
                format!(
                    "{} exists and is not a calibration file; refusing to replace it",
                    save.display()
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use gantry_models::checkpoint::CheckpointMeta;

    #[test]
    fn metadata_has_every_key_once_in_order() {
        let cfg = ModelConfig::default();
        let ckpt = Checkpoint {
            meta: CheckpointMeta::new(cfg.clone(), Some("mnist".into()), serde_json::json!({})),
            generator: Default::default(),
            generator_ema: None,
            discriminator: None,
            optimizer_g: None,
            optimizer_d: None,
            trainer_state: None,
        };
        let opts = GraphOptions {
            precision: Precision::Fp16,
            fold_batchnorm: true,
            output: OutputFormat::Uint8,
        };
        let pairs = metadata(&cfg, &ckpt, &opts, true, None);
        let keys: Vec<&str> = pairs.iter().map(|(k, _)| *k).collect();
        assert_eq!(keys, METADATA_KEYS);
        let value = |k: &str| {
            pairs
                .iter()
                .find(|(key, _)| *key == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(value("gantry.precision"), Some("fp16"));
        assert_eq!(value("gantry.calibration"), Some("none"));
        assert_eq!(value("gantry.output"), Some("uint8"));
        assert_eq!(value("gantry.weights"), Some("ema"));
        assert_eq!(value("gantry.dataset"), Some("mnist"));
    }
}
