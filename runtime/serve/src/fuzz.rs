//! Fuzz targets for everything the server reads from outside: infer requests over HTTP (JSON,
//! and JSON with binary tensor data) and over gRPC (protobuf), down to the model's latents and
//! labels, and a model repository's `config.pbtxt`. Each input must decode or be refused as the
//! client's fault (400/413, never a 500), never panic or hang (gantry-fuzz's time limit).
//!
//! Inputs come three ways (the first byte chooses): byte edits of a valid request
//! ([`gantry_fuzz::fuzzed_file`]), or a request *built* from the bytes ([`Sketch`]: names, data
//! types, shapes with huge, negative and zero dimensions, value counts, binary sizes, outputs),
//! which reaches the checks behind the parser that random bytes rarely get past.

use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue};
use gantry_fuzz::fuzzed_file;
use gantry_runtime::{detect_signature, ElementType, Signature, TensorInfo};
use prost::Message;

use crate::error::ServeError;
use crate::proto::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};
use crate::proto::{InferTensorContents, ModelInferRequest};
use crate::tensor::{decode_inputs, InputTensor};
use crate::{grpc, http::infer, repository, BatchPolicy};

const OUTPUT: &str = "images";

/// A conditional generator's signature (`z` [N, 8], `label` [N]) or an unconditional one's
/// (`z` [N, 8, 1, 1], as PyTorch DCGAN exports take it).
fn signature(conditional: bool) -> Signature {
    let mut inputs = vec![match conditional {
        true => TensorInfo::new("z", ElementType::Float32, vec![None, Some(8)]),
        false => TensorInfo::new(
            "z",
            ElementType::Float32,
            vec![None, Some(8), Some(1), Some(1)],
        ),
    }];
    if conditional {
        inputs.push(TensorInfo::new("label", ElementType::Int64, vec![None]));
    }
    let output = TensorInfo::new(
        OUTPUT,
        ElementType::Float32,
        vec![None, Some(1), Some(16), Some(16)],
    );
    detect_signature(std::path::Path::new("fuzz.onnx"), &inputs, &[output]).unwrap()
}

/// Decoded inputs go on to the model's latents and labels: either they fit (N x 8 latents, N
/// labels when conditional) or the error is the client's.
fn check(decoded: Result<Vec<InputTensor>, ServeError>, conditional: bool) {
    let sig = signature(conditional);
    match decoded.and_then(|inputs| decode_inputs(&sig, inputs)) {
        Ok(m) => {
            assert_eq!(m.z.ncols(), 8);
            match &m.labels {
                Some(l) => assert!(conditional && l.len() == m.z.nrows()),
                None => assert!(!conditional),
            }
        }
        Err(e) => assert!(matches!(e.http_status(), 400 | 413), "a server error: {e}"),
    }
}

/// Reads bytes one at a time (zeros when they run out).
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn next(&mut self) -> u8 {
        let (&b, rest) = self.0.split_first().unwrap_or((&0, &[]));
        self.0 = rest;
        b
    }
    fn pick<'t, T>(&mut self, from: &'t [T]) -> &'t T {
        &from[self.next() as usize % from.len()]
    }
}

/// One input of a built request.
struct InputSketch {
    name: &'static str,
    datatype: &'static str,
    shape: Vec<i64>,
    values: Vec<f64>,
    /// Sent as binary data (HTTP) or raw contents (gRPC) instead of numbers.
    raw: Option<Vec<u8>>,
    /// The binary size the request claims (HTTP), when not the true one.
    claimed_size: Option<u64>,
}

/// A request built from fuzzer bytes.
struct Sketch {
    inputs: Vec<InputSketch>,
    outputs: Vec<&'static str>,
    binary_output: bool,
}

