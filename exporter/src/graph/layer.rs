//! One convolution layer of the spec: `Conv`, `ConvTranspose` or the latent's `Gemm`, its bias,
//! BatchNorm folded or as a node, and its activation.

use gantry_models::spec::{Activation, ConvKind, ConvLayer, BN_EPS};
use gantry_models::TensorMap;

use super::builder::{values, Builder, Lowering};
use super::reduced::{has_reduced_form, reduced_conv};
use super::{activation_node, class_affine, GraphOptions};
use crate::error::{ExportError, Result};
use crate::fold::{fold_batchnorm, WeightLayout};
use crate::proto::{i64_tensor, Attr};

/// Whether `layer` maps a 1x1 input to a `k x k` map (stride 1, no padding): a matrix product,
/// exported as `Gemm` + `Reshape` (with BatchNorm folded, its bias is stored once per output
/// pixel, `k * k` values per channel, because `Gemm` adds a bias per output value).
pub fn is_projection(layer: &ConvLayer) -> bool {
    layer.kind == ConvKind::ConvTranspose
        && layer.in_size == 1
        && layer.stride == 1
        && layer.padding == 0
        && layer.out_size == layer.kernel
}

fn conv_attrs(layer: &ConvLayer) -> Vec<Attr> {
    let (k, s, p) = (
        layer.kernel as i64,
        layer.stride as i64,
        layer.padding as i64,
    );
    vec![
        Attr::Ints("kernel_shape", vec![k, k]),
        Attr::Ints("strides", vec![s, s]),
        Attr::Ints("pads", vec![p, p, p, p]),
        Attr::Ints("dilations", vec![1, 1]),
        Attr::Int("group", 1),
    ]
}

/// One layer: its convolution (as `Gemm` + `Reshape` when `as_gemm`) with its bias, BatchNorm
/// folded into it or as its own node, then the activation. Returns the block's output.
pub(crate) fn layer_block(
    b: &mut Builder,
    layer: &ConvLayer,
    tensors: &TensorMap,
    opts: &GraphOptions,
    input: &str,
    as_gemm: bool,
) -> Result<String> {
    let name = &layer.name;
    if layer.bias && layer.batch_norm {
        return Err(ExportError::Weights(format!(
            "layer `{name}` has both a bias and a BatchNorm (the spec never makes one)"
        )));
    }
    let w = values(tensors, &layer.weight_name())?;
    let out = format!("{name}.out");
    // A projection's weight [Ci, Co, k, k] read as [Ci, Co * k * k] by a Gemm.
    let weight_dims = if as_gemm {
        vec![
            layer.in_channels,
            layer.out_channels * layer.kernel * layer.kernel,
        ]
    } else {
        layer.weight_shape()
    };
    let layout = match layer.kind {
        ConvKind::ConvTranspose => WeightLayout::InOut,
        ConvKind::Conv => WeightLayout::OutIn,
    };
    // A class-conditional BatchNorm folds (or runs) its normalisation with unit gains and
    // applies the per-image gains and shifts after.
    let conditional = layer.batch_norm && layer.bn_classes.is_some();
    let c = layer.out_channels;
    let (gamma, beta) = if conditional {
        (vec![1.0; c], vec![0.0; c])
    } else if layer.batch_norm {
        (
            values(tensors, &layer.bn_name("weight"))?,
            values(tensors, &layer.bn_name("bias"))?,
        )
    } else {
        (Vec::new(), Vec::new())
    };
    // Int8 and calibration graphs write the convolution in its reduced form; a ReLU after it is
    // part of an int8 output's range unless a class-conditional affine map comes between.
    let reduced = b.reduced() && !as_gemm && has_reduced_form(layer);
    let absorb_relu = reduced
        && matches!(b.lowering, Lowering::Int8(_))
        && layer.activation == Activation::Relu
        && !conditional;
    if reduced && layer.batch_norm && !opts.fold_batchnorm {
        return Err(ExportError::Weights(format!(
            "layer `{name}`: int8 convolutions need their BatchNorm folded"
        )));
    }
    let normalised = if layer.batch_norm && opts.fold_batchnorm {
        let folded = fold_batchnorm(
            &w,
            layout,
            layer.in_channels,
            layer.out_channels,
            layer.kernel * layer.kernel,
            &gamma,
            &beta,
            &values(tensors, &layer.bn_name("running_mean"))?,
            &values(tensors, &layer.bn_name("running_var"))?,
            BN_EPS,
        );
        if reduced {
            let out = reduced_conv(
                b,
                layer,
                input,
                &folded.weight,
                Some(&folded.bias),
                absorb_relu,
            )?;
            return finish(b, layer, tensors, out, conditional, absorb_relu);
        }
        let wn = b.weight(
            &format!("{name}.weight_folded"),
            &weight_dims,
            &folded.weight,
        );
        let bias = bias_initializer(
            b,
            layer,
            as_gemm,
            &format!("{name}.bias_folded"),
            &folded.bias,
        );
        conv_node(b, layer, as_gemm, input, &wn, Some(&bias), &out)
    } else if reduced {
        let bias = match layer.bias {
            true => Some(values(tensors, &layer.bias_name())?),
            false => None,
        };
        let out = reduced_conv(b, layer, input, &w, bias.as_deref(), absorb_relu)?;
        return finish(b, layer, tensors, out, conditional, absorb_relu);
    } else {
        let wn = b.weight(&layer.weight_name(), &weight_dims, &w);
        let bias = match layer.bias {
            true => {
                let v = values(tensors, &layer.bias_name())?;
                Some(bias_initializer(b, layer, as_gemm, &layer.bias_name(), &v))
            }
            false => None,
        };
        let conv_out = if layer.batch_norm {
            format!("{name}.conv")
        } else {
            out.clone()
        };
        let conv = conv_node(b, layer, as_gemm, input, &wn, bias.as_deref(), &conv_out);
        if layer.batch_norm {
            let prefix = format!("{name}.bn");
            batch_norm_node(b, &prefix, c, tensors, &conv, &out, conditional)?
        } else {
            conv
        }
    };
    finish(b, layer, tensors, normalised, conditional, false)
}

