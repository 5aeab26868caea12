//! The runtime crate and the `runtime` binary: decoupling, threads, determinism, third-party
//! models, outputs, and clean errors on bad input.

use std::path::{Path, PathBuf};
use std::process::Command;

use candle_onnx::onnx::{tensor_proto::DataType, GraphProto, ModelProto, OperatorSetIdProto};
use gantry_exporter::proto::{f32_tensor, node, value_info, Attr, Dim};
use gantry_exporter::{
    export, ExportOptions, GraphOptions, OutputFormat, Precision, WeightsChoice,
};
use gantry_models::ModelConfig;
use gantry_runtime::{GenerateRequest, Generator, LatentStream, Provider, ProviderChoice};
use gantry_tests::{
    assert_fails_with, run, stderr, stdout, tiny_config, trained_like_generator, workspace,
    write_generator_checkpoint,
};
use prost::Message;

/// Exports a small generator (32x32 grey, optionally conditional) and returns the ONNX path.
fn model(dir: &Path, num_classes: Option<usize>, output: OutputFormat) -> PathBuf {
    let cfg = tiny_config(32, 1, num_classes);
    let ckpt = dir.join(format!("ckpt-{num_classes:?}-{output:?}"));
    write_generator_checkpoint(&ckpt, &cfg, trained_like_generator(&cfg, 1), 5);
    let out = dir.join(format!("g-{num_classes:?}-{output:?}.onnx"));
    export(&ExportOptions {
        checkpoint: ckpt,
        out: Some(out.clone()),
        opset: 17,
        graph: GraphOptions {
            precision: Precision::Fp32,
            fold_batchnorm: true,
            output,
        },
        weights: WeightsChoice::Auto,
        triton: None,
    })
    .unwrap();
    out
}

#[test]
fn runtime_crate_depends_on_neither_candle_nor_other_gantry_crates() {
    let out = Command::new(env!("CARGO"))
        .args([
            "tree",
            "--offline",
            "-p",
            "gantry-runtime",
            "-e",
            "normal",
            "--prefix",
            "none",
            "--format",
            "{p}",
        ])
        .current_dir(workspace())
        .output()
        .expect("cargo tree runs");
    assert!(out.status.success(), "{}", stderr(&out));
    let tree = stdout(&out);
    assert!(
        tree.contains("ort v2.0.0-rc.15"),
        "unexpected tree:\n{tree}"
    );
    for line in tree.lines() {
        assert!(
            !line.starts_with("candle"),
            "gantry-runtime depends on {line}"
        );
        assert!(
            !line.starts_with("gantry-") || line.starts_with("gantry-runtime"),
            "gantry-runtime depends on {line}"
        );
    }
}