impl Sketch {
    fn from_bytes(bytes: &[u8]) -> Self {
        const DIMS: [i64; 10] = [1, 2, 8, 0, -1, 3, 16, 1 << 32, i64::MAX, 1 << 62];
        const VALUES: [f64; 6] = [0.0, 1.5, -1.0, 3.0, 1e39, 1e300];
        let mut b = Bytes(bytes);
        let inputs = (0..b.next() % 4)
            .map(|_| {
                let name = *b.pick(&["z", "label", "x", ""]);
                let datatype = *b.pick(&["FP32", "INT64", "UINT8", "FP16", "BYTES", "fp32"]);
                let shape: Vec<i64> = (0..b.next() % 5).map(|_| *b.pick(&DIMS)).collect();
                let count = match b.next() % 3 {
                    // As many values as the shape says, when that is small.
                    0 => shape
                        .iter()
                        .try_fold(1i64, |a, &d| a.checked_mul(d))
                        .filter(|n| (0..=4096).contains(n))
                        .unwrap_or(0) as usize,
                    _ => b.next() as usize % 40,
                };
                let values: Vec<f64> = (0..count).map(|_| *b.pick(&VALUES)).collect();
                let raw = (b.next() % 3 == 0).then(|| {
                    let width = *b.pick(&[4usize, 8, 1, 3]);
                    vec![0x3f; values.len() * width]
                });
                let claimed_size =
                    (b.next() % 4 == 0).then(|| *b.pick(&[0u64, 1, 63, 1 << 40, u64::MAX]));
                InputSketch {
                    name,
                    datatype,
                    shape,
                    values,
                    raw,
                    claimed_size,
                }
            })
            .collect();
        let outputs = (0..b.next() % 3)
            .map(|_| *b.pick(&[OUTPUT, "other"]))
            .collect();
        Self {
            inputs,
            outputs,
            binary_output: b.next() % 2 == 0,
        }
    }

    /// As an HTTP body: JSON, then the binary data of the inputs that have some.
    fn http(&self) -> (HeaderMap, Vec<u8>) {
        let mut binary = Vec::new();
        let inputs: Vec<serde_json::Value> = self
            .inputs
            .iter()
            .map(|i| {
                let mut v =
                    serde_json::json!({"name": i.name, "datatype": i.datatype, "shape": i.shape});
                match &i.raw {
                    Some(raw) => {
                        let size = i.claimed_size.unwrap_or(raw.len() as u64);
                        v["parameters"] = serde_json::json!({"binary_data_size": size});
                        binary.extend_from_slice(raw);
                    }
                    None => {
                        v["data"] = serde_json::json!(i.values);
                    }
                }
                v
            })
            .collect();
        let outputs: Vec<serde_json::Value> = self
            .outputs
            .iter()
            .map(|o| serde_json::json!({"name": o, "parameters": {"binary_data": self.binary_output}}))
            .collect();
        let mut body =
            serde_json::to_vec(&serde_json::json!({"inputs": inputs, "outputs": outputs})).unwrap();
        let mut headers = HeaderMap::new();
        if !binary.is_empty() {
            headers.insert(infer::HEADER_LENGTH, HeaderValue::from(body.len()));
            body.extend_from_slice(&binary);
        }
        (headers, body)
    }