/// The end of a layer after its (normalised) convolution output: a class-conditional BatchNorm's
/// affine map, then the activation unless the int8 output range already applied it.
fn finish(
    b: &mut Builder,
    layer: &ConvLayer,
    tensors: &TensorMap,
    normalised: String,
    conditional: bool,
    activation_applied: bool,
) -> Result<String> {
    let normalised = if conditional {
        let prefix = format!("{}.bn", layer.name);
        class_affine(b, &prefix, layer.out_channels, tensors, &normalised)?
    } else {
        normalised
    };
    if activation_applied {
        return Ok(normalised);
    }
    Ok(activation_node(
        b,
        &layer.name,
        layer.activation,
        &normalised,
    ))
}

/// A per-channel bias as the convolution node takes it: one value per channel, or for a `Gemm`
/// (which adds its bias per output value) one per channel and pixel, `k * k` values each.
fn bias_initializer(
    b: &mut Builder,
    layer: &ConvLayer,
    as_gemm: bool,
    name: &str,
    per_channel: &[f32],
) -> String {
    if !as_gemm {
        return b.weight(name, &[layer.out_channels], per_channel);
    }
    let k2 = layer.kernel * layer.kernel;
    let per_pixel: Vec<f32> = per_channel
        .iter()
        .flat_map(|&v| std::iter::repeat_n(v, k2))
        .collect();
    b.weight(&format!("{name}_per_pixel"), &[per_pixel.len()], &per_pixel)
}

/// The convolution itself: `Conv`, `ConvTranspose`, or `Gemm` + `Reshape` for the projection
/// from the latent.
fn conv_node(
    b: &mut Builder,
    layer: &ConvLayer,
    as_gemm: bool,
    x: &str,
    w: &str,
    bias: Option<&str>,
    y: &str,
) -> String {
    let name = &layer.name;
    let mut ins = vec![x, w];
    ins.extend(bias);
    if !as_gemm {
        let (op, node) = match layer.kind {
            ConvKind::Conv => ("Conv", format!("{name}.conv")),
            ConvKind::ConvTranspose => ("ConvTranspose", format!("{name}.conv_transpose")),
        };
        return b.add(op, &node, &ins, y, conv_attrs(layer));
    }
    let flat = format!("{name}.projection");
    b.add("Gemm", &format!("{name}.gemm"), &ins, &flat, vec![]);
    let shape = format!("{name}.shape");
    b.initializers.push(i64_tensor(
        &shape,
        &[4],
        &[
            -1,
            layer.out_channels as i64,
            layer.out_size as i64,
            layer.out_size as i64,
        ],
    ));
    b.add(
        "Reshape",
        &format!("{name}.reshape"),
        &[&flat, &shape],
        y,
        vec![],
    )
}

/// An unfolded `BatchNormalization` node with the statistics tensors `{prefix}.running_mean`
/// and `.running_var` and the affine `{prefix}.weight` and `.bias`, or with unit gains and zero
/// shifts when `unit` (a class-conditional BatchNorm applies its own afterwards).
pub(crate) fn batch_norm_node(
    b: &mut Builder,
    prefix: &str,
    channels: usize,
    tensors: &TensorMap,
    x: &str,
    y: &str,
    unit: bool,
) -> Result<String> {
    let mut names = Vec::with_capacity(4);
    for t in ["weight", "bias", "running_mean", "running_var"] {
        let name = format!("{prefix}.{t}");
        let affine = t == "weight" || t == "bias";
        let (stored, v) = match (unit && affine, t) {
            (true, "weight") => (format!("{prefix}.unit_weight"), vec![1.0; channels]),
            (true, _) => (format!("{prefix}.unit_bias"), vec![0.0; channels]),
            _ => {
                let v = values(tensors, &name)?;
                (name, v)
            }
        };
        names.push(b.weight(&stored, &[channels], &v));
    }
    let refs: Vec<&str> = std::iter::once(x)
        .chain(names.iter().map(String::as_str))
        .collect();
    Ok(b.add(
        "BatchNormalization",
        &format!("{prefix}.batch_norm"),
        &refs,
        y,
        vec![Attr::Float("epsilon", BN_EPS as f32)],
    ))
}
