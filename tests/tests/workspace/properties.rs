//! Property tests of the invariants that matter most, over random cases:
//! - a run interrupted at any step and resumed from its checkpoint ends bit for bit where an
//!   uninterrupted run does (whatever the loss, EMA and interruption point);
//! - any `GenerateRequest` either gives its images or a typed error naming the bad value, and
//!   answers within a bounded time (no hang, no panic).

use std::sync::mpsc;
use std::time::Duration;

use candle_core::Device;
use gantry_exporter::OutputFormat;
use gantry_models::Checkpoint;
use gantry_runtime::{GenerateRequest, Generator, RuntimeError};
use gantry_testkit::{export_tiny_model, tiny_config};
use gantry_trainer::loss::LossKind;
use gantry_trainer::train::Trainer;
use proptest::prelude::*;

use crate::training::{config, dataset, values};

proptest! {
    #![proptest_config(ProptestConfig { cases: 6, ..ProptestConfig::default() })]

    #[test]
    fn resume_at_any_step_equals_an_uninterrupted_run(
        total in 2u64..7,
        cut_fraction in 0.0f64..1.0,
        hinge in any::<bool>(),
        ema in any::<bool>(),
    ) {
        let cut = 1 + ((total - 1) as f64 * cut_fraction) as u64;
        let dir = tempfile::tempdir().unwrap();
        let model = tiny_config(16, 1, None);
        let data = dataset(&dir.path().join("data"), &model);
        let mut cfg = config(&dir.path().join("data"));
        cfg.loss = if hinge { LossKind::Hinge } else { LossKind::Bce };
        cfg.ema = ema.then_some(0.9);
        let mut straight = Trainer::new(cfg.clone(), model.clone(), data.clone(), &Device::Cpu).unwrap();
        for _ in 0..total {
            straight.step().unwrap();
        }
        let mut first = Trainer::new(cfg.clone(), model, data.clone(), &Device::Cpu).unwrap();
        for _ in 0..cut {
            first.step().unwrap();
        }
        let ckpt_dir = dir.path().join("ckpt");
        first.checkpoint().unwrap().save(&ckpt_dir).unwrap();
        drop(first);
        let loaded = Checkpoint::load(&ckpt_dir).unwrap();
        let mut resumed = Trainer::from_checkpoint(&loaded, cfg, data, &Device::Cpu).unwrap();
        for _ in cut..total {
            resumed.step().unwrap();
        }
        let (a, b) = (straight.checkpoint().unwrap(), resumed.checkpoint().unwrap());
        prop_assert_eq!(values(&a.generator), values(&b.generator));
        prop_assert_eq!(
            values(a.discriminator.as_ref().unwrap()),
            values(b.discriminator.as_ref().unwrap())
        );
        prop_assert_eq!(
            a.generator_ema.as_ref().map(values),
            b.generator_ema.as_ref().map(values)
        );
        prop_assert_eq!(
            values(&a.optimizer_d.as_ref().unwrap().0),
            values(&b.optimizer_d.as_ref().unwrap().0)
        );
        let position = |c: &Checkpoint| {
            let s = c.trainer_state.as_ref().unwrap();
            (s.step, s.epoch, s.batch_in_epoch)
        };
        prop_assert_eq!(position(&a), position(&b));
    }
}

/// A request's outcome: the images' count, or the field a typed error names.
fn outcome(g: &Generator, request: &GenerateRequest) -> Result<usize, String> {
    match g.generate_request(request) {
        Ok(images) => Ok(images.len()),
        Err(RuntimeError::InvalidRequest { field, .. }) => Err(format!("{field}")),
        Err(other) => Err(format!("untyped: {other}")),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn every_request_gives_its_images_or_names_the_bad_value_in_bounded_time(
        count in prop_oneof![0usize..40, Just(0usize), Just(usize::MAX), Just(1_000_001)],
        batch in prop_oneof![0usize..9, Just(1usize << 40)],
        class in proptest::option::of(0usize..6),
        truncation in proptest::option::of(prop_oneof![
            -2.0f32..4.0,
            Just(0.0f32),
            Just(1e-8f32),
            Just(f32::NAN),
            Just(f32::INFINITY),
            Just(0.01f32),
        ]),
        seed in any::<u64>(),
        conditional in any::<bool>(),
    ) {
        // One model pair per process; the requests are what varies.
        static MODELS: std::sync::OnceLock<(tempfile::TempDir, std::path::PathBuf, std::path::PathBuf)> =
            std::sync::OnceLock::new();
        let (_, plain, cond) = MODELS.get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let plain = export_tiny_model(dir.path(), None, OutputFormat::Uint8);
            let cond = export_tiny_model(dir.path(), Some(4), OutputFormat::Float);
            (dir, plain, cond)
        });
        let path = if conditional { cond.clone() } else { plain.clone() };
        let mut request = GenerateRequest::new(count, seed);
        request.batch_size = batch;
        request.class = class;
        request.truncation = truncation;
        let (tx, rx) = mpsc::channel();
        let asked = request.clone();
        std::thread::spawn(move || {
            let g = Generator::builder().model(&path).build().unwrap();
            let _ = tx.send(outcome(&g, &asked));
        });
        let got = rx
            .recv_timeout(Duration::from_secs(30))
            .map_err(|_| TestCaseError::fail(format!("no answer within 30 s to {request:?}")))?;
        match got {
            Ok(n) => prop_assert_eq!(n, count),
            Err(field) => {
                prop_assert!(!field.starts_with("untyped"), "{field} for {request:?}");
                // Each refusal is for a value that is really out of range.
                let count_bad = count == 0 || count > gantry_runtime::MAX_IMAGES;
                let batch_bad = batch == 0;
                let trunc_bad = truncation.is_some_and(|t| !(t >= 0.01 && t.is_finite()));
                let class_bad = class.is_some_and(|c| !conditional || c >= 4);
                prop_assert!(count_bad || batch_bad || trunc_bad || class_bad, "{field} for {request:?}");
            }
        }
    }
}