    /// As a gRPC request: typed contents, or raw contents for every input when the first has
    /// raw data (the protocol allows one or the other).
    fn grpc(&self) -> ModelInferRequest {
        let raw = self.inputs.first().is_some_and(|i| i.raw.is_some());
        ModelInferRequest {
            model_name: "m".into(),
            inputs: self
                .inputs
                .iter()
                .map(|i| InferInputTensor {
                    name: i.name.into(),
                    datatype: i.datatype.into(),
                    shape: i.shape.clone(),
                    contents: (!raw).then(|| InferTensorContents {
                        fp32_contents: match i.datatype {
                            "INT64" => vec![],
                            _ => i.values.iter().map(|&v| v as f32).collect(),
                        },
                        int64_contents: match i.datatype {
                            "INT64" => i.values.iter().map(|&v| v as i64).collect(),
                            _ => vec![],
                        },
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .collect(),
            outputs: self
                .outputs
                .iter()
                .map(|o| InferRequestedOutputTensor {
                    name: (*o).into(),
                    ..Default::default()
                })
                .collect(),
            raw_input_contents: match raw {
                true => self
                    .inputs
                    .iter()
                    .map(|i| i.raw.clone().unwrap_or_default())
                    .collect(),
                false => vec![],
            },
            ..Default::default()
        }
    }
}

/// Valid requests for the conditional model: all JSON, and with binary latents.
fn valid_http_requests() -> [(HeaderMap, Vec<u8>); 2] {
    let z: Vec<f32> = (0..16).map(|i| i as f32 / 8.0 - 1.0).collect();
    let json = serde_json::json!({
        "id": "r1",
        "inputs": [
            {"name": "z", "shape": [2, 8], "datatype": "FP32", "data": z},
            {"name": "label", "shape": [2], "datatype": "INT64", "data": [1, 7]}
        ],
        "outputs": [{"name": OUTPUT, "parameters": {"binary_data": true}}]
    });
    let header = serde_json::to_vec(&serde_json::json!({
        "inputs": [
            {"name": "z", "shape": [2, 8], "datatype": "FP32", "parameters": {"binary_data_size": 64}},
            {"name": "label", "shape": [2], "datatype": "INT64", "data": [[3], [4]]}
        ],
        "parameters": {"binary_data_output": true}
    }))
    .unwrap();
    let mut headers = HeaderMap::new();
    headers.insert(infer::HEADER_LENGTH, HeaderValue::from(header.len()));
    let mut body = header;
    body.extend(z.iter().flat_map(|v| v.to_le_bytes()));
    [
        (HeaderMap::new(), serde_json::to_vec(&json).unwrap()),
        (headers, body),
    ]
}

#[test]
fn fuzz_http_infer_request_decoding() {
    let valid = valid_http_requests();
    // The valid requests decode (or the target would test only refusals).
    for (headers, body) in &valid {
        let decoded = infer::decode_request(headers, body, OUTPUT).map(|r| r.inputs);
        assert!(decode_inputs(&signature(true), decoded.unwrap()).is_ok());
    }
    gantry_fuzz::target!(|input| {
        let Some((&mode, rest)) = input.split_first() else {
            return;
        };
        let (headers, body) = match mode % 3 {
            2 => Sketch::from_bytes(rest).http(),
            m => {
                let (headers, base) = &valid[m as usize];
                (headers.clone(), fuzzed_file(base, rest))
            }
        };
        let conditional = mode % 4 < 2;
        check(
            infer::decode_request(&headers, &body, OUTPUT).map(|r| r.inputs),
            conditional,
        );
    });
}

#[test]
fn fuzz_grpc_infer_request_decoding() {
    let valid = Sketch::from_bytes(&[]).grpc().encode_to_vec();
    let z: Vec<f32> = (0..16).map(|i| i as f32 / 8.0).collect();
    let good = ModelInferRequest {
        model_name: "m".into(),
        inputs: vec![
            InferInputTensor {
                name: "z".into(),
                datatype: "FP32".into(),
                shape: vec![2, 8],
                ..Default::default()
            },
            InferInputTensor {
                name: "label".into(),
                datatype: "INT64".into(),
                shape: vec![2],
                ..Default::default()
            },
        ],
        raw_input_contents: vec![
            z.iter().flat_map(|v| v.to_le_bytes()).collect(),
            [2i64, 5].iter().flat_map(|v| v.to_le_bytes()).collect(),
        ],
        ..Default::default()
    };
    let (_, inputs) = grpc::decode_request(good.clone(), OUTPUT).unwrap();
    assert!(decode_inputs(&signature(true), inputs).is_ok());
    let good = good.encode_to_vec();
    gantry_fuzz::target!(|input| {
        let Some((&mode, rest)) = input.split_first() else {
            return;
        };
        let request = match mode % 3 {
            2 => Some(Sketch::from_bytes(rest).grpc()),
            m => ModelInferRequest::decode(
                fuzzed_file(if m == 0 { &good } else { &valid }, rest).as_slice(),
            )
            .ok(),
        };
        if let Some(request) = request {
            check(
                grpc::decode_request(request, OUTPUT).map(|(_, inputs)| inputs),
                mode % 4 < 2,
            );
        }
    });
}

#[test]
fn fuzz_model_repository_config() {
    let base = b"name: \"m\"\nplatform: \"onnxruntime_onnx\"\nmax_batch_size: 32\ninput [ { name: \"z\" data_type: TYPE_FP32 dims: [ 8 ] } ]\noutput [ { name: \"images\" data_type: TYPE_FP32 dims: [ 1, 16, 16 ] } ]\ndynamic_batching { max_queue_delay_microseconds: 500 default_queue_policy { max_queue_size: 7 } }\nversion_policy: { latest { num_versions: 2 } }\n";
    let scratch = tempfile::tempdir().unwrap();
    let repo = scratch.path();
    for v in ["1", "2"] {
        std::fs::create_dir_all(repo.join("m").join(v)).unwrap();
        std::fs::write(repo.join("m").join(v).join("model.onnx"), b"onnx").unwrap();
    }
    let defaults = BatchPolicy::dynamic(64, Duration::from_millis(2));
    let config = repo.join("m/config.pbtxt");
    std::fs::write(&config, base).unwrap();
    assert!(repository::scan_repository(repo, defaults).is_ok());
    gantry_fuzz::target!(|input| {
        std::fs::write(&config, fuzzed_file(base, input)).unwrap();
        if let Err(e) = repository::scan_repository(repo, defaults) {
            assert!(
                e.to_string().contains("config.pbtxt")
                    || e.to_string().contains(&*repo.to_string_lossy()),
                "{e}"
            );
        }
    });
}
