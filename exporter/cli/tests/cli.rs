//! The `exporter` binary: run-directory resolution, Triton repository, and clean errors with no
//! partial output on bad input.

use std::path::Path;

use gantry_models::ModelConfig;
use gantry_testkit::{
    assert_fails_with, onnx_check, stderr, stdout, tiny_config, trained_like_generator,
    triton_config, write_generator_checkpoint,
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
    let config = triton_config(&repo.join("tiny/config.pbtxt"));
    assert_eq!(config["name"], "tiny");
    assert_eq!(config["platform"], "onnxruntime_onnx");
    assert_eq!(config["maxBatchSize"], 128);
    assert_eq!(config["input"][0]["name"], "z");
    assert_eq!(config["input"][0]["dataType"], "TYPE_FP32");
    assert_eq!(config["input"][0]["dims"], serde_json::json!(["16"]));
    assert_eq!(config["input"][1]["name"], "label");
    assert_eq!(config["input"][1]["dataType"], "TYPE_INT64");
    assert_eq!(config["input"][1]["reshape"], serde_json::json!({}));
    assert_eq!(config["output"][0]["name"], "image");
    assert_eq!(
        config["output"][0]["dims"],
        serde_json::json!(["1", "16", "16"])
    );
    assert!(config.get("dynamicBatching").is_some(), "{config}");
    assert_eq!(
        std::fs::read(repo.join("tiny/1/model.onnx")).unwrap(),
        std::fs::read(&out).unwrap()
    );
    onnx_check(&[&repo.join("tiny/1/model.onnx")]);
}

