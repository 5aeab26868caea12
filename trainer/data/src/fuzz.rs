//! Fuzz targets for every parser of outside input on the training side: IDX files, CIFAR-10
//! batches, image files, whole data folders and checkpoint folders. Each must return `Ok` or an
//! error, never panic or hang, whatever the bytes.
//!
//! They run under `cargo test` (bolero's random engine, about a second each; `make fuzz` runs
//! them for longer with `BOLERO_RANDOM_TEST_TIME_MS`) through the `gantry-fuzz` harness: each
//! input has a time limit, so a hang fails. Each input replaces or edits a valid file (see
//! `gantry_fuzz::fuzzed_file`); inputs kept in `__fuzz__/<target>/corpus` (and any crash or
//! hang found, saved in `crashes`) are replayed on every run.

use std::path::Path;

use gantry_fuzz::fuzzed_file;
use gantry_models::checkpoint::{
    Checkpoint, CheckpointMeta, TrainerState, CONFIG_FILE, DISCRIMINATOR_FILE, GENERATOR_EMA_FILE,
    GENERATOR_FILE, OPTIMIZER_D_FILE, OPTIMIZER_G_FILE, TRAINER_STATE_FILE,
};
use gantry_models::init::init_tensors;
use gantry_models::{discriminator_spec, generator_spec, Adam, AdamConfig, Generator, ModelConfig};
use gantry_testkit::{encode_idx, write_mnist_fixture};

use crate::{self as data, cifar, folder, idx, DataSpec, DatasetKind, Fit, Split};

/// Runs the target `|dir, input| ...` on fuzzer inputs with a scratch folder, each input under
/// gantry-fuzz's time limit (a failing input is kept in the target's `crashes` folder). A
/// macro, not a function: bolero names a target (and its corpus folder) after where it is
/// written.
macro_rules! fuzz {
    (|$dir:ident, $input:ident| $body:expr) => {{
        let scratch = tempfile::tempdir().unwrap();
        gantry_fuzz::target!(|$input| {
            let $dir: &Path = scratch.path();
            $body
        });
    }};
}

#[test]
fn fuzz_idx_parser() {
    let base = encode_idx(&[3, 4, 4], &[9; 48]);
    fuzz!(|_dir, input| {
        let _ = idx::parse_idx(&fuzzed_file(&base, input), Path::new("fuzz-idx3-ubyte"));
    });
}

#[test]
fn fuzz_mnist_folder() {
    fuzz!(|dir, input| {
        let data = dir.join("mnist");
        write_mnist_fixture(&data, 4);
        let images = data.join("train-images-idx3-ubyte");
        let base = std::fs::read(&images).unwrap();
        std::fs::write(&images, fuzzed_file(&base, input)).unwrap();
        let spec = DataSpec {
            kind: DatasetKind::Mnist,
            dir: data,
            image_size: 16,
            channels: 1,
            fit: Fit::Pad,
        };
        let _ = data::load(&spec, Split::Train);
    });
}

#[test]
fn fuzz_cifar_batch() {
    let mut base = vec![3u8];
    base.extend((0..3 * 1024).map(|i| i as u8));
    fuzz!(|dir, input| {
        let path = dir.join("data_batch_1.bin");
        std::fs::write(&path, fuzzed_file(&base, input)).unwrap();
        let _ = cifar::read_batch(&path);
    });
}

#[test]
fn fuzz_image_files() {
    let mut png = Vec::new();
    image::GrayImage::from_fn(6, 5, |x, y| image::Luma([(x * 40 + y) as u8]))
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    let mut jpeg = Vec::new();
    image::RgbImage::from_pixel(8, 8, image::Rgb([10, 200, 30]))
        .write_to(
            &mut std::io::Cursor::new(&mut jpeg),
            image::ImageFormat::Jpeg,
        )
        .unwrap();
    fuzz!(|dir, input| {
        let (base, name) = if input.len() % 3 == 0 {
            (&jpeg, "x.jpg")
        } else {
            (&png, "x.png")
        };
        let path = dir.join(name);
        std::fs::write(&path, fuzzed_file(base, input)).unwrap();
        if let Ok(img) = folder::decode(&path) {
            let _ = data::preprocess::to_chw_bytes(&img, 16, 3, Fit::Crop);
        }
    });
}

