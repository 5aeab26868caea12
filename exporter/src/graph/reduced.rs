//! A convolution layer in its calibration form (fp32, transposed convolutions as sub-pixel
//! convolutions) or its int8 form (the same nodes in QDQ: uint8 input, int8 per-channel weights,
//! int32 bias, uint8 output), which ONNX Runtime fuses into `QLinearConv`.
//!
//! In the int8 form the four phases' uint8 outputs share one scale, so they are concatenated and
//! interleaved (`DepthToSpace`) as uint8: a quarter of the bytes of doing it in float, and the
//! next layer reads the uint8 tensor without quantizing again. A ReLU after the layer is the
//! saturation at the zero point of a range that starts at 0, so it is no node of its own.

use gantry_models::spec::{ConvKind, ConvLayer};

use super::builder::{Builder, Lowering, Twin};
use crate::error::{ExportError, Result};
use crate::proto::{f32_tensor, i32_tensor, i8_tensor, Attr};
use crate::quant::{
    has_subpixel_form, quantize_bias, quantize_per_channel, subpixel_phases, QParams,
};

/// One convolution to emit: its weight `[C_out, C_in, k, k]` and `pads`.
struct Piece {
    name: String,
    weight: Vec<f32>,
    kernel: usize,
    stride: usize,
    pads: [i64; 4],
}

/// Whether `layer` has a reduced (calibration and int8) form.
pub(crate) fn has_reduced_form(layer: &ConvLayer) -> bool {
    match layer.kind {
        ConvKind::Conv => true,
        ConvKind::ConvTranspose => has_subpixel_form(layer.kernel, layer.stride, layer.padding),
    }
}

/// The pieces of `layer` with weight `weight` (the layer's layout, BatchNorm folded).
fn pieces(layer: &ConvLayer, weight: &[f32]) -> Vec<Piece> {
    let name = &layer.name;
    match layer.kind {
        ConvKind::Conv => {
            let p = layer.padding as i64;
            vec![Piece {
                name: format!("{name}.conv"),
                weight: weight.to_vec(),
                kernel: layer.kernel,
                stride: layer.stride,
                pads: [p, p, p, p],
            }]
        }
        ConvKind::ConvTranspose => subpixel_phases(weight, layer.in_channels, layer.out_channels)
            .into_iter()
            .map(|ph| Piece {
                name: format!("{name}.phase{}{}", ph.row, ph.col),
                weight: ph.weight,
                kernel: 2,
                stride: 1,
                pads: ph.pads,
            })
            .collect(),
    }
}

fn attrs(piece: &Piece) -> Vec<Attr> {
    let (k, s) = (piece.kernel as i64, piece.stride as i64);
    vec![
        Attr::Ints("kernel_shape", vec![k, k]),
        Attr::Ints("strides", vec![s, s]),
        Attr::Ints("pads", piece.pads.to_vec()),
    ]
}

/// Emits `layer` (weight in its layout with BatchNorm folded, per-channel `bias`) reading float
/// tensor `input`. Returns the float tensor name of its output: `{name}.out`, or `{name}.act`
/// when `absorb_relu` and the graph is int8 (the ReLU is then part of the output's range).
pub(crate) fn reduced_conv(
    b: &mut Builder,
    layer: &ConvLayer,
    input: &str,
    weight: &[f32],
    bias: Option<&[f32]>,
    absorb_relu: bool,
) -> Result<String> {
    let name = &layer.name;
    let pieces = pieces(layer, weight);
    let interleave = pieces.len() > 1;
    let out = format!("{name}.out");
    if matches!(b.lowering, Lowering::Calibrating) {
        let bias = bias.map(|v| b.weight(&format!("{name}.bias_folded"), &[v.len()], v));
        let mut outs = Vec::new();
        for p in &pieces {
            let w = b.weight(
                &format!("{}.weight", p.name),
                &[layer.out_channels, layer.in_channels, p.kernel, p.kernel],
                &p.weight,
            );
            let mut ins = vec![input, w.as_str()];
            ins.extend(bias.as_deref());
            let y = if interleave {
                format!("{}.y", p.name)
            } else {
                out.clone()
            };
            outs.push(b.add("Conv", &p.name, &ins, &y, attrs(p)));
        }
        if interleave {
            interleave_phases(b, name, &outs, &out);
        }
        return Ok(out);
    }
    let target = if absorb_relu {
        format!("{name}.act")
    } else {
        out
    };
    let out_params = b.params_of(&target)?;
    let (x, x_params) = b.conv_input(input)?;
    let mut outs = Vec::new();
    for p in &pieces {
        let y = conv_int8(b, layer, p, &x, x_params, bias)?;
        let y_q = if interleave {
            format!("{}.y.q", p.name)
        } else {
            format!("{target}.q")
        };
        let (scale, zero) = b.params_consts(&target, out_params);
        outs.push(b.add(
            "QuantizeLinear",
            &format!("{}.quantize", p.name),
            &[&y, &scale, &zero],
            &y_q,
            vec![],
        ));
    }
    let twin = format!("{target}.q");
    if interleave {
        interleave_phases(b, name, &outs, &twin);
    }
    b.register_twin(
        &target,
        Twin {
            name: twin,
            params: out_params,
        },
    );
    Ok(target)
}

