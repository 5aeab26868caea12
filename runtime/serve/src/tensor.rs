//! Tensors as the protocol carries them, independent of HTTP or gRPC: the inputs of a request
//! decoded into a model's latents and labels, and the images coming back.

use gantry_runtime::{ElementType, Signature};
use ndarray::{Array1, Array2};

use crate::error::{Result, ServeError};

/// The protocol's tensor data types Gantry's models use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DataType {
    Fp32,
    Int64,
    Uint8,
}

impl DataType {
    /// The protocol's name (`FP32`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Self::Fp32 => "FP32",
            Self::Int64 => "INT64",
            Self::Uint8 => "UINT8",
        }
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Self::Fp32 => 4,
            Self::Int64 => 8,
            Self::Uint8 => 1,
        }
    }

    /// The protocol type of an ONNX element type, if Gantry serves it.
    pub fn of_element(e: &ElementType) -> Option<Self> {
        match e {
            ElementType::Float32 => Some(Self::Fp32),
            ElementType::Int64 => Some(Self::Int64),
            ElementType::Uint8 => Some(Self::Uint8),
            _ => None,
        }
    }

    /// The protocol name of an ONNX element type (`FP16`, `BYTES` ... for ones Gantry does not
    /// produce itself).
    pub fn name_of_element(e: &ElementType) -> String {
        match (Self::of_element(e), e) {
            (Some(t), _) => t.name().to_string(),
            (None, ElementType::Float16) => "FP16".to_string(),
            (None, other) => other.to_string().to_uppercase(),
        }
    }
}

/// The values of a tensor as a request carried them.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    /// Little-endian bytes (the binary extension, or gRPC's raw contents).
    Raw(Vec<u8>),
    /// Numbers from JSON (or gRPC's typed contents), as f64 (every f32 and every label fits).
    Numbers(Vec<f64>),
}

/// One input tensor of a request.
#[derive(Debug, Clone, PartialEq)]
pub struct InputTensor {
    pub name: String,
    pub datatype: String,
    pub shape: Vec<i64>,
    pub data: TensorData,
}

/// A model's inputs for one request: latents `[N, latent_dim]` and, for conditional models,
/// labels `[N]`.
#[derive(Debug, Clone)]
pub struct ModelInputs {
    pub z: Array2<f32>,
    pub labels: Option<Array1<i64>>,
}

/// Decodes a request's inputs against a model's signature: names, data types, shapes and
/// value counts must all fit; each error says which input and what is wrong.
pub fn decode_inputs(sig: &Signature, inputs: Vec<InputTensor>) -> Result<ModelInputs> {
    let mut z = None;
    let mut labels = None;
    for input in inputs {
        if input.name == sig.latent_input {
            if z.is_some() {
                return Err(ServeError::bad(format!(
                    "input `{}` is given twice",
                    input.name
                )));
            }
            z = Some(decode_latents(sig, input)?);
        } else if Some(&input.name) == sig.label_input.as_ref() {
            if labels.is_some() {
                return Err(ServeError::bad(format!(
                    "input `{}` is given twice",
                    input.name
                )));
            }
            labels = Some(decode_labels(input)?);
        } else {
            let mut known = vec![format!("`{}`", sig.latent_input)];
            known.extend(sig.label_input.iter().map(|l| format!("`{l}`")));
            return Err(ServeError::bad(format!(
                "unknown input `{}`: the model's inputs are {}",
                input.name,
                known.join(" and ")
            )));
        }
    }
    let z = z.ok_or_else(|| ServeError::bad(format!("input `{}` is missing", sig.latent_input)))?;
    match (&sig.label_input, &labels) {
        (Some(name), None) => {
            return Err(ServeError::bad(format!(
                "input `{name}` (the class labels of this conditional model) is missing"
            )))
        }
        (Some(name), Some(l)) if l.len() != z.nrows() => {
            return Err(ServeError::bad(format!(
                "input `{name}` has {} labels for {} latents",
                l.len(),
                z.nrows()
            )))
        }
        _ => {}
    }
    Ok(ModelInputs { z, labels })
}

