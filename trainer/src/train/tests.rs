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

/// Every value of the training state, in `all_state_vars`' order.
fn state_values(t: &Trainer) -> Vec<Vec<f32>> {
    t.all_state_vars()
        .iter()
        .map(|v| {
            v.as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        })
        .collect()
}

/// A run saved after step 3 and resumed from its checkpoint continues exactly as the
/// uninterrupted run (every parameter, buffer, EMA value and optimiser moment bit for bit, the
/// position, the last step's losses), across epoch boundaries (two batches an epoch), with the
/// plain recipe and with extra D steps, accumulation, DiffAugment and R1; the budget is the
/// epochs' or `max_steps`, whichever is smaller.
#[test]
fn a_resumed_run_continues_exactly() {
    let dev = Device::Cpu;
    let plain = TrainConfig {
        batch_size: 4,
        ema: Some(0.9),
        ..TrainConfig::default()
    };
    let busy = TrainConfig {
        d_steps: 2,
        accumulate: 2,
        augment: "translation".parse().unwrap(),
        r1: Some(1.0),
        r1_every: 2,
        ..plain.clone()
    };
    for (config, steps) in [(plain, 10), (busy, 5)] {
        let fresh = || Trainer::new(config.clone(), small_model(), eight_images(0), &dev).unwrap();
        let mut whole = fresh();
        assert_eq!(
            whole.total_steps(),
            steps,
            "5 epochs of 2 batches, each D update its own"
        );
        let mut last = None;
        for _ in 0..5 {
            last = Some(whole.step().unwrap());
        }
        assert_eq!(whole.is_done(), steps == 5);
        let mut first = fresh();
        for _ in 0..3 {
            first.step().unwrap();
        }
        let dir = tempfile::tempdir().unwrap();
        first.checkpoint().unwrap().save(dir.path()).unwrap();
        let ckpt = Checkpoint::load(dir.path()).unwrap();
        let mut resumed =
            Trainer::from_checkpoint(&ckpt, config.clone(), eight_images(0), &dev).unwrap();
        assert_eq!(resumed.state().step, 3);
        let mut resumed_last = None;
        for _ in 0..2 {
            resumed_last = Some(resumed.step().unwrap());
        }
        let (a, b) = (last.unwrap(), resumed_last.unwrap());
        assert_eq!(
            (a.step, a.epoch, a.loss_d, a.loss_g, a.d_real, a.d_fake),
            (b.step, b.epoch, b.loss_d, b.loss_g, b.d_real, b.d_fake)
        );
        let position = |t: &Trainer| {
            let s = t.state();
            (s.step, s.epoch, s.batch_in_epoch, s.seed)
        };
        assert_eq!(position(&whole), position(&resumed));
        assert!(
            state_values(&whole) == state_values(&resumed),
            "resumed state differs"
        );
        // The comparison can fail: one step fewer is another state.
        assert!(state_values(&first) != state_values(&whole));
        let capped = TrainConfig {
            max_steps: Some(3),
            ..config.clone()
        };
        let capped = Trainer::new(capped, small_model(), eight_images(0), &dev).unwrap();
        assert_eq!(capped.total_steps(), 3);
        assert!(!capped.is_done());
        assert!(!first.is_done());
    }
}