#[test]
fn generator_is_shared_by_threads_with_the_same_results() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Generator>();
    let dir = tempfile::tempdir().unwrap();
    let g = Generator::builder()
        .model(model(dir.path(), None, OutputFormat::Float))
        .build()
        .unwrap();
    let single: Vec<_> = (0..8u64).map(|seed| g.generate(5, seed).unwrap()).collect();
    let threaded: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8u64)
            .map(|seed| {
                s.spawn({
                    let g = &g;
                    move || g.generate(5, seed).unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (a, b) in single.iter().zip(&threaded) {
        let a: Vec<_> = a.iter().map(|i| i.as_bytes().to_vec()).collect();
        let b: Vec<_> = b.iter().map(|i| i.as_bytes().to_vec()).collect();
        assert_eq!(a, b);
    }
    assert_ne!(
        single[0][0].as_bytes(),
        single[1][0].as_bytes(),
        "different seeds give different images"
    );
}

#[test]
fn image_i_does_not_depend_on_the_batch_size() {
    let dir = tempfile::tempdir().unwrap();
    let g = Generator::builder()
        .model(model(dir.path(), None, OutputFormat::Uint8))
        .build()
        .unwrap();
    let mut req = GenerateRequest::new(10, 3);
    req.batch_size = 10;
    let whole = g.generate_request(&req).unwrap();
    req.batch_size = 3;
    let batched = g.generate_request(&req).unwrap();
    for (a, b) in whole.iter().zip(&batched) {
        let diff = a
            .as_bytes()
            .iter()
            .zip(b.as_bytes())
            .map(|(x, y)| x.abs_diff(*y))
            .max()
            .unwrap();
        assert!(diff <= 1, "batching changed a pixel by {diff}");
    }
}

/// Batch lanes split a batch over concurrent single-threaded sessions; the images (and their
/// order, and each image's label) must be those of one whole run. Both runs use the same graph
/// and kernels, only the batch split differs, which can change the accumulation order inside
/// ONNX Runtime's GEMMs by a few ulps; outputs lie in [-1, 1], so 1e-5 (~100 ulps at 1.0) allows
/// that. (Measured: identical. Slices given the wrong labels, or put back in the wrong order,
/// differ by ~1e-3 even in this tiny model.)
#[test]
fn batch_lanes_give_the_images_of_one_whole_run() {
    let dir = tempfile::tempdir().unwrap();
    let open = |m: &Path, lanes: usize| {
        Generator::builder()
            .model(m)
            .providers(ProviderChoice::Only(Provider::Cpu))
            .batch_lanes(lanes)
            .build()
            .unwrap()
    };
    let float = model(dir.path(), Some(4), OutputFormat::Float);
    let (whole, lanes) = (open(&float, 1), open(&float, 3));
    assert_eq!((whole.batch_lanes(), lanes.batch_lanes()), (1, 3));
    // 7 images over 3 lanes: slices of 3, 2 and 2; labels 0..4 cycling so every slice differs.
    let z = LatentStream::new(11, whole.latent_dim(), None).next_batch(7);
    let labels = ndarray::Array1::from_iter((0..7).map(|i| (i % 4) as i64));
    let a = whole.raw_output(&z, Some(&labels)).unwrap();
    // The first large batch runs whole (a one-batch job does not pay for opening the lanes);
    // the second opens them.
    let first = lanes.raw_output(&z, Some(&labels)).unwrap();
    assert!(!lanes.lanes_open());
    assert_eq!(first, a);
    let b = lanes.raw_output(&z, Some(&labels)).unwrap();
    assert!(lanes.lanes_open());
    assert!(!whole.lanes_open(), "no lanes to open with --lanes 1");
    assert_eq!(a.shape(), b.shape());
    let diff = a
        .iter()
        .zip(b.iter())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max);
    assert!(diff <= 1e-5, "lanes vs whole batch: max |diff| {diff}");
    // Fewer images than lanes run whole on the shared session.
    let small = z.slice(ndarray::s![..2, ..]).to_owned();
    let small_labels = labels.slice(ndarray::s![..2]).to_owned();
    let c = lanes.raw_output(&small, Some(&small_labels)).unwrap();
    let head = a.slice(ndarray::s![..2, .., .., ..]);
    assert!(c
        .iter()
        .zip(head.iter())
        .all(|(x, y)| (x - y).abs() <= 1e-5));

    let bytes = model(dir.path(), None, OutputFormat::Uint8);
    let (whole, lanes) = (open(&bytes, 1), open(&bytes, 3));
    lanes.open_lanes().unwrap();
    assert!(lanes.lanes_open());
    let z = LatentStream::new(12, whole.latent_dim(), None).next_batch(8);
    let a = whole.generate_from_latents(&z, None).unwrap();
    let b = lanes.generate_from_latents(&z, None).unwrap();
    assert_eq!(
        (a.count, a.height, a.width, a.channels),
        (b.count, b.height, b.width, b.channels)
    );
    // A few-ulp float difference can move a value across a rounding boundary: at most 1 level.
    let worst = a
        .pixels
        .iter()
        .zip(&b.pixels)
        .map(|(x, y)| x.abs_diff(*y))
        .max()
        .unwrap();
    assert!(worst <= 1, "lanes vs whole batch: {worst} levels apart");
}

#[test]
fn same_seed_writes_byte_identical_pngs_and_a_grid() {
    let dir = tempfile::tempdir().unwrap();
    let m = model(dir.path(), None, OutputFormat::Float);
    let outs: Vec<PathBuf> = (0..2).map(|i| dir.path().join(format!("out{i}"))).collect();
    for out in &outs {
        let o = run(
            "runtime",
            &[
                "generate",
                "-n",
                "12",
                "--batch-size",
                "5",
                "--seed",
                "7",
                "--model",
                m.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
            ],
        );
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(
            stderr(&o).contains("provider: CPUExecutionProvider"),
            "the provider in use is reported:\n{}",
            stderr(&o)
        );
        assert!(stdout(&o).contains("grid.png"));
    }
    for i in 0..12 {
        let name = format!("{i:06}.png");
        let a = std::fs::read(outs[0].join(&name)).unwrap();
        assert_eq!(
            a,
            std::fs::read(outs[1].join(&name)).unwrap(),
            "{name} differs between runs"
        );
        assert_eq!(image::load_from_memory(&a).unwrap().width(), 32);
    }
    assert!(!outs[0].join("000012.png").exists());
    let grid = image::open(outs[0].join("grid.png")).unwrap();
    assert_eq!(grid.width(), 4 * 34 + 2, "12 images make a 4-column grid");
}

#[test]
fn npy_output_streams_every_image() {
    let dir = tempfile::tempdir().unwrap();
    let m = model(dir.path(), None, OutputFormat::Uint8);
    let out = dir.path().join("npy");
    let o = run(
        "runtime",
        &[
            "generate",
            "-n",
            "10",
            "--batch-size",
            "4",
            "--format",
            "npy",
            "--model",
            m.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let bytes = std::fs::read(out.join("samples.npy")).unwrap();
    let header_len = 10 + u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    assert!(String::from_utf8_lossy(&bytes[..header_len]).contains("'shape': (10, 32, 32, 1)"));
    assert_eq!(bytes.len() - header_len, 10 * 32 * 32);
    assert!(out.join("grid.png").exists());
}

#[test]
fn conditional_models_take_a_class() {
    let dir = tempfile::tempdir().unwrap();
    let m = model(dir.path(), Some(10), OutputFormat::Float);
    let g = Generator::builder().model(&m).build().unwrap();
    let mut req = GenerateRequest::new(4, 1);
    req.class = Some(3);
    let three = g.generate_request(&req).unwrap();
    req.class = Some(4);
    let four = g.generate_request(&req).unwrap();
    assert_ne!(three[0].as_bytes(), four[0].as_bytes());
    let out = dir.path().join("c");
    let ok = run(
        "runtime",
        &[
            "generate",
            "-n",
            "3",
            "--class",
            "9",
            "--model",
            m.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert!(ok.status.success(), "{}", stderr(&ok));
    let bad = run(
        "runtime",
        &[
            "generate",
            "-n",
            "3",
            "--class",
            "10",
            "--model",
            m.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert_fails_with(&bad, &["--class 10", "10 classes"]);
}

#[test]
fn interpolation_writes_a_strip_and_a_gif() {
    let dir = tempfile::tempdir().unwrap();
    let m = model(dir.path(), None, OutputFormat::Float);
    let strip = dir.path().join("walk.png");
    let gif = dir.path().join("walk.gif");
    let o = run(
        "runtime",
        &[
            "interpolate",
            "--model",
            m.to_str().unwrap(),
            "--steps",
            "6",
            "--seed-a",
            "1",
            "--seed-b",
            "2",
            "--out",
            strip.to_str().unwrap(),
            "--gif",
            gif.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let img = image::open(&strip).unwrap();
    assert_eq!((img.width(), img.height()), (6 * 34 + 2, 36));
    assert!(std::fs::read(&gif).unwrap().starts_with(b"GIF89a"));
    // The ends of the walk are the seeds' own images.
    let g = Generator::builder().model(&m).build().unwrap();
    let frames = g.interpolate(1, 2, 6, None).unwrap();
    let a = g
        .generate_from_latents(&LatentStream::new(1, 16, None).next_batch(1), None)
        .unwrap()
        .image(0);
    assert_eq!(frames[0].as_bytes(), a.as_bytes());
}

#[test]
fn info_and_bench_name_the_provider() {
    let dir = tempfile::tempdir().unwrap();
    let m = model(dir.path(), Some(10), OutputFormat::Float);
    let o = run("runtime", &["info", "--model", m.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    for needle in [
        "input  z: Float32 [-1, 16]",
        "input  label: Int64 [-1]",
        "output image: Float32 [-1, 1, 32, 32]",
        "metadata gantry.num_classes = 10",
        "metadata gantry.normalization = tanh [-1,1]",
        "provider chosen: CPUExecutionProvider",
        "provider skipped: CUDAExecutionProvider",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in\n{text}");
    }
    for (lanes, says) in [
        ("3", "batch lanes: 3 (batches of 3 or more images)"),
        ("1", "batch lanes: off"),
    ] {
        let o = run(
            "runtime",
            &["--lanes", lanes, "info", "--model", m.to_str().unwrap()],
        );
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(
            stdout(&o).contains(says),
            "--lanes {lanes}:\n{}",
            stdout(&o)
        );
    }
    let o = run(
        "runtime",
        &[
            "bench",
            "--model",
            m.to_str().unwrap(),
            "--batch-size",
            "8",
            "--iterations",
            "3",
            "--warmup",
            "1",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("img/s (CPUExecutionProvider)"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn explicit_gpu_provider_fails_clearly_and_auto_falls_back() {
    let dir = tempfile::tempdir().unwrap();
    let m = model(dir.path(), None, OutputFormat::Float);
    let out = dir.path().join("o");
    for ep in ["cuda", "tensorrt"] {
        let o = run(
            "runtime",
            &[
                "generate",
                "--ep",
                ep,
                "-n",
                "2",
                "--model",
                m.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
            ],
        );
        assert_fails_with(
            &o,
            &["execution provider", "not in this ONNX Runtime build"],
        );
    }
    let g = Generator::builder()
        .model(&m)
        .providers(ProviderChoice::Auto)
        .build()
        .unwrap();
    assert_eq!(g.providers().active, Provider::Cpu);
    let skipped: Vec<_> = g.providers().skipped.iter().map(|(p, _)| *p).collect();
    assert_eq!(
        skipped,
        vec![Provider::TensorRt, Provider::Cuda],
        "auto tries TensorRT, then CUDA, and says so"
    );
}

/// A generator shaped like `torch.onnx.export` of the PyTorch DCGAN: latent `[N, nz, 1, 1]`
/// named `input`, unfolded BatchNormalization, output named `output`, no Gantry metadata.
fn pytorch_style_model(path: &Path) {
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
    let model = ModelProto {
        ir_version: 8,
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: 17,
        }],
        producer_name: "pytorch".into(),
        graph: Some(GraphProto {
            node: nodes,
            name: "main_graph".into(),
            initializer: init,
            input: vec![value_info(
                "input",
                DataType::Float,
                &[Dim::Named("n"), Dim::Fixed(8), Dim::Fixed(1), Dim::Fixed(1)],
            )],
            output: vec![value_info(
                "output",
                DataType::Float,
                &[Dim::Named("n"), Dim::Fixed(3), Dim::Fixed(8), Dim::Fixed(8)],
            )],
            ..Default::default()
        }),
        ..Default::default()
    };
    std::fs::write(path, model.encode_to_vec()).unwrap();
}

#[test]
fn third_party_pytorch_style_generators_work() {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("torch.onnx");
    pytorch_style_model(&m);
    let g = Generator::builder().model(&m).build().unwrap();
    let sig = &g.info().signature;
    assert!(sig.latent_is_4d);
    assert_eq!(
        (
            sig.latent_input.as_str(),
            sig.latent_dim,
            sig.output.as_str()
        ),
        ("input", 8, "output")
    );
    let imgs = g.generate(3, 0).unwrap();
    assert_eq!(
        (
            imgs[0].width(),
            imgs[0].height(),
            imgs[0].color().channel_count()
        ),
        (8, 8, 3)
    );
    let out = dir.path().join("o");
    let o = run(
        "runtime",
        &[
            "generate",
            "-n",
            "4",
            "--model",
            m.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    // The real files written by ../shared/bench/torch_dcgan_bench.py, when provided.
    if let Some(dir) = std::env::var_os("GANTRY_TORCH_ONNX_DIR") {
        for name in ["g32.onnx", "g64.onnx"] {
            let g = Generator::builder()
                .model(Path::new(&dir).join(name))
                .build()
                .unwrap();
            assert!(!g.generate(2, 0).unwrap().is_empty());
        }
    }
}

#[test]
fn bad_input_gives_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let m = model(d, None, OutputFormat::Float);
    let ms = m.to_str().unwrap();
    let out = d.join("out");
    let outs = out.to_str().unwrap();
    // Missing file, not an ONNX file.
    let o = run(
        "runtime",
        &[
            "generate",
            "--model",
            d.join("nope.onnx").to_str().unwrap(),
            "--out",
            outs,
        ],
    );
    assert_fails_with(&o, &["nope.onnx", "no such file"]);
    let text = d.join("notes.onnx");
    std::fs::write(&text, "this is not a model").unwrap();
    let o = run(
        "runtime",
        &["generate", "--model", text.to_str().unwrap(), "--out", outs],
    );
    assert_fails_with(&o, &["notes.onnx", "not a loadable ONNX model"]);
    // A valid ONNX file that is not a generator (3-D output).
    let odd = d.join("odd.onnx");
    let model = ModelProto {
        ir_version: 8,
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: 17,
        }],
        graph: Some(GraphProto {
            node: vec![node("Relu", "r", &["x"], &["y"], vec![])],
            input: vec![value_info(
                "x",
                DataType::Float,
                &[Dim::Named("n"), Dim::Fixed(4)],
            )],
            output: vec![value_info(
                "y",
                DataType::Float,
                &[Dim::Named("n"), Dim::Fixed(4)],
            )],
            ..Default::default()
        }),
        ..Default::default()
    };
    std::fs::write(&odd, model.encode_to_vec()).unwrap();
    let o = run(
        "runtime",
        &["generate", "--model", odd.to_str().unwrap(), "--out", outs],
    );
    assert_fails_with(&o, &["odd.onnx", "unsupported model signature", "4-D"]);
    // Counts.
    assert_fails_with(
        &run(
            "runtime",
            &["generate", "-n", "0", "--model", ms, "--out", outs],
        ),
        &["-n must be at least 1"],
    );
    assert_fails_with(
        &run(
            "runtime",
            &[
                "generate",
                "-n",
                "99999999999",
                "--model",
                ms,
                "--out",
                outs,
            ],
        ),
        &["too many"],
    );
    // Class on an unconditional model.
    assert_fails_with(
        &run(
            "runtime",
            &["generate", "--class", "1", "--model", ms, "--out", outs],
        ),
        &["--class", "class-conditional"],
    );
    // Unwritable output folder (a path below a regular file).
    let blocked = d.join("notes.onnx/sub");
    assert_fails_with(
        &run(
            "runtime",
            &[
                "generate",
                "--model",
                ms,
                "--out",
                blocked.to_str().unwrap(),
            ],
        ),
        &["notes.onnx/sub"],
    );
    // Missing ONNX Runtime library.
    assert_fails_with(
        &run(
            "runtime",
            &[
                "generate",
                "--ort-lib",
                "/nonexistent/libonnxruntime.so",
                "--model",
                ms,
                "--out",
                outs,
            ],
        ),
        &["ONNX Runtime library", "not found", "make ort"],
    );
    assert!(
        !out.join("000000.png").exists(),
        "failed runs wrote no images"
    );
}

#[test]
fn library_example_compiles_and_embeds_the_generator() {
    // runtime/examples/embed.rs is built by `cargo test --workspace --examples` (make test); this
    // checks that it is there and uses the public API only.
    let src = std::fs::read_to_string(workspace().join("runtime/examples/embed.rs")).unwrap();
    assert!(src.contains("Generator::builder()"));
    let _ = ModelConfig::default();
}
