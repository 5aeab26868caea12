//! Helpers shared by Gantry's workspace tests: locating the binaries, running them, building
//! data and checkpoint fixtures.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use candle_core::{Device, Tensor};
use gantry_models::checkpoint::CheckpointMeta;
use gantry_models::init::{init_tensors, normal_vec, rng_for};
use gantry_models::{generator_spec, Checkpoint, ModelConfig, TensorMap, TrainerState};
use gantry_trainer::data::idx::encode_idx;

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Path of a workspace binary (`trainer`, `exporter`, `runtime`) built next to this test.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>");
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: build the binaries first (`cargo build --workspace --bins`, which `make test` does)",
        path.display()
    );
    path
}

/// Runs a workspace binary with `args`.
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

pub fn run(name: &str, args: &[&str]) -> Output {
    Command::new(bin(name))
        .args(args)
        .output()
        .expect("binary runs")
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

/// A small model configuration for fast tests.
pub fn tiny_config(image_size: usize, channels: usize, num_classes: Option<usize>) -> ModelConfig {
    ModelConfig {
        latent_dim: 16,
        image_size,
        channels,
        g_width: 8,
        d_width: 8,
        num_classes,
        label_embed_dim: 4,
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
        } else if name.ends_with("running_mean") || name.ends_with("bn.bias") {
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
