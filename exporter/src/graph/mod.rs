//! The generator's ONNX graph, built by walking the same stage spec as the candle network.

use candle_onnx::onnx::{tensor_proto::DataType, GraphProto, ValueInfoProto};
use gantry_models::spec::{Activation, Conditioning, NormLayer, Resample, ResidualBlock, Stage};
use gantry_models::{generator_spec, ModelConfig, NetworkSpec, TensorMap};

use crate::error::{ExportError, Result};
use crate::proto::{f32_tensor, i64_tensor, value_info, Attr, Dim};

mod builder;
mod layer;
mod reduced;

pub use builder::Lowering;
use builder::{values, Builder};
pub use layer::is_projection;
use layer::{batch_norm_node, layer_block};

/// Name of the latent input.
pub const INPUT_Z: &str = "z";
/// Name of the class-label input of conditional models.
pub const INPUT_LABEL: &str = "label";
/// Name of the image output.
pub const OUTPUT_IMAGE: &str = "image";
/// Name of the dynamic batch dimension.
pub const BATCH_DIM: &str = "N";

/// Storage and compute precision of the graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    /// float32 weights and compute.
    Fp32,
    /// float16 weights and compute, float32 input and output (Casts at the edges).
    Fp16,
    /// bfloat16 weights cast to float32 where they are read (ONNX Runtime's CPU provider has no
    /// bf16 kernel for any of the generator's compute ops): half the file, fp32 compute.
    Bf16,
    /// int8 convolutions (QDQ; uint8 activations per tensor, int8 weights per channel),
    /// calibrated on the generator's own activations; the latent projection and everything that
    /// is not a convolution in float32.
    Int8,
}

impl Precision {
    /// The name recorded in metadata (`gantry.precision`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Fp32 => "fp32",
            Self::Fp16 => "fp16",
            Self::Bf16 => "bf16",
            Self::Int8 => "int8",
        }
    }
}

/// What the graph outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    /// float32 `[N, C, H, W]` in [-1, 1].
    Float,
    /// uint8 `[N, H, W, C]`, `round((x + 1) * 127.5)` clipped to 0..=255: ready to write as PNG.
    Uint8,
}

impl OutputFormat {
    /// The name recorded in metadata (`gantry.output`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Float => "float",
            Self::Uint8 => "uint8",
        }
    }
}

/// Options that shape the graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GraphOptions {
    pub precision: Precision,
    pub fold_batchnorm: bool,
    pub output: OutputFormat,
}

/// The generator graph of `cfg` with weights `tensors` (checkpoint names), built stage by
/// stage: inputs and conditioning, the latent's way into the first layer, the nodes of each
/// stage of the spec, and the output conversion.
///
/// `lowering` says how convolutions are written: [`Lowering::Int8`] needs `opts.precision` int8
/// and [`Lowering::Calibrating`] fp32 (the graph an int8 export is calibrated on).
pub fn generator_graph(
    cfg: &ModelConfig,
    tensors: &TensorMap,
    opts: &GraphOptions,
    lowering: Lowering,
) -> Result<GraphProto> {
    let consistent = match &lowering {
        Lowering::Plain => opts.precision != Precision::Int8,
        Lowering::Calibrating => opts.precision == Precision::Fp32,
        Lowering::Int8(_) => opts.precision == Precision::Int8,
    };
    if !consistent {
        return Err(ExportError::Weights(format!(
            "a {} graph cannot be lowered as {}",
            opts.precision.name(),
            lowering.name()
        )));
    }
    let spec = generator_spec(cfg);
    let mut b = Builder::new(opts.precision, lowering);
    let (inputs, latent) = inputs_and_conditioning(&mut b, cfg, &spec, tensors)?;
    let projects = matches!(spec.stages.first(), Some(Stage::Conv(l)) if is_projection(l));
    let mut cur = if projects {
        latent
    } else {
        latent_as_image(&mut b, cfg, &latent)
    };
    for (i, stage) in spec.stages.iter().enumerate() {
        cur = match stage {
            Stage::Conv(layer) => {
                layer_block(&mut b, layer, tensors, opts, &cur, i == 0 && projects)?
            }
            Stage::Residual(block) => residual_block(&mut b, block, tensors, opts, &cur)?,
            Stage::Norm(norm) => norm_block(&mut b, norm, tensors, &cur)?,
            Stage::SumPool(_) => {
                return Err(ExportError::Weights(
                    "a generator stage pools to one pixel: not a generator".into(),
                ))
            }
        };
    }
    let output = output_conversion(&mut b, cfg, opts, &cur);
    Ok(GraphProto {
        node: b.nodes,
        name: "gantry_generator".into(),
        initializer: b.initializers,
        input: inputs,
        output: vec![output],
        doc_string: format!("{} generator exported by Gantry", cfg.arch.name()),
        ..Default::default()
    })
}

