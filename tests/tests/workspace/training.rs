//! Training at the library level: exact resume, gradients and BatchNorm statistics of a step,
//! data loading from fixtures, and the optional training features.

use candle_core::Device;
use gantry_models::spec::TensorRole;
use gantry_models::{generator_spec, Checkpoint, Kernels, ModelConfig};
use gantry_testkit::{tiny_config, write_mnist_fixture, zip_eq};
use gantry_trainer::data::{self, DataSpec, Dataset, DatasetKind, Fit, Split};
use gantry_trainer::loss::LossKind;
use gantry_trainer::train::{ema_decay_at, TrainConfig, Trainer};

pub fn config(dir: &std::path::Path) -> TrainConfig {
    TrainConfig {
        data_dir: dir.to_path_buf(),
        batch_size: 8,
        epochs: 10,
        seed: 11,
        sample_every: 0,
        checkpoint_every: 0,
        ..TrainConfig::for_dataset(DatasetKind::Mnist)
    }
}

pub fn dataset(dir: &std::path::Path, model: &ModelConfig) -> Dataset {
    write_mnist_fixture(dir, 20);
    data::load(
        &DataSpec {
            kind: DatasetKind::Mnist,
            dir: dir.to_path_buf(),
            image_size: model.image_size,
            channels: model.channels,
            fit: Fit::Crop,
        },
        Split::Train,
    )
    .unwrap()
}

pub fn values(map: &gantry_models::TensorMap) -> Vec<(String, Vec<f32>)> {
    map.iter()
        .map(|(k, v)| (k.clone(), v.flatten_all().unwrap().to_vec1().unwrap()))
        .collect()
}

/// Training 3 steps, checkpointing (to disk and back), and training 4 more gives bit-for-bit
/// the weights, BatchNorm statistics and optimiser moments of 7 uninterrupted steps. The run
/// crosses an epoch boundary (20 images, batch 8: 3 batches per epoch) so the data order is
/// exercised too. Also with every option that draws random numbers, keeps state or splits the
/// step on: the DiffAugment policies, spectral normalisation (its vectors are checkpointed), the
/// lazy R1 penalty (steps 0, 2, 4, 6 apply it) and gradient accumulation; and the ResNet (a
/// class-conditional one: conditional BatchNorm, projection D) with the SNGAN recipe's hinge
/// loss, spectral norm in both networks and 2 D steps per G step, accumulating 2.
#[test]
fn resume_equals_uninterrupted() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_config(16, 1, None);
    let data = dataset(&dir.path().join("data"), &model);
    let mut cfg = config(&dir.path().join("data"));
    cfg.ema = Some(0.9);
    let mut with_options = cfg.clone();
    with_options.augment = "translation,cutout,color".parse().unwrap();
    with_options.accumulate = 2;
    with_options.r1 = Some(10.0);
    with_options.r1_every = 2;
    let spectral = ModelConfig {
        spectral_norm: true,
        ..model.clone()
    };
    let resnet_dir = dir.path().join("data32");
    let resnet = ModelConfig {
        spectral_norm: true,
        g_spectral_norm: true,
        ..gantry_testkit::tiny_resnet_config(32, 1, Some(10))
    };
    let resnet_data = dataset(&resnet_dir, &resnet);
    let mut sngan = config(&resnet_dir);
    sngan.loss = LossKind::Hinge;
    sngan.d_steps = 2;
    sngan.accumulate = 2;
    sngan.ema = Some(0.9);
    sngan.conditional = true;
    for (cfg, model, data) in [
        (cfg, &model, &data),
        (with_options, &spectral, &data),
        (sngan, &resnet, &resnet_data),
    ] {
        assert_resume_is_exact(cfg, model, data, dir.path());
    }
}