/// `--which` picks a run's best/ or final/ checkpoint instead of the latest, and says what is
/// missing when the run has none.
#[test]
fn which_picks_the_best_or_final_checkpoint_of_a_run() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tiny_config(16, 1, None);
    let run_dir = tmp.path().join("run");
    for (folder, step) in [("checkpoint", 40), ("final", 50)] {
        let g = trained_like_generator(&cfg, step);
        write_generator_checkpoint(&run_dir.join(folder), &cfg, g, step);
    }
    let out = tmp.path().join("g.onnx");
    let export = |which: &str| {
        exporter(&[
            "--checkpoint",
            run_dir.to_str().unwrap(),
            "--which",
            which,
            "--out",
            out.to_str().unwrap(),
        ])
    };
    let steps = || {
        let model = candle_onnx::read_file(&out).unwrap();
        let p = model.metadata_props.iter();
        p.filter(|p| p.key == "gantry.training_steps")
            .map(|p| p.value.clone())
            .next()
            .unwrap()
    };
    let o = export("best");
    assert_fails_with(
        &o,
        &["run", "no best/ checkpoint", "evaluates during training"],
    );
    assert!(!out.exists(), "nothing written");
    let g = trained_like_generator(&cfg, 30);
    write_generator_checkpoint(&run_dir.join("best"), &cfg, g, 30);
    for (which, step) in [("best", "30"), ("final", "50"), ("latest", "50")] {
        let o = export(which);
        assert!(o.status.success(), "{which}: {}", stderr(&o));
        assert_eq!(steps(), step, "--which {which}");
    }
    let single = run_dir.join("best");
    let o = exporter(&[
        "--checkpoint",
        single.to_str().unwrap(),
        "--which",
        "final",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_fails_with(&o, &["single checkpoint", "final/"]);
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

/// Regressions from a hostile-input review: the exporter must not destroy files that are not
/// its own output, must export checkpoints whose trainer state it does not need, must refuse
/// non-finite weights, and writes a Triton config Triton accepts for `--max-batch-size 0`.
#[test]
fn the_exporter_never_destroys_what_is_not_an_onnx_file() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let cfg = tiny_config(16, 1, None);
    let run_dir = d.join("run");
    write_generator_checkpoint(
        &run_dir.join("final"),
        &cfg,
        trained_like_generator(&cfg, 1),
        3,
    );
    let weights = run_dir.join("final/generator.safetensors");
    let before = std::fs::read(&weights).unwrap();
    let rs = run_dir.to_str().unwrap();
    assert_fails_with(
        &exporter(&["--checkpoint", rs, "--out", weights.to_str().unwrap()]),
        &["--out", "inside the checkpoint folder"],
    );
    assert_eq!(std::fs::read(&weights).unwrap(), before);
    let notes = d.join("notes.txt");
    std::fs::write(&notes, "my notes").unwrap();
    assert_fails_with(
        &exporter(&["--checkpoint", rs, "--out", notes.to_str().unwrap()]),
        &["--out", "not an ONNX model", "refusing"],
    );
    assert_eq!(std::fs::read_to_string(&notes).unwrap(), "my notes");
    // An existing ONNX file is replaced (by a complete, verified one).
    let out = d.join("g.onnx");
    for _ in 0..2 {
        let o = exporter(&["--checkpoint", rs, "--out", out.to_str().unwrap()]);
        assert!(o.status.success(), "{}", stderr(&o));
    }

    // A trainer state the exporter does not need may be unreadable.
    std::fs::write(run_dir.join("final/trainer_state.json"), b"{oops").unwrap();
    let o = exporter(&["--checkpoint", rs, "--out", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));

    // Non-finite weights are refused, naming the file and tensor.
    let mut nan = trained_like_generator(&cfg, 1);
    let w = nan["layers.0.weight"].clone();
    nan.insert("layers.0.weight".into(), (w * f64::NAN).unwrap());
    let bad = d.join("nan");
    std::fs::create_dir_all(&bad).unwrap();
    // Written past Checkpoint::save (which refuses NaN too) as a damaged file would be.
    write_generator_checkpoint(&bad, &cfg, trained_like_generator(&cfg, 1), 1);
    std::fs::write(
        bad.join("generator.safetensors"),
        gantry_models::tensors::safetensors_bytes(&nan, None).unwrap(),
    )
    .unwrap();
    assert_fails_with(
        &exporter(&[
            "--checkpoint",
            bad.to_str().unwrap(),
            "--out",
            d.join("nan.onnx").to_str().unwrap(),
        ]),
        &["generator.safetensors", "layers.0.weight", "NaN"],
    );
    assert!(!d.join("nan.onnx").exists());

    // Triton without batching: full shapes, no dynamic_batching block.
    let repo = d.join("models");
    let o = exporter(&[
        "--checkpoint",
        rs,
        "--triton-repo",
        repo.to_str().unwrap(),
        "--name",
        "g",
        "--max-batch-size",
        "0",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let config = triton_config(&repo.join("g/config.pbtxt"));
    assert_eq!(config["input"][0]["dims"], serde_json::json!(["-1", "16"]));
    assert_eq!(
        config["output"][0]["dims"],
        serde_json::json!(["-1", "1", "16", "16"])
    );
    assert!(
        config.get("maxBatchSize").is_none(),
        "0 is the default: {config}"
    );
    assert!(config.get("dynamicBatching").is_none(), "{config}");
}

/// Killed at any moment (kill -9, a dozen different moments), an export leaves at `--out`
/// either the complete previous file or the complete new one, never a mix or a partial file.
#[test]
fn a_killed_export_leaves_the_old_file_or_the_new_one() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    // Full-size 64x64x3 generators (14 MB files) so that an export takes a while to kill.
    let cfg = gantry_models::ModelConfig {
        image_size: 64,
        channels: 3,
        ..Default::default()
    };
    let mut contents = Vec::new();
    for seed in [1u64, 2] {
        let ckpt = d.join(format!("ckpt{seed}"));
        write_generator_checkpoint(&ckpt, &cfg, trained_like_generator(&cfg, seed), seed);
        let out = d.join(format!("{seed}.onnx"));
        let started = std::time::Instant::now();
        let o = exporter(&[
            "--checkpoint",
            ckpt.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        contents.push((ckpt, std::fs::read(&out).unwrap(), started.elapsed()));
    }
    let full = contents[0].2.max(contents[1].2);
    let target = d.join("g.onnx");
    std::fs::write(&target, &contents[0].1).unwrap();
    for round in 0..12u32 {
        let (ckpt, new, _) = &contents[(round as usize + 1) % 2];
        let old = std::fs::read(&target).unwrap();
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_exporter"))
            .args([
                "--checkpoint",
                ckpt.to_str().unwrap(),
                "--out",
                target.to_str().unwrap(),
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // From at once to a little past a whole export, in twelve steps.
        std::thread::sleep(full.mul_f64(round as f64 / 10.0));
        let _ = child.kill();
        child.wait().unwrap();
        let now = std::fs::read(&target).unwrap();
        assert!(
            now == old || &now == new,
            "round {round}: g.onnx is neither the old nor the new file ({} bytes)",
            now.len()
        );
    }
}

/// `--check-quality` (Inception on both models' images from the same latents, against the
/// checkpoint's training data): an int8 model with its measured ranges is written, with the PSNR
/// and both FIDs printed; the same weights with every range shrunk a hundredfold (clipping
/// nearly every activation: PSNR 9 dB, while its FID against this data happened to fall) are
/// refused and nothing is written; fp32 has nothing to compare with.
#[test]
fn the_quality_check_writes_a_good_int8_model_and_refuses_a_clipped_one() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("digits");
    gantry_testkit::write_mnist_fixture(&data, 24);
    let cfg = tiny_config(32, 1, None);
    let ckpt = tmp.path().join("ckpt");
    // Images that use the whole range (these synthetic weights alone give outputs near 0).
    let mut weights = trained_like_generator(&cfg, 31);
    let last = gantry_models::generator_spec(&cfg)
        .conv_layers()
        .last()
        .unwrap()
        .weight_name();
    let w = weights.get_mut(&last).unwrap();
    *w = (&*w * 60.0).unwrap();
    write_generator_checkpoint(&ckpt, &cfg, weights, 5);
    // The checkpoint records its training data as the trainer does.
    let config = ckpt.join("config.json");
    let mut meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&config).unwrap()).unwrap();
    meta["training"] = serde_json::json!({"dataset": "mnist", "data_dir": data, "fit": "pad"});
    std::fs::write(&config, meta.to_string()).unwrap();
    let path = |name: &str| tmp.path().join(name).to_str().unwrap().to_string();
    let export = |extra: &[&str]| {
        let mut args = vec![
            "--checkpoint",
            ckpt.to_str().unwrap(),
            "--precision",
            "int8",
        ];
        args.extend_from_slice(extra);
        exporter(&args)
    };
    let (good, cal) = (path("good.onnx"), path("cal.json"));
    let o = export(&[
        "--out",
        &good,
        "--save-calibration",
        &cal,
        "--check-quality",
        "--quality-samples",
        "24",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let said = stdout(&o);
    assert!(
        said.contains("quality: PSNR vs fp32") && said.contains("reduced: Inception FID"),
        "{said}"
    );
    assert!(Path::new(&good).is_file());
    let mut clipped: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&cal).unwrap()).unwrap();
    for range in clipped["ranges"].as_object_mut().unwrap().values_mut() {
        let r: Vec<f64> = serde_json::from_value(range.clone()).unwrap();
        *range = serde_json::json!([r[0] / 100.0, r[1] / 100.0]);
    }
    let clipped_file = path("clipped.json");
    std::fs::write(&clipped_file, clipped.to_string()).unwrap();
    let bad = path("bad.onnx");
    let o = export(&[
        "--out",
        &bad,
        "--calibration",
        &clipped_file,
        "--check-quality",
        "--quality-samples",
        "24",
    ]);
    assert_fails_with(
        &o,
        &[
            "quality check refused the int8 model",
            "PSNR vs fp32",
            "limit 30.0",
        ],
    );
    assert!(!Path::new(&bad).exists(), "a refused model was written");
    let o = exporter(&[
        "--checkpoint",
        ckpt.to_str().unwrap(),
        "--out",
        &path("f.onnx"),
        "--check-quality",
    ]);
    assert_fails_with(&o, &["--check-quality", "fp32"]);
    assert!(!tmp.path().join("f.onnx").exists());
}
