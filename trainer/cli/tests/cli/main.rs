//! The `trainer` binary: clean errors on bad input, Ctrl-C, kill -9, divergence, what a run
//! writes, and evaluation.

mod claims;
#[cfg(feature = "mpi")]
mod distributed;
mod eval;
mod hostile;
mod watch;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gantry_models::{resolve_checkpoint, Checkpoint};
use gantry_testkit::{
    assert_fails_with, encode_idx, stderr, stdout, tiny_train_args, write_mnist_fixture,
};

const TRAINER: &str = env!("CARGO_BIN_EXE_trainer");

/// Runs `trainer` with `args`.
fn trainer(args: &[&str]) -> std::process::Output {
    gantry_testkit::run(TRAINER, args)
}

fn fixture(dir: &Path) -> PathBuf {
    let data = dir.join("mnist");
    write_mnist_fixture(&data, 64);
    data
}

fn metrics_lines(out: &Path) -> usize {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

fn spawn_trainer(args: &[&str]) -> Child {
    Command::new(TRAINER)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn dir_bytes(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
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

#[test]
fn bad_input_gives_one_line_errors_naming_the_file_or_flag() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let data = fixture(d);
    let ds = data.to_str().unwrap();
    let out = d.join("run");
    let os = out.to_str().unwrap();

    let missing = d.join("nowhere");
    assert_fails_with(
        &trainer(&tiny_train_args(missing.to_str().unwrap(), os, &[])),
        &["nowhere", "does not exist"],
    );

    let corrupt = |name: &str, edit: &dyn Fn(&Path)| {
        let dir = d.join(name);
        write_mnist_fixture(&dir, 16);
        edit(&dir);
        dir
    };
    let magic = corrupt("magic", &|dir| {
        std::fs::write(
            dir.join("train-images-idx3-ubyte"),
            b"PK\x03\x04 zip, not idx",
        )
        .unwrap()
    });
    assert_fails_with(
        &trainer(&tiny_train_args(magic.to_str().unwrap(), os, &[])),
        &["train-images-idx3-ubyte", "not an IDX file"],
    );

    let truncated = corrupt("truncated", &|dir| {
        let p = dir.join("train-images-idx3-ubyte");
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() - 100]).unwrap();
    });
    assert_fails_with(
        &trainer(&tiny_train_args(truncated.to_str().unwrap(), os, &[])),
        &["train-images-idx3-ubyte", "truncated"],
    );

    let mismatch = corrupt("mismatch", &|dir| {
        std::fs::write(
            dir.join("train-labels-idx1-ubyte"),
            encode_idx(&[15], &[1; 15]),
        )
        .unwrap()
    });
    assert_fails_with(
        &trainer(&tiny_train_args(mismatch.to_str().unwrap(), os, &[])),
        &["train-labels-idx1-ubyte", "15 labels", "16 images"],
    );

    let empty = d.join("empty");
    std::fs::create_dir_all(empty.join("cats")).unwrap();
    let o = trainer(&[
        "train",
        "--dataset",
        "folder",
        "--data-dir",
        empty.to_str().unwrap(),
        "--out",
        os,
    ]);
    assert_fails_with(&o, &["empty", "no PNG or JPEG images"]);

    let broken = d.join("broken");
    std::fs::create_dir_all(broken.join("cats")).unwrap();
    image::RgbImage::new(8, 8)
        .save(broken.join("cats/ok.png"))
        .unwrap();
    std::fs::write(broken.join("cats/bad.png"), b"\x89PNG\r\n\x1a\n garbage").unwrap();
    let o = trainer(&[
        "train",
        "--dataset",
        "folder",
        "--data-dir",
        broken.to_str().unwrap(),
        "--out",
        os,
    ]);
    assert_fails_with(&o, &["bad.png", "cannot decode"]);

    let base = ["train", "--dataset", "mnist", "--data-dir", ds, "--out", os];
    assert_fails_with(
        &trainer(&[&base[..], &["--image-size", "48"]].concat()),
        &["--image-size", "power of two"],
    );
    assert_fails_with(
        &trainer(&[&base[..], &["--batch-size", "0"]].concat()),
        &["--batch-size"],
    );
    // Unknown values are rejected by the argument parser (clap's message and usage, exit 2).
    let o = trainer(&["train", "--dataset", "imagenet", "--out", os]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).starts_with("error: invalid value 'imagenet' for '--dataset"),
        "{}",
        stderr(&o)
    );

    let file = d.join("a-file");
    std::fs::write(&file, "x").unwrap();
    let blocked = file.join("run");
    assert_fails_with(
        &trainer(&tiny_train_args(ds, blocked.to_str().unwrap(), &[])),
        &["a-file/run"],
    );

    let nothing = d.join("no-run");
    assert_fails_with(
        &trainer(&["train", "--resume", nothing.to_str().unwrap()]),
        &["--resume", "no-run"],
    );
    assert!(
        !out.join("checkpoint").exists(),
        "no failed run left a checkpoint"
    );
}

