//! The graph under construction: nodes and initialisers in order, and for int8 graphs the uint8
//! twins of float tensors (a float tensor that exists only as its twin is dequantized the first
//! time a float node reads it).

use std::collections::{HashMap, HashSet};

use candle_onnx::onnx::{tensor_proto::DataType, NodeProto, TensorProto};
use gantry_models::TensorMap;

use super::Precision;
use crate::calibration::Calibration;
use crate::error::{ExportError, Result};
use crate::proto::{bf16_tensor, f16_tensor, f32_tensor, node, scalar_tensor, Attr};
use crate::quant::QParams;

/// How the convolutions are lowered.
#[derive(Debug, Clone)]
pub enum Lowering {
    /// As the spec says them (`Conv`, `ConvTranspose`, `Gemm`), in the graph's precision.
    Plain,
    /// fp32 with every transposed convolution in its sub-pixel form: the graph whose activations
    /// an int8 export is calibrated on (its tensor names are the int8 graph's).
    Calibrating,
    /// int8 QDQ convolutions (sub-pixel for the transposed ones) with these activation ranges.
    Int8(Calibration),
}

impl Lowering {
    /// A short name for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Plain => "plain",
            Self::Calibrating => "calibration",
            Self::Int8(_) => "int8",
        }
    }
}

/// A float tensor's uint8 twin.
#[derive(Debug, Clone)]
pub(crate) struct Twin {
    pub name: String,
    pub params: QParams,
}

/// Accumulates nodes and initialisers.
pub(crate) struct Builder {
    pub nodes: Vec<NodeProto>,
    pub initializers: Vec<TensorProto>,
    pub precision: Precision,
    pub lowering: Lowering,
    twins: HashMap<String, Twin>,
    /// Float tensors not yet materialised: only their twin exists.
    pending: HashSet<String>,
    /// Dequantized inputs already emitted for convolutions (`{x}.dq`).
    conv_inputs: HashSet<String>,
    /// Tensors whose scale and zero point are already initialisers.
    params_written: HashSet<String>,
}

impl Builder {
    pub fn new(precision: Precision, lowering: Lowering) -> Self {
        Self {
            nodes: Vec::new(),
            initializers: Vec::new(),
            precision,
            lowering,
            twins: HashMap::new(),
            pending: HashSet::new(),
            conv_inputs: HashSet::new(),
            params_written: HashSet::new(),
        }
    }

    /// Adds a weight initialiser in the graph's precision. bf16 graphs store matrices and
    /// kernels (rank >= 2: nearly all the bytes) as bf16, cast to float32 where they are read
    /// (ONNX Runtime's CPU provider computes nothing in bf16), and keep vectors (biases,
    /// BatchNorm statistics) in float32: a running mean rounded to 8 bits, divided by a small
    /// standard deviation, would move whole channels.
    pub fn weight(&mut self, name: &str, dims: &[usize], values: &[f32]) -> String {
        let t = match self.precision {
            Precision::Fp32 | Precision::Int8 => f32_tensor(name, dims, values),
            Precision::Fp16 => f16_tensor(name, dims, values),
            Precision::Bf16 if dims.len() < 2 => f32_tensor(name, dims, values),
            Precision::Bf16 => {
                let stored = format!("{name}.bf16");
                self.initializers.push(bf16_tensor(&stored, dims, values));
                return self.add(
                    "Cast",
                    &format!("{name}.cast"),
                    &[&stored],
                    name,
                    vec![Attr::Int("to", DataType::Float as i64)],
                );
            }
        };
        self.initializers.push(t);
        name.to_string()
    }

    /// Adds a float32 constant (used in the float32 tail of the graph).
    pub fn f32_const(&mut self, name: &str, value: f32) -> String {
        self.initializers.push(f32_tensor(name, &[], &[value]));
        name.to_string()
    }

