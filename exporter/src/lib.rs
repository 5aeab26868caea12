//! Gantry's exporter: a checkpoint's generator becomes an ONNX model that any ONNX consumer
//! accepts (ONNX Runtime, the `onnx` checker, Netron, Triton), built from the same layer spec
//! as the candle network and written with candle-onnx's protobuf types.
//!
//! The ONNX interface (also in the README):
//! - input `z`: float32 `[N, latent_dim]`; conditional models also take `label`: int64 `[N]`;
//! - output `image`: float32 `[N, C, H, W]` in [-1, 1], or uint8 `[N, H, W, C]` with `--output uint8`;
//! - `metadata_props`: the `gantry.*` keys listed in [`METADATA_KEYS`].

#![forbid(unsafe_code)]

pub mod error;
pub mod fold;
pub mod graph;
pub mod proto;
pub mod triton;
pub mod verify;

use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};

use candle_onnx::onnx::{
    tensor_proto::DataType, ModelProto, OperatorSetIdProto, StringStringEntryProto,
};
use gantry_models::{resolve_run_checkpoint, Checkpoint, ModelConfig, RunCheckpoint};
use prost::Message;

pub use error::{ExportError, ExportSetting, Result};
pub use graph::{
    GraphOptions, OutputFormat, Precision, BATCH_DIM, INPUT_LABEL, INPUT_Z, OUTPUT_IMAGE,
};

/// Opsets the exporter can target (every op it uses has the same semantics across them).
pub const SUPPORTED_OPSETS: RangeInclusive<i64> = 13..=21;
/// Default opset.
pub const DEFAULT_OPSET: i64 = 17;
/// Version of the `gantry.*` metadata contract.
pub const METADATA_FORMAT_VERSION: &str = "1";
/// Metadata keys every exported model carries, in the order they are written.
pub const METADATA_KEYS: [&str; 13] = [
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
pub fn metadata(
    cfg: &ModelConfig,
    ckpt: &Checkpoint,
    opts: &GraphOptions,
    used_ema: bool,
) -> Vec<(&'static str, String)> {
    let precision = match opts.precision {
        Precision::Fp32 => "fp32",
        Precision::Fp16 => "fp16",
    };
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
        ("gantry.precision", precision.to_string()),
        ("gantry.batchnorm_folded", opts.fold_batchnorm.to_string()),
        (
            "gantry.weights",
            if used_ema { "ema" } else { "raw" }.to_string(),
        ),
    ]
}

/// The ONNX model of a loaded checkpoint's generator; returns it and whether EMA weights were used.
pub fn build_model(
    ckpt: &Checkpoint,
    opset: i64,
    opts: &GraphOptions,
    weights: WeightsChoice,
) -> Result<(ModelProto, bool)> {
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
    let graph = graph::generator_graph(cfg, tensors, opts)?;
    let model = ModelProto {
        ir_version: ir_version(opset),
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: opset,
        }],
        producer_name: "gantry-exporter".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        domain: "ai.gantry".into(),
        model_version: ckpt.step() as i64,
        doc_string: format!(
            "Gantry {} generator {}x{}x{}, latent {}",
            cfg.arch.name(),
            cfg.image_size,
            cfg.image_size,
            cfg.channels,
            cfg.latent_dim
        ),
        graph: Some(graph),
        metadata_props: metadata(cfg, ckpt, opts, used_ema)
            .into_iter()
            .map(|(key, value)| StringStringEntryProto {
                key: key.to_string(),
                value,
            })
            .collect(),
        ..Default::default()
    };
    Ok((model, used_ema))
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
    let dir = resolve_run_checkpoint(&opts.checkpoint, opts.which)?;
    let ckpt = Checkpoint::load_generator(&dir)?;
    let (model, used_ema) = build_model(&ckpt, opts.opset, &opts.graph, opts.weights)?;
    let bytes = model.encode_to_vec();
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
    Ok(ExportReport {
        checkpoint: dir,
        out: opts.out.clone(),
        bytes: bytes.len(),
        used_ema,
        nodes: model.graph.as_ref().map_or(0, |g| g.node.len()),
        triton_dir,
    })
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
        let pairs = metadata(&cfg, &ckpt, &opts, true);
        let keys: Vec<&str> = pairs.iter().map(|(k, _)| *k).collect();
        assert_eq!(keys, METADATA_KEYS);
        let value = |k: &str| {
            pairs
                .iter()
                .find(|(key, _)| *key == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(value("gantry.precision"), Some("fp16"));
        assert_eq!(value("gantry.output"), Some("uint8"));
        assert_eq!(value("gantry.weights"), Some("ema"));
        assert_eq!(value("gantry.dataset"), Some("mnist"));
    }
}
