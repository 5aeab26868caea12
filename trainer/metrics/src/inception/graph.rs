//! The FID Inception-v3 (the 2015 TensorFlow network as StyleGAN3's metrics ship it) as an
//! ONNX graph, built from the weights of its TorchScript archive.
//!
//! The topology is written out here once, as the archive's own TorchScript code runs it
//! (`out_jit_module/code/__torch__/inceptionv3.py`): the stem, three `InceptionA`, one `B`,
//! four `C`, one `D`, two `E` (the first with an average pool in its last tower, the second with
//! a max pool, as in TensorFlow's graph) and an 8x8 average pool to the 2048 pool features.
//! Every convolution of the archive is `conv2d (no bias) -> batch_norm(eps = 1e-3, no gain) ->
//! relu`; kernel sizes come from the weights, strides and paddings from the archive's
//! attributes, and the batch norm is folded into the convolution here (in float64). A weight
//! the topology does not use, or one it needs and the archive lacks, is an error: another
//! network cannot pass for this one.

use std::collections::BTreeSet;
use std::path::Path;

use candle_onnx::onnx::{
    tensor_proto::DataType, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
};
use gantry_exporter::proto::{f32_tensor, i64_tensor, node, value_info, Attr, Dim};

use super::torchscript::Archive;
use crate::error::{MetricsError, Result};

/// Side of the square input the features are defined at.
pub const INPUT_SIZE: usize = 299;
/// Length of a feature vector (the pool features).
pub const FEATURE_DIM: usize = 2048;
/// The graph's input (`[N, 3, 299, 299]`, values in [-1, 1]) and output (`[N, 2048]`).
pub const INPUT: &str = "image";
pub const OUTPUT: &str = "pool_features";
/// Batch-norm epsilon of the archive's `Conv2dLayer.forward`.
const BN_EPS: f64 = 1e-3;
const OPSET: i64 = 17;

/// One step of the network.
enum Layer {
    /// `Conv2dLayer` at this path: convolution, folded batch norm, ReLU.
    Conv(String),
    MaxPool {
        kernel: i64,
        stride: i64,
        pad: i64,
    },
    /// Average pool; `include_pad` as PyTorch's `count_include_pad`.
    AvgPool {
        kernel: i64,
        stride: i64,
        pad: i64,
        include_pad: bool,
    },
    /// Layers one after another.
    Chain(Vec<Layer>),
    /// Branches on the same input, concatenated along channels in order.
    Concat(Vec<Layer>),
}

fn conv(path: &str, name: &str) -> Layer {
    Layer::Conv(format!("{path}.{name}"))
}

fn convs(path: &str, names: &[&str]) -> Layer {
    Layer::Chain(names.iter().map(|n| conv(path, n)).collect())
}

const MAX_3X3_S2: Layer = Layer::MaxPool {
    kernel: 3,
    stride: 2,
    pad: 0,
};
const AVG_3X3_SAME: Layer = Layer::AvgPool {
    kernel: 3,
    stride: 1,
    pad: 1,
    include_pad: false,
};

fn inception_a(p: &str) -> Layer {
    Layer::Concat(vec![
        conv(p, "conv"),
        convs(&format!("{p}.tower"), &["conv", "conv_1"]),
        convs(&format!("{p}.tower_1"), &["conv", "conv_1", "conv_2"]),
        Layer::Chain(vec![AVG_3X3_SAME, conv(p, "tower_2.conv")]),
    ])
}

fn inception_b(p: &str) -> Layer {
    Layer::Concat(vec![
        conv(p, "conv"),
        convs(&format!("{p}.tower"), &["conv", "conv_1", "conv_2"]),
        MAX_3X3_S2,
    ])
}

fn inception_c(p: &str) -> Layer {
    Layer::Concat(vec![
        conv(p, "conv"),
        convs(&format!("{p}.tower"), &["conv", "conv_1", "conv_2"]),
        convs(
            &format!("{p}.tower_1"),
            &["conv", "conv_1", "conv_2", "conv_3", "conv_4"],
        ),
        Layer::Chain(vec![AVG_3X3_SAME, conv(p, "tower_2.conv")]),
    ])
}

fn inception_d(p: &str) -> Layer {
    Layer::Concat(vec![
        convs(&format!("{p}.tower"), &["conv", "conv_1"]),
        convs(
            &format!("{p}.tower_1"),
            &["conv", "conv_1", "conv_2", "conv_3"],
        ),
        MAX_3X3_S2,
    ])
}

fn inception_e(p: &str, pool: Layer) -> Layer {
    Layer::Concat(vec![
        conv(p, "conv"),
        Layer::Chain(vec![
            conv(p, "tower_conv"),
            Layer::Concat(vec![
                conv(p, "tower_mixed_conv"),
                conv(p, "tower_mixed_conv_1"),
            ]),
        ]),
        Layer::Chain(vec![
            conv(p, "tower_1_conv"),
            conv(p, "tower_1_conv_1"),
            Layer::Concat(vec![
                conv(p, "tower_1_mixed_conv"),
                conv(p, "tower_1_mixed_conv_1"),
            ]),
        ]),
        Layer::Chain(vec![pool, conv(p, "tower_2_conv")]),
    ])
}

