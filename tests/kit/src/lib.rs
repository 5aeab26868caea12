//! Fixtures shared by Gantry's tests: running a binary (each package's tests find theirs
//! through `env!("CARGO_BIN_EXE_<name>")`, so that `cargo test` builds what it runs), data and
//! checkpoint fixtures, and the ONNX checker. Depends on `gantry-models` only, so every
//! package can use it in its tests.

#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use candle_core::{Device, Tensor};
use candle_onnx::onnx::{
    tensor_proto::DataType, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
};
use gantry_exporter::proto::{f32_tensor, node, value_info, Attr, Dim};
use gantry_exporter::{
    export, ExportOptions, GraphOptions, OutputFormat, Precision, WeightsChoice,
};
use gantry_models::checkpoint::CheckpointMeta;
use gantry_models::init::{init_tensors, normal_vec, rng_for};
use gantry_models::{generator_spec, Checkpoint, ModelConfig, TensorMap, TrainerState};
use prost::Message;

/// The workspace root (this crate is `tests/kit`).
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("tests/kit sits two folders below the workspace root")
        .to_path_buf()
}

/// Flags of a tiny model (16x16, widths 8, latent 16, batch 8) that trains in a fraction of a second.
pub const TINY_MODEL_FLAGS: [&str; 10] = [
    "--image-size",
    "16",
    "--g-width",
    "8",
    "--d-width",
    "8",
    "--latent-dim",
    "16",
    "--batch-size",
    "8",
];

/// `trainer train` arguments for a tiny model on the MNIST fixture in `data`, writing to `out`,
/// followed by `extra`.
pub fn tiny_train_args<'a>(data: &'a str, out: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec![
        "train",
        "--dataset",
        "mnist",
        "--data-dir",
        data,
        "--out",
        out,
    ];
    a.extend_from_slice(&TINY_MODEL_FLAGS);
    a.extend_from_slice(extra);
    a
}

/// Runs the binary at `exe` (a test's `env!("CARGO_BIN_EXE_<name>")`) with `args`.
pub fn run(exe: &str, args: &[&str]) -> Output {
    Command::new(exe)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {exe}: {e}"))
}

/// The IDX encoding (big-endian dimensions, unsigned bytes) of `data` with shape `dims`,
/// written here independently of the trainer's reader.
pub fn encode_idx(dims: &[usize], data: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, 0x08, dims.len() as u8];
    for &d in dims {
        out.extend_from_slice(&(d as u32).to_be_bytes());
    }
    out.extend_from_slice(data);
    out
}

/// stderr as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// stdout as text.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Asserts a clean failure: non-zero exit, no panic, and a last stderr line `error: ...`
/// containing every needle.
pub fn assert_fails_with(o: &Output, needles: &[&str]) {
    let err = stderr(o);
    assert!(
        !o.status.success(),
        "expected failure, got success; stderr:\n{err}"
    );
    assert!(!err.contains("panicked"), "panicked:\n{err}");
    assert_ne!(
        o.status.code(),
        Some(101),
        "exit code 101 means a panic:\n{err}"
    );
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: "),
        "last stderr line is not an error line: {last:?}\n{err}"
    );
    for n in needles {
        assert!(
            last.contains(n),
            "error line {last:?} does not mention {n:?}"
        );
    }
}

/// Writes a small MNIST-style data set (`count` 28x28 images of simple strokes, labels 0..9) as
/// raw IDX files into `dir`.
pub fn write_mnist_fixture(dir: &Path, count: usize) {
    std::fs::create_dir_all(dir).unwrap();
    let mut pixels = vec![0u8; count * 28 * 28];
    for i in 0..count {
        let img = &mut pixels[i * 784..(i + 1) * 784];
        let col = 6 + (i * 5) % 16;
        for y in 4..24 {
            img[y * 28 + col] = 255;
            img[y * 28 + col + 1] = 200;
        }
    }
    let labels: Vec<u8> = (0..count).map(|i| (i % 10) as u8).collect();
    for prefix in ["train", "t10k"] {
        std::fs::write(
            dir.join(format!("{prefix}-images-idx3-ubyte")),
            encode_idx(&[count, 28, 28], &pixels),
        )
        .unwrap();
        std::fs::write(
            dir.join(format!("{prefix}-labels-idx1-ubyte")),
            encode_idx(&[count], &labels),
        )
        .unwrap();
    }
}

