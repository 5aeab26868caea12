//! Small constructors for candle-onnx's protobuf types.

use candle_onnx::onnx::{
    attribute_proto::AttributeType, tensor_proto::DataType, tensor_shape_proto, type_proto,
    AttributeProto, NodeProto, TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
};

/// A dimension of a value's shape: fixed or named (dynamic).
pub enum Dim {
    Fixed(usize),
    Named(&'static str),
}

/// A graph input/output description.
pub fn value_info(name: &str, elem: DataType, dims: &[Dim]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| tensor_shape_proto::Dimension {
            denotation: String::new(),
            value: Some(match d {
                Dim::Fixed(n) => tensor_shape_proto::dimension::Value::DimValue(*n as i64),
                Dim::Named(s) => tensor_shape_proto::dimension::Value::DimParam(s.to_string()),
            }),
        })
        .collect();
    ValueInfoProto {
        name: name.to_string(),
        r#type: Some(TypeProto {
            denotation: String::new(),
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: elem as i32,
                shape: Some(TensorShapeProto { dim }),
            })),
        }),
        doc_string: String::new(),
    }
}

/// A float32 initializer (raw little-endian data).
pub fn f32_tensor(name: &str, dims: &[usize], values: &[f32]) -> TensorProto {
    tensor(
        name,
        dims,
        DataType::Float,
        values.iter().flat_map(|v| v.to_le_bytes()).collect(),
    )
}

/// A float16 initializer converted from f32 values.
pub fn f16_tensor(name: &str, dims: &[usize], values: &[f32]) -> TensorProto {
    let raw = values
        .iter()
        .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
        .collect();
    tensor(name, dims, DataType::Float16, raw)
}

/// A bfloat16 initializer converted from f32 values (round to nearest even).
pub fn bf16_tensor(name: &str, dims: &[usize], values: &[f32]) -> TensorProto {
    let raw = values
        .iter()
        .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
        .collect();
    tensor(name, dims, DataType::Bfloat16, raw)
}

/// An int8 initializer.
pub fn i8_tensor(name: &str, dims: &[usize], values: &[i8]) -> TensorProto {
    let raw = values.iter().map(|v| *v as u8).collect();
    tensor(name, dims, DataType::Int8, raw)
}

/// An int32 initializer.
pub fn i32_tensor(name: &str, dims: &[usize], values: &[i32]) -> TensorProto {
    tensor(
        name,
        dims,
        DataType::Int32,
        values.iter().flat_map(|v| v.to_le_bytes()).collect(),
    )
}

/// A one-byte-per-element initializer of type `dt` (uint8 or int8) and shape `[len]`, or a
/// scalar when `bytes` has one element.
pub fn scalar_tensor(name: &str, dt: DataType, bytes: Vec<u8>) -> TensorProto {
    let dims: Vec<usize> = if bytes.len() == 1 {
        vec![]
    } else {
        vec![bytes.len()]
    };
    tensor(name, &dims, dt, bytes)
}

/// An int64 initializer.
pub fn i64_tensor(name: &str, dims: &[usize], values: &[i64]) -> TensorProto {
    tensor(
        name,
        dims,
        DataType::Int64,
        values.iter().flat_map(|v| v.to_le_bytes()).collect(),
    )
}

fn tensor(name: &str, dims: &[usize], dt: DataType, raw_data: Vec<u8>) -> TensorProto {
    TensorProto {
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: dt as i32,
        name: name.to_string(),
        raw_data,
        ..Default::default()
    }
}

/// Bytes per element of an initializer's data type (0 for types the exporter never writes).
pub fn elem_size(data_type: i32) -> usize {
    match DataType::try_from(data_type) {
        Ok(DataType::Float) => 4,
        Ok(DataType::Float16 | DataType::Bfloat16) => 2,
        Ok(DataType::Int32) => 4,
        Ok(DataType::Int8) => 1,
        Ok(DataType::Int64) => 8,
        Ok(DataType::Uint8) => 1,
        _ => 0,
    }
}

/// An attribute of a node.
pub enum Attr {
    Int(&'static str, i64),
    Ints(&'static str, Vec<i64>),
    Float(&'static str, f32),
    Str(&'static str, &'static str),
}

/// A node with the given attributes.
pub fn node(
    op: &str,
    name: &str,
    inputs: &[&str],
    outputs: &[&str],
    attrs: Vec<Attr>,
) -> NodeProto {
    let attribute = attrs
        .into_iter()
        .map(|a| {
            let mut p = AttributeProto::default();
            match a {
                Attr::Int(n, v) => {
                    p.name = n.into();
                    p.r#type = AttributeType::Int as i32;
                    p.i = v;
                }
                Attr::Ints(n, v) => {
                    p.name = n.into();
                    p.r#type = AttributeType::Ints as i32;
                    p.ints = v;
                }
                Attr::Float(n, v) => {
                    p.name = n.into();
                    p.r#type = AttributeType::Float as i32;
                    p.f = v;
                }
                Attr::Str(n, v) => {
                    p.name = n.into();
                    p.r#type = AttributeType::String as i32;
                    p.s = v.as_bytes().to_vec();
                }
            }
            p
        })
        .collect();
    NodeProto {
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        name: name.to_string(),
        op_type: op.to_string(),
        domain: String::new(),
        attribute,
        doc_string: String::new(),
    }
}
