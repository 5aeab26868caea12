//! `POST /v2/models/{name}[/versions/{v}]/infer`: JSON tensors and the binary tensor data
//! extension (`Inference-Header-Content-Length`), as `tritonclient.http` sends and asks for.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{model_of, ModelPath};
use crate::error::{Result, ServeError};
use crate::state::ServerState;
use crate::tensor::{check_output, DataType, Images, InputTensor, TensorData};

/// The header that splits a binary request or response into its JSON and its tensor bytes.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

/// An optional field that, when present, must not be `null` (the schema types it).
fn present<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> std::result::Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

#[derive(Deserialize)]
struct InferRequest {
    #[serde(default, deserialize_with = "present")]
    id: Option<String>,
    #[serde(default)]
    parameters: Map<String, Value>,
    inputs: Vec<InputJson>,
    #[serde(default, deserialize_with = "present")]
    outputs: Option<Vec<OutputRequest>>,
}

#[derive(Deserialize)]
struct InputJson {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    #[serde(default)]
    parameters: Map<String, Value>,
    data: Option<Value>,
}

#[derive(Deserialize)]
struct OutputRequest {
    name: String,
    #[serde(default)]
    parameters: Map<String, Value>,
}

#[derive(Serialize)]
struct InferResponse<'a> {
    model_name: &'a str,
    model_version: &'a str,
    /// The request's id, or empty: the specification lists `id` in every response.
    id: String,
    outputs: [OutputJson; 1],
}

#[derive(Serialize)]
struct OutputJson {
    name: String,
    datatype: &'static str,
    shape: Vec<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<OutputData>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum OutputData {
    F32(Vec<f32>),
    U8(Vec<u8>),
}

pub(super) async fn infer(
    State(state): State<Arc<ServerState>>,
    path: ModelPath,
    headers: HeaderMap,
    body: std::result::Result<Bytes, BytesRejection>,
) -> Result<Response> {
    let body = body.map_err(|e| match e.status().as_u16() {
        413 => ServeError::TooLarge(format!(
            "the request body is over the limit of {} bytes",
            state.options.max_body_bytes
        )),
        _ => ServeError::bad(format!("the request body: {e}")),
    })?;
    let model = model_of(&state, &path)?.clone();
    let output_name = &model.generator().info().signature.output;
    let request = decode_request(&headers, &body, output_name)?;
    let images = model
        .infer_tensors(request.inputs, state.options.request_timeout)
        .await?;
    Ok(respond(
        &model,
        request.id,
        output_name,
        images,
        request.binary_output,
    ))
}

/// A request's inputs and how the output is wanted, decoded from its body.
#[derive(Debug)]
pub(crate) struct DecodedRequest {
    pub id: Option<String>,
    pub inputs: Vec<InputTensor>,
    /// The output goes back as binary data (after the JSON header).
    pub binary_output: bool,
}

/// Decodes an infer request's body (JSON, or a JSON header and binary tensor data when
/// `headers` say so) for a model whose output is `output_name`. Every error is the client's
/// (400).
pub(crate) fn decode_request(
    headers: &HeaderMap,
    body: &[u8],
    output_name: &str,
) -> Result<DecodedRequest> {
    let (json, mut binary) = split_body(headers, body)?;
    let request = parse_request(json)?;
    let mut inputs = Vec::with_capacity(request.inputs.len());
    for input in request.inputs {
        let data = match binary_size(&input.parameters, "binary_data_size", &input.name)? {
            Some(size) => {
                if size > binary.len() {
                    return Err(ServeError::bad(format!(
                        "input `{}` says {size} bytes of binary data, only {} are left in the body",
                        input.name,
                        binary.len()
                    )));
                }
                let (mine, rest) = binary.split_at(size);
                binary = rest;
                TensorData::Raw(mine.to_vec())
            }
            None => {
                let data = input.data.as_ref().ok_or_else(|| {
                    ServeError::bad(format!(
                        "input `{}` has neither `data` nor binary data",
                        input.name
                    ))
                })?;
                let mut numbers = Vec::new();
                flatten_numbers(data, &input.name, &mut numbers)?;
                TensorData::Numbers(numbers)
            }
        };
        inputs.push(InputTensor {
            name: input.name,
            datatype: input.datatype,
            shape: input.shape,
            data,
        });
    }
    if !binary.is_empty() {
        return Err(ServeError::bad(format!(
            "{} bytes of binary data after the inputs' binary_data_size are used up",
            binary.len()
        )));
    }
    let binary_output = match &request.outputs {
        Some(outputs) if !outputs.is_empty() => {
            let mut binary = false;
            for o in outputs {
                check_output(&o.name, output_name)?;
                binary = flag(&o.parameters, "binary_data")?;
            }
            binary
        }
        _ => flag(&request.parameters, "binary_data_output")?,
    };
    Ok(DecodedRequest {
        id: request.id,
        inputs,
        binary_output,
    })
}

/// The request's JSON, whose objects must be objects: serde would also read a struct from an
/// array of its fields in order, which the protocol does not allow.
fn parse_request(json: &[u8]) -> Result<InferRequest> {
    let bad = |e: String| ServeError::bad(format!("the request's JSON: {e}"));
    let value: Value = serde_json::from_slice(json).map_err(|e| bad(e.to_string()))?;
    let objects = |v: &Value, what: &str| -> Result<()> {
        match v {
            Value::Array(items) => items.iter().enumerate().try_for_each(|(i, item)| {
                if item.is_object() {
                    Ok(())
                } else {
                    Err(bad(format!("{what}[{i}] must be an object")))
                }
            }),
            _ => Ok(()),
        }
    };
    if !value.is_object() {
        return Err(bad("the request must be an object".into()));
    }
    objects(&value["inputs"], "inputs")?;
    objects(&value["outputs"], "outputs")?;
    serde_json::from_value(value).map_err(|e| bad(e.to_string()))
}

/// The JSON part and the binary part of a request body.
fn split_body<'a>(headers: &HeaderMap, body: &'a [u8]) -> Result<(&'a [u8], &'a [u8])> {
    let Some(value) = headers.get(HEADER_LENGTH) else {
        return Ok((body, &[]));
    };
    let length: usize = value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| ServeError::bad("Inference-Header-Content-Length is not a number"))?;
    if length > body.len() {
        return Err(ServeError::bad(format!(
            "Inference-Header-Content-Length is {length} but the body has {} bytes",
            body.len()
        )));
    }
    Ok(body.split_at(length))
}