#[test]
fn existing_checkpoints_are_never_damaged() {
    let tmp = tempfile::tempdir().unwrap();
    let data = fixture(tmp.path());
    let out = tmp.path().join("run");
    let (ds, os) = (data.to_str().unwrap(), out.to_str().unwrap());
    let o = trainer(&tiny_train_args(ds, os, &["--max-steps", "2"]));
    assert!(o.status.success(), "{}", stderr(&o));
    let before = dir_bytes(&out.join("checkpoint"));
    // A fresh run into the same folder refuses.
    assert_fails_with(
        &trainer(&tiny_train_args(ds, os, &["--max-steps", "2"])),
        &["already holds a run", "--resume"],
    );
    // Resuming with a broken data folder fails before touching anything.
    let o = trainer(&[
        "train",
        "--resume",
        os,
        "--data-dir",
        tmp.path().join("gone").to_str().unwrap(),
    ]);
    assert_fails_with(&o, &["gone", "does not exist"]);
    // Changing the run's meaning on resume is refused.
    assert_fails_with(
        &trainer(&["train", "--resume", os, "--lr", "0.1"]),
        &["--lr", "cannot be changed"],
    );
    assert_eq!(before, dir_bytes(&out.join("checkpoint")));
    // A corrupt checkpoint file is named on resume.
    std::fs::write(out.join("checkpoint/optimizer_d.safetensors"), b"junk").unwrap();
    std::fs::write(out.join("final/optimizer_d.safetensors"), b"junk").unwrap();
    assert_fails_with(
        &trainer(&["train", "--resume", os]),
        &["optimizer_d.safetensors", "not a valid safetensors"],
    );
}

/// Ctrl-C, and SIGTERM (what Slurm and `mpirun` send before ending a job), stop cleanly.
#[test]
fn ctrl_c_finishes_the_step_checkpoints_and_exits_zero() {
    for signal in ["-INT", "-TERM"] {
        stop_with(signal);
    }
}

fn stop_with(signal: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let data = fixture(tmp.path());
    let out = tmp.path().join("run");
    let (ds, os) = (data.to_str().unwrap(), out.to_str().unwrap());
    let child = spawn_trainer(&tiny_train_args(
        ds,
        os,
        &[
            "--max-steps",
            "100000",
            "--epochs",
            "100000",
            "--checkpoint-every",
            "0",
        ],
    ));
    wait_until("5 steps", Duration::from_secs(120), || {
        metrics_lines(&out) >= 5
    });
    let status = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let o = child.wait_with_output().unwrap();
    assert!(
        o.status.success(),
        "{signal}: exit {:?}\n{}",
        o.status,
        stderr(&o)
    );
    assert!(
        stdout(&o).contains(&format!("resume with: trainer train --resume {os}")),
        "{}",
        stdout(&o)
    );
    let ckpt = Checkpoint::load(&out.join("checkpoint")).unwrap();
    let step = ckpt.step();
    assert!(step >= 5);
    assert_eq!(
        metrics_lines(&out) as u64,
        step,
        "the checkpoint holds the last finished step"
    );
    // The printed command continues the run.
    let target = (step + 3).to_string();
    let o = trainer(&["train", "--resume", os, "--max-steps", &target]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        Checkpoint::load(&out.join("final")).unwrap().step(),
        step + 3
    );
}

#[test]
fn kill_9_at_any_moment_leaves_a_loadable_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let data = fixture(tmp.path());
    let out = tmp.path().join("run");
    let (ds, os) = (data.to_str().unwrap(), out.to_str().unwrap());
    let mut last = 0;
    for round in 0..4u64 {
        let args = if round == 0 {
            tiny_train_args(
                ds,
                os,
                &[
                    "--max-steps",
                    "100000",
                    "--epochs",
                    "100000",
                    "--checkpoint-every",
                    "1",
                ],
            )
        } else {
            vec!["train", "--resume", os]
        };
        let mut child = spawn_trainer(&args);
        wait_until("a new checkpoint", Duration::from_secs(120), || {
            resolve_checkpoint(&out)
                .ok()
                .and_then(|d| Checkpoint::load(&d).ok())
                .is_some_and(|c| c.step() > last)
        });
        // Kill at a different point of the checkpoint cycle each round.
        std::thread::sleep(Duration::from_millis(7 * round));
        child.kill().unwrap();
        child.wait().unwrap();
        let dir = resolve_checkpoint(&out).unwrap();
        let ckpt = Checkpoint::load(&dir).unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert!(ckpt.step() >= last);
        last = ckpt.step();
    }
}