    /// Adds a node; a float input that so far exists only as a uint8 twin is dequantized first.
    pub fn add(
        &mut self,
        op: &str,
        name: &str,
        inputs: &[&str],
        output: &str,
        attrs: Vec<Attr>,
    ) -> String {
        for input in inputs {
            if self.pending.remove(*input) {
                let twin = self.twins[*input].clone();
                self.dequantize(&twin, input);
            }
        }
        self.nodes.push(node(op, name, inputs, &[output], attrs));
        output.to_string()
    }

    /// The int8 calibration, when building an int8 graph.
    pub fn calibration(&self) -> Option<&Calibration> {
        match &self.lowering {
            Lowering::Int8(c) => Some(c),
            _ => None,
        }
    }

    /// Whether convolutions are written in their int8 or calibration form.
    pub fn reduced(&self) -> bool {
        !matches!(self.lowering, Lowering::Plain)
    }

    /// The uint8 twin of float tensor `x`, quantized with its calibrated range if it has none yet.
    pub fn quantized(&mut self, x: &str) -> Result<Twin> {
        if let Some(t) = self.twins.get(x) {
            return Ok(t.clone());
        }
        let params = self.params_of(x)?;
        let twin = Twin {
            name: format!("{x}.q"),
            params,
        };
        let (scale, zero) = self.params_consts(x, params);
        self.add(
            "QuantizeLinear",
            &format!("{x}.quantize"),
            &[x, &scale, &zero],
            &twin.name,
            vec![],
        );
        self.twins.insert(x.to_string(), twin.clone());
        Ok(twin)
    }

    /// The quantization parameters of float tensor `x` from the calibration.
    pub fn params_of(&self, x: &str) -> Result<QParams> {
        let c = self.calibration().ok_or_else(|| {
            ExportError::Weights(format!("`{x}` is quantized outside an int8 graph"))
        })?;
        let (lo, hi) = c.range(x)?;
        Ok(QParams::from_range(lo, hi))
    }

    /// `x`'s twin dequantized for the convolutions that read it (`{x}.dq`, emitted once).
    pub fn conv_input(&mut self, x: &str) -> Result<(String, QParams)> {
        let twin = self.quantized(x)?;
        let name = format!("{x}.dq");
        if self.conv_inputs.insert(x.to_string()) {
            self.dequantize(&twin, &name);
        }
        Ok((name, twin.params))
    }

    /// Records that float tensor `x` exists (so far) only as the uint8 tensor `twin`.
    pub fn register_twin(&mut self, x: &str, twin: Twin) {
        self.twins.insert(x.to_string(), twin);
        self.pending.insert(x.to_string());
    }

    /// The scale and zero-point initialisers of `params` for tensor `x`.
    pub fn params_consts(&mut self, x: &str, params: QParams) -> (String, String) {
        let (scale, zero) = (format!("{x}.scale"), format!("{x}.zero_point"));
        if self.params_written.insert(x.to_string()) {
            self.initializers
                .push(f32_tensor(&scale, &[], &[params.scale]));
            self.initializers.push(scalar_tensor(
                &zero,
                DataType::Uint8,
                vec![params.zero_point],
            ));
        }
        (scale, zero)
    }

    fn dequantize(&mut self, twin: &Twin, out: &str) {
        let base = twin.name.trim_end_matches(".q").to_string();
        let (scale, zero) = self.params_consts(&base, twin.params);
        self.nodes.push(node(
            "DequantizeLinear",
            &format!("{out}.dequantize"),
            &[&twin.name, &scale, &zero],
            &[out],
            vec![],
        ));
    }
}

/// The values of the checkpoint tensor `name`.
pub(crate) fn values(tensors: &TensorMap, name: &str) -> Result<Vec<f32>> {
    let t = tensors
        .get(name)
        .ok_or_else(|| ExportError::Weights(format!("the generator has no tensor `{name}`")))?;
    let flat = t.flatten_all().and_then(|t| t.to_vec1::<f32>());
    flat.map_err(|e| ExportError::Weights(format!("tensor `{name}` is unreadable: {e}")))
}