fn assert_resume_is_exact(
    cfg: TrainConfig,
    model: &ModelConfig,
    data: &Dataset,
    dir: &std::path::Path,
) {
    let (model, data) = (model.clone(), data.clone());
    let mut straight =
        Trainer::new(cfg.clone(), model.clone(), data.clone(), &Device::Cpu).unwrap();
    for _ in 0..7 {
        straight.step().unwrap();
    }
    let mut first = Trainer::new(cfg.clone(), model.clone(), data.clone(), &Device::Cpu).unwrap();
    for _ in 0..3 {
        first.step().unwrap();
    }
    let ckpt_dir = dir.join("ckpt");
    first.checkpoint().unwrap().save(&ckpt_dir).unwrap();
    drop(first);
    let loaded = Checkpoint::load(&ckpt_dir).unwrap();
    let mut resumed = Trainer::from_checkpoint(&loaded, cfg, data, &Device::Cpu).unwrap();
    assert_eq!(resumed.state().step, 3);
    for _ in 0..4 {
        resumed.step().unwrap();
    }
    let (a, b) = (
        straight.checkpoint().unwrap(),
        resumed.checkpoint().unwrap(),
    );
    // The runs cross epoch boundaries (2 batches per epoch; the ResNet arm reads 2 per step).
    let epoch = |c: &Checkpoint| c.trainer_state.as_ref().unwrap().epoch;
    assert_eq!(epoch(&a), epoch(&b));
    assert!(epoch(&a) >= 2, "epoch {}", epoch(&a));
    assert_eq!(values(&a.generator), values(&b.generator));
    assert_eq!(
        values(a.discriminator.as_ref().unwrap()),
        values(b.discriminator.as_ref().unwrap())
    );
    assert_eq!(
        values(a.generator_ema.as_ref().unwrap()),
        values(b.generator_ema.as_ref().unwrap())
    );
    assert_eq!(
        values(&a.optimizer_g.as_ref().unwrap().0),
        values(&b.optimizer_g.as_ref().unwrap().0)
    );
    assert_eq!(
        values(&a.optimizer_d.as_ref().unwrap().0),
        values(&b.optimizer_d.as_ref().unwrap().0)
    );
    assert_eq!(
        a.trainer_state.unwrap().batch_in_epoch,
        b.trainer_state.unwrap().batch_in_epoch
    );
}

/// After one step every parameter of both networks moved and its Adam first moment — which is
/// (1 - beta1) * gradient after one step — is finite and non-zero for every element's tensor,
/// and every BatchNorm's running statistics left their initial (0, 1).
#[test]
fn one_step_gives_every_parameter_a_gradient_and_updates_batchnorm_statistics() {
    let dir = tempfile::tempdir().unwrap();
    for conditional in [false, true] {
        let model = tiny_config(16, 1, conditional.then_some(10));
        let data = dataset(&dir.path().join("data"), &model);
        let mut cfg = config(&dir.path().join("data"));
        cfg.conditional = conditional;
        let mut t = Trainer::new(cfg, model, data, &Device::Cpu).unwrap();
        let before = t.checkpoint().unwrap();
        let m = t.step().unwrap();
        assert!(m.loss_d.is_finite() && m.loss_g.is_finite());
        let after = t.checkpoint().unwrap();
        for (net, old, new, moments) in [
            (
                "G",
                &before.generator,
                &after.generator,
                &after.optimizer_g.as_ref().unwrap().0,
            ),
            (
                "D",
                before.discriminator.as_ref().unwrap(),
                after.discriminator.as_ref().unwrap(),
                &after.optimizer_d.as_ref().unwrap().0,
            ),
        ] {
            for ((name, a), (_, b)) in zip_eq(values(old), values(new)) {
                assert!(
                    b.iter().all(|v| v.is_finite()),
                    "{net} {name} is not finite"
                );
                assert_ne!(a, b, "{net} {name} did not change");
                if name.contains("running") {
                    continue;
                }
                let g: Vec<f32> = moments[&format!("{name}.exp_avg")]
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap();
                assert!(
                    g.iter().all(|v| v.is_finite()),
                    "{net} {name}: non-finite gradient"
                );
                assert!(g.iter().any(|v| *v != 0.0), "{net} {name}: zero gradient");
            }
        }
    }
}

