//! Behaviours the README promises, each run through the `trainer` binary.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use gantry_models::Checkpoint;
use gantry_testkit::{stderr, stdout, tiny_train_args, write_mnist_fixture, zip_eq};

use super::{fixture, metrics_lines, spawn_trainer, trainer, wait_until};

/// The model files of a checkpoint folder, by name (what must be bit-identical).
fn weight_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    files.sort();
    files
}

/// Interrupted after 3 steps and resumed through the CLI (which reads the options back from
/// config.json), a run with EMA, hinge loss, padding and class conditioning ends with the same
/// bytes in every weights and optimiser file as an uninterrupted run.
#[test]
fn resume_through_the_cli_is_bit_exact_with_every_option() {
    let tmp = tempfile::tempdir().unwrap();
    let data = fixture(tmp.path());
    let ds = data.to_str().unwrap();
    let options = [
        "--ema",
        "0.9",
        "--loss",
        "hinge",
        "--fit",
        "pad",
        "--conditional",
        "--sample-every",
        "0",
        "--checkpoint-every",
        "0",
    ];
    let (straight, split) = (tmp.path().join("straight"), tmp.path().join("split"));
    let mut args = options.to_vec();
    args.extend_from_slice(&["--max-steps", "6"]);
    let o = trainer(&tiny_train_args(ds, straight.to_str().unwrap(), &args));
    assert!(o.status.success(), "{}", stderr(&o));
    let mut args = options.to_vec();
    args.extend_from_slice(&["--max-steps", "3"]);
    let o = trainer(&tiny_train_args(ds, split.to_str().unwrap(), &args));
    assert!(o.status.success(), "{}", stderr(&o));
    let o = trainer(&[
        "train",
        "--resume",
        split.to_str().unwrap(),
        "--max-steps",
        "6",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let (a, b) = (
        weight_files(&straight.join("final")),
        weight_files(&split.join("final")),
    );
    let names: Vec<&str> = a.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "discriminator.safetensors",
            "generator.safetensors",
            "generator_ema.safetensors",
            "optimizer_d.safetensors",
            "optimizer_g.safetensors"
        ]
    );
    for ((name, x), (_, y)) in zip_eq(&a, &b) {
        assert!(x == y, "{name} differs after the resume");
    }
}

/// A second Ctrl-C quits at once (exit 130) and leaves the last checkpoint loadable.
#[test]
fn a_second_ctrl_c_quits_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let data = fixture(tmp.path());
    let out = tmp.path().join("run");
    let child = spawn_trainer(&tiny_train_args(
        data.to_str().unwrap(),
        out.to_str().unwrap(),
        &[
            "--max-steps",
            "100000",
            "--epochs",
            "100000",
            "--checkpoint-every",
            "2",
        ],
    ));
    wait_until("3 steps", Duration::from_secs(120), || {
        metrics_lines(&out) >= 3
    });
    for _ in 0..2 {
        Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status()
            .unwrap();
        std::thread::sleep(Duration::from_millis(5));
    }
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(130), "{}", stderr(&o));
    assert!(stderr(&o).contains("second interrupt"), "{}", stderr(&o));
    Checkpoint::load(&gantry_models::resolve_checkpoint(&out).unwrap()).unwrap();
}