/// The whole network, with the archive's module paths.
fn inception_v3() -> Layer {
    let l = "net.layers";
    let m = |name: &str| format!("{l}.{name}");
    Layer::Chain(vec![
        convs(l, &["conv", "conv_1", "conv_2"]),
        MAX_3X3_S2,
        convs(l, &["conv_3", "conv_4"]),
        MAX_3X3_S2,
        inception_a(&m("mixed")),
        inception_a(&m("mixed_1")),
        inception_a(&m("mixed_2")),
        inception_b(&m("mixed_3")),
        inception_c(&m("mixed_4")),
        inception_c(&m("mixed_5")),
        inception_c(&m("mixed_6")),
        inception_c(&m("mixed_7")),
        inception_d(&m("mixed_8")),
        inception_e(&m("mixed_9"), AVG_3X3_SAME),
        inception_e(
            &m("mixed_10"),
            Layer::MaxPool {
                kernel: 3,
                stride: 1,
                pad: 1,
            },
        ),
        Layer::AvgPool {
            kernel: 8,
            stride: 8,
            pad: 0,
            include_pad: true,
        },
    ])
}

/// Emits the graph's nodes and initializers, consuming the archive's weights.
struct Builder<'a> {
    archive: &'a Archive,
    path: &'a Path,
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    used: BTreeSet<String>,
    count: usize,
}

impl Builder<'_> {
    fn fresh(&mut self, what: &str) -> String {
        self.count += 1;
        format!("{what}_{}", self.count)
    }

    fn bad(&self, message: String) -> MetricsError {
        MetricsError::data(
            self.path,
            format!("not the FID Inception-v3 archive: {message}"),
        )
    }

    fn tensor(&mut self, name: &str) -> Result<&super::torchscript::Tensor> {
        self.used.insert(name.to_string());
        let archive = self.archive;
        archive
            .tensors
            .get(name)
            .ok_or_else(|| self.bad(format!("no tensor `{name}`")))
    }

    /// `[pad_h, pad_w]` (the archive stores an int or a pair) and the stride.
    fn geometry(&mut self, path: &str) -> Result<(i64, [i64; 2])> {
        let int = |b: &Self, key: &str| -> Result<Vec<i64>> {
            b.archive
                .ints
                .get(&format!("{path}.{key}"))
                .cloned()
                .ok_or_else(|| b.bad(format!("no attribute `{path}.{key}`")))
        };
        let stride = match int(self, "stride")?.as_slice() {
            [s] if *s > 0 => *s,
            other => return Err(self.bad(format!("`{path}.stride` is {other:?}"))),
        };
        let pad = match int(self, "padding")?.as_slice() {
            [p] if *p >= 0 => [*p, *p],
            [h, w] if *h >= 0 && *w >= 0 => [*h, *w],
            other => return Err(self.bad(format!("`{path}.padding` is {other:?}"))),
        };
        Ok((stride, pad))
    }

    fn conv(&mut self, path: &str, input: &str, channels: usize) -> Result<(String, usize)> {
        let (stride, [ph, pw]) = self.geometry(path)?;
        let weight = self.tensor(&format!("{path}.weight"))?.clone();
        let &[out_c, in_c, kh, kw] = weight.shape.as_slice() else {
            return Err(self.bad(format!("`{path}.weight` has shape {:?}", weight.shape)));
        };
        if in_c != channels {
            return Err(self.bad(format!(
                "`{path}.weight` takes {in_c} channels where the network has {channels}"
            )));
        }
        let mut per_channel = |key: &str| -> Result<Vec<f32>> {
            let t = self.tensor(&format!("{path}.{key}"))?.clone();
            if t.shape != [out_c] {
                return Err(self.bad(format!("`{path}.{key}` has shape {:?}", t.shape)));
            }
            Ok(t.values)
        };
        let (beta, mean, var) = (
            per_channel("beta")?,
            per_channel("mean")?,
            per_channel("var")?,
        );
        let per_out = in_c * kh * kw;
        let mut w = Vec::with_capacity(weight.values.len());
        let mut b = Vec::with_capacity(out_c);
        for o in 0..out_c {
            let scale = 1.0 / (f64::from(var[o]) + BN_EPS).sqrt();
            w.extend(
                weight.values[o * per_out..(o + 1) * per_out]
                    .iter()
                    .map(|&v| (f64::from(v) * scale) as f32),
            );
            b.push((f64::from(beta[o]) - f64::from(mean[o]) * scale) as f32);
        }
        let (w_name, b_name) = (format!("{path}.w"), format!("{path}.b"));
        self.initializers
            .push(f32_tensor(&w_name, &[out_c, in_c, kh, kw], &w));
        self.initializers.push(f32_tensor(&b_name, &[out_c], &b));
        let conv_out = format!("{path}.conv");
        self.nodes.push(node(
            "Conv",
            &conv_out,
            &[input, &w_name, &b_name],
            &[&conv_out],
            vec![
                Attr::Ints("kernel_shape", vec![kh as i64, kw as i64]),
                Attr::Ints("strides", vec![stride, stride]),
                Attr::Ints("pads", vec![ph, pw, ph, pw]),
            ],
        ));
        let out = format!("{path}.relu");
        self.nodes
            .push(node("Relu", &out, &[&conv_out], &[&out], Vec::new()));
        Ok((out, out_c))
    }

    /// A square pooling node of `op` (`MaxPool`, `AveragePool`) with one more attribute if
    /// given; returns its output's name.
    fn pool(
        &mut self,
        op: &str,
        input: &str,
        kernel: i64,
        stride: i64,
        pad: i64,
        extra: Option<Attr>,
    ) -> String {
        let out = self.fresh(&op.to_lowercase());
        let mut attrs = vec![
            Attr::Ints("kernel_shape", vec![kernel, kernel]),
            Attr::Ints("strides", vec![stride, stride]),
            Attr::Ints("pads", vec![pad; 4]),
        ];
        attrs.extend(extra);
        self.nodes.push(node(op, &out, &[input], &[&out], attrs));
        out
    }

    fn layer(&mut self, layer: &Layer, input: &str, channels: usize) -> Result<(String, usize)> {
        match layer {
            Layer::Conv(path) => self.conv(path, input, channels),
            Layer::MaxPool {
                kernel,
                stride,
                pad,
            } => Ok((
                self.pool("MaxPool", input, *kernel, *stride, *pad, None),
                channels,
            )),
            Layer::AvgPool {
                kernel,
                stride,
                pad,
                include_pad,
            } => {
                let include = Attr::Int("count_include_pad", i64::from(*include_pad));
                let out = self.pool("AveragePool", input, *kernel, *stride, *pad, Some(include));
                Ok((out, channels))
            }
            Layer::Chain(layers) => {
                let mut current = (input.to_string(), channels);
                for l in layers {
                    current = self.layer(l, &current.0, current.1)?;
                }
                Ok(current)
            }
            Layer::Concat(branches) => {
                let mut outs = Vec::new();
                let mut total = 0;
                for b in branches {
                    let (out, c) = self.layer(b, input, channels)?;
                    outs.push(out);
                    total += c;
                }
                let out = self.fresh("concat");
                let inputs: Vec<&str> = outs.iter().map(String::as_str).collect();
                self.nodes.push(node(
                    "Concat",
                    &out,
                    &inputs,
                    &[&out],
                    vec![Attr::Int("axis", 1)],
                ));
                Ok((out, total))
            }
        }
    }
}