/// A 28x28 image of class `class` (0..10), drawn so that a classifier can learn the class: a
/// vertical stroke in one of five columns (`class % 5`) and the top or bottom half (`class / 5`);
/// `variant` moves its ends and brightness, so different variants are different images.
pub fn learnable_digit(class: usize, variant: usize) -> Vec<u8> {
    let mut img = vec![0u8; 28 * 28];
    let col = 3 + 5 * (class % 5);
    let (top, bottom) = if class < 5 { (2, 13) } else { (15, 26) };
    let (top, bottom) = (top + variant % 3, bottom - (variant / 3) % 3);
    let shade = 180 + (variant * 37 % 76) as u8;
    for y in top..bottom {
        for x in col..col + 3 {
            img[y * 28 + x] = shade;
        }
    }
    img
}

/// Writes an MNIST-style data set a classifier can learn, with a test split of other images
/// than the train split: `train` and `test` images of [`learnable_digit`], labels cycling 0..9.
pub fn write_learnable_mnist(dir: &Path, train: usize, test: usize) {
    std::fs::create_dir_all(dir).unwrap();
    for (prefix, count, first_variant) in [("train", train, 0), ("t10k", test, 1000)] {
        let pixels: Vec<u8> = (0..count)
            .flat_map(|i| learnable_digit(i % 10, first_variant + i / 10))
            .collect();
        let labels: Vec<u8> = (0..count).map(|i| (i % 10) as u8).collect();
        std::fs::write(
            dir.join(format!("{prefix}-images-idx3-ubyte")),
            encode_idx(&[count, 28, 28], &pixels),
        )
        .unwrap();
        std::fs::write(
            dir.join(format!("{prefix}-labels-idx1-ubyte")),
            encode_idx(&[count], &labels),
        )
        .unwrap();
    }
}

/// Pairs the items of `a` and `b` like `zip`, but panics if one runs out before the other: a
/// plain `zip` would compare only the shorter one's length and pass.
pub fn zip_eq<A: IntoIterator, B: IntoIterator>(
    a: A,
    b: B,
) -> impl Iterator<Item = (A::Item, B::Item)> {
    let (mut a, mut b) = (a.into_iter(), b.into_iter());
    std::iter::from_fn(move || match (a.next(), b.next()) {
        (Some(x), Some(y)) => Some((x, y)),
        (None, None) => None,
        _ => panic!("zip_eq: the two sequences have different lengths"),
    })
}

/// A small model configuration for fast tests.
pub fn tiny_config(image_size: usize, channels: usize, num_classes: Option<usize>) -> ModelConfig {
    ModelConfig {
        arch: gantry_models::Arch::Dcgan,
        latent_dim: 16,
        image_size,
        channels,
        g_width: 8,
        d_width: 8,
        num_classes,
        label_embed_dim: 4,
        spectral_norm: false,
        g_spectral_norm: false,
    }
}

/// A small ResNet configuration for fast tests (8-channel blocks).
pub fn tiny_resnet_config(
    image_size: usize,
    channels: usize,
    num_classes: Option<usize>,
) -> ModelConfig {
    ModelConfig {
        arch: gantry_models::Arch::Resnet,
        g_width: 2,
        d_width: 4,
        ..tiny_config(image_size, channels, num_classes)
    }
}

/// Generator tensors from `seed` with non-trivial BatchNorm statistics and affine parameters,
/// as a trained model has (so BatchNorm folding is really exercised).
pub fn trained_like_generator(cfg: &ModelConfig, seed: u64) -> TensorMap {
    let spec = generator_spec(cfg);
    let mut t = init_tensors(&spec, "generator", seed).unwrap();
    for (name, v) in t.iter_mut() {
        let n = v.elem_count();
        let mut rng = rng_for(seed, &format!("stats/{name}"));
        let values = if name.ends_with("running_var") {
            normal_vec(&mut rng, n, 0.0, 1.0)
                .iter()
                .map(|x| 0.2 + x.abs())
                .collect()
        } else if name.ends_with("running_mean") || (name.ends_with(".bias") && name.contains("bn"))
        {
            normal_vec(&mut rng, n, 0.0, 0.3)
        } else {
            continue;
        };
        *v = Tensor::from_vec(values, v.dims(), &Device::Cpu).unwrap();
    }
    t
}

/// Writes a generator-only checkpoint of `cfg` (as `trainer` would for inference) into `dir`.
pub fn write_generator_checkpoint(dir: &Path, cfg: &ModelConfig, generator: TensorMap, step: u64) {
    Checkpoint {
        meta: CheckpointMeta::new(cfg.clone(), Some("fixture".into()), serde_json::json!({})),
        generator,
        generator_ema: None,
        discriminator: None,
        optimizer_g: None,
        optimizer_d: None,
        trainer_state: Some(TrainerState {
            step,
            epoch: 0,
            batch_in_epoch: 0,
            seed: 0,
            elapsed_seconds: 0.0,
        }),
    }
    .save(dir)
    .unwrap();
}