/// Refuses a requested output other than the model's one, `output`.
pub(crate) fn check_output(requested: &str, output: &str) -> Result<()> {
    if requested != output {
        return Err(ServeError::bad(format!(
            "unknown output `{requested}`: the model's output is `{output}`"
        )));
    }
    Ok(())
}

fn check_datatype(input: &InputTensor, want: DataType) -> Result<()> {
    if input.datatype != want.name() {
        return Err(ServeError::bad(format!(
            "input `{}` has datatype {}, the model expects {}",
            input.name,
            input.datatype,
            want.name()
        )));
    }
    Ok(())
}

fn shape_text(shape: &[i64]) -> String {
    let dims: Vec<String> = shape.iter().map(i64::to_string).collect();
    format!("[{}]", dims.join(", "))
}

fn decode_latents(sig: &Signature, input: InputTensor) -> Result<Array2<f32>> {
    check_datatype(&input, DataType::Fp32)?;
    let nz = sig.latent_dim as i64;
    let n = match input.shape.as_slice() {
        [n, d] if *d == nz && *n >= 1 => *n,
        [n, d, 1, 1] if *d == nz && *n >= 1 => *n,
        other => {
            return Err(ServeError::bad(format!(
            "input `{}` has shape {}, the model expects [N, {nz}] or [N, {nz}, 1, 1] with N >= 1",
            input.name,
            shape_text(other)
        )))
        }
    } as usize;
    let count = n.checked_mul(sig.latent_dim).ok_or_else(|| {
        ServeError::bad(format!(
            "input `{}`: {n} latents of {nz} values are more than can be addressed",
            input.name
        ))
    })?;
    let values = f32_values(&input, count)?;
    if let Some(bad) = values.iter().position(|v| !v.is_finite()) {
        return Err(ServeError::bad(format!(
            "input `{}`: value {bad} is not a finite number",
            input.name
        )));
    }
    Array2::from_shape_vec((n, sig.latent_dim), values)
        .map_err(|e| ServeError::bad(format!("input `{}`: {e}", input.name)))
}

fn decode_labels(input: InputTensor) -> Result<Array1<i64>> {
    check_datatype(&input, DataType::Int64)?;
    let n = match input.shape.as_slice() {
        [n] | [n, 1] if *n >= 1 => *n as usize,
        other => {
            return Err(ServeError::bad(format!(
                "input `{}` has shape {}, the model expects [N] (or [N, 1])",
                input.name,
                shape_text(other)
            )))
        }
    };
    let values = match &input.data {
        TensorData::Raw(bytes) => {
            check_byte_count(&input.name, bytes.len(), n, DataType::Int64)?;
            bytes
                .chunks_exact(8)
                .map(|b| i64::from_le_bytes(b.try_into().unwrap_or_default()))
                .collect()
        }
        TensorData::Numbers(v) => {
            check_count(&input.name, v.len(), n)?;
            let mut out = Vec::with_capacity(n);
            for (i, &x) in v.iter().enumerate() {
                if x.fract() != 0.0 || !x.is_finite() || x.abs() > 2f64.powi(53) {
                    return Err(ServeError::bad(format!(
                        "input `{}`: value {i} ({x}) is not an integer",
                        input.name
                    )));
                }
                out.push(x as i64);
            }
            out
        }
    };
    Ok(Array1::from(values))
}

fn f32_values(input: &InputTensor, count: usize) -> Result<Vec<f32>> {
    match &input.data {
        TensorData::Raw(bytes) => {
            check_byte_count(&input.name, bytes.len(), count, DataType::Fp32)?;
            Ok(bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap_or_default()))
                .collect())
        }
        TensorData::Numbers(v) => {
            check_count(&input.name, v.len(), count)?;
            Ok(v.iter().map(|&x| x as f32).collect())
        }
    }
}

fn check_count(name: &str, got: usize, want: usize) -> Result<()> {
    if got != want {
        return Err(ServeError::bad(format!(
            "input `{name}` has {got} values, its shape needs {want}"
        )));
    }
    Ok(())
}

fn check_byte_count(name: &str, got: usize, want: usize, t: DataType) -> Result<()> {
    let bytes = want.checked_mul(t.size());
    if bytes != Some(got) {
        let needs = bytes.map_or("more bytes than can be addressed".into(), |b| b.to_string());
        return Err(ServeError::bad(format!(
            "input `{name}` has {got} bytes of data, its shape needs {needs} ({want} {} values)",
            t.name()
        )));
    }
    Ok(())
}

