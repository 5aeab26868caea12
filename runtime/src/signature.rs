//! Recognising a GAN generator from its ONNX inputs and outputs (Gantry's or any DCGAN-style
//! export): latent `[N, nz]` or `[N, nz, 1, 1]` float32, optional int64 label `[N]`, image output
//! float32 NCHW in [-1, 1] or uint8 NHWC.

use std::collections::BTreeMap;
use std::path::Path;

use ort::value::{TensorElementType, ValueType};

use crate::error::{Result, RuntimeError};

/// Element type of a model input or output.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ElementType {
    Float32,
    Float16,
    Int64,
    Uint8,
    /// Any other tensor element type, or a value that is not a tensor (by ONNX Runtime's name).
    Other(String),
}

impl std::fmt::Display for ElementType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Float32 => f.write_str("float32"),
            Self::Float16 => f.write_str("float16"),
            Self::Int64 => f.write_str("int64"),
            Self::Uint8 => f.write_str("uint8"),
            Self::Other(name) => f.write_str(name),
        }
    }
}

/// A model input or output as ONNX Runtime reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TensorInfo {
    pub name: String,
    pub element: ElementType,
    /// Dimensions; `None` for a dynamic one (such as the batch). Empty for non-tensors.
    pub shape: Vec<Option<usize>>,
}

impl TensorInfo {
    /// A tensor description.
    pub fn new(name: impl Into<String>, element: ElementType, shape: Vec<Option<usize>>) -> Self {
        Self {
            name: name.into(),
            element,
            shape,
        }
    }

    /// The description of an ONNX Runtime input or output.
    pub(crate) fn from_ort(name: &str, t: &ValueType) -> Self {
        match t {
            ValueType::Tensor { ty, shape, .. } => {
                let element = match ty {
                    TensorElementType::Float32 => ElementType::Float32,
                    TensorElementType::Float16 => ElementType::Float16,
                    TensorElementType::Int64 => ElementType::Int64,
                    TensorElementType::Uint8 => ElementType::Uint8,
                    other => ElementType::Other(format!("{other:?}").to_lowercase()),
                };
                let dims = shape.iter().map(|&d| usize::try_from(d).ok()).collect();
                Self::new(name, element, dims)
            }
            other => Self::new(name, ElementType::Other(format!("{other:?}")), Vec::new()),
        }
    }

    /// Dimension `i` when it is fixed and positive.
    fn dim(&self, i: usize) -> Option<usize> {
        self.shape.get(i).copied().flatten().filter(|&d| d > 0)
    }
}

impl std::fmt::Display for TensorInfo {
    /// `z: float32 [?, 100]` (`?` for a dynamic dimension).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let dims: Vec<String> = self
            .shape
            .iter()
            .map(|d| d.map_or_else(|| "?".to_string(), |d| d.to_string()))
            .collect();
        write!(f, "{}: {} [{}]", self.name, self.element, dims.join(", "))
    }
}

/// Layout and type of the image output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum OutputLayout {
    /// float32 `[N, C, H, W]` in [-1, 1].
    FloatNchw,
    /// uint8 `[N, H, W, C]`.
    Uint8Nhwc,
}

/// How to feed the model and read its images.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
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

/// Works out the signature from the model's inputs and outputs; the error names `path`.
pub fn detect(path: &Path, inputs: &[TensorInfo], outputs: &[TensorInfo]) -> Result<Signature> {
    let listing = || {
        let ins: Vec<String> = inputs.iter().map(ToString::to_string).collect();
        let outs: Vec<String> = outputs.iter().map(ToString::to_string).collect();
        format!("inputs [{}], outputs [{}]", ins.join("; "), outs.join("; "))
    };
    let bad = |why: &str| RuntimeError::Signature {
        path: path.to_path_buf(),
        message: format!("{why}; the model has {}", listing()),
    };
    let mut latent = None;
    let mut label = None;
    for t in inputs {
        let rank = t.shape.len();
        match (&t.element, rank) {
            (ElementType::Float32, 2) if latent.is_none() => {
                let nz = t.dim(1).ok_or_else(|| bad("the latent input's size is not fixed"))?;
                latent = Some((t.name.clone(), nz, false));
            }
            (ElementType::Float32, 4)
                if latent.is_none() && t.dim(2) == Some(1) && t.dim(3) == Some(1) =>
            {
                let nz = t.dim(1).ok_or_else(|| bad("the latent input's size is not fixed"))?;
                latent = Some((t.name.clone(), nz, true));
            }
            (ElementType::Int64, 1) if label.is_none() => label = Some(t.name.clone()),
            _ => {
                return Err(bad(&format!(
                    "input `{}` is neither a float32 latent [N, nz] / [N, nz, 1, 1] nor an int64 label [N]",
                    t.name
                )))
            }
        }
    }
    let (latent_input, latent_dim, latent_is_4d) =
        latent.ok_or_else(|| bad("no float32 latent input [N, nz] or [N, nz, 1, 1]"))?;
    let out = outputs.first().ok_or_else(|| bad("no outputs"))?;
    if out.shape.len() != 4 {
        return Err(bad("the output is not a 4-D image batch"));
    }
    let (layout, image_shape) = match out.element {
        ElementType::Float32 => {
            if matches!(out.dim(1), Some(c) if c != 1 && c != 3) {
                return Err(bad("the float output must be NCHW with 1 or 3 channels"));
            }
            let shape = out
                .dim(1)
                .zip(out.dim(2))
                .zip(out.dim(3))
                .map(|((c, h), w)| (c, h, w));
            (OutputLayout::FloatNchw, shape)
        }
        ElementType::Uint8 => {
            if matches!(out.dim(3), Some(c) if c != 1 && c != 3) {
                return Err(bad("the uint8 output must be NHWC with 1 or 3 channels"));
            }
            let shape = out
                .dim(3)
                .zip(out.dim(1))
                .zip(out.dim(2))
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
        output: out.name.clone(),
        layout,
        image_shape,
    })
}