/// The Python interpreter with the `onnx` package (installed by `scripts/setup-tools.sh`).
pub fn onnx_python() -> PathBuf {
    let p = workspace().join(".tools/venv/bin/python");
    assert!(
        p.is_file(),
        "{} is missing: run `make test` (scripts/setup-tools.sh installs the onnx checker)",
        p.display()
    );
    p
}

/// Runs `onnx.checker.check_model(model, full_check=True)` on each file; panics with the
/// checker's message on failure.
pub fn onnx_check(files: &[&Path]) {
    let script = "import sys, onnx\nfor f in sys.argv[1:]:\n    onnx.checker.check_model(onnx.load(f), full_check=True)\n    print('ok', f)\n";
    let out = Command::new(onnx_python())
        .arg("-c")
        .arg(script)
        .args(files)
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "onnx checker failed:\n{}{}",
        stdout(&out),
        stderr(&out)
    );
}

/// Exports a small generator (32x32 grey, latent 16, optionally conditional) with the given
/// output format into `dir` and returns the ONNX path.
pub fn export_tiny_model(dir: &Path, num_classes: Option<usize>, output: OutputFormat) -> PathBuf {
    let out = dir.join(format!("g-{num_classes:?}-{output:?}.onnx"));
    let tag = format!("{num_classes:?}-{output:?}");
    export_tiny(dir, &tag, num_classes, output, 1, Some(out.clone()), None);
    out
}

/// [`export_tiny_model`] in another precision (`int8` calibrated on 2 batches).
pub fn export_tiny_model_in(
    dir: &Path,
    num_classes: Option<usize>,
    output: OutputFormat,
    precision: Precision,
) -> PathBuf {
    let tag = format!("{num_classes:?}-{output:?}-{}", precision.name());
    let out = dir.join(format!("g-{tag}.onnx"));
    let cfg = tiny_config(32, 1, num_classes);
    let ckpt = dir.join(format!("ckpt-{tag}"));
    write_generator_checkpoint(&ckpt, &cfg, trained_like_generator(&cfg, 1), 5);
    export(&tiny_export_options(
        ckpt,
        Some(out.clone()),
        output,
        precision,
        None,
    ))
    .unwrap();
    out
}

/// Options of the tiny exports: opset 17, BatchNorm folded, int8 calibrated on 2 batches.
fn tiny_export_options(
    checkpoint: PathBuf,
    out: Option<PathBuf>,
    output: OutputFormat,
    precision: Precision,
    triton: Option<gantry_exporter::TritonOptions>,
) -> ExportOptions {
    ExportOptions {
        checkpoint,
        which: Default::default(),
        out,
        opset: 17,
        graph: GraphOptions {
            precision,
            fold_batchnorm: true,
            output,
        },
        weights: WeightsChoice::Auto,
        triton,
        calibration: gantry_exporter::CalibrationOptions {
            batches: 2,
            ..Default::default()
        },
    }
}

/// Writes a small generator checkpoint (weights from `seed`) as `dir/ckpt-<tag>` and exports
/// it to `out` and/or as an entry of a Triton model repository.
pub fn export_tiny(
    dir: &Path,
    tag: &str,
    num_classes: Option<usize>,
    output: OutputFormat,
    seed: u64,
    out: Option<PathBuf>,
    triton: Option<gantry_exporter::TritonOptions>,
) {
    let cfg = tiny_config(32, 1, num_classes);
    let ckpt = dir.join(format!("ckpt-{tag}"));
    write_generator_checkpoint(&ckpt, &cfg, trained_like_generator(&cfg, seed), 5);
    export(&tiny_export_options(
        ckpt,
        out,
        output,
        Precision::Fp32,
        triton,
    ))
    .unwrap();
}