fn rows(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// A global batch is cut into `ranks x accumulate` consecutive parts, each rank taking its own
/// `accumulate` of them, each with its images, its rows of the latents, its share of the batch
/// and its part number; parts a short batch leaves empty are skipped.
#[test]
fn shards_cut_the_global_batch_by_rank_and_micro_batch() {
    let dev = Device::Cpu;
    let config = TrainConfig {
        batch_size: 8,
        accumulate: 2,
        ..TrainConfig::default()
    };
    let mut t = Trainer::new(config, small_model(), eight_images(0), &dev).unwrap();
    let latent = small_model().latent_dim;
    let z = Tensor::arange(0f32, (8 * latent) as f32, &dev)
        .unwrap()
        .reshape((8, latent))
        .unwrap();
    let indices = [7, 6, 5, 4, 3, 2, 1, 0];
    // (first index, count, latent row, share, part) of each shard against what it holds.
    let check = |t: &Trainer, indices: &[usize], want: &[(usize, usize, usize, f64, usize)]| {
        let shards = t
            .shards(indices, &z.narrow(0, 0, indices.len()).unwrap())
            .unwrap();
        assert_eq!(shards.len(), want.len());
        for (shard, &(from, len, row, weight, part)) in shards.iter().zip(want) {
            let (real, _) = t.data.batch(&indices[from..from + len], &dev).unwrap();
            assert_eq!(rows(&shard.real), rows(&real), "part {part}");
            assert_eq!(
                rows(&shard.z),
                rows(&z.narrow(0, row, len).unwrap()),
                "part {part}"
            );
            assert!(
                (shard.weight - weight).abs() < 1e-12,
                "part {part}: {}",
                shard.weight
            );
            assert_eq!(shard.index, part);
            assert!(shard.labels.is_none());
        }
    };
    check(&t, &indices, &[(0, 4, 0, 0.5, 0), (4, 4, 4, 0.5, 1)]);
    check(
        &t,
        &indices[..3],
        &[(0, 1, 0, 1.0 / 3.0, 0), (1, 2, 1, 2.0 / 3.0, 1)],
    );
    t.collective = Box::new(SecondRank {
        rank0: Vec::new(),
        recorded: Default::default(),
    });
    check(&t, &indices, &[(4, 2, 4, 0.25, 2), (6, 2, 6, 0.25, 3)]);
    check(
        &t,
        &indices[..3],
        &[(1, 1, 1, 1.0 / 3.0, 2), (2, 1, 2, 1.0 / 3.0, 3)],
    );
}

/// Each epoch visits every image once, in an order of its own; the position rolls over to the
/// next epoch after its last batch.
#[test]
fn batches_cover_each_epoch_once_in_a_new_order() {
    let config = TrainConfig {
        batch_size: 4,
        ..TrainConfig::default()
    };
    let mut t = Trainer::new(config, small_model(), eight_images(0), &Device::Cpu).unwrap();
    let mut orders = Vec::new();
    for epoch in 0..3u64 {
        let mut order = Vec::new();
        for batch in 0..2u64 {
            assert_eq!((t.state.epoch, t.state.batch_in_epoch), (epoch, batch));
            order.extend(t.next_batch("test").unwrap().0);
        }
        let mut sorted = order.clone();
        sorted.sort_unstable();
        assert_eq!(
            sorted,
            (0..8).collect::<Vec<_>>(),
            "epoch {epoch}: {order:?}"
        );
        orders.push(order);
    }
    assert_eq!(t.state.epoch, 3);
    assert!(
        orders[0] != orders[1] && orders[1] != orders[2],
        "{orders:?}"
    );
}

/// A step applies the whole recipe of its configuration: `--d-steps 2` makes two D updates
/// (on two batches) for one of G, R1 is computed on its steps, DiffAugment changes what D
/// learns from.
#[test]
fn a_step_applies_its_recipe() {
    let dev = Device::Cpu;
    let config = TrainConfig {
        batch_size: 4,
        d_steps: 2,
        r1: Some(1.0),
        r1_every: 1,
        augment: "translation".parse().unwrap(),
        ..TrainConfig::default()
    };
    let mut t = Trainer::new(config.clone(), small_model(), eight_images(0), &dev).unwrap();
    let m = t.step().unwrap();
    assert_eq!((t.nets.opt_d.steps(), t.nets.opt_g.steps()), (2, 1));
    assert_eq!(
        (t.state.epoch, t.state.batch_in_epoch),
        (1, 0),
        "two batches read"
    );
    assert!(m.r1_penalty.is_some_and(|p| p > 0.0), "{:?}", m.r1_penalty);
    let plain = TrainConfig {
        augment: crate::augment::Augment::OFF,
        ..config
    };
    let mut u = Trainer::new(plain, small_model(), eight_images(0), &dev).unwrap();
    u.step().unwrap();
    assert!(
        state_values(&t) != state_values(&u),
        "DiffAugment changed nothing"
    );
}

/// A checkpoint whose position is past the end of an epoch (a smaller data set on resume, an
/// edited trainer_state.json) continues at the next epoch's start instead of reading past the
/// data.
#[test]
fn a_position_past_the_epoch_s_end_resumes_at_the_next_epoch() {
    let dev = Device::Cpu;
    let config = TrainConfig {
        batch_size: 4,
        ..TrainConfig::default()
    };
    let mut t = Trainer::new(config.clone(), small_model(), eight_images(0), &dev).unwrap();
    t.step().unwrap();
    let mut ckpt = t.checkpoint().unwrap();
    let state = ckpt.trainer_state.as_mut().unwrap();
    (state.epoch, state.batch_in_epoch) = (3, 7);
    let resumed = Trainer::from_checkpoint(&ckpt, config, eight_images(0), &dev).unwrap();
    assert_eq!((resumed.state.epoch, resumed.state.batch_in_epoch), (4, 0));
    assert_eq!(resumed.permutation, resumed.order.permutation(4));
}

/// The networks' (role, values) pairs: buffers (BatchNorm running statistics) and parameters.
fn by_role(t: &Trainer) -> Vec<(TensorRole, Vec<f32>)> {
    [&t.nets.generator.net, &t.nets.discriminator.net]
        .into_iter()
        .flat_map(|net| net.vars_with_roles())
        .map(|(_, v, role)| {
            (
                role,
                v.as_tensor().flatten_all().unwrap().to_vec1().unwrap(),
            )
        })
        .collect()
}

/// In a data-parallel job the BatchNorm running statistics (and only they) become their mean
/// over the ranks; one process has nothing to average. Only rank 0 writes the outputs. The
/// accessors and the kernel switch reach the trainer's own state.
#[test]
fn buffers_are_averaged_over_the_ranks_and_rank_0_leads() {
    let dev = Device::Cpu;
    let config = TrainConfig {
        batch_size: 4,
        ..TrainConfig::default()
    };
    let mut t = Trainer::new(config, small_model(), eight_images(0), &dev).unwrap();
    t.step().unwrap();
    assert!(t.is_lead());
    let before = by_role(&t);
    t.sync_buffers().unwrap();
    assert!(by_role(&t) == before, "one process: nothing changes");
    t.collective = Box::new(ScriptedPeer {
        peer_share: 0.0,
        delay: std::time::Duration::ZERO,
    });
    t.sync_buffers().unwrap();
    let after = by_role(&t);
    assert!(before.iter().any(|(role, _)| *role == TensorRole::Buffer));
    for ((role, old), (_, new)) in before.iter().zip(&after) {
        let want: Vec<f32> = match role {
            TensorRole::Buffer => old.iter().map(|x| x / 2.0).collect(),
            _ => old.clone(),
        };
        assert_eq!(new, &want, "{role:?}");
    }
    t.collective = Box::new(SecondRank {
        rank0: Vec::new(),
        recorded: Default::default(),
    });
    assert!(!t.is_lead());
    assert_eq!((t.config().batch_size, t.model().g_width), (4, 4));
    t.set_kernels(Kernels::Candle);
    assert_eq!(t.nets.generator.net.kernels, Kernels::Candle);
    t.set_kernels(Kernels::Fast);
    assert_eq!(t.nets.discriminator.net.kernels, Kernels::Fast);
}

/// A step's speed counts every image it read (`--d-steps 2`: two batches) over its own time,
/// which is the run's whole time after its first step.
#[test]
fn a_step_s_speed_counts_every_batch_it_read() {
    let config = TrainConfig {
        batch_size: 4,
        d_steps: 2,
        ..TrainConfig::default()
    };
    let mut t = Trainer::new(config, small_model(), eight_images(0), &Device::Cpu).unwrap();
    let m = t.step().unwrap();
    let images = f64::from(m.img_per_sec) * m.seconds;
    assert!((images - 8.0).abs() < 1e-3, "{images}");
    assert_eq!(m.sync_ms, None, "one process does not synchronise");
}

/// Rank 0 of two, the peer scripted: it holds `peer_share` times this rank's values in every
/// sum (0: zeros, so an average halves them; 1: the same values), and the same values in every
/// gather; each all-reduce takes `delay`. Shared by the trainer's and the step's tests.
pub(crate) struct ScriptedPeer {
    pub peer_share: f32,
    pub delay: std::time::Duration,
}

impl ScriptedPeer {
    /// A peer identical to this rank, answering at once.
    pub(crate) fn identical() -> Self {
        Self {
            peer_share: 1.0,
            delay: std::time::Duration::ZERO,
        }
    }
}

impl Collective for ScriptedPeer {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        2
    }
    fn all_reduce_sum(&self, values: &mut [f32]) -> distributed::Result<()> {
        std::thread::sleep(self.delay);
        values.iter_mut().for_each(|v| *v *= 1.0 + self.peer_share);
        Ok(())
    }
    fn broadcast(&self, _: &mut [f32], _: usize) -> distributed::Result<()> {
        Ok(())
    }
    fn all_gather_f32(&self, local: &[f32]) -> distributed::Result<Vec<f32>> {
        Ok([local, local].concat())
    }
    fn all_gather_u64(&self, local: &[u64]) -> distributed::Result<Vec<u64>> {
        Ok([local, local].concat())
    }
    fn describe(&self) -> String {
        format!("rank 0 of 2, its peer {} times its values", self.peer_share)
    }
    fn abort(&self, code: i32) -> ! {
        panic!("abort({code})")
    }
}