/// A residual block: the main path ([BatchNorm + ReLU or ReLU,] [Resize x2,] two convolution
/// blocks, [AveragePool]) plus the shortcut (its 1x1 convolution at the lower resolution,
/// resampled like the main path), joined by `Add`.
fn residual_block(
    b: &mut Builder,
    block: &ResidualBlock,
    tensors: &TensorMap,
    opts: &GraphOptions,
    input: &str,
) -> Result<String> {
    let name = &block.name;
    let mut h = match &block.pre_norm {
        Some(norm) => norm_block(b, norm, tensors, input)?,
        None if block.pre_relu => b.add(
            "Relu",
            &format!("{name}.pre_relu"),
            &[input],
            &format!("{name}.pre_act"),
            vec![],
        ),
        None => input.to_string(),
    };
    if block.resample == Resample::Up {
        h = upsample_node(b, &format!("{name}.up"), &h);
    }
    h = layer_block(b, &block.conv1, tensors, opts, &h, false)?;
    h = layer_block(b, &block.conv2, tensors, opts, &h, false)?;
    if block.resample == Resample::Down {
        h = pool_node(b, &format!("{name}.pool"), &h);
    }
    let mut s = match block.resample {
        Resample::Down => pool_node(b, &format!("{name}.shortcut_pool"), input),
        Resample::Up | Resample::None => input.to_string(),
    };
    if let Some(conv) = &block.shortcut {
        s = layer_block(b, conv, tensors, opts, &s, false)?;
    }
    if block.resample == Resample::Up {
        s = upsample_node(b, &format!("{name}.shortcut_up"), &s);
    }
    Ok(b.add(
        "Add",
        &format!("{name}.add"),
        &[&h, &s],
        &format!("{name}.out"),
        vec![],
    ))
}

/// Nearest-neighbour x2 upsampling (`Resize`, asymmetric coordinates, floor: output pixel
/// `(y, x)` reads input `(y / 2, x / 2)`).
fn upsample_node(b: &mut Builder, name: &str, x: &str) -> String {
    let scales = format!("{name}.scales");
    b.initializers
        .push(f32_tensor(&scales, &[4], &[1.0, 1.0, 2.0, 2.0]));
    b.add(
        "Resize",
        name,
        &[x, "", &scales],
        &format!("{name}.out"),
        vec![
            Attr::Str("mode", "nearest"),
            Attr::Str("coordinate_transformation_mode", "asymmetric"),
            Attr::Str("nearest_mode", "floor"),
        ],
    )
}

/// 2x2 average pooling.
fn pool_node(b: &mut Builder, name: &str, x: &str) -> String {
    b.add(
        "AveragePool",
        name,
        &[x],
        &format!("{name}.out"),
        vec![
            Attr::Ints("kernel_shape", vec![2, 2]),
            Attr::Ints("strides", vec![2, 2]),
        ],
    )
}