/// CIFAR-10 batches and image folders train through the CLI, and so do candle's own kernels.
#[test]
fn cifar_folders_and_candle_kernels_train() {
    let tmp = tempfile::tempdir().unwrap();
    let cifar = tmp.path().join("cifar");
    std::fs::create_dir_all(&cifar).unwrap();
    let mut batch = Vec::new();
    for i in 0..12u8 {
        batch.push(i % 10);
        batch.extend((0..3 * 1024).map(|p| (p as u8).wrapping_mul(i)));
    }
    std::fs::write(cifar.join("data_batch_1.bin"), &batch).unwrap();
    let folder = tmp.path().join("shapes");
    for (class, shade) in [("dark", 30u8), ("light", 220u8)] {
        std::fs::create_dir_all(folder.join(class)).unwrap();
        for i in 0..4u32 {
            image::RgbImage::from_fn(20, 24, |x, y| image::Rgb([shade, (x * i) as u8, y as u8]))
                .save(folder.join(class).join(format!("{i}.png")))
                .unwrap();
        }
    }
    let small = [
        "--image-size",
        "16",
        "--g-width",
        "4",
        "--d-width",
        "4",
        "--batch-size",
        "4",
    ];
    for (dataset, dir, extra) in [
        ("cifar10", &cifar, &["--max-steps", "2"][..]),
        (
            "folder",
            &folder,
            &["--max-steps", "2", "--conditional"][..],
        ),
        (
            "cifar10",
            &cifar,
            &["--max-steps", "2", "--kernels", "candle"][..],
        ),
    ] {
        let out = tmp.path().join(format!("run-{dataset}-{}", extra.len()));
        let mut args = vec![
            "train",
            "--dataset",
            dataset,
            "--data-dir",
            dir.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(&small);
        args.extend_from_slice(extra);
        let o = trainer(&args);
        assert!(o.status.success(), "{dataset} {extra:?}: {}", stderr(&o));
        let ckpt = Checkpoint::load(&out.join("final")).unwrap();
        assert_eq!((ckpt.step(), ckpt.meta.model.channels), (2, 3));
    }
}

/// `trainer sample`: EMA (default) and raw weights, eval and train-mode BatchNorm give different
/// grids; `trainer bench` reports img/s and, with --profile, the phases of a step.
#[test]
fn sample_variants_and_bench() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("mnist");
    write_mnist_fixture(&data, 32);
    let out = tmp.path().join("run");
    let os = out.to_str().unwrap();
    let o = trainer(&tiny_train_args(
        data.to_str().unwrap(),
        os,
        &["--max-steps", "4", "--ema", "0.5"],
    ));
    assert!(o.status.success(), "{}", stderr(&o));
    let mut grids = Vec::new();
    for extra in [&[][..], &["--raw"], &["--train-mode"]] {
        let png = tmp.path().join(format!("grid{}.png", grids.len()));
        let mut args = vec![
            "sample",
            "--checkpoint",
            os,
            "--n",
            "8",
            "--out",
            png.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let o = trainer(&args);
        assert!(o.status.success(), "{extra:?}: {}", stderr(&o));
        grids.push(image::open(&png).unwrap().to_luma8().into_raw());
    }
    assert_ne!(grids[0], grids[1], "--raw samples the raw generator");
    assert_ne!(grids[0], grids[2], "--train-mode uses batch statistics");
    let o = trainer(&[
        "bench",
        "--image-size",
        "16",
        "--batch-size",
        "4",
        "--steps",
        "2",
        "--warmup",
        "1",
        "--profile",
        "--spectral-norm",
        "--ema",
        "0.9",
        "--augment",
        "translation",
        "--d-steps",
        "2",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(
        text.contains("RESULT gantry-train img16x1 b4 cpu fast"),
        "{text}"
    );
    // Both speeds count the 4 x 2 real images D sees per step: img/s = 8000 / (ms/step).
    for prefix in ["RESULT", "MEAN"] {
        let line = text.lines().find(|l| l.starts_with(prefix)).unwrap();
        let words: Vec<&str> = line.split_whitespace().collect();
        let number_before = |unit: &str| -> f64 {
            let at = words.iter().position(|w| *w == unit).unwrap();
            words[at - 1].parse().unwrap()
        };
        let (ms, rate) = (number_before("ms/step"), number_before("img/s"));
        assert!(
            (rate - 8000.0 / ms).abs() <= 0.02 * rate + 1.0,
            "{prefix}: {ms} ms/step, {rate} img/s"
        );
    }
    // The profile's calls are per step (2 D updates, 1 G update), not totals over the steps.
    let calls_of = |name: &str| -> String {
        let line = text.lines().find(|l| l.ends_with(name)).expect(name);
        line.split_whitespace().nth(2).unwrap().to_string()
    };
    assert_eq!(calls_of("phase: 4 D Adam"), "2.0x", "{text}");
    assert_eq!(calls_of("phase: 7 G Adam + EMA"), "1.0x", "{text}");
}

/// The classifier is trained once and reused from its cache; `eval --images` scores a folder.
#[test]
fn the_classifier_is_cached_and_eval_scores_image_folders() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("mnist");
    write_mnist_fixture(&data, 60);
    let ds = data.to_str().unwrap();
    let args = [
        "classifier",
        "--dataset",
        "mnist",
        "--data-dir",
        ds,
        "--image-size",
        "16",
        "--epochs",
        "1",
    ];
    let first = trainer(&args);
    assert!(first.status.success(), "{}", stderr(&first));
    let cache: Vec<_> = std::fs::read_dir(data.join(".gantry")).unwrap().collect();
    assert_eq!(cache.len(), 1, "one cached classifier");
    let second = trainer(&args);
    assert!(second.status.success(), "{}", stderr(&second));
    assert!(
        !stderr(&second).contains("epoch"),
        "reused, not retrained:\n{}",
        stderr(&second)
    );
    let images = tmp.path().join("images");
    std::fs::create_dir_all(&images).unwrap();
    for i in 0..8u32 {
        image::GrayImage::from_fn(28, 28, |x, _| {
            image::Luma([if x == 6 + i { 255 } else { 0 }])
        })
        .save(images.join(format!("{i}.png")))
        .unwrap();
    }
    let o = trainer(&[
        "eval",
        "--images",
        images.to_str().unwrap(),
        "--dataset",
        "mnist",
        "--data-dir",
        ds,
        "--image-size",
        "16",
        "--n",
        "8",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("images: FID"), "{}", stdout(&o));
    assert!(images.join("eval.json").is_file());
}

/// A fresh run's recipe options as its checkpoint records them: (spectral norm, EMA decay, an
/// EMA generator file written, Adam learning rate).
type Recipe = (bool, Option<f64>, bool, f64);

fn recipe_of(run: &Path) -> Recipe {
    let text = std::fs::read_to_string(run.join("final/config.json")).unwrap();
    let config: serde_json::Value = serde_json::from_str(&text).unwrap();
    (
        config["model"]["spectral_norm"].as_bool().unwrap(),
        config["training"]["ema"].as_f64(),
        run.join("final/generator_ema.safetensors").is_file(),
        config["training"]["adam"]["lr"].as_f64().unwrap(),
    )
}

/// Without options a run trains the gantry preset (spectral norm, EMA 0.999, lr 4e-4); `--preset
/// dcgan` is the paper's recipe; explicit `--ema`, `--spectral-norm` and `--lr` override either preset; bad
/// values are named; a resume cannot change the recipe.
#[test]
fn the_default_recipe_is_the_gantry_preset_and_flags_override_it() {
    let tmp = tempfile::tempdir().unwrap();
    let data = fixture(tmp.path());
    let ds = data.to_str().unwrap();
    let cases: [(&[&str], Recipe); 5] = [
        (&[], (true, Some(0.999), true, 4e-4)),
        (&["--preset", "dcgan"], (false, None, false, 2e-4)),
        (&["--preset", "gantry"], (true, Some(0.999), true, 4e-4)),
        (
            &["--preset", "dcgan", "--spectral-norm", "--ema", "0.99"],
            (true, Some(0.99), true, 2e-4),
        ),
        (
            &["--spectral-norm", "off", "--ema", "off", "--lr", "1e-4"],
            (false, None, false, 1e-4),
        ),
    ];
    for (index, (flags, expected)) in cases.into_iter().enumerate() {
        let out = tmp.path().join(format!("run{index}"));
        let mut extra = vec!["--max-steps", "1"];
        extra.extend_from_slice(flags);
        let o = trainer(&tiny_train_args(ds, out.to_str().unwrap(), &extra));
        assert!(o.status.success(), "{flags:?}: {}", stderr(&o));
        assert_eq!(recipe_of(&out), expected, "{flags:?}");
        let ema = expected.1.map_or("off".to_string(), |d| d.to_string());
        let sn = if expected.0 { "on" } else { "off" };
        let said = format!("recipe: loss bce, spectral norm {sn}, EMA {ema}, DiffAugment off");
        assert!(stderr(&o).contains(&said), "{flags:?}: {}", stderr(&o));
    }
    // TTUR: D's learning rate apart from G's, as the optimisers use them (metrics.jsonl).
    let ttur = tmp.path().join("ttur");
    let o = trainer(&tiny_train_args(
        ds,
        ttur.to_str().unwrap(),
        &["--max-steps", "1", "--lr", "0.0001", "--lr-d", "0.0004"],
    ));
    assert!(o.status.success(), "{}", stderr(&o));
    let line = std::fs::read_to_string(ttur.join("metrics.jsonl")).unwrap();
    let metrics: serde_json::Value = serde_json::from_str(line.lines().next().unwrap()).unwrap();
    assert_eq!(metrics["lr_g"].as_f64(), Some(0.0001), "{line}");
    assert_eq!(metrics["lr_d"].as_f64(), Some(0.0004), "{line}");
    let bad_out = tmp.path().join("bad");
    for (flags, named) in [
        (&["--lr-d", "-1"][..], "--lr-d"),
        (&["--preset", "wgan"], "wgan"),
        (&["--ema", "fast"], "fast"),
        (&["--spectral-norm", "yes"], "yes"),
    ] {
        let mut extra = vec!["--max-steps", "1"];
        extra.extend_from_slice(flags);
        let o = trainer(&tiny_train_args(ds, bad_out.to_str().unwrap(), &extra));
        assert!(!o.status.success(), "{flags:?} was accepted");
        assert!(stderr(&o).contains(named), "{flags:?}: {}", stderr(&o));
        assert!(!bad_out.exists(), "{flags:?} wrote {}", bad_out.display());
    }
    let run0 = tmp.path().join("run0");
    let o = trainer(&[
        "train",
        "--resume",
        run0.to_str().unwrap(),
        "--preset",
        "dcgan",
        "--max-steps",
        "2",
    ]);
    assert!(!o.status.success(), "a resume changed the recipe");
    assert!(stderr(&o).contains("--preset"), "{}", stderr(&o));
}

/// `--r1 GAMMA --r1-every N` through the trainer: the penalty is logged (positive, finite) on
/// exactly the steps that apply it (the first of every N), and it reaches D's update: the
/// discriminator trained with it differs from the one trained without it, everything else
/// (seed, data, steps) equal. A penalty that stopped reaching D's loss, a lost weight or a
/// wrong lazy interval fails one of these.
#[test]
fn r1_through_the_cli_is_logged_on_its_steps_and_changes_the_discriminator() {
    let tmp = tempfile::tempdir().unwrap();
    let data = fixture(tmp.path());
    let ds = data.to_str().unwrap();
    let run = |name: &str, extra: &[&str]| {
        let out = tmp.path().join(name);
        let mut args = vec![
            "--max-steps",
            "4",
            "--sample-every",
            "0",
            "--checkpoint-every",
            "0",
        ];
        args.extend_from_slice(extra);
        let o = trainer(&tiny_train_args(ds, out.to_str().unwrap(), &args));
        assert!(o.status.success(), "{}", stderr(&o));
        out
    };
    let with = run("r1", &["--r1", "10", "--r1-every", "2"]);
    let without = run("plain", &[]);
    let text = std::fs::read_to_string(with.join("metrics.jsonl")).unwrap();
    let penalties: Vec<(u64, Option<f64>)> = text
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["step"].as_u64().unwrap(), v["r1_penalty"].as_f64())
        })
        .collect();
    assert_eq!(penalties.len(), 4, "{text}");
    for (step, penalty) in &penalties {
        // Step s (1-based) applies R1 when s - 1 is a multiple of the interval.
        if (step - 1) % 2 == 0 {
            let p = penalty.unwrap_or_else(|| panic!("step {step} logs no r1_penalty: {text}"));
            assert!(p.is_finite() && p > 0.0, "step {step}: r1_penalty {p}");
        } else {
            assert!(
                penalty.is_none(),
                "step {step} logs a penalty it did not apply: {text}"
            );
        }
    }
    let plain = std::fs::read_to_string(without.join("metrics.jsonl")).unwrap();
    assert!(!plain.contains("\"r1_penalty\":"), "{plain}");
    // D's file also holds its BatchNorm running statistics, which the penalty's extra forward
    // pass moves anyway; G's weights differ only if the penalty changed D's parameters (G's
    // update runs D with batch statistics). Checked: with the penalty kept out of D's loss, the
    // G assertion fails.
    let file = |run: &Path, name: &str| std::fs::read(run.join("final").join(name)).unwrap();
    assert!(
        file(&with, "discriminator.safetensors") != file(&without, "discriminator.safetensors"),
        "--r1 left D as without it"
    );
    assert!(
        file(&with, "generator.safetensors") != file(&without, "generator.safetensors"),
        "--r1 did not change D's parameters: G trained as without it"
    );
}

