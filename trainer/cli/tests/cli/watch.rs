//! Watching a run: TensorBoard's own reader loads the event files (scalars equal to
//! metrics.jsonl, sample images equal to the grids, `eval/*` at the evaluation steps, each step
//! once after a kill -9 and resume); `best/` is the lowest-FID step, survives kill -9 and
//! exports; evaluations do not change the weights; the progress GIF has a frame per grid.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use gantry_models::{Checkpoint, RunCheckpoint, TensorMap};
use gantry_testkit::{onnx_python, stderr, stdout, tiny_train_args, write_learnable_mnist};
use gantry_trainer::metrics::{self, StepMetrics};
use serde_json::Value;

use super::{metrics_lines, spawn_trainer, trainer, wait_until};

/// An image event as TensorBoard read it.
struct ImageEvent {
    step: u64,
    width: u32,
    height: u32,
    png: Vec<u8>,
}

/// TensorBoard's view of a run: scalars by tag, images by tag.
struct Board {
    scalars: BTreeMap<String, Vec<(u64, f64)>>,
    images: BTreeMap<String, Vec<ImageEvent>>,
}

fn read_board(run: &Path) -> Board {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cli/tb_read.py");
    let out = Command::new(onnx_python())
        .arg(script)
        .arg(run.join("tb"))
        .output()
        .unwrap();
    assert!(out.status.success(), "tb_read.py: {}", stderr(&out));
    let json: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let scalars = json["scalars"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(tag, events)| {
            let events = events
                .as_array()
                .unwrap()
                .iter()
                .map(|e| (e[0].as_u64().unwrap(), e[1].as_f64().unwrap()))
                .collect();
            (tag.clone(), events)
        })
        .collect();
    let images = json["images"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(tag, events)| {
            let events = events
                .as_array()
                .unwrap()
                .iter()
                .map(|e| ImageEvent {
                    step: e[0].as_u64().unwrap(),
                    width: e[1].as_u64().unwrap() as u32,
                    height: e[2].as_u64().unwrap() as u32,
                    png: base64_decode(e[3].as_str().unwrap()),
                })
                .collect();
            (tag.clone(), events)
        })
        .collect();
    Board { scalars, images }
}

/// Standard base64 (the Python side's `b64encode`).
fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => (c - b'A') as u32,
            b'a'..=b'z' => (c - b'a' + 26) as u32,
            b'0'..=b'9' => (c - b'0' + 52) as u32,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {c}"),
        }
    };
    let mut out = Vec::new();
    for chunk in text.as_bytes().chunks(4) {
        let digits: Vec<u8> = chunk.iter().copied().filter(|&c| c != b'=').collect();
        let mut n = 0u32;
        for (i, &c) in digits.iter().enumerate() {
            n |= value(c) << (18 - 6 * i);
        }
        out.extend_from_slice(&n.to_be_bytes()[1..digits.len()]);
    }
    out
}

/// Every scalar of metrics.jsonl appears in TensorBoard under its field's name at its step,
/// once, with its value (as the f32 TensorBoard stores); `eval/*` exactly at the evaluations.
fn assert_board_matches_metrics(board: &Board, history: &[StepMetrics]) {
    let steps: Vec<u64> = history.iter().map(|m| m.step).collect();
    let mut expected: BTreeMap<String, Vec<(u64, f64)>> = BTreeMap::new();
    for m in history {
        for (tag, value) in m.scalars() {
            expected.entry(tag).or_default().push((m.step, value));
        }
    }
    for tag in [
        "loss_d",
        "loss_g",
        "d_real",
        "d_fake",
        "img_per_sec",
        "lr_d",
        "lr_g",
    ] {
        assert!(expected.contains_key(tag), "metrics lack {tag}");
    }
    assert_eq!(
        board.scalars.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>(),
        "scalar tags"
    );
    for (tag, want) in &expected {
        let got = &board.scalars[tag];
        let got_steps: Vec<u64> = got.iter().map(|e| e.0).collect();
        let want_steps: Vec<u64> = want.iter().map(|e| e.0).collect();
        assert_eq!(got_steps, want_steps, "{tag}: steps (each once, in order)");
        for ((step, g), (_, w)) in got.iter().zip(want) {
            assert_eq!(*g as f32, *w as f32, "{tag} at step {step}");
        }
        if !tag.starts_with("eval/") {
            assert_eq!(got_steps, steps, "{tag} at every step");
        }
    }
}

