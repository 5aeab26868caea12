//! The measurement behind "ONNX Runtime, not candle" in docs/metrics.md: the Inception graph
//! Gantry builds, run by candle (candle-onnx's evaluator over candle's CPU convolutions), images
//! per second at batch 8 after a warm-up. candle-onnx has no padded pooling, so each padded pool
//! is preceded by a `Pad` (reflection) here: the same work, not the same values (timing only).
//! `scripts/bench-metrics.sh` runs it beside ONNX Runtime and PyTorch.
//!   cargo run --release -p gantry-metrics --features candle-measurement --example inception_on_candle

use std::collections::HashMap;
use std::time::Instant;

use candle_core::{Device, Tensor};
use candle_onnx::onnx::{attribute_proto::AttributeType, ModelProto};
use gantry_exporter::proto::{i64_tensor, node};
use gantry_metrics::inception::{locate_weights, onnx_bytes, INPUT_SIZE};
use prost::Message;

/// Moves every pool's padding into a `Pad` node before it.
fn explicit_pool_padding(model: &mut ModelProto) {
    let graph = model.graph.as_mut().expect("a graph");
    let mut nodes = Vec::new();
    for mut n in std::mem::take(&mut graph.node) {
        let pads = n
            .attribute
            .iter_mut()
            .find(|a| a.name == "pads" && a.r#type == AttributeType::Ints as i32);
        if let Some(pads) = pads.filter(|_| n.op_type.ends_with("Pool")) {
            if pads.ints.iter().any(|&p| p != 0) {
                let p = pads.ints[0];
                pads.ints = vec![0; 4];
                let (padded, amounts) = (format!("{}.padded", n.name), format!("{}.pads", n.name));
                graph
                    .initializer
                    .push(i64_tensor(&amounts, &[8], &[0, 0, p, p, 0, 0, p, p]));
                let mut pad = node("Pad", &padded, &[&n.input[0], &amounts], &[&padded], vec![]);
                pad.attribute.push({
                    let mut a = candle_onnx::onnx::AttributeProto {
                        name: "mode".into(),
                        r#type: AttributeType::String as i32,
                        ..Default::default()
                    };
                    a.s = b"reflect".to_vec();
                    a
                });
                nodes.push(pad);
                n.input[0] = padded;
            }
        }
        nodes.push(n);
    }
    graph.node = nodes;
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let weights = locate_weights(None)?;
    let mut model = ModelProto::decode(onnx_bytes(&weights)?.as_slice())?;
    explicit_pool_padding(&mut model);
    let batch = 8;
    let input = Tensor::randn(0f32, 0.5, (batch, 3, INPUT_SIZE, INPUT_SIZE), &Device::Cpu)?;
    let run = || -> Result<f64, Box<dyn std::error::Error>> {
        let start = Instant::now();
        let inputs = HashMap::from([("image".to_string(), input.clone())]);
        let out = candle_onnx::simple_eval(&model, inputs)?;
        assert_eq!(out["pool_features"].dims(), [batch, 2048]);
        Ok(start.elapsed().as_secs_f64())
    };
    run()?;
    let mut best = f64::MAX;
    for _ in 0..3 {
        best = best.min(run()?);
    }
    println!(
        "RESULT candle batch {batch}: {:.2} img/s",
        batch as f64 / best
    );
    Ok(())
}