/// A lone BatchNorm (`BatchNormalization` with its four tensors; a class-conditional one with
/// unit gains, then its per-image affine map) and its activation.
fn norm_block(b: &mut Builder, norm: &NormLayer, tensors: &TensorMap, x: &str) -> Result<String> {
    let out = format!("{}.out", norm.name);
    let y = match norm.classes {
        None => batch_norm_node(b, &norm.name, norm.channels, tensors, x, &out, false)?,
        Some(_) => {
            let normed = format!("{}.normalized", norm.name);
            let y = batch_norm_node(b, &norm.name, norm.channels, tensors, x, &normed, true)?;
            class_affine(b, &norm.name, norm.channels, tensors, &y)?
        }
    };
    Ok(activation_node(b, &norm.name, norm.activation, &y))
}

/// A class-conditional BatchNorm's affine map: `x * gain[label] + shift[label]`, the gains and
/// shifts (`{prefix}.weight`, `{prefix}.bias`, `[classes, C]`) gathered per image and reshaped
/// to `[N, C, 1, 1]`.
pub(crate) fn class_affine(
    b: &mut Builder,
    prefix: &str,
    channels: usize,
    tensors: &TensorMap,
    x: &str,
) -> Result<String> {
    let shape = format!("{prefix}.affine_shape");
    b.initializers
        .push(i64_tensor(&shape, &[4], &[-1, channels as i64, 1, 1]));
    let mut cur = x.to_string();
    for (tensor, op) in [("weight", "Mul"), ("bias", "Add")] {
        let name = format!("{prefix}.{tensor}");
        let table = values(tensors, &name)?;
        let classes = table.len() / channels.max(1);
        let table = b.weight(&name, &[classes, channels], &table);
        let picked = b.add(
            "Gather",
            &format!("{name}.gather"),
            &[&table, INPUT_LABEL],
            &format!("{name}.per_image"),
            vec![Attr::Int("axis", 0)],
        );
        let picked = b.add(
            "Reshape",
            &format!("{name}.reshape"),
            &[&picked, &shape],
            &format!("{name}.per_image_4d"),
            vec![],
        );
        cur = b.add(
            op,
            &format!("{name}.apply"),
            &[&cur, &picked],
            &format!("{name}.applied"),
            vec![],
        );
    }
    Ok(cur)
}

/// The graph inputs (`z`, and `label` for conditional models) and the latent the first layer
/// reads: `z` (cast to fp16 in fp16 graphs), with the label's embedding concatenated.
fn inputs_and_conditioning(
    b: &mut Builder,
    cfg: &ModelConfig,
    spec: &NetworkSpec,
    tensors: &TensorMap,
) -> Result<(Vec<ValueInfoProto>, String)> {
    let mut inputs = vec![value_info(
        INPUT_Z,
        DataType::Float,
        &[Dim::Named(BATCH_DIM), Dim::Fixed(cfg.latent_dim)],
    )];
    let mut cur = INPUT_Z.to_string();
    if b.precision == Precision::Fp16 {
        cur = b.add(
            "Cast",
            "z.cast_fp16",
            &[&cur],
            "z_fp16",
            vec![Attr::Int("to", DataType::Float16 as i64)],
        );
    }
    if let Some(cond) = &spec.conditioning {
        inputs.push(value_info(
            INPUT_LABEL,
            DataType::Int64,
            &[Dim::Named(BATCH_DIM)],
        ));
        if let Conditioning::ClassNorm { .. } = cond {
            // The labels pick the class-conditional BatchNorms' gains (`class_affine`).
            return Ok((inputs, cur));
        }
        let (Some(name), Some(shape)) = (cond.tensor_name(), cond.shape()) else {
            return Err(ExportError::Weights(
                "the generator's conditioning has no embedding table".into(),
            ));
        };
        let table = b.weight(name, &shape, &values(tensors, name)?);
        let emb = b.add(
            "Gather",
            "label_embedding",
            &[&table, INPUT_LABEL],
            "label_embedded",
            vec![Attr::Int("axis", 0)],
        );
        cur = b.add(
            "Concat",
            "latent_concat",
            &[&cur, &emb],
            "latent",
            vec![Attr::Int("axis", 1)],
        );
    }
    Ok((inputs, cur))
}

