//! `runtime generate`, `info`, `bench` and `interpolate`: files they write, what they report,
//! and clean one-line errors naming the flag on bad input.

use std::path::{Path, PathBuf};

use candle_onnx::onnx::{tensor_proto::DataType, GraphProto, ModelProto, OperatorSetIdProto};
use gantry_exporter::proto::{node, value_info, Dim};
use gantry_exporter::OutputFormat;
use gantry_testkit::{assert_fails_with, pytorch_style_model, stderr, stdout};
use prost::Message;

use super::{model, runtime};

#[test]
fn same_seed_writes_byte_identical_pngs_and_a_grid() {
    let dir = tempfile::tempdir().unwrap();
    let m = model(dir.path(), None, OutputFormat::Float);
    let outs: Vec<PathBuf> = (0..2).map(|i| dir.path().join(format!("out{i}"))).collect();
    for out in &outs {
        let o = runtime(&[
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
        ]);
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
    let o = runtime(&[
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
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let bytes = std::fs::read(out.join("samples.npy")).unwrap();
    let header_len = 10 + u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    assert!(String::from_utf8_lossy(&bytes[..header_len]).contains("'shape': (10, 32, 32, 1)"));
    assert_eq!(bytes.len() - header_len, 10 * 32 * 32);
    assert!(out.join("grid.png").exists());
    // The payload is the library's images of the same request, in order.
    let g = gantry_runtime::Generator::builder()
        .model(&m)
        .build()
        .unwrap();
    let mut request = gantry_runtime::GenerateRequest::new(10, 0);
    request.batch_size = 4;
    let mut want = Vec::new();
    g.generate_each(&request, |_, batch| {
        want.extend_from_slice(batch.pixels());
        Ok(())
    })
    .unwrap();
    assert_eq!(&bytes[header_len..], want.as_slice());
    assert!(
        want.iter().any(|&p| p != want[0]),
        "the images are not blank"
    );
}

/// Every precision runs through the CLI unchanged; `info` says which it is.
#[test]
fn int8_and_bf16_models_generate_and_info_names_their_precision() {
    let dir = tempfile::tempdir().unwrap();
    for (precision, name) in [
        (gantry_exporter::Precision::Int8, "int8"),
        (gantry_exporter::Precision::Bf16, "bf16"),
    ] {
        let m = gantry_testkit::export_tiny_model_in(
            dir.path(),
            Some(3),
            OutputFormat::Uint8,
            precision,
        );
        let o = runtime(&["info", "--model", m.to_str().unwrap()]);
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(
            stdout(&o).contains(&format!("precision: {name}")),
            "{}",
            stdout(&o)
        );
        let out = dir.path().join(format!("out-{name}"));
        let o = runtime(&[
            "generate",
            "-n",
            "5",
            "--model",
            m.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(out.join("000004.png").is_file() && out.join("grid.png").is_file());
    }
}

#[test]
fn info_and_bench_name_the_provider() {
    let dir = tempfile::tempdir().unwrap();
    let m = model(dir.path(), Some(10), OutputFormat::Float);
    let o = runtime(&["info", "--model", m.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    for needle in [
        "input  z: float32 [?, 16]",
        "input  label: int64 [?]",
        "output image: float32 [?, 1, 32, 32]",
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
        let o = runtime(&["--lanes", lanes, "info", "--model", m.to_str().unwrap()]);
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(
            stdout(&o).contains(says),
            "--lanes {lanes}:\n{}",
            stdout(&o)
        );
    }
    let o = runtime(&[
        "bench",
        "--model",
        m.to_str().unwrap(),
        "--batch-size",
        "8",
        "--iterations",
        "3",
        "--warmup",
        "1",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("img/s (CPUExecutionProvider)"),
        "{}",
        stdout(&o)
    );
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
    let o = runtime(&[
        "generate",
        "--model",
        d.join("nope.onnx").to_str().unwrap(),
        "--out",
        outs,
    ]);
    assert_fails_with(&o, &["nope.onnx", "no such file"]);
    let text = d.join("notes.onnx");
    std::fs::write(&text, "this is not a model").unwrap();
    let o = runtime(&["generate", "--model", text.to_str().unwrap(), "--out", outs]);
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
    let o = runtime(&["generate", "--model", odd.to_str().unwrap(), "--out", outs]);
    assert_fails_with(&o, &["odd.onnx", "unsupported model signature", "4-D"]);
    // Counts.
    assert_fails_with(
        &runtime(&["generate", "-n", "0", "--model", ms, "--out", outs]),
        &["-n must be at least 1"],
    );
    assert_fails_with(
        &runtime(&[
            "generate",
            "-n",
            "99999999999",
            "--model",
            ms,
            "--out",
            outs,
        ]),
        &["too many"],
    );
    // Class on an unconditional model.
    assert_fails_with(
        &runtime(&["generate", "--class", "1", "--model", ms, "--out", outs]),
        &["--class", "class-conditional"],
    );
    // Unwritable output folder (a path below a regular file).
    let blocked = d.join("notes.onnx/sub");
    assert_fails_with(
        &runtime(&[
            "generate",
            "--model",
            ms,
            "--out",
            blocked.to_str().unwrap(),
        ]),
        &["notes.onnx/sub"],
    );
    // Missing ONNX Runtime library.
    assert_fails_with(
        &runtime(&[
            "generate",
            "--ort-lib",
            "/nonexistent/libonnxruntime.so",
            "--model",
            ms,
            "--out",
            outs,
        ]),
        &["ONNX Runtime library", "not found", "make ort"],
    );
    assert!(
        !out.join("000000.png").exists(),
        "failed runs wrote no images"
    );
}

#[test]
fn conditional_models_take_a_class_in_range() {
    let dir = tempfile::tempdir().unwrap();
    let m = model(dir.path(), Some(10), OutputFormat::Float);
    let out = dir.path().join("c");
    let ok = runtime(&[
        "generate",
        "-n",
        "3",
        "--class",
        "9",
        "--model",
        m.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok.status.success(), "{}", stderr(&ok));
    let bad = runtime(&[
        "generate",
        "-n",
        "3",
        "--class",
        "10",
        "--model",
        m.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_fails_with(&bad, &["--class 10", "10 classes"]);
}

#[test]
fn interpolation_writes_a_strip_and_a_gif() {
    let dir = tempfile::tempdir().unwrap();
    let m = model(dir.path(), None, OutputFormat::Float);
    let strip = dir.path().join("walk.png");
    let gif = dir.path().join("walk.gif");
    let o = runtime(&[
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
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let img = image::open(&strip).unwrap();
    assert_eq!((img.width(), img.height()), (6 * 34 + 2, 36));
    assert!(std::fs::read(&gif).unwrap().starts_with(b"GIF89a"));
    assert_fails_with(
        &runtime(&[
            "interpolate",
            "--model",
            m.to_str().unwrap(),
            "--steps",
            "1",
        ]),
        &["--steps must be at least 2"],
    );
}

#[test]
fn explicit_gpu_providers_fail_clearly_on_a_cpu_build() {
    let dir = tempfile::tempdir().unwrap();
    let m = model(dir.path(), None, OutputFormat::Float);
    let out = dir.path().join("o");
    for ep in ["cuda", "tensorrt"] {
        let o = runtime(&[
            "generate",
            "--ep",
            ep,
            "-n",
            "2",
            "--model",
            m.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]);
        assert_fails_with(
            &o,
            &["execution provider", "not in this ONNX Runtime build"],
        );
    }
}

#[test]
fn pytorch_style_generators_generate() {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("torch.onnx");
    pytorch_style_model(&m);
    let out = dir.path().join("o");
    let o = runtime(&[
        "generate",
        "-n",
        "4",
        "--model",
        m.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let img = image::open(out.join("000003.png")).unwrap();
    assert_eq!((img.width(), img.height()), (8, 8));
}

/// Regressions from a hostile-input review: a tiny truncation used to hang the latent sampler;
/// a model with NaN weights gave black images and exit 0.
#[test]
fn tiny_truncation_and_non_finite_models_fail_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let m = model(dir.path(), None, OutputFormat::Float);
    let out = dir.path().join("o");
    let started = std::time::Instant::now();
    assert_fails_with(
        &runtime(&[
            "generate",
            "--truncation",
            "1e-8",
            "--model",
            m.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]),
        &["--truncation", "at least 0.01"],
    );
    assert!(started.elapsed().as_secs() < 30);

    // The PyTorch-style fixture with one weight set to NaN.
    let torch = dir.path().join("torch.onnx");
    pytorch_style_model(&torch);
    let mut onnx = ModelProto::decode(std::fs::read(&torch).unwrap().as_slice()).unwrap();
    let graph = onnx.graph.as_mut().unwrap();
    let w = graph
        .initializer
        .iter_mut()
        .find(|t| t.name == "main.3.weight")
        .unwrap();
    w.raw_data[..4].copy_from_slice(&f32::NAN.to_le_bytes());
    let nan = dir.path().join("nan.onnx");
    std::fs::write(&nan, onnx.encode_to_vec()).unwrap();
    let o = runtime(&[
        "generate",
        "-n",
        "2",
        "--model",
        nan.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_fails_with(&o, &["nan.onnx", "NaN or infinite"]);
    assert!(
        !out.join("000000.png").exists(),
        "no black images are written"
    );
}

/// Killed at any moment (kill -9, a dozen different moments), `generate --format npy` leaves
/// `samples.npy` as the complete previous array or the complete new one.
#[test]
fn a_killed_generate_leaves_the_old_array_or_the_new_one() {
    let dir = tempfile::tempdir().unwrap();
    let m = model(dir.path(), None, OutputFormat::Uint8);
    let generate = |seed: &str, out: &Path| {
        vec![
            "generate".to_string(),
            "-n".into(),
            "3000".into(),
            "--seed".into(),
            seed.into(),
            "--format".into(),
            "npy".into(),
            "--model".into(),
            m.to_str().unwrap().into(),
            "--out".into(),
            out.to_str().unwrap().into(),
        ]
    };
    let mut arrays = Vec::new();
    let mut full = std::time::Duration::ZERO;
    for seed in ["1", "2"] {
        let out = dir.path().join(format!("seed{seed}"));
        let args = generate(seed, &out);
        let started = std::time::Instant::now();
        let o = runtime(&args.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(o.status.success(), "{}", stderr(&o));
        full = full.max(started.elapsed());
        arrays.push(std::fs::read(out.join("samples.npy")).unwrap());
    }
    assert_ne!(arrays[0], arrays[1]);
    let out = dir.path().join("target");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("samples.npy"), &arrays[0]).unwrap();
    for round in 0..12u32 {
        let seed = if round % 2 == 0 { "2" } else { "1" };
        let new = &arrays[(round as usize + 1) % 2];
        let old = std::fs::read(out.join("samples.npy")).unwrap();
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_runtime"))
            .args(generate(seed, &out))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(full.mul_f64(round as f64 / 10.0));
        let _ = child.kill();
        child.wait().unwrap();
        let now = std::fs::read(out.join("samples.npy")).unwrap();
        assert!(
            now == old || &now == new,
            "round {round}: samples.npy is neither the old nor the new array ({} bytes)",
            now.len()
        );
    }
}

/// From the command line, `--truncation` and the class cycling of conditional models give the
/// library's images for the same request.
#[test]
fn truncation_and_class_cycling_reach_the_images() {
    let dir = tempfile::tempdir().unwrap();
    let m = model(dir.path(), Some(3), OutputFormat::Uint8);
    let out = dir.path().join("o");
    let o = runtime(&[
        "generate",
        "-n",
        "6",
        "--seed",
        "4",
        "--truncation",
        "0.5",
        "--model",
        m.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let g = gantry_runtime::Generator::builder()
        .model(&m)
        .build()
        .unwrap();
    let mut request = gantry_runtime::GenerateRequest::new(6, 4);
    request.truncation = Some(0.5);
    let want = g.generate_request(&request).unwrap();
    request.truncation = None;
    let untruncated = g.generate_request(&request).unwrap();
    for (i, img) in want.iter().enumerate() {
        let got = image::open(out.join(format!("{i:06}.png"))).unwrap();
        assert_eq!(
            got.to_luma8().as_raw(),
            img.to_luma8().as_raw(),
            "image {i}"
        );
    }
    assert_ne!(
        want[0].as_bytes(),
        untruncated[0].as_bytes(),
        "truncation changed the latents"
    );
}