fn binary_size(parameters: &Map<String, Value>, key: &str, input: &str) -> Result<Option<usize>> {
    match parameters.get(key) {
        None => Ok(None),
        Some(v) => v.as_u64().map(|n| Some(n as usize)).ok_or_else(|| {
            ServeError::bad(format!(
                "input `{input}`: {key} must be a non-negative integer"
            ))
        }),
    }
}

fn flag(parameters: &Map<String, Value>, key: &str) -> Result<bool> {
    match parameters.get(key) {
        None => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(ServeError::bad(format!(
            "parameter {key} must be true or false, got {other}"
        ))),
    }
}

/// The numbers of a JSON tensor, flat or nested in row-major order.
fn flatten_numbers(v: &Value, input: &str, out: &mut Vec<f64>) -> Result<()> {
    match v {
        Value::Number(n) => {
            out.push(
                n.as_f64().ok_or_else(|| {
                    ServeError::bad(format!("input `{input}`: {n} is not a number"))
                })?,
            );
            Ok(())
        }
        Value::Array(items) => items
            .iter()
            .try_for_each(|i| flatten_numbers(i, input, out)),
        other => Err(ServeError::bad(format!(
            "input `{input}`: data must hold numbers, found {}",
            match other {
                Value::Null => "null",
                Value::Bool(_) => "a boolean",
                Value::String(_) => "a string",
                _ => "an object",
            }
        ))),
    }
}

/// The response: all JSON, or the JSON header followed by the output's bytes.
fn respond(
    model: &crate::model::Model,
    id: Option<String>,
    output: &str,
    images: Images,
    binary: bool,
) -> Response {
    let mut out = OutputJson {
        name: output.to_string(),
        datatype: images.datatype.name(),
        shape: images.tensor_shape(),
        parameters: None,
        data: None,
    };
    if binary {
        out.parameters = Some(serde_json::json!({ "binary_data_size": images.bytes.len() }));
    } else {
        out.data = Some(match images.datatype {
            DataType::Uint8 => OutputData::U8(images.bytes.clone()),
            _ => OutputData::F32(images.f32_values()),
        });
    }
    let header = InferResponse {
        model_name: model.name(),
        model_version: model.version(),
        id: id.unwrap_or_default(),
        outputs: [out],
    };
    let json = serde_json::to_vec(&header).unwrap_or_default();
    if !binary {
        return ([(header::CONTENT_TYPE, "application/json")], json).into_response();
    }
    let json_len = json.len();
    let mut body = json;
    body.extend_from_slice(&images.bytes);
    let mut response = ([(header::CONTENT_TYPE, "application/octet-stream")], body).into_response();
    response
        .headers_mut()
        .insert(HEADER_LENGTH, HeaderValue::from(json_len));
    response
}