/// One int8 convolution in QDQ form: dequantized int8 weight and int32 bias into a float `Conv`
/// reading the dequantized input `x`. Returns the float output (quantized by the caller).
fn conv_int8(
    b: &mut Builder,
    layer: &ConvLayer,
    p: &Piece,
    x: &str,
    x_params: QParams,
    bias: Option<&[f32]>,
) -> Result<String> {
    let co = layer.out_channels;
    let q = quantize_per_channel(&p.weight, co);
    let dims = [co, layer.in_channels, p.kernel, p.kernel];
    let w_q = format!("{}.weight_q", p.name);
    b.initializers.push(i8_tensor(&w_q, &dims, &q.values));
    let w = dequantize_per_channel(b, &p.name, "weight", &w_q, &q.scales, false);
    let mut ins = vec![x.to_string(), w];
    if let Some(bias) = bias {
        if bias.len() != co {
            return Err(ExportError::Weights(format!(
                "layer `{}` has {} bias values for {co} channels",
                layer.name,
                bias.len()
            )));
        }
        let scales: Vec<f32> = q.scales.iter().map(|s| s * x_params.scale).collect();
        let b_q = format!("{}.bias_q", p.name);
        let values = quantize_bias(bias, x_params.scale, &q.scales);
        b.initializers.push(i32_tensor(&b_q, &[co], &values));
        ins.push(dequantize_per_channel(
            b, &p.name, "bias", &b_q, &scales, true,
        ));
    }
    let refs: Vec<&str> = ins.iter().map(String::as_str).collect();
    let y = format!("{}.y", p.name);
    Ok(b.add("Conv", &p.name, &refs, &y, attrs(p)))
}

/// `DequantizeLinear` of an int8 weight or int32 bias with one scale per output channel (axis 0)
/// and zero points 0.
fn dequantize_per_channel(
    b: &mut Builder,
    piece: &str,
    what: &str,
    quantized: &str,
    scales: &[f32],
    int32: bool,
) -> String {
    let n = scales.len();
    let scale = format!("{piece}.{what}_scale");
    let zero = format!("{piece}.{what}_zero_point");
    b.initializers.push(f32_tensor(&scale, &[n], scales));
    b.initializers.push(if int32 {
        i32_tensor(&zero, &[n], &vec![0; n])
    } else {
        i8_tensor(&zero, &[n], &vec![0; n])
    });
    b.add(
        "DequantizeLinear",
        &format!("{piece}.{what}_dequantize"),
        &[quantized, &scale, &zero],
        &format!("{piece}.{what}_dq"),
        vec![Attr::Int("axis", 0)],
    )
}

/// The four phase outputs concatenated on channels and interleaved into the 2x larger map.
fn interleave_phases(b: &mut Builder, name: &str, phases: &[String], out: &str) {
    let refs: Vec<&str> = phases.iter().map(String::as_str).collect();
    let cat = b.add(
        "Concat",
        &format!("{name}.phases"),
        &refs,
        &format!("{name}.phases"),
        vec![Attr::Int("axis", 1)],
    );
    b.add(
        "DepthToSpace",
        &format!("{name}.interleave"),
        &[&cat],
        out,
        vec![Attr::Int("blocksize", 2), Attr::Str("mode", "DCR")],
    );
}
