//! Regressions from a hostile-input review (issue 18): each case once panicked, hung, lost a
//! file or passed silently. Each now gives a one-line error naming the flag or file, or works.

use std::path::Path;
use std::time::Duration;

use gantry_models::{Checkpoint, TrainerState};
use gantry_testkit::{assert_fails_with, stderr, tiny_train_args, write_mnist_fixture};

use super::{spawn_trainer, trainer, wait_until};

/// A finished tiny run of `steps` steps on a 40-image fixture, checkpointed every step.
fn finished_run(dir: &Path, steps: &str) -> (String, String) {
    let data = dir.join("mnist");
    write_mnist_fixture(&data, 40);
    let out = dir.join("run");
    let (ds, os) = (data.to_str().unwrap(), out.to_str().unwrap());
    let o = trainer(&tiny_train_args(
        ds,
        os,
        &["--max-steps", steps, "--checkpoint-every", "1"],
    ));
    assert!(o.status.success(), "{}", stderr(&o));
    (ds.to_string(), os.to_string())
}

#[test]
fn resume_survives_a_smaller_data_set_and_a_position_past_the_epoch() {
    let tmp = tempfile::tempdir().unwrap();
    // 40 images, batch 8: position 3 of 5 batches after 3 steps.
    let (_, os) = finished_run(tmp.path(), "3");
    let small = tmp.path().join("small");
    write_mnist_fixture(&small, 9);
    let o = trainer(&[
        "train",
        "--resume",
        &os,
        "--data-dir",
        small.to_str().unwrap(),
        "--max-steps",
        "5",
    ]);
    assert!(o.status.success(), "smaller data on resume: {}", stderr(&o));
    assert_eq!(
        Checkpoint::load(&Path::new(&os).join("final"))
            .unwrap()
            .step(),
        5
    );
    // An edited trainer_state.json far past the end of the epoch.
    let state_path = Path::new(&os).join("checkpoint/trainer_state.json");
    let mut state: TrainerState =
        serde_json::from_slice(&std::fs::read(&state_path).unwrap()).unwrap();
    state.batch_in_epoch = 1_000_000;
    std::fs::write(&state_path, serde_json::to_vec(&state).unwrap()).unwrap();
    std::fs::remove_dir_all(Path::new(&os).join("final")).unwrap();
    let o = trainer(&["train", "--resume", &os, "--max-steps", "6"]);
    assert!(
        o.status.success(),
        "position past the epoch: {}",
        stderr(&o)
    );
}

#[test]
fn bad_values_fail_before_anything_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("mnist");
    write_mnist_fixture(&data, 16);
    let ds = data.to_str().unwrap();
    for (extra, needles) in [
        (&["--lr", "-1"][..], &["--lr", "positive"][..]),
        (&["--lr", "nan"], &["--lr", "NaN"]),
        (&["--lr", "inf"], &["--lr", "inf"]),
        (&["--beta1", "1.5"], &["--beta1", "[0, 1)"]),
        (&["--beta2", "1"], &["--beta2", "[0, 1)"]),
        (&["--ema", "1"], &["--ema", "[0, 1)"]),
        (&["--epochs", "0"], &["--epochs", "at least 1"]),
        (&["--max-steps", "0"], &["--max-steps", "at least 1"]),
        (&["--g-width", "100000"], &["--g-width", "65536"]),
        (&["--latent-dim", "100000000"], &["--latent-dim", "65536"]),
        (&["--d-width", "8192"], &["--d-width", "parameters"]),
    ] {
        let out = tmp.path().join("never");
        let os = out.to_str().unwrap();
        let mut args = vec!["train", "--dataset", "mnist", "--data-dir", ds, "--out", os];
        args.extend_from_slice(&["--image-size", "16", "--batch-size", "8"]);
        args.extend_from_slice(extra);
        let o = trainer(&args);
        assert_fails_with(&o, needles);
        assert!(!out.exists(), "{extra:?} created the output folder");
    }
}