/// A data-parallel step reports the time it spent in collectives, in milliseconds: at least
/// the two all-reduces' 4 ms (G's and D's gradients), at most the step.
#[test]
fn a_data_parallel_step_reports_its_synchronisation_time() {
    let config = TrainConfig {
        batch_size: 4,
        ..TrainConfig::default()
    };
    let mut t = Trainer::new(config, small_model(), eight_images(0), &Device::Cpu).unwrap();
    t.collective = Box::new(ScriptedPeer {
        peer_share: 1.0,
        delay: std::time::Duration::from_millis(2),
    });
    let m = t.step().unwrap();
    let sync = m.sync_ms.expect("two ranks synchronise");
    assert!(
        sync >= 4.0 && sync <= m.seconds * 1e3,
        "{sync} ms of a {} s step",
        m.seconds
    );
}

/// The data must have two images and the model's size and channels: each mismatch alone is
/// refused, naming both shapes; exactly two images are enough.
#[test]
fn data_that_does_not_fit_the_model_is_refused() {
    let config = TrainConfig {
        batch_size: 2,
        ..TrainConfig::default()
    };
    let of = |n: usize, size: usize, channels: usize| Dataset {
        name: "fixture".into(),
        image_size: size,
        channels,
        pixels: vec![0; n * size * size * channels],
        labels: vec![0; n],
        class_names: vec!["a".into()],
    };
    let model = small_model();
    validate(&config, &model, &of(2, 16, 1)).unwrap();
    let err = validate(&config, &model, &of(1, 16, 1))
        .unwrap_err()
        .to_string();
    assert!(err.contains("at least two images"), "{err}");
    for (data, says) in [
        (of(2, 32, 1), "data is 32x32x1"),
        (of(2, 16, 3), "data is 16x16x3"),
    ] {
        let err = validate(&config, &model, &data).unwrap_err().to_string();
        assert!(
            err.contains(says) && err.contains("the model is 16x16x1"),
            "{err}"
        );
    }
}

