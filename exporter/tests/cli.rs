//! The `exporter` binary: run-directory resolution, Triton repository, and clean errors with no
//! partial output on bad input.

use std::path::Path;

use gantry_models::ModelConfig;
use gantry_testkit::{
    assert_fails_with, onnx_check, stderr, stdout, tiny_config, trained_like_generator,
    write_generator_checkpoint,
};

/// Runs `exporter` with `args`.
fn exporter(args: &[&str]) -> std::process::Output {
    gantry_testkit::run(env!("CARGO_BIN_EXE_exporter"), args)
}

fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".onnx") || n.contains(".tmp-"))
        .collect()
}

#[test]
fn run_directories_resolve_to_their_latest_checkpoint_and_triton_gets_a_repository() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tiny_config(16, 1, Some(3));
    let run_dir = tmp.path().join("run");
    write_generator_checkpoint(
        &run_dir.join("checkpoint"),
        &cfg,
        trained_like_generator(&cfg, 1),
        40,
    );
    write_generator_checkpoint(
        &run_dir.join("final"),
        &cfg,
        trained_like_generator(&cfg, 2),
        30,
    );
    let out = tmp.path().join("g.onnx");
    let repo = tmp.path().join("models");
    let o = exporter(&[
        "--checkpoint",
        run_dir.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--triton-repo",
        repo.to_str().unwrap(),
        "--name",
        "tiny",
        "--max-batch-size",
        "128",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("run/checkpoint"),
        "the newer checkpoint (step 40) is used: {}",
        stdout(&o)
    );
    let model = candle_onnx::read_file(&out).unwrap();
    let steps = model
        .metadata_props
        .iter()
        .find(|p| p.key == "gantry.training_steps")
        .unwrap();
    assert_eq!(steps.value, "40");
    let config = std::fs::read_to_string(repo.join("tiny/config.pbtxt")).unwrap();
    assert!(
        config.contains("max_batch_size: 128") && config.contains("name: \"label\""),
        "{config}"
    );
    assert_eq!(
        std::fs::read(repo.join("tiny/1/model.onnx")).unwrap(),
        std::fs::read(&out).unwrap()
    );
    onnx_check(&[&repo.join("tiny/1/model.onnx")]);
}

#[test]
fn bad_checkpoints_and_options_fail_cleanly_without_output() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let cfg = tiny_config(16, 1, None);
    let good = d.join("good");
    write_generator_checkpoint(&good, &cfg, trained_like_generator(&cfg, 1), 1);
    let out = d.join("g.onnx");
    let os = out.to_str().unwrap();
    let export = |ckpt: &Path, extra: &[&str]| {
        let mut args = vec!["--checkpoint", ckpt.to_str().unwrap(), "--out", os];
        args.extend_from_slice(extra);
        exporter(&args)
    };
    assert_fails_with(
        &export(&d.join("missing"), &[]),
        &["missing", "no such checkpoint"],
    );

    let corrupt = d.join("corrupt");
    write_generator_checkpoint(&corrupt, &cfg, trained_like_generator(&cfg, 1), 1);
    std::fs::write(
        corrupt.join("generator.safetensors"),
        b"\x00\x01 not safetensors",
    )
    .unwrap();
    assert_fails_with(
        &export(&corrupt, &[]),
        &["generator.safetensors", "not a valid safetensors"],
    );

    let bad_json = d.join("bad-json");
    write_generator_checkpoint(&bad_json, &cfg, trained_like_generator(&cfg, 1), 1);
    std::fs::write(bad_json.join("config.json"), b"{\"format_version\": 1").unwrap();
    assert_fails_with(&export(&bad_json, &[]), &["config.json", "invalid JSON"]);

    // Config and weights disagree (wider generator than the weights).
    let wider = d.join("wider");
    let wide_cfg = ModelConfig {
        g_width: 16,
        ..cfg.clone()
    };
    write_generator_checkpoint(&wider, &wide_cfg, trained_like_generator(&cfg, 1), 1);
    assert_fails_with(
        &export(&wider, &[]),
        &["generator.safetensors", "layers.0.weight", "shape"],
    );

    let mut partial = trained_like_generator(&cfg, 1);
    partial.remove("layers.1.bn.running_mean");
    let missing_tensor = d.join("missing-tensor");
    write_generator_checkpoint(&missing_tensor, &cfg, partial, 1);
    assert_fails_with(
        &export(&missing_tensor, &[]),
        &[
            "generator.safetensors",
            "missing tensor `layers.1.bn.running_mean`",
        ],
    );

    assert_fails_with(
        &export(&good, &["--opset", "7"]),
        &["--opset", "not supported"],
    );
    assert_fails_with(
        &export(&good, &["--use-ema"]),
        &["--use-ema", "no EMA weights"],
    );

    let blocker = d.join("file");
    std::fs::write(&blocker, "x").unwrap();
    let o = exporter(&[
        "--checkpoint",
        good.to_str().unwrap(),
        "--out",
        blocker.join("g.onnx").to_str().unwrap(),
    ]);
    assert_fails_with(&o, &["file"]);
    assert!(
        leftovers(d).is_empty(),
        "partial output left behind: {:?}",
        leftovers(d)
    );

    // An existing output is replaced only by a complete, verified file.
    let o = export(&good, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let before = std::fs::read(&out).unwrap();
    assert_fails_with(&export(&corrupt, &[]), &["generator.safetensors"]);
    assert_eq!(before, std::fs::read(&out).unwrap());
    assert_eq!(leftovers(d), vec!["g.onnx".to_string()]);
}