#[test]
fn a_folder_holding_part_of_a_run_is_never_overwritten() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("mnist");
    write_mnist_fixture(&data, 16);
    let out = tmp.path().join("partial");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("metrics.jsonl"), "{\"step\":1}\n").unwrap();
    let o = trainer(&tiny_train_args(
        data.to_str().unwrap(),
        out.to_str().unwrap(),
        &["--max-steps", "1"],
    ));
    assert_fails_with(&o, &["already holds a run", "metrics.jsonl"]);
    assert_eq!(
        std::fs::read_to_string(out.join("metrics.jsonl")).unwrap(),
        "{\"step\":1}\n"
    );
}

#[test]
fn two_trainers_never_write_into_one_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("mnist");
    write_mnist_fixture(&data, 64);
    let out = tmp.path().join("run");
    let (ds, os) = (data.to_str().unwrap(), out.to_str().unwrap());
    let mut first = spawn_trainer(&tiny_train_args(
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
    ));
    wait_until(
        "the first run's checkpoint",
        Duration::from_secs(120),
        || Checkpoint::load(&out.join("checkpoint")).is_ok(),
    );
    let o = trainer(&tiny_train_args(ds, os, &["--max-steps", "2"]));
    assert_fails_with(&o, &["--out", "already holds a run"]);
    // Resuming while it runs is refused by the folder's lock.
    let o = trainer(&["train", "--resume", os, "--max-steps", "3"]);
    assert_fails_with(&o, &["in use by another trainer"]);
    first.kill().unwrap();
    first.wait().unwrap();
}

#[test]
fn non_finite_weights_are_refused_everywhere() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, os) = finished_run(tmp.path(), "2");
    let dir = Path::new(&os).join("checkpoint");
    // Put a NaN into G's weights on disk, as a damaged file would hold.
    let mut ckpt = Checkpoint::load(&dir).unwrap();
    let w = ckpt.generator["layers.1.weight"].clone();
    let poisoned = gantry_models::tensors::safetensors_bytes(
        &[("layers.1.weight".to_string(), (w * f64::NAN).unwrap())]
            .into_iter()
            .chain(
                ckpt.generator
                    .iter()
                    .filter(|(k, _)| *k != "layers.1.weight")
                    .map(|(k, v)| (k.clone(), v.clone())),
            )
            .collect(),
        None,
    )
    .unwrap();
    ckpt.generator.clear();
    std::fs::write(dir.join("generator.safetensors"), poisoned).unwrap();
    std::fs::remove_dir_all(Path::new(&os).join("final")).unwrap();
    for args in [
        vec!["train", "--resume", os.as_str(), "--max-steps", "4"],
        vec!["sample", "--checkpoint", os.as_str(), "--out", "/dev/null"],
    ] {
        assert_fails_with(
            &trainer(&args),
            &["generator.safetensors", "layers.1.weight", "NaN"],
        );
    }
}

#[test]
fn a_bad_value_stored_in_a_checkpoint_names_the_file_not_a_flag() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, os) = finished_run(tmp.path(), "1");
    for dir in ["checkpoint", "final"] {
        let path = Path::new(&os).join(dir).join("config.json");
        let text = std::fs::read_to_string(&path).unwrap();
        let edited = text.replacen("\"lr\": 0.0004", "\"lr\": -1.0", 1);
        assert_ne!(text, edited, "the fixture stores the learning rate");
        std::fs::write(&path, edited).unwrap();
    }
    let o = trainer(&["train", "--resume", &os, "--max-steps", "3"]);
    assert_fails_with(&o, &["config.json", "learning rate"]);
    assert!(!stderr(&o).contains("--lr"), "{}", stderr(&o));
}

#[test]
fn an_os_error_is_said_once() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("mnist");
    write_mnist_fixture(&data, 16);
    let file = tmp.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    let o = trainer(&tiny_train_args(
        data.to_str().unwrap(),
        file.join("run").to_str().unwrap(),
        &[],
    ));
    assert_fails_with(&o, &["a-file/run", "Not a directory"]);
    let last = stderr(&o).lines().last().unwrap().to_string();
    assert_eq!(last.matches("Not a directory").count(), 1, "{last}");
}
