//! The trainer's unit tests: validation messages, the EMA's own BatchNorm statistics, the
//! start-up agreement of a data-parallel job; and the fixtures the step's and the run's tests
//! share.

use super::*;

/// Eight 16x16 grey images of one class; `shift` moves their pixel pattern (other data).
pub(crate) fn eight_images(shift: usize) -> Dataset {
    Dataset {
        name: "fixture".into(),
        image_size: 16,
        channels: 1,
        pixels: (0..8 * 256)
            .map(|i| ((i + shift) * 31 % 256) as u8)
            .collect(),
        labels: vec![0; 8],
        class_names: vec!["a".into()],
    }
}

/// A 16x16 DCGAN small enough to step in milliseconds (shared by the step's and the run's
/// tests).
pub(crate) fn small_model() -> ModelConfig {
    ModelConfig {
        image_size: 16,
        g_width: 4,
        d_width: 4,
        latent_dim: 8,
        ..ModelConfig::default()
    }
}

/// A conditional run whose model does not have the data's classes says so in words.
#[test]
fn a_class_count_mismatch_is_said_in_words() {
    let data = Dataset {
        name: "fixture".into(),
        image_size: 16,
        channels: 1,
        pixels: vec![0; 4 * 256],
        labels: vec![0, 1, 2, 0],
        class_names: vec!["a".into(), "b".into(), "c".into()],
    };
    let config = TrainConfig {
        conditional: true,
        ..TrainConfig::default()
    };
    for (classes, says) in [(Some(2), "the model has 2"), (None, "unconditional")] {
        let model = ModelConfig {
            image_size: 16,
            g_width: 4,
            d_width: 4,
            num_classes: classes,
            ..ModelConfig::default()
        };
        let err = validate(&config, &model, &data).unwrap_err().to_string();
        assert!(err.contains("3 classes") && err.contains(says), "{err}");
        assert!(!err.contains("Some("), "{err}");
    }
}

/// Taking samples or a checkpoint gives the EMA generator BatchNorm statistics of its own
/// weights: after recalibration they are no longer the live generator's copies.
#[test]
fn the_ema_gets_its_own_batchnorm_statistics() {
    let dev = Device::Cpu;
    let (data, model) = (eight_images(0), small_model());
    let config = TrainConfig {
        ema: Some(0.5),
        batch_size: 4,
        ..TrainConfig::default()
    };
    let mut t = Trainer::new(config, model, data, &dev).unwrap();
    t.step().unwrap();
    let stats = |g: &Generator| -> Vec<Vec<f32>> {
        g.net
            .vars_with_roles()
            .into_iter()
            .filter(|(name, _, _)| name.contains("running"))
            .map(|(_, v, _)| v.as_tensor().to_vec1::<f32>().unwrap())
            .collect()
    };
    let ema = t.nets.generator_ema.as_ref().unwrap();
    assert_eq!(stats(ema), stats(&t.nets.generator), "copies after a step");
    t.recalibrate_ema().unwrap();
    let (own, live) = (
        stats(t.nets.generator_ema.as_ref().unwrap()),
        stats(&t.nets.generator),
    );
    assert_eq!(own.len(), live.len());
    assert!(own.iter().zip(&live).all(|(a, b)| a != b), "recalibrated");
}

/// Rank 1 of a scripted two-rank job: `all_gather_u64` answers with `rank0`'s values
/// before this rank's own (what MPI would gather); any other collective call means the
/// start-up agreement let a mismatch through, and fails the test.
struct SecondRank {
    rank0: Vec<u64>,
    /// What this rank contributed, readable after the trainer took the collective.
    recorded: std::rc::Rc<std::cell::RefCell<Vec<u64>>>,
}

impl Collective for SecondRank {
    fn rank(&self) -> usize {
        1
    }
    fn size(&self) -> usize {
        2
    }
    fn all_reduce_sum(&self, _: &mut [f32]) -> distributed::Result<()> {
        panic!("reduced after a failed agreement")
    }
    fn broadcast(&self, _: &mut [f32], _: usize) -> distributed::Result<()> {
        Ok(())
    }
    fn all_gather_f32(&self, _: &[f32]) -> distributed::Result<Vec<f32>> {
        panic!("gathered after a failed agreement")
    }
    fn all_gather_u64(&self, local: &[u64]) -> distributed::Result<Vec<u64>> {
        *self.recorded.borrow_mut() = local.to_vec();
        let mut all = self.rank0.clone();
        if all.is_empty() {
            all = local.to_vec(); // no script: rank 0 agrees
        }
        all.extend_from_slice(local);
        Ok(all)
    }
    fn describe(&self) -> String {
        "scripted (2 ranks)".into()
    }
    fn abort(&self, code: i32) -> ! {
        panic!("abort({code})")
    }
}

/// Joining a job checks the data and the run position as well as the settings: a rank
/// started on other images, or from another step, is refused with the ranks and what differs
/// named (a seed mismatch alone is what the MPI test covers).
#[test]
fn joining_refuses_other_data_and_another_run_position() {
    let dev = Device::Cpu;
    let config = TrainConfig {
        batch_size: 4,
        ..TrainConfig::default()
    };
    let trainer =
        |shift| Trainer::new(config.clone(), small_model(), eight_images(shift), &dev).unwrap();
    // Rank 0's fingerprints, as a rank that agrees with itself records them.
    let rank0 = {
        let recorded = std::rc::Rc::default();
        let mut t = trainer(0);
        t.join(Box::new(SecondRank {
            rank0: Vec::new(),
            recorded: std::rc::Rc::clone(&recorded),
        }))
        .unwrap();
        let values = recorded.borrow().clone();
        assert_eq!(values.len(), 3, "settings, data, run position");
        values
    };
    let join = |mut t: Trainer| {
        t.join(Box::new(SecondRank {
            rank0: rank0.clone(),
            recorded: Default::default(),
        }))
        .map(|_| ())
        .map_err(|e| e.to_string())
    };
    join(trainer(0)).unwrap();
    let err = join(trainer(1)).unwrap_err();
    assert!(err.contains("rank 1 has different data"), "{err}");
    let mut moved = trainer(0);
    moved.step().unwrap();
    let err = join(moved).unwrap_err();
    assert!(err.contains("rank 1 has different run positions"), "{err}");
}