/// A complete tiny checkpoint of the default recipe: every file a resume reads, including the
/// EMA generator and D's spectral-norm `u` vectors.
fn checkpoint_files(dir: &Path) -> Vec<(&'static str, Vec<u8>)> {
    let cfg = ModelConfig {
        image_size: 16,
        g_width: 4,
        d_width: 4,
        latent_dim: 8,
        spectral_norm: true,
        ..ModelConfig::default()
    };
    let g = init_tensors(&generator_spec(&cfg), "generator", 1).unwrap();
    let d = init_tensors(&discriminator_spec(&cfg), "discriminator", 1).unwrap();
    let gen = Generator::from_tensors(&cfg, &g, &candle_core::Device::Cpu).unwrap();
    let opt = Adam::new(gen.net.parameters(), AdamConfig::default()).unwrap();
    let dgen =
        gantry_models::Discriminator::from_tensors(&cfg, &d, &candle_core::Device::Cpu).unwrap();
    let dopt = Adam::new(dgen.net.parameters(), AdamConfig::default()).unwrap();
    Checkpoint {
        meta: CheckpointMeta::new(cfg, Some("mnist".into()), serde_json::json!({})),
        generator_ema: Some(g.clone()),
        generator: g,
        discriminator: Some(d),
        optimizer_g: Some(opt.state().unwrap()),
        optimizer_d: Some(dopt.state().unwrap()),
        trainer_state: Some(TrainerState {
            step: 3,
            epoch: 0,
            batch_in_epoch: 3,
            seed: 1,
            elapsed_seconds: 0.5,
        }),
    }
    .save(dir)
    .unwrap();
    [
        CONFIG_FILE,
        TRAINER_STATE_FILE,
        GENERATOR_FILE,
        GENERATOR_EMA_FILE,
        DISCRIMINATOR_FILE,
        OPTIMIZER_G_FILE,
        OPTIMIZER_D_FILE,
    ]
    .into_iter()
    .map(|f| (f, std::fs::read(dir.join(f)).unwrap()))
    .collect()
}

#[test]
fn fuzz_checkpoint_folders() {
    let made = tempfile::tempdir().unwrap();
    let files = checkpoint_files(&made.path().join("ckpt"));
    fuzz!(|dir, input| {
        // The input's last byte picks the file it edits; the others stay valid.
        let Some((&which, rest)) = input.split_last() else {
            return;
        };
        let ckpt = dir.join("ckpt");
        std::fs::create_dir_all(&ckpt).unwrap();
        for (i, (name, bytes)) in files.iter().enumerate() {
            let content = if i == which as usize % files.len() {
                fuzzed_file(bytes, rest)
            } else {
                bytes.clone()
            };
            std::fs::write(ckpt.join(name), content).unwrap();
        }
        let _ = gantry_models::resolve_checkpoint(dir);
        // What a resume builds from the files: the networks (u vectors included) and the EMA.
        if let Ok(c) = Checkpoint::load(&ckpt) {
            let device = candle_core::Device::Cpu;
            let _ = Generator::from_tensors(&c.meta.model, &c.generator, &device);
            if let Some(ema) = &c.generator_ema {
                let _ = Generator::from_tensors(&c.meta.model, ema, &device);
            }
            if let Some(d) = &c.discriminator {
                let _ = gantry_models::Discriminator::from_tensors(&c.meta.model, d, &device);
            }
        }
        let _ = Checkpoint::load_generator(&ckpt);
    });
}
