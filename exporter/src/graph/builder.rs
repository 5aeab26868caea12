//! The graph under construction: nodes and initialisers in order.

use candle_onnx::onnx::{NodeProto, TensorProto};
use gantry_models::TensorMap;

use super::Precision;
use crate::error::{ExportError, Result};
use crate::proto::{f16_tensor, f32_tensor, node, Attr};

/// Accumulates nodes and initialisers.
pub(crate) struct Builder {
    pub nodes: Vec<NodeProto>,
    pub initializers: Vec<TensorProto>,
    pub precision: Precision,
}

impl Builder {
    /// Adds a weight initialiser in the graph's precision.
    pub fn weight(&mut self, name: &str, dims: &[usize], values: &[f32]) -> String {
        let t = match self.precision {
            Precision::Fp32 => f32_tensor(name, dims, values),
            Precision::Fp16 => f16_tensor(name, dims, values),
        };
        self.initializers.push(t);
        name.to_string()
    }

    /// Adds a float32 constant (used in the float32 tail of the graph).
    pub fn f32_const(&mut self, name: &str, value: f32) -> String {
        self.initializers.push(f32_tensor(name, &[], &[value]));
        name.to_string()
    }

    pub fn add(
        &mut self,
        op: &str,
        name: &str,
        inputs: &[&str],
        output: &str,
        attrs: Vec<Attr>,
    ) -> String {
        self.nodes.push(node(op, name, inputs, &[output], attrs));
        output.to_string()
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