/// Images a model produced: `count` images of `shape` (`[C, H, W]` for FP32 models, `[H, W,
/// C]` for UINT8 ones) as little-endian bytes, exactly as the model gave them.
#[derive(Debug, Clone, PartialEq)]
pub struct Images {
    pub datatype: DataType,
    pub shape: Vec<usize>,
    pub count: usize,
    pub bytes: Vec<u8>,
}

impl Images {
    /// Images from their parts.
    pub fn new(datatype: DataType, shape: Vec<usize>, count: usize, bytes: Vec<u8>) -> Self {
        Self {
            datatype,
            shape,
            count,
            bytes,
        }
    }

    fn image_bytes(&self) -> usize {
        self.shape.iter().product::<usize>() * self.datatype.size()
    }

    /// Images `first..first + n`.
    pub fn slice(&self, first: usize, n: usize) -> Self {
        let per = self.image_bytes();
        Self::new(
            self.datatype,
            self.shape.clone(),
            n,
            self.bytes[first * per..(first + n) * per].to_vec(),
        )
    }

    /// The parts of one request, in order, as one tensor.
    pub fn concat(parts: Vec<Images>) -> Result<Self> {
        let mut iter = parts.into_iter();
        let mut all = iter
            .next()
            .ok_or_else(|| ServeError::Internal("no images came back".into()))?;
        for p in iter {
            if p.shape != all.shape || p.datatype != all.datatype {
                return Err(ServeError::Internal(
                    "the parts of a request differ in shape".into(),
                ));
            }
            all.count += p.count;
            all.bytes.extend_from_slice(&p.bytes);
        }
        Ok(all)
    }

    /// The full tensor shape `[N, ...]`.
    pub fn tensor_shape(&self) -> Vec<i64> {
        std::iter::once(self.count as i64)
            .chain(self.shape.iter().map(|&d| d as i64))
            .collect()
    }