fn best_step(history: &[StepMetrics]) -> (u64, f64) {
    history
        .iter()
        .filter_map(|m| m.eval.as_ref().map(|e| (m.step, e.fid)))
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .expect("evaluations in metrics.jsonl")
}

/// Exports the run's `which` checkpoint to `out`; returns the ONNX file's training steps.
fn exported_steps(run: &Path, which: RunCheckpoint, out: &Path) -> String {
    gantry_exporter::export(&gantry_exporter::ExportOptions {
        checkpoint: run.to_path_buf(),
        which,
        out: Some(out.to_path_buf()),
        opset: gantry_exporter::DEFAULT_OPSET,
        graph: gantry_exporter::graph::GraphOptions {
            precision: gantry_exporter::graph::Precision::Fp32,
            fold_batchnorm: true,
            output: gantry_exporter::graph::OutputFormat::Float,
        },
        weights: gantry_exporter::WeightsChoice::Auto,
        triton: None,
        calibration: Default::default(),
    })
    .unwrap();
    candle_onnx::read_file(out)
        .unwrap()
        .metadata_props
        .iter()
        .find(|p| p.key == "gantry.training_steps")
        .map(|p| p.value.clone())
        .unwrap()
}

fn gif_frames(path: &Path) -> usize {
    use image::AnimationDecoder;
    let file = std::io::BufReader::new(std::fs::File::open(path).unwrap());
    image::codecs::gif::GifDecoder::new(file)
        .unwrap()
        .into_frames()
        .count()
}

#[test]
fn tensorboard_sees_the_metrics_samples_and_evaluations_and_best_is_the_lowest_fid() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("mnist");
    write_learnable_mnist(&data, 400, 100);
    let out = tmp.path().join("run");
    let (ds, os) = (data.to_str().unwrap(), out.to_str().unwrap());
    let watch = [
        "--max-steps",
        "30",
        "--sample-every",
        "10",
        "--eval-every",
        "10",
        "--eval-samples",
        "120",
        "--ema",
        "0.9",
    ];
    let o = trainer(&tiny_train_args(ds, os, &watch));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("step 10: FID"), "{}", stderr(&o));

    let history = metrics::read(&out.join("metrics.jsonl")).unwrap();
    assert_eq!(history.len(), 30);
    let evals: Vec<u64> = history
        .iter()
        .filter(|m| m.eval.is_some())
        .map(|m| m.step)
        .collect();
    assert_eq!(evals, [10, 20, 30]);
    for m in &history {
        if let Some(e) = &m.eval {
            assert!(
                e.fid.is_finite() && e.fid > 0.0 && e.fid_raw.is_some(),
                "{e:?}"
            );
            assert!(e.seconds > 0.0 && e.samples == 120, "{e:?}");
            assert!(e.swd.is_some_and(|s| s > 0.0), "{e:?}");
        }
    }
    let board = read_board(&out);
    assert_board_matches_metrics(&board, &history);
    assert!(board.scalars.contains_key("eval/fid"));
    assert!(board.scalars.contains_key("eval/fid_raw"));
    assert!(board.scalars.contains_key("eval/swd"));

    // The sample images are the grids written to samples/, pixel for pixel.
    let images = &board.images["samples"];
    assert_eq!(
        images.iter().map(|i| i.step).collect::<Vec<_>>(),
        [10, 20, 30]
    );
    for image in images {
        let step = image.step;
        let grid = image::open(out.join(format!("samples/step_{step:06}.png"))).unwrap();
        let shown = image::load_from_memory(&image.png).unwrap();
        assert_eq!((image.width, image.height), (grid.width(), grid.height()));
        assert_eq!(shown.to_luma8(), grid.to_luma8(), "image at step {step}");
    }

    // best/ is the lowest-FID step of metrics.jsonl, and exports.
    let (step, _) = best_step(&history);
    let best = Checkpoint::load(&out.join("best")).unwrap();
    assert_eq!(best.step(), step);
    let onnx = tmp.path().join("best.onnx");
    assert_eq!(
        exported_steps(&out, RunCheckpoint::Best, &onnx),
        step.to_string()
    );

    // One GIF frame per sample interval; `trainer sample --animate` makes the same.
    assert_eq!(gif_frames(&out.join("progress.gif")), 3);
    let again = tmp.path().join("again.gif");
    let o = trainer(&["sample", "--animate", os, "--out", again.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("3 frames"), "{}", stdout(&o));
    assert_eq!(gif_frames(&again), 3);

    // Evaluating does not change what is trained: the same run without evaluations (and
    // without TensorBoard) ends with the same weights and optimiser state, bit for bit.
    let plain = tmp.path().join("plain");
    let mut quiet = watch.to_vec();
    quiet[5] = "0";
    quiet.extend(["--tensorboard", "off"]);
    let o = trainer(&tiny_train_args(ds, plain.to_str().unwrap(), &quiet));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!plain.join("tb").exists() && !plain.join("best").exists());
    let (a, b) = (
        Checkpoint::load(&out.join("final")).unwrap(),
        Checkpoint::load(&plain.join("final")).unwrap(),
    );
    let maps = |c: &Checkpoint| -> Vec<TensorMap> {
        vec![
            c.generator.clone(),
            c.generator_ema.clone().unwrap(),
            c.discriminator.clone().unwrap(),
            c.optimizer_g.clone().unwrap().0,
            c.optimizer_d.clone().unwrap().0,
        ]
    };
    for (x, y) in maps(&a).iter().zip(maps(&b)) {
        assert_eq!(x.len(), y.len());
        for (name, t) in x {
            let flat = |t: &candle_core::Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(
                flat(t),
                flat(&y[name]),
                "{name} differs with evaluations on"
            );
        }
    }
}

