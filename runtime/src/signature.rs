//! Recognising a GAN generator from its ONNX inputs and outputs (Gantry's or any DCGAN-style
//! export): latent `[N, nz]` or `[N, nz, 1, 1]` float32, optional int64 label `[N]`, image output
//! float32 NCHW in [-1, 1] or uint8 NHWC.

use std::collections::BTreeMap;
use std::path::Path;

use ort::value::{TensorElementType, ValueType};

use crate::error::{Result, RuntimeError};

/// Layout and type of the image output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputLayout {
    /// float32 `[N, C, H, W]` in [-1, 1].
    FloatNchw,
    /// uint8 `[N, H, W, C]`.
    Uint8Nhwc,
}

/// How to feed the model and read its images.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    pub latent_input: String,
    pub latent_dim: usize,
    /// The latent input is `[N, nz, 1, 1]` (PyTorch DCGAN exports) rather than `[N, nz]`.
    pub latent_is_4d: bool,
    /// The class-label input of a conditional model.
    pub label_input: Option<String>,
    pub output: String,
    pub layout: OutputLayout,
    /// Channels, height and width when the model states them (else known after the first run).
    pub image_shape: Option<(usize, usize, usize)>,
}

fn describe(name: &str, t: &ValueType) -> String {
    match t {
        ValueType::Tensor { ty, shape, .. } => {
            format!("{name}: {ty:?} {:?}", shape.iter().collect::<Vec<_>>())
        }
        other => format!("{name}: {other:?}"),
    }
}

fn dim(shape: &[i64], i: usize) -> Option<usize> {
    shape.get(i).and_then(|&d| (d > 0).then_some(d as usize))
}

/// Works out the signature from the model's inputs and outputs.
pub fn detect(
    path: &Path,
    inputs: &[(String, ValueType)],
    outputs: &[(String, ValueType)],
) -> Result<Signature> {
    let listing = || {
        let ins: Vec<String> = inputs.iter().map(|(n, t)| describe(n, t)).collect();
        let outs: Vec<String> = outputs.iter().map(|(n, t)| describe(n, t)).collect();
        format!("inputs [{}], outputs [{}]", ins.join("; "), outs.join("; "))
    };
    let bad = |why: &str| RuntimeError::Signature {
        path: path.to_path_buf(),
        message: format!("{why}; the model has {}", listing()),
    };
    let mut latent = None;
    let mut label = None;
    for (name, t) in inputs {
        let ValueType::Tensor { ty, shape, .. } = t else {
            return Err(bad(&format!("input `{name}` is not a tensor")));
        };
        let dims: Vec<i64> = shape.iter().copied().collect();
        match (ty, dims.len()) {
            (TensorElementType::Float32, 2) if latent.is_none() => {
                let nz = dim(&dims, 1).ok_or_else(|| bad("the latent input's size is not fixed"))?;
                latent = Some((name.clone(), nz, false));
            }
            (TensorElementType::Float32, 4) if latent.is_none() && dim(&dims, 2) == Some(1) && dim(&dims, 3) == Some(1) => {
                let nz = dim(&dims, 1).ok_or_else(|| bad("the latent input's size is not fixed"))?;
                latent = Some((name.clone(), nz, true));
            }
            (TensorElementType::Int64, 1) if label.is_none() => label = Some(name.clone()),
            _ => return Err(bad(&format!("input `{name}` is neither a float32 latent [N, nz] / [N, nz, 1, 1] nor an int64 label [N]"))),
        }
    }
    let (latent_input, latent_dim, latent_is_4d) =
        latent.ok_or_else(|| bad("no float32 latent input [N, nz] or [N, nz, 1, 1]"))?;
    let (output, t) = outputs.first().ok_or_else(|| bad("no outputs"))?;
    let ValueType::Tensor { ty, shape, .. } = t else {
        return Err(bad("the output is not a tensor"));
    };
    let dims: Vec<i64> = shape.iter().copied().collect();
    if dims.len() != 4 {
        return Err(bad("the output is not a 4-D image batch"));
    }
    let (layout, image_shape) = match ty {
        TensorElementType::Float32 => {
            if matches!(dim(&dims, 1), Some(c) if c != 1 && c != 3) {
                return Err(bad("the float output must be NCHW with 1 or 3 channels"));
            }
            let shape = dim(&dims, 1)
                .zip(dim(&dims, 2))
                .zip(dim(&dims, 3))
                .map(|((c, h), w)| (c, h, w));
            (OutputLayout::FloatNchw, shape)
        }
        TensorElementType::Uint8 => {
            if matches!(dim(&dims, 3), Some(c) if c != 1 && c != 3) {
                return Err(bad("the uint8 output must be NHWC with 1 or 3 channels"));
            }
            let shape = dim(&dims, 3)
                .zip(dim(&dims, 1))
                .zip(dim(&dims, 2))
                .map(|((c, h), w)| (c, h, w));
            (OutputLayout::Uint8Nhwc, shape)
        }
        _ => {
            return Err(bad(
                "the output must be float32 (NCHW in [-1, 1]) or uint8 (NHWC)",
            ))
        }
    };
    Ok(Signature {
        latent_input,
        latent_dim,
        latent_is_4d,
        label_input: label,
        output: output.clone(),
        layout,
        image_shape,
    })
}

/// Everything `runtime info` shows about a model.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    pub path: std::path::PathBuf,
    pub signature: Signature,
    /// Input and output descriptions as ONNX Runtime reports them.
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    /// `metadata_props` of the model (Gantry's `gantry.*` keys when exported by Gantry).
    pub metadata: BTreeMap<String, String>,
    pub producer: Option<String>,
    /// Number of classes of a conditional model (from `gantry.num_classes`), if known.
    pub num_classes: Option<usize>,
}

impl ModelInfo {
    /// Describes a loaded model.
    pub fn new(
        path: &Path,
        signature: Signature,
        inputs: &[(String, ValueType)],
        outputs: &[(String, ValueType)],
        metadata: BTreeMap<String, String>,
        producer: Option<String>,
    ) -> Self {
        let num_classes = metadata
            .get("gantry.num_classes")
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|&n| n > 0);
        Self {
            path: path.to_path_buf(),
            signature,
            inputs: inputs.iter().map(|(n, t)| describe(n, t)).collect(),
            outputs: outputs.iter().map(|(n, t)| describe(n, t)).collect(),
            metadata,
            producer,
            num_classes,
        }
    }
}
