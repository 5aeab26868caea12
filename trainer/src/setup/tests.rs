//! Start-up checks on their own: device names, what a resume may change, the refusal of a
//! folder that holds a run, the parent folder of an output file.

use super::*;

#[test]
fn devices_parse_and_print_their_names() {
    for kind in [DeviceKind::Cpu, DeviceKind::Cuda] {
        assert_eq!(kind.name().parse::<DeviceKind>(), Ok(kind));
    }
    assert_eq!(DeviceKind::default(), DeviceKind::Cpu);
    let err = "tpu".parse::<DeviceKind>().unwrap_err();
    assert!(
        err.contains("`tpu`") && err.contains("cpu or cuda"),
        "{err}"
    );
    assert!(matches!(select_device(DeviceKind::Cpu), Ok(Device::Cpu)));
    // This build has no CUDA: the error says how to get it (a CUDA build names the device).
    if !cfg!(feature = "cuda") {
        let err = select_device(DeviceKind::Cuda).unwrap_err().to_string();
        assert!(err.contains("--features cuda"), "{err}");
    }
}

/// Each change a resume may make reaches the configuration; none given changes nothing.
#[test]
fn resume_changes_reach_the_configuration() {
    let before = TrainConfig::default();
    let mut config = before.clone();
    ResumeChanges::default().apply(&mut config);
    let json = |c: &TrainConfig| serde_json::to_value(c).unwrap();
    assert_eq!(json(&config), json(&before));
    let changes = ResumeChanges {
        epochs: Some(before.epochs + 7),
        max_steps: Some(1234),
        data_dir: Some("elsewhere".into()),
        sample_every: Some(before.sample_every + 1),
        checkpoint_every: Some(before.checkpoint_every + 2),
        accumulate: Some(before.accumulate + 1),
        tensorboard: Some(!before.tensorboard),
        eval_every: Some(before.eval_every + 3),
        eval_samples: Some(before.eval_samples + 4),
        eval_metric: Some(EvalMetric::Inception),
    };
    changes.apply(&mut config);
    assert_eq!(config.epochs, before.epochs + 7);
    assert_eq!(config.max_steps, Some(1234));
    assert_eq!(config.data_dir, PathBuf::from("elsewhere"));
    assert_eq!(config.sample_every, before.sample_every + 1);
    assert_eq!(config.checkpoint_every, before.checkpoint_every + 2);
    assert_eq!(config.accumulate, before.accumulate + 1);
    assert_eq!(config.tensorboard, !before.tensorboard);
    assert_eq!(config.eval_every, before.eval_every + 3);
    assert_eq!(config.eval_samples, before.eval_samples + 4);
    assert_eq!(config.eval_metric, EvalMetric::Inception);
    assert_ne!(before.eval_metric, EvalMetric::Inception);
}

/// A fresh run refuses a folder that holds any of a run's outputs (naming them) or is itself a
/// checkpoint; an empty or missing folder is fine.
#[test]
fn a_fresh_run_refuses_a_folder_that_holds_a_run() {
    let dir = tempfile::tempdir().unwrap();
    assert!(check_no_run(&dir.path().join("missing")).is_ok());
    assert!(check_no_run(dir.path()).is_ok());
    let with_log = dir.path().join("log");
    std::fs::create_dir(&with_log).unwrap();
    std::fs::write(with_log.join("metrics.jsonl"), b"").unwrap();
    match check_no_run(&with_log) {
        Err(TrainError::RunExists { found, .. }) => assert_eq!(found, ["metrics.jsonl"]),
        other => panic!("{other:?}"),
    }
    let ckpt = dir.path().join("ckpt");
    let config = TrainConfig {
        batch_size: 4,
        ..TrainConfig::default()
    };
    let t = Trainer::new(
        config,
        crate::train::tests::small_model(),
        crate::train::tests::eight_images(0),
        &Device::Cpu,
    )
    .unwrap();
    t.checkpoint().unwrap().save(&ckpt).unwrap();
    match check_no_run(&ckpt) {
        Err(TrainError::RunExists { found, .. }) => assert_eq!(found, ["a checkpoint"]),
        other => panic!("{other:?}"),
    }
}

/// An output file's folder must exist (a bare name lives in the current one).
#[test]
fn an_output_needs_an_existing_folder() {
    let dir = tempfile::tempdir().unwrap();
    assert!(check_writable_parent(&dir.path().join("eval.json")).is_ok());
    assert!(check_writable_parent(Path::new("eval.json")).is_ok());
    let missing = dir.path().join("nowhere");
    let err = check_writable_parent(&missing.join("eval.json"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("does not exist") && err.contains("nowhere"),
        "{err}"
    );
}