#[test]
fn loads_raw_and_gzipped_idx_and_image_folders() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("raw");
    write_mnist_fixture(&raw, 12);
    let gz = dir.path().join("gz");
    std::fs::create_dir_all(&gz).unwrap();
    for entry in std::fs::read_dir(&raw).unwrap() {
        let p = entry.unwrap().path();
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut enc, &std::fs::read(&p).unwrap()).unwrap();
        std::fs::write(
            gz.join(format!("{}.gz", p.file_name().unwrap().to_string_lossy())),
            enc.finish().unwrap(),
        )
        .unwrap();
    }
    let spec = |kind, d: &std::path::Path, channels| DataSpec {
        kind,
        dir: d.to_path_buf(),
        image_size: 32,
        channels,
        fit: Fit::Pad,
    };
    let a = data::load(&spec(DatasetKind::Mnist, &raw, 1), Split::Train).unwrap();
    let b = data::load(&spec(DatasetKind::FashionMnist, &gz, 1), Split::Test).unwrap();
    assert_eq!(a.pixels, b.pixels);
    assert_eq!(a.labels, (0..12).map(|i| i % 10).collect::<Vec<u32>>());
    assert_eq!(b.class_names[9], "boot");
    // 28 -> 32 padding keeps the stroke pixels and adds a black border.
    assert_eq!(a.pixels[0], 0);
    assert_eq!(a.pixels[6 * 32 + 8], 255);
    let (x, y) = a.batch(&[0, 1], &Device::Cpu).unwrap();
    assert_eq!(x.dims(), &[2, 1, 32, 32]);
    assert_eq!(y.to_vec1::<u32>().unwrap(), vec![0, 1]);
    let v: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
    assert!(v.iter().all(|p| (-1.0..=1.0).contains(p)) && v.contains(&-1.0) && v.contains(&1.0));
    // Folder: class subfolders of PNGs, converted to 3 channels.
    let folder = dir.path().join("folder");
    for (class, shade) in [("cat", 40u8), ("dog", 200u8)] {
        std::fs::create_dir_all(folder.join(class)).unwrap();
        for i in 0..3 {
            image::GrayImage::from_pixel(40, 30, image::Luma([shade]))
                .save(folder.join(class).join(format!("{i}.png")))
                .unwrap();
        }
    }
    let f = data::load(&spec(DatasetKind::Folder, &folder, 3), Split::Train).unwrap();
    assert_eq!(
        (f.len(), f.class_names.clone()),
        (6, vec!["cat".to_string(), "dog".to_string()])
    );
    assert_eq!(f.pixels[f.image_bytes() * 5], 200);
    assert_eq!(f.name, "folder:folder");
}

/// The EMA after a step is `d * previous + (1 - d) * live` for every parameter, with the
/// warmed-up decay `d = min(decay, (1 + t) / (10 + t))`; buffers are not averaged. Checked over
/// two steps of a hinge-loss run against the formula applied to the checkpoints by hand.
#[test]
fn hinge_loss_and_ema_follow_the_update_formula() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_config(16, 1, None);
    let data = dataset(&dir.path().join("data"), &model);
    let mut cfg = config(&dir.path().join("data"));
    cfg.loss = LossKind::Hinge;
    cfg.ema = Some(0.5);
    let mut t = Trainer::new(cfg, model.clone(), data, &Device::Cpu).unwrap();
    let roles: std::collections::HashMap<String, TensorRole> = generator_spec(&model)
        .tensors()
        .into_iter()
        .map(|s| (s.name, s.role))
        .collect();
    let mut previous_ema = values(&t.checkpoint().unwrap().generator);
    for step in 0..2u64 {
        let m = t.step().unwrap();
        assert!(m.loss_d.is_finite() && m.loss_g.is_finite());
        let c = t.checkpoint().unwrap();
        let d = ema_decay_at(0.5, step) as f32;
        assert_eq!(d, (1.0 + step as f32) / (10.0 + step as f32), "warm-up");
        let (live, ema) = (
            values(&c.generator),
            values(c.generator_ema.as_ref().unwrap()),
        );
        for (((name, live), (_, ema)), (_, prev)) in zip_eq(zip_eq(&live, &ema), &previous_ema) {
            if roles[name] != TensorRole::Parameter {
                continue;
            }
            for ((l, e), p) in zip_eq(zip_eq(live, ema), prev) {
                let want = d * p + (1.0 - d) * l;
                assert!(
                    (e - want).abs() <= 1e-6,
                    "{name} step {step}: {e} vs {want}"
                );
            }
            assert_ne!(live, ema, "{name}: the average lags the live weights");
        }
        previous_ema = ema;
    }
}

