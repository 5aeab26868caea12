//! Structural check of an exported model, run on the file as read back from disk.

use std::collections::HashSet;

use candle_onnx::onnx::{
    tensor_shape_proto::dimension::Value, type_proto, ModelProto, ValueInfoProto,
};

use crate::proto::elem_size;

/// What the exported model must look like.
pub struct Expectation {
    pub opset: i64,
    /// (name, elem type, dims; `None` = dynamic) of each input, in order.
    pub inputs: Vec<(String, i32, Vec<Option<usize>>)>,
    /// The same for each output.
    pub outputs: Vec<(String, i32, Vec<Option<usize>>)>,
}

fn describe(v: &ValueInfoProto) -> Option<(i32, Vec<Option<usize>>)> {
    let Some(type_proto::Value::TensorType(t)) = v.r#type.as_ref()?.value.as_ref() else {
        return None;
    };
    let dims = t
        .shape
        .as_ref()?
        .dim
        .iter()
        .map(|d| match d.value {
            Some(Value::DimValue(n)) => Some(n as usize),
            _ => None,
        })
        .collect();
    Some((t.elem_type, dims))
}

fn check_values(
    kind: &str,
    got: &[ValueInfoProto],
    want: &[(String, i32, Vec<Option<usize>>)],
) -> Result<(), String> {
    if got.len() != want.len() {
        return Err(format!("{} {kind}s, expected {}", got.len(), want.len()));
    }
    for (g, (name, elem, dims)) in got.iter().zip(want) {
        if &g.name != name {
            return Err(format!("{kind} `{}`, expected `{name}`", g.name));
        }
        let (ge, gd) = describe(g).ok_or_else(|| format!("{kind} `{name}` has no tensor type"))?;
        if ge != *elem || &gd != dims {
            return Err(format!(
                "{kind} `{name}` is type {ge} {gd:?}, expected type {elem} {dims:?}"
            ));
        }
    }
    Ok(())
}

/// Checks opset, inputs and outputs, initialiser sizes, and that every node input is defined
/// before use (the graph is topologically sorted) and every output is produced.
pub fn verify(model: &ModelProto, want: &Expectation) -> Result<(), String> {
    let opset = model
        .opset_import
        .iter()
        .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
        .ok_or("no default-domain opset import")?;
    if opset.version != want.opset {
        return Err(format!("opset {}, expected {}", opset.version, want.opset));
    }
    let graph = model.graph.as_ref().ok_or("the model has no graph")?;
    check_values("input", &graph.input, &want.inputs)?;
    check_values("output", &graph.output, &want.outputs)?;
    let mut defined: HashSet<&str> = graph.input.iter().map(|v| v.name.as_str()).collect();
    for t in &graph.initializer {
        let n: i64 = t.dims.iter().product();
        let size = elem_size(t.data_type);
        if size == 0 || t.raw_data.len() != n as usize * size {
            return Err(format!(
                "initializer `{}` holds {} bytes for dims {:?} of type {}",
                t.name,
                t.raw_data.len(),
                t.dims,
                t.data_type
            ));
        }
        if !defined.insert(t.name.as_str()) {
            return Err(format!("name `{}` is defined twice", t.name));
        }
    }
    let mut used: HashSet<&str> = HashSet::new();
    for node in &graph.node {
        for input in &node.input {
            if !input.is_empty() && !defined.contains(input.as_str()) {
                return Err(format!(
                    "node `{}` ({}) reads `{input}` before it is defined",
                    node.name, node.op_type
                ));
            }
            used.insert(input);
        }
        for output in &node.output {
            if !defined.insert(output.as_str()) {
                return Err(format!("node `{}` redefines `{output}`", node.name));
            }
        }
    }
    if let Some(t) = graph
        .initializer
        .iter()
        .find(|t| !used.contains(t.name.as_str()))
    {
        return Err(format!("initializer `{}` is never used", t.name));
    }
    for o in &graph.output {
        if !graph.node.iter().any(|n| n.output.contains(&o.name)) {
            return Err(format!("output `{}` is not produced by any node", o.name));
        }
    }
    Ok(())
}