#[test]
fn divergence_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let data = fixture(tmp.path());
    let out = tmp.path().join("run");
    let (ds, os) = (data.to_str().unwrap(), out.to_str().unwrap());
    let o = trainer(&tiny_train_args(
        ds,
        os,
        &["--max-steps", "2", "--checkpoint-every", "1"],
    ));
    assert!(o.status.success(), "{}", stderr(&o));
    // Poison the discriminator's logit layer so the next loss overflows.
    let dir = out.join("checkpoint");
    let mut ckpt = Checkpoint::load(&dir).unwrap();
    let d = ckpt.discriminator.as_mut().unwrap();
    let w = d["layers.2.weight"].clone();
    d.insert(
        "layers.2.weight".into(),
        (w.ones_like().unwrap() * 3e38).unwrap(),
    );
    ckpt.save(&dir).unwrap();
    std::fs::remove_dir_all(out.join("final")).unwrap();
    let before = dir_bytes(&dir);
    let o = trainer(&["train", "--resume", os, "--max-steps", "10"]);
    assert_fails_with(&o, &["step 3", "diverged"]);
    assert_eq!(
        before,
        dir_bytes(&dir),
        "the last good checkpoint is kept as it was"
    );
}

#[test]
fn a_run_writes_samples_metrics_plot_and_checkpoints() {
    let tmp = tempfile::tempdir().unwrap();
    let data = fixture(tmp.path());
    let out = tmp.path().join("run");
    let (ds, os) = (data.to_str().unwrap(), out.to_str().unwrap());
    let o = trainer(&tiny_train_args(
        ds,
        os,
        &["--max-steps", "6", "--sample-every", "3", "--ema", "0.9"],
    ));
    assert!(o.status.success(), "{}", stderr(&o));
    for f in [
        "samples/step_000003.png",
        "samples/step_000006.png",
        "metrics.jsonl",
        "losses.png",
        "final/generator_ema.safetensors",
        "checkpoint/config.json",
    ] {
        assert!(out.join(f).is_file(), "missing {f}");
    }
    let grid = image::open(out.join("samples/step_000006.png")).unwrap();
    assert_eq!(
        grid.width(),
        8 * 18 + 2,
        "8x8 grid of 16px images with 2px padding"
    );
    let line = std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .last()
        .unwrap()
        .to_string();
    let m: serde_json::Value = serde_json::from_str(&line).unwrap();
    for key in [
        "step",
        "epoch",
        "loss_d",
        "loss_g",
        "d_real",
        "d_fake",
        "img_per_sec",
        "seconds",
    ] {
        assert!(m.get(key).is_some(), "metrics line lacks {key}: {line}");
    }
    // `trainer sample` draws from the run's EMA generator.
    let grid_path = tmp.path().join("grid.png");
    let o = trainer(&[
        "sample",
        "--checkpoint",
        os,
        "--n",
        "10",
        "--out",
        grid_path.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let grid = image::open(&grid_path).unwrap();
    assert_eq!(grid.width(), 4 * 18 + 2, "10 images: 4 columns of 16px");
}

/// A crash inside the checkpoint writer (injected: between writing the new folder and swapping
/// it in; and, on the rename-aside path that file systems without RENAME_EXCHANGE take, between
/// its two renames) leaves the last checkpoint loadable; resuming continues from it and removes
/// what the crash left behind.
#[test]
fn a_crash_inside_the_checkpoint_writer_is_recovered_and_cleaned_up() {
    for (fault, leftover) in [
        ("dir-written:2", ".checkpoint.tmp-"),
        ("no-exchange,dir-set-aside:1", ".checkpoint.old-"),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let data = fixture(tmp.path());
        let out = tmp.path().join("run");
        let (ds, os) = (data.to_str().unwrap(), out.to_str().unwrap());
        let o = Command::new(TRAINER)
            .args(tiny_train_args(
                ds,
                os,
                &["--max-steps", "5", "--checkpoint-every", "1"],
            ))
            .env("GANTRY_FAULT_INJECTION", fault)
            .output()
            .unwrap();
        assert!(!o.status.success(), "{fault}: the injected crash happened");
        assert!(
            stderr(&o).contains("fault injection: crashing"),
            "{}",
            stderr(&o)
        );
        let names = || -> Vec<String> {
            std::fs::read_dir(&out)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        };
        assert!(
            names().iter().any(|n| n.starts_with(leftover)),
            "{fault}: the crash left {leftover}*: {:?}",
            names()
        );
        let dir = resolve_checkpoint(&out).unwrap();
        let ckpt = Checkpoint::load(&dir).unwrap_or_else(|e| panic!("{fault}: {e}"));
        assert_eq!(ckpt.step(), 1, "{fault}: the checkpoint before the crash");
        let o = trainer(&["train", "--resume", os, "--max-steps", "5"]);
        assert!(o.status.success(), "{fault}: {}", stderr(&o));
        assert_eq!(Checkpoint::load(&out.join("final")).unwrap().step(), 5);
        assert!(
            !names()
                .iter()
                .any(|n| n.contains(".tmp-") || n.contains(".old-")),
            "{fault}: left behind {:?}",
            names()
        );
    }
}