/// The fixed sample grid: 8 columns, one row per class for a conditional model (each row its
/// class), else 8 rows; latents from the run's seed.
#[test]
fn the_sample_grid_has_a_row_per_class() {
    let dev = Device::Cpu;
    let plain = TrainConfig {
        batch_size: 4,
        ..TrainConfig::default()
    };
    let t = Trainer::new(plain.clone(), small_model(), eight_images(0), &dev).unwrap();
    let (z, labels, cols) = t.sample_inputs().unwrap();
    assert_eq!((z.dims(), labels.is_none(), cols), (&[64, 8][..], true, 8));
    let data = Dataset {
        labels: vec![0, 1, 2, 0, 1, 2, 0, 1],
        class_names: vec!["a".into(), "b".into(), "c".into()],
        ..eight_images(0)
    };
    let model = ModelConfig {
        num_classes: Some(3),
        ..small_model()
    };
    let config = TrainConfig {
        conditional: true,
        ..plain
    };
    let t = Trainer::new(config, model, data, &dev).unwrap();
    let (z, labels, cols) = t.sample_inputs().unwrap();
    assert_eq!((z.dims(), cols), (&[24, 8][..], 8));
    let want: Vec<u32> = (0..3).flat_map(|c| [c; 8]).collect();
    assert_eq!(labels.unwrap().to_vec1::<u32>().unwrap(), want);
}

/// A configuration saved before a field existed reads with that field's default.
#[test]
fn older_configurations_read_with_today_s_defaults() {
    let config = TrainConfig::default();
    let mut json = serde_json::to_value(&config).unwrap();
    let fields = json.as_object_mut().unwrap();
    for field in [
        "r1_every",
        "accumulate",
        "d_steps",
        "tensorboard",
        "eval_samples",
    ] {
        assert!(fields.remove(field).is_some(), "{field}");
    }
    let read: TrainConfig = serde_json::from_value(json).unwrap();
    assert_eq!(read.r1_every, crate::r1::DEFAULT_EVERY);
    assert_eq!((read.accumulate, read.d_steps), (1, 1));
    assert!(read.tensorboard);
    assert_eq!(read.eval_samples, 2000);
    assert_eq!(
        serde_json::to_value(&read).unwrap(),
        serde_json::to_value(&config).unwrap()
    );
}