    /// The values as f32 (FP32 images).
    pub fn f32_values(&self) -> Vec<f32> {
        self.bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap_or_default()))
            .collect()
    }

    /// The images as 8-bit pictures, for PNG endpoints.
    pub fn to_image_batch(&self) -> Result<gantry_runtime::ImageBatch> {
        let batch = match (self.datatype, self.shape.as_slice()) {
            (DataType::Fp32, &[c, h, w]) => gantry_runtime::ImageBatch::from_float_nchw(
                &self.f32_values(),
                [self.count, c, h, w],
            )?,
            (DataType::Uint8, &[h, w, c]) => {
                gantry_runtime::ImageBatch::new(self.bytes.clone(), self.count, h, w, c)?
            }
            _ => {
                return Err(ServeError::Internal(format!(
                    "a {} output of shape {:?} is not an image batch",
                    self.datatype.name(),
                    self.shape
                )))
            }
        };
        Ok(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gantry_runtime::{detect_signature, TensorInfo};

    fn signature(conditional: bool) -> Signature {
        let mut inputs = vec![TensorInfo::new(
            "z",
            ElementType::Float32,
            vec![None, Some(3)],
        )];
        if conditional {
            inputs.push(TensorInfo::new("label", ElementType::Int64, vec![None]));
        }
        let outputs = vec![TensorInfo::new(
            "image",
            ElementType::Float32,
            vec![None, Some(1), Some(4), Some(4)],
        )];
        detect_signature("m.onnx".as_ref(), &inputs, &outputs).unwrap()
    }

    fn input(name: &str, datatype: &str, shape: &[i64], data: TensorData) -> InputTensor {
        InputTensor {
            name: name.into(),
            datatype: datatype.into(),
            shape: shape.to_vec(),
            data,
        }
    }

    fn raw_f32(v: &[f32]) -> TensorData {
        TensorData::Raw(v.iter().flat_map(|x| x.to_le_bytes()).collect())
    }

    #[test]
    fn decodes_binary_and_json_latents_and_labels() {
        let sig = signature(true);
        let z: Vec<f32> = (0..6).map(|i| i as f32 * 0.5 - 1.0).collect();
        let got = decode_inputs(
            &sig,
            vec![
                input(
                    "label",
                    "INT64",
                    &[2],
                    TensorData::Raw([3i64, 7].iter().flat_map(|x| x.to_le_bytes()).collect()),
                ),
                input("z", "FP32", &[2, 3, 1, 1], raw_f32(&z)),
            ],
        )
        .unwrap();
        assert_eq!(got.z.as_slice().unwrap(), z.as_slice());
        assert_eq!(got.labels.unwrap().to_vec(), vec![3, 7]);
        let json = decode_inputs(
            &sig,
            vec![
                input(
                    "z",
                    "FP32",
                    &[2, 3],
                    TensorData::Numbers(z.iter().map(|&x| x as f64).collect()),
                ),
                input(
                    "label",
                    "INT64",
                    &[2, 1],
                    TensorData::Numbers(vec![3.0, 7.0]),
                ),
            ],
        )
        .unwrap();
        assert_eq!(json.z.as_slice().unwrap(), z.as_slice());
        assert_eq!(json.labels.unwrap().to_vec(), vec![3, 7]);
    }

    #[test]
    fn each_misfit_is_named() {
        let sig = signature(true);
        let z = || input("z", "FP32", &[1, 3], raw_f32(&[0.0; 3]));
        let l = || input("label", "INT64", &[1], TensorData::Numbers(vec![1.0]));
        let cases: Vec<(Vec<InputTensor>, &str)> = vec![
            (vec![l()], "`z` is missing"),
            (vec![z()], "`label`"),
            (
                vec![
                    z(),
                    l(),
                    input("x", "FP32", &[1], TensorData::Numbers(vec![0.0])),
                ],
                "unknown input `x`",
            ),
            (vec![z(), z(), l()], "twice"),
            (
                vec![input("z", "FP16", &[1, 3], raw_f32(&[0.0; 3])), l()],
                "datatype FP16",
            ),
            (
                vec![input("z", "FP32", &[1, 4], raw_f32(&[0.0; 4])), l()],
                "shape [1, 4]",
            ),
            (
                vec![input("z", "FP32", &[0, 3], raw_f32(&[])), l()],
                "shape [0, 3]",
            ),
            (
                vec![input("z", "FP32", &[2, 3], raw_f32(&[0.0; 5])), l()],
                "20 bytes",
            ),
            (
                vec![
                    input("z", "FP32", &[1, 3], TensorData::Numbers(vec![0.0; 2])),
                    l(),
                ],
                "2 values",
            ),
            (
                vec![
                    input("z", "FP32", &[1, 3], raw_f32(&[0.0, f32::NAN, 0.0])),
                    l(),
                ],
                "value 1 is not a finite",
            ),
            (
                vec![
                    z(),
                    input("label", "INT64", &[1], TensorData::Numbers(vec![1.5])),
                ],
                "not an integer",
            ),
            (
                vec![
                    z(),
                    input("label", "INT64", &[2], TensorData::Numbers(vec![1.0, 2.0])),
                ],
                "2 labels for 1 latents",
            ),
            (
                vec![
                    z(),
                    input("label", "INT32", &[1], TensorData::Numbers(vec![1.0])),
                ],
                "datatype INT32",
            ),
        ];
        for (inputs, want) in cases {
            let e = decode_inputs(&sig, inputs.clone()).unwrap_err();
            assert!(matches!(e, ServeError::BadRequest(_)), "{e:?}");
            assert!(
                e.to_string().contains(want),
                "{inputs:?}: `{e}` lacks `{want}`"
            );
        }
    }

    #[test]
    fn images_split_and_join_by_rows() {
        let bytes: Vec<u8> = (0..24).collect();
        let all = Images::new(DataType::Uint8, vec![2, 2, 1], 6, bytes.clone());
        let parts = vec![all.slice(0, 1), all.slice(1, 3), all.slice(4, 2)];
        assert_eq!(parts[1].bytes, (4..16).collect::<Vec<u8>>());
        assert_eq!(Images::concat(parts).unwrap(), all);
        assert_eq!(all.tensor_shape(), vec![6, 2, 2, 1]);
    }
}