/// Everything `runtime info` shows about a model.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ModelInfo {
    pub path: std::path::PathBuf,
    pub signature: Signature,
    /// Inputs and outputs as ONNX Runtime reports them.
    pub inputs: Vec<TensorInfo>,
    pub outputs: Vec<TensorInfo>,
    /// `metadata_props` of the model (Gantry's `gantry.*` keys when exported by Gantry).
    pub metadata: BTreeMap<String, String>,
    pub producer: Option<String>,
    /// Number of classes of a conditional model (from `gantry.num_classes`), if known.
    pub num_classes: Option<usize>,
}

impl ModelInfo {
    /// Describes a loaded model.
    pub(crate) fn new(
        path: &Path,
        signature: Signature,
        inputs: Vec<TensorInfo>,
        outputs: Vec<TensorInfo>,
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
            inputs,
            outputs,
            metadata,
            producer,
            num_classes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(name: &str, element: ElementType, shape: &[Option<usize>]) -> TensorInfo {
        TensorInfo::new(name, element, shape.to_vec())
    }

    #[test]
    fn recognises_gantry_and_pytorch_generators() {
        let p = Path::new("g.onnx");
        let gantry = detect(
            p,
            &[
                t("z", ElementType::Float32, &[None, Some(100)]),
                t("label", ElementType::Int64, &[None]),
            ],
            &[t(
                "image",
                ElementType::Uint8,
                &[None, Some(32), Some(32), Some(1)],
            )],
        )
        .unwrap();
        assert_eq!(gantry.latent_dim, 100);
        assert_eq!(gantry.label_input.as_deref(), Some("label"));
        assert_eq!(gantry.layout, OutputLayout::Uint8Nhwc);
        assert_eq!(gantry.image_shape, Some((1, 32, 32)));
        let torch = detect(
            p,
            &[t(
                "input",
                ElementType::Float32,
                &[None, Some(64), Some(1), Some(1)],
            )],
            &[t(
                "output",
                ElementType::Float32,
                &[None, Some(3), Some(64), Some(64)],
            )],
        )
        .unwrap();
        assert!(torch.latent_is_4d);
        assert_eq!(torch.image_shape, Some((3, 64, 64)));
        assert_eq!(
            t("z", ElementType::Float32, &[None, Some(16)]).to_string(),
            "z: float32 [?, 16]"
        );
    }

    /// Inputs and outputs decoded from fuzzer bytes: four bytes per tensor (element type, rank,
    /// two dimension bytes; 0 is a dynamic dimension), the first byte splitting inputs from
    /// outputs.
    fn tensors_from(bytes: &[u8]) -> (Vec<TensorInfo>, Vec<TensorInfo>) {
        let Some((&split, rest)) = bytes.split_first() else {
            return (Vec::new(), Vec::new());
        };
        let all: Vec<TensorInfo> = rest
            .chunks(4)
            .enumerate()
            .map(|(i, c)| {
                let byte = |k: usize| c.get(k).copied().unwrap_or(0);
                let element = match byte(0) % 5 {
                    0 => ElementType::Float32,
                    1 => ElementType::Int64,
                    2 => ElementType::Uint8,
                    3 => ElementType::Float16,
                    _ => ElementType::Other("string".into()),
                };
                let dim = |b: u8| (b != 0).then_some(b as usize % 8);
                let shape = (0..byte(1) % 6)
                    .map(|d| dim(byte(2 + d as usize % 2).wrapping_add(d)))
                    .collect();
                TensorInfo::new(format!("t{i}"), element, shape)
            })
            .collect();
        let at = (split as usize).min(all.len());
        (all[..at].to_vec(), all[at..].to_vec())
    }

    /// Any inputs and outputs give a signature or an error naming the file, never a panic; a
    /// signature found is one the runtime can feed.
    #[test]
    fn fuzz_signature_detection() {
        gantry_fuzz::target!(|bytes| {
            let (ins, outs) = tensors_from(bytes);
            match detect(Path::new("fuzz.onnx"), &ins, &outs) {
                Ok(sig) => {
                    assert!(sig.latent_dim > 0);
                    assert!(ins.iter().any(|t| t.name == sig.latent_input));
                }
                Err(e) => assert!(e.to_string().contains("fuzz.onnx"), "{e}"),
            }
        });
    }

    #[test]
    fn rejects_what_is_not_a_generator_naming_the_file() {
        let p = Path::new("odd.onnx");
        let latent = [t("z", ElementType::Float32, &[None, Some(8)])];
        let cases: Vec<(Vec<TensorInfo>, Vec<TensorInfo>, &str)> = vec![
            (
                latent.to_vec(),
                vec![t("y", ElementType::Float32, &[None, Some(8)])],
                "4-D",
            ),
            (
                latent.to_vec(),
                vec![t(
                    "y",
                    ElementType::Float32,
                    &[None, Some(2), Some(8), Some(8)],
                )],
                "1 or 3 channels",
            ),
            (
                vec![t("z", ElementType::Float32, &[None, None])],
                vec![],
                "not fixed",
            ),
            (
                vec![t("s", ElementType::Other("string".into()), &[None])],
                vec![],
                "neither",
            ),
            (vec![], vec![], "no float32 latent"),
        ];
        for (ins, outs, needle) in cases {
            let err = detect(p, &ins, &outs).unwrap_err().to_string();
            assert!(err.contains("odd.onnx") && err.contains(needle), "{err}");
        }
    }
}