/// The latent as a 1x1 image, for generators whose first layer is not a projection (which
/// takes the flat latent as a `Gemm`: ONNX Runtime's ConvTranspose from a 1x1 input ran at a
/// tenth of its GEMM speed).
fn latent_as_image(b: &mut Builder, cfg: &ModelConfig, latent: &str) -> String {
    b.initializers.push(i64_tensor(
        "latent_shape",
        &[4],
        &[-1, cfg.generator_input_dim() as i64, 1, 1],
    ));
    b.add(
        "Reshape",
        "latent_reshape",
        &[latent, "latent_shape"],
        "latent_4d",
        vec![],
    )
}

/// The activation node of the layer or norm `name` (none for the identity).
pub(crate) fn activation_node(
    b: &mut Builder,
    name: &str,
    activation: Activation,
    x: &str,
) -> String {
    let y = format!("{name}.act");
    match activation {
        Activation::Identity => x.to_string(),
        Activation::Relu => b.add("Relu", &format!("{name}.relu"), &[x], &y, vec![]),
        Activation::Tanh => b.add("Tanh", &format!("{name}.tanh"), &[x], &y, vec![]),
        Activation::LeakyRelu(alpha) => b.add(
            "LeakyRelu",
            &format!("{name}.leaky_relu"),
            &[x],
            &y,
            vec![Attr::Float("alpha", alpha as f32)],
        ),
    }
}

/// From the last layer's output to the graph output `image`: back to float32 in fp16 graphs,
/// then either renamed (float NCHW) or converted to uint8 NHWC pixels in the graph.
fn output_conversion(
    b: &mut Builder,
    cfg: &ModelConfig,
    opts: &GraphOptions,
    last: &str,
) -> ValueInfoProto {
    let mut cur = last.to_string();
    if opts.precision == Precision::Fp16 {
        let target = if opts.output == OutputFormat::Float {
            OUTPUT_IMAGE
        } else {
            "image_fp32"
        };
        cur = b.add(
            "Cast",
            "image.cast_fp32",
            &[&cur],
            target,
            vec![Attr::Int("to", DataType::Float as i64)],
        );
    }
    let (c, s) = (cfg.channels, cfg.image_size);
    match opts.output {
        OutputFormat::Float => {
            if cur != OUTPUT_IMAGE {
                // Rename the last node's output to the graph output name.
                if let Some(last) = b.nodes.last_mut() {
                    last.output[0] = OUTPUT_IMAGE.to_string();
                }
            }
            value_info(
                OUTPUT_IMAGE,
                DataType::Float,
                &[
                    Dim::Named(BATCH_DIM),
                    Dim::Fixed(c),
                    Dim::Fixed(s),
                    Dim::Fixed(s),
                ],
            )
        }
        OutputFormat::Uint8 => {
            let one = b.f32_const("u8.one", 1.0);
            let scale = b.f32_const("u8.scale", 127.5);
            let lo = b.f32_const("u8.min", 0.0);
            let hi = b.f32_const("u8.max", 255.0);
            cur = b.add("Add", "u8.shift", &[&cur, &one], "u8.shifted", vec![]);
            cur = b.add("Mul", "u8.scale", &[&cur, &scale], "u8.scaled", vec![]);
            cur = b.add("Round", "u8.round", &[&cur], "u8.rounded", vec![]);
            cur = b.add("Clip", "u8.clip", &[&cur, &lo, &hi], "u8.clipped", vec![]);
            cur = b.add(
                "Cast",
                "u8.cast",
                &[&cur],
                "u8.bytes",
                vec![Attr::Int("to", DataType::Uint8 as i64)],
            );
            b.add(
                "Transpose",
                "u8.to_nhwc",
                &[&cur],
                OUTPUT_IMAGE,
                vec![Attr::Ints("perm", vec![0, 2, 3, 1])],
            );
            value_info(
                OUTPUT_IMAGE,
                DataType::Uint8,
                &[
                    Dim::Named(BATCH_DIM),
                    Dim::Fixed(s),
                    Dim::Fixed(s),
                    Dim::Fixed(c),
                ],
            )
        }
    }
}