/// `--arch resnet --preset sngan` trains the SNGAN ResNet with SNGAN's recipe (hinge, 5 D steps
/// per G step, each on its own batch, betas (0, 0.9), lr 2e-4), stores both in config.json, and
/// resumed halfway (past an epoch boundary inside a step) ends bit-identical to a straight run;
/// settings the networks cannot take are refused by flag before any folder is made.
#[test]
fn resnet_with_the_sngan_preset_trains_resumes_bit_exactly_and_refuses_bad_settings() {
    let tmp = tempfile::tempdir().unwrap();
    let data = fixture(tmp.path());
    let ds = data.to_str().unwrap();
    let args = |out: &Path, steps: &'static str, extra: &[&'static str]| -> Vec<String> {
        let mut a: Vec<String> = [
            "train",
            "--dataset",
            "mnist",
            "--data-dir",
            ds,
            "--fit",
            "pad",
            "--arch",
            "resnet",
            "--preset",
            "sngan",
            "--image-size",
            "32",
            "--g-width",
            "2",
            "--d-width",
            "4",
            "--latent-dim",
            "16",
            "--batch-size",
            "8",
            "--sample-every",
            "0",
            "--checkpoint-every",
            "0",
            "--max-steps",
            steps,
            "--g-spectral-norm",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.push("--out".into());
        a.push(out.to_str().unwrap().into());
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let run = |a: Vec<String>| trainer(&a.iter().map(String::as_str).collect::<Vec<_>>());
    let (straight, split) = (tmp.path().join("straight"), tmp.path().join("split"));
    let o = run(args(&straight, "4", &[]));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("loss hinge, spectral norm on (G too), EMA 0.999"),
        "{}",
        stderr(&o)
    );
    assert!(stderr(&o).contains("D steps 5"), "{}", stderr(&o));
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(straight.join("final/config.json")).unwrap())
            .unwrap();
    assert_eq!(config["model"]["arch"], "resnet");
    assert_eq!(config["model"]["g_spectral_norm"], true);
    let training = &config["training"];
    assert_eq!(training["d_steps"], 5);
    assert_eq!(training["loss"], "hinge");
    assert_eq!(
        (
            training["adam"]["beta1"].as_f64(),
            training["adam"]["beta2"].as_f64()
        ),
        (Some(0.0), Some(0.9))
    );
    // 64 images in batches of 8: 4 steps of 5 batches read 2 epochs and 4 batches.
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(straight.join("final/trainer_state.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        (&state["step"], &state["epoch"], &state["batch_in_epoch"]),
        (
            &serde_json::json!(4),
            &serde_json::json!(2),
            &serde_json::json!(4)
        ),
        "{state}"
    );
    let o = run(args(&split, "2", &[]));
    assert!(o.status.success(), "{}", stderr(&o));
    let o = trainer(&[
        "train",
        "--resume",
        split.to_str().unwrap(),
        "--max-steps",
        "4",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    for ((name, x), (_, y)) in zip_eq(
        &weight_files(&straight.join("final")),
        &weight_files(&split.join("final")),
    ) {
        assert!(x == y, "{name} differs after the resume");
    }
    let bad = tmp.path().join("bad");
    let replaced = |from: &str, to: &str| {
        let mut a = args(&bad, "1", &[]);
        let at = a.iter().position(|x| x == from).unwrap();
        a[at] = to.into();
        a
    };
    for (a, named) in [
        (args(&bad, "1", &["--d-steps", "0"]), "--d-steps"),
        (replaced("resnet", "vgg"), "vgg"),
        (replaced("32", "16"), "--image-size"),
    ] {
        let o = run(a);
        assert!(!o.status.success(), "{named} was accepted");
        let err = stderr(&o);
        let first = err.lines().next().unwrap_or_default();
        assert!(
            first.starts_with("error:") && first.contains(named),
            "{named}: {err}"
        );
        assert!(!bad.exists(), "{named} wrote {}", bad.display());
    }
    let o = trainer(&[
        "train",
        "--resume",
        split.to_str().unwrap(),
        "--arch",
        "dcgan",
    ]);
    assert!(!o.status.success(), "a resume changed the architecture");
    assert!(stderr(&o).contains("--arch"), "{}", stderr(&o));
}