/// A generator shaped like `torch.onnx.export` of the PyTorch DCGAN: latent `[N, nz, 1, 1]`
/// named `input`, unfolded BatchNormalization, output named `output`, no Gantry metadata.
pub fn pytorch_style_model(path: &Path) {
    let mut init = Vec::new();
    let mut w = |name: &str, dims: &[usize], scale: f32| {
        let n: usize = dims.iter().product();
        let values: Vec<f32> = (0..n)
            .map(|i| ((i * 7919 % 23) as f32 - 11.0) * scale)
            .collect();
        init.push(f32_tensor(name, dims, &values));
        name.to_string()
    };
    let w0 = w("main.0.weight", &[8, 4, 4, 4], 0.02);
    let (g, b) = (w("main.1.weight", &[4], 0.05), w("main.1.bias", &[4], 0.01));
    let (m, v) = (
        w("main.1.running_mean", &[4], 0.01),
        w("main.1.running_var", &[4], 0.0),
    );
    let w3 = w("main.3.weight", &[4, 3, 4, 4], 0.02);
    // running_var must be positive
    init[4] = f32_tensor("main.1.running_var", &[4], &[1.0, 0.5, 2.0, 1.5]);
    let conv = |k: i64, s: i64, p: i64| {
        vec![
            Attr::Ints("kernel_shape", vec![k, k]),
            Attr::Ints("strides", vec![s, s]),
            Attr::Ints("pads", vec![p, p, p, p]),
        ]
    };
    let nodes = vec![
        node(
            "ConvTranspose",
            "/main/main.0/ConvTranspose",
            &["input", &w0],
            &["/main/main.0/ConvTranspose_output_0"],
            conv(4, 1, 0),
        ),
        node(
            "BatchNormalization",
            "/main/main.1/BatchNormalization",
            &["/main/main.0/ConvTranspose_output_0", &g, &b, &m, &v],
            &["/main/main.1/BatchNormalization_output_0"],
            vec![Attr::Float("epsilon", 1e-5)],
        ),
        node(
            "Relu",
            "/main/main.2/Relu",
            &["/main/main.1/BatchNormalization_output_0"],
            &["/main/main.2/Relu_output_0"],
            vec![],
        ),
        node(
            "ConvTranspose",
            "/main/main.3/ConvTranspose",
            &["/main/main.2/Relu_output_0", &w3],
            &["/main/main.3/ConvTranspose_output_0"],
            conv(4, 2, 1),
        ),
        node(
            "Tanh",
            "/main/main.4/Tanh",
            &["/main/main.3/ConvTranspose_output_0"],
            &["output"],
            vec![],
        ),
    ];
    write_latent_model(path, "pytorch", "main_graph", nodes, init, 8);
}

/// Writes an opset-17 model of `nodes` and `init` with a latent `input` `[N, 8, 1, 1]` and an
/// `output` `[N, 3, side, side]`, as a generator exported by PyTorch has.
fn write_latent_model(
    path: &Path,
    producer: &str,
    graph: &str,
    nodes: Vec<NodeProto>,
    init: Vec<TensorProto>,
    side: usize,
) {
    let model = ModelProto {
        ir_version: 8,
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: 17,
        }],
        producer_name: producer.into(),
        graph: Some(GraphProto {
            node: nodes,
            name: graph.into(),
            initializer: init,
            input: vec![value_info(
                "input",
                DataType::Float,
                &[Dim::Named("n"), Dim::Fixed(8), Dim::Fixed(1), Dim::Fixed(1)],
            )],
            output: vec![value_info(
                "output",
                DataType::Float,
                &[
                    Dim::Named("n"),
                    Dim::Fixed(3),
                    Dim::Fixed(side),
                    Dim::Fixed(side),
                ],
            )],
            ..Default::default()
        }),
        ..Default::default()
    };
    std::fs::write(path, model.encode_to_vec()).unwrap();
}

/// A generator-shaped model (latent `input` `[N, 8, 1, 1]`, output `[N, 3, 4, 4]`) whose every
/// output value is NaN: `sqrt(-|conv(z)| - 1)`, as a model with broken weights gives.
pub fn nan_model(path: &Path) {
    let w: Vec<f32> = (0..8 * 3 * 16).map(|i| (i % 5) as f32 * 0.1).collect();
    let init = vec![
        f32_tensor("w", &[8, 3, 4, 4], &w),
        f32_tensor("one", &[], &[1.0]),
    ];
    let nodes = vec![
        node(
            "ConvTranspose",
            "up",
            &["input", "w"],
            &["x"],
            vec![Attr::Ints("kernel_shape", vec![4, 4])],
        ),
        node("Abs", "abs", &["x"], &["a"], vec![]),
        node("Neg", "neg", &["a"], &["n"], vec![]),
        node("Sub", "sub", &["n", "one"], &["m"], vec![]),
        node("Sqrt", "sqrt", &["m"], &["output"], vec![]),
    ];
    write_latent_model(path, "", "nan", nodes, init, 4);
}

/// A Triton `config.pbtxt` parsed by Triton's own schema (`model_config_pb2` of the
/// `tritonclient` package, installed by `scripts/setup-tools.sh`), as JSON: a file Triton would
/// refuse fails here.
pub fn triton_config(path: &Path) -> serde_json::Value {
    let script = "import sys, json\nfrom google.protobuf import text_format, json_format\nfrom tritonclient.grpc import model_config_pb2\nconfig = text_format.Parse(open(sys.argv[1]).read(), model_config_pb2.ModelConfig())\nprint(json.dumps(json_format.MessageToDict(config)))\n";
    let out = Command::new(onnx_python())
        .arg("-c")
        .arg(script)
        .arg(path)
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "Triton's schema refuses {}:\n{}",
        path.display(),
        stderr(&out)
    );
    serde_json::from_slice(&out.stdout).expect("JSON from the parser")
}