/// Gantry's CPU kernels train like candle's own ops: from the same seed, 6 steps (BCE, EMA) give
/// the same losses and D outputs step by step, and the same weights at the end.
///
/// Tolerance: the two paths sum in different orders (blocked GEMMs, per-channel lane sums), so
/// they agree to float rounding per operation, and Adam (which divides by the gradient's
/// running RMS) keeps such differences at the scale of rounding too: measured, losses and D
/// outputs differ by at most 1.2e-7 and weights by 2.4e-8 after six steps. The asserts allow
/// 1e-5 and 1e-6 (about 50x margin): adding 1% of a neighbouring element to each weight
/// gradient fails them at step 1. Adam's steps hardly depend on a gradient's scale, so errors of
/// scale alone are left to the direct gradient comparison with candle in `gantry_models`
/// (`fast_kernels_match_candle_for_whole_networks`, 1e-4).
#[test]
fn fast_kernels_train_like_candle_ops() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_config(16, 1, None);
    let data = dataset(&dir.path().join("data"), &model);
    let mut cfg = config(&dir.path().join("data"));
    cfg.ema = Some(0.9);
    let run = |kernels: Kernels| {
        let mut t = Trainer::new(cfg.clone(), model.clone(), data.clone(), &Device::Cpu).unwrap();
        t.set_kernels(kernels);
        let metrics: Vec<_> = (0..6).map(|_| t.step().unwrap()).collect();
        (metrics, t.checkpoint().unwrap())
    };
    let (fast, fast_ckpt) = run(Kernels::Fast);
    let (plain, plain_ckpt) = run(Kernels::Candle);
    for (a, b) in zip_eq(&fast, &plain) {
        for (what, x, y) in [
            ("loss_d", a.loss_d, b.loss_d),
            ("loss_g", a.loss_g, b.loss_g),
            ("d_real", a.d_real, b.d_real),
            ("d_fake", a.d_fake, b.d_fake),
        ] {
            assert!((x - y).abs() < 1e-5, "step {}: {what} {x} vs {y}", a.step);
        }
    }
    let nets = [
        (&fast_ckpt.generator, &plain_ckpt.generator),
        (
            fast_ckpt.discriminator.as_ref().unwrap(),
            plain_ckpt.discriminator.as_ref().unwrap(),
        ),
    ];
    for (a, b) in nets {
        for ((name, x), (_, y)) in zip_eq(values(a), values(b)) {
            let diff = zip_eq(&x, &y)
                .map(|(p, q)| (p - q).abs())
                .fold(0f32, f32::max);
            assert!(diff < 1e-6, "{name}: weights differ by {diff}");
        }
    }
}

/// `--augment`, `--spectral-norm` and `--r1` reach the step: the same seed trains other weights
/// with DiffAugment on (each policy on its own too), with D spectrally normalised, and with the
/// R1 penalty (applied at step 0 of the two).
#[test]
fn each_augmentation_spectral_norm_and_r1_change_what_is_trained() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_config(16, 1, None);
    let data = dataset(&dir.path().join("data"), &model);
    let trained = |augment: &str| {
        let (augment, spectral_norm, r1) = match augment {
            "spectral-norm" => ("off", true, None),
            "r1" => ("off", false, Some(10.0)),
            // R1's steps run D through candle's kernels (second order): a gamma too small to
            // matter gives the baseline with the same kernels.
            "r1-negligible" => ("off", false, Some(1e-9)),
            other => (other, false, None),
        };
        let mut cfg = config(&dir.path().join("data"));
        cfg.augment = augment.parse().unwrap();
        cfg.r1 = r1;
        let model = ModelConfig {
            spectral_norm,
            ..model.clone()
        };
        let mut t = Trainer::new(cfg, model, data.clone(), &Device::Cpu).unwrap();
        for _ in 0..2 {
            t.step().unwrap();
        }
        // Only the tensors every variant has (spectral norm adds its `weight_u` vectors, which
        // would make any comparison differ).
        values(t.checkpoint().unwrap().discriminator.as_ref().unwrap())
            .into_iter()
            .filter(|(name, _)| !name.ends_with("weight_u"))
            .collect::<Vec<_>>()
    };
    let largest_change = |a: &[(String, Vec<f32>)], b: &[(String, Vec<f32>)]| {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .flat_map(|((_, x), (_, y))| x.iter().zip(y).map(|(p, q)| (p - q).abs()))
            .fold(0f32, f32::max)
    };
    let plain = trained("off");
    for (variant, baseline) in [
        ("translation", &plain),
        ("cutout", &plain),
        ("color", &plain),
        ("translation,cutout,color", &plain),
        ("spectral-norm", &plain),
        ("r1", &trained("r1-negligible")),
    ] {
        // Two Adam steps of lr 2e-4 move a weight by up to 4e-4; an option that reaches D's
        // update moves some weight by a good part of that, float noise by ~1e-9.
        let change = largest_change(&trained(variant), baseline);
        assert!(
            change > 1e-5,
            "{variant} barely changed what was trained: {change}"
        );
    }
}