/// The ONNX model of the network whose weights `archive` (read from `path`) holds: input
/// `[N, 3, 299, 299]` in [-1, 1], output `[N, 2048]`.
pub fn build(archive: &Archive, path: &Path) -> Result<ModelProto> {
    let mut b = Builder {
        archive,
        path,
        nodes: Vec::new(),
        initializers: Vec::new(),
        used: BTreeSet::new(),
        count: 0,
    };
    let (pooled, channels) = b.layer(&inception_v3(), INPUT, 3)?;
    if channels != FEATURE_DIM {
        return Err(b.bad(format!("{channels} pool features, expected {FEATURE_DIM}")));
    }
    let unused: Vec<&String> = archive
        .tensors
        .keys()
        .filter(|k| !b.used.contains(*k))
        .collect();
    if let Some(first) = unused.first() {
        return Err(b.bad(format!(
            "{} tensor(s) the network does not use, the first `{first}`",
            unused.len()
        )));
    }
    b.initializers
        .push(i64_tensor("feature_shape", &[2], &[-1, FEATURE_DIM as i64]));
    b.nodes.push(node(
        "Reshape",
        "features",
        &[&pooled, "feature_shape"],
        &[OUTPUT],
        Vec::new(),
    ));
    let graph = GraphProto {
        name: "fid_inception_v3".into(),
        node: b.nodes,
        initializer: b.initializers,
        input: vec![value_info(
            INPUT,
            DataType::Float,
            &[
                Dim::Named("N"),
                Dim::Fixed(3),
                Dim::Fixed(INPUT_SIZE),
                Dim::Fixed(INPUT_SIZE),
            ],
        )],
        output: vec![value_info(
            OUTPUT,
            DataType::Float,
            &[Dim::Named("N"), Dim::Fixed(FEATURE_DIM)],
        )],
        ..Default::default()
    };
    Ok(ModelProto {
        ir_version: gantry_exporter::ir_version(OPSET),
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: OPSET,
        }],
        producer_name: "gantry-metrics".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        doc_string:
            "FID Inception-v3 pool features (2015 TensorFlow weights, StyleGAN3's TorchScript)"
                .into(),
        graph: Some(graph),
        ..Default::default()
    })
}