#[test]
fn after_kill_9_and_resume_each_step_is_on_the_board_once_and_best_stays_loadable() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("mnist");
    write_learnable_mnist(&data, 200, 60);
    let out = tmp.path().join("run");
    let (ds, os) = (data.to_str().unwrap(), out.to_str().unwrap());
    let mut child = spawn_trainer(&tiny_train_args(
        ds,
        os,
        &[
            "--max-steps",
            "100000",
            "--epochs",
            "100000",
            "--checkpoint-every",
            "10",
            "--sample-every",
            "5",
            "--eval-every",
            "3",
            "--eval-samples",
            "40",
        ],
    ));
    // Stop it where it has logged steps after its last checkpoint (the steps a resumed run
    // redoes), then kill it.
    let pid = child.id().to_string();
    let signal = |sig: &str| {
        let s = Command::new("kill").args([sig, &pid]).status().unwrap();
        assert!(s.success());
    };
    let checkpoint_step = loop {
        wait_until("13 logged steps", Duration::from_secs(120), || {
            metrics_lines(&out) >= 13
        });
        signal("-STOP");
        let ckpt = gantry_models::resolve_checkpoint(&out)
            .ok()
            .and_then(|d| Checkpoint::load(&d).ok())
            .map(|c| c.step());
        match ckpt {
            Some(step) if (metrics_lines(&out) as u64) > step => break step,
            _ => signal("-CONT"),
        }
    };
    signal("-KILL");
    child.wait().unwrap();
    let best = Checkpoint::load(&gantry_models::atomic::recover_dir(&out.join("best")))
        .expect("best/ survives kill -9");
    assert!(best.step() > 0);

    let end = (checkpoint_step + 12).to_string();
    let o = trainer(&["train", "--resume", os, "--max-steps", &end]);
    assert!(o.status.success(), "{}", stderr(&o));
    let history = metrics::read(&out.join("metrics.jsonl")).unwrap();
    assert_eq!(history.len() as u64, checkpoint_step + 12);
    let board = read_board(&out);
    assert_board_matches_metrics(&board, &history);
    let image_steps: Vec<u64> = board.images["samples"].iter().map(|i| i.step).collect();
    let want: Vec<u64> = (1..=checkpoint_step + 12)
        .filter(|s| s % 5 == 0 || *s == checkpoint_step + 12)
        .collect();
    assert_eq!(image_steps, want, "each grid once");
    assert_eq!(
        Checkpoint::load(&out.join("best")).unwrap().step(),
        best_step(&history).0
    );
    assert_eq!(gif_frames(&out.join("progress.gif")), want.len());
}