/// DiffAugment reaches G's step (D sees G's fakes augmented there too, as the paper requires):
/// with D effectively frozen (lr_d 1e-30: its Adam steps are below float resolution, so D's
/// update changes nothing and D's augmentation draws, named streams, change no other draw), one
/// step with `translation,cutout` trains other G weights than one without. Were G's step not
/// augmented, both would see the same D on the same latents and give the same G.
#[test]
fn diffaugment_reaches_the_generator_step() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_config(16, 1, None);
    let data = dataset(&dir.path().join("data"), &model);
    let trained_g = |augment: &str| {
        let mut cfg = config(&dir.path().join("data"));
        cfg.augment = augment.parse().unwrap();
        cfg.lr_d = Some(1e-30);
        let mut t = Trainer::new(cfg, model.clone(), data.clone(), &Device::Cpu).unwrap();
        let before = values(t.checkpoint().unwrap().discriminator.as_ref().unwrap());
        t.step().unwrap();
        let ckpt = t.checkpoint().unwrap();
        let after = values(ckpt.discriminator.as_ref().unwrap());
        // D's parameters moved by no more than the learning rate (a shift of 1e-30 where a
        // value was 0; its BatchNorm running statistics may move).
        for ((name, a), (_, b)) in before.iter().zip(&after) {
            let moved = a
                .iter()
                .zip(b)
                .map(|(p, q)| (p - q).abs())
                .fold(0f32, f32::max);
            assert!(
                name.contains("running") || moved <= 1e-20,
                "{name} moved {moved}"
            );
        }
        values(&ckpt.generator)
    };
    let (plain, augmented) = (trained_g("off"), trained_g("translation,cutout"));
    let largest = plain
        .iter()
        .zip(&augmented)
        .flat_map(|((_, x), (_, y))| x.iter().zip(y).map(|(p, q)| (p - q).abs()))
        .fold(0f32, f32::max);
    assert!(
        largest > 1e-6,
        "G's step ignores the augmentation: {largest}"
    );
}

/// `--g-spectral-norm`: each step starts with one power iteration of G's spectral norm, from the
/// weights before the step's update: G's `u` after step 1 is `normalize(W v)` with `v =
/// normalize(W^T u)` of the initial `W` and `u`, computed here in f64.
#[test]
fn generator_spectral_norm_iterates_once_per_step_before_the_update() {
    let dir = tempfile::tempdir().unwrap();
    let model = ModelConfig {
        g_spectral_norm: true,
        ..tiny_config(16, 1, None)
    };
    let data = dataset(&dir.path().join("data"), &model);
    let mut trainer =
        Trainer::new(config(&dir.path().join("data")), model, data, &Device::Cpu).unwrap();
    let before = trainer.checkpoint().unwrap().generator;
    trainer.step().unwrap();
    let after = trainer.checkpoint().unwrap().generator;
    let f64s = |t: &candle_core::Tensor| -> Vec<f64> {
        let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
        v.into_iter().map(f64::from).collect()
    };
    let normalize = |x: Vec<f64>| {
        let n = x.iter().map(|v| v * v).sum::<f64>().sqrt();
        x.into_iter().map(|v| v / n).collect::<Vec<f64>>()
    };
    let layers: Vec<String> = before
        .keys()
        .filter_map(|k| k.strip_suffix(".weight_u").map(String::from))
        .collect();
    assert_eq!(layers.len(), 3, "every G layer keeps a u: {layers:?}");
    for layer in layers {
        let w = f64s(&before[&format!("{layer}.weight")]);
        let u0 = f64s(&before[&format!("{layer}.weight_u")]);
        let (rows, cols) = (u0.len(), w.len() / u0.len());
        let v = normalize(
            (0..cols)
                .map(|c| (0..rows).map(|r| w[r * cols + c] * u0[r]).sum())
                .collect(),
        );
        let want = normalize(
            (0..rows)
                .map(|r| (0..cols).map(|c| w[r * cols + c] * v[c]).sum())
                .collect(),
        );
        let got = f64s(&after[&format!("{layer}.weight_u")]);
        let diff = zip_eq(&got, &want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        assert!(
            diff < 1e-5,
            "{layer}: u after one step is {diff} from one iteration"
        );
        let moved = zip_eq(&got, &u0)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        assert!(moved > 1e-3, "{layer}: u did not move ({moved})");
    }
}
