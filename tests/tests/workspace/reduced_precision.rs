//! Reduced-precision exports (issue 30): the sub-pixel form of the transposed convolution equals
//! it in fp32; int8 and bf16 exports of every architecture run in ONNX Runtime and stay within
//! their measured tolerances of the fp32 export; calibration files are checked.

use std::path::Path;

use gantry_exporter::graph::generator_graph;
use gantry_exporter::{export, ExportOptions, GraphOptions, Lowering, OutputFormat, Precision};
use gantry_models::init::{normal_vec, rng_for};
use gantry_models::ModelConfig;
use gantry_runtime::{Feed, Provider, ProviderChoice, ProviderOptions, TensorModel};

use crate::export_parity::ort;
use gantry_testkit::{trained_like_generator, write_generator_checkpoint};
use ndarray::{Array1, Array2};
use prost::Message;

/// An export of `precision` with BatchNorm folded and float output.
fn options(ckpt: &Path, out: &Path, precision: Precision) -> ExportOptions {
    crate::export_parity::options(ckpt, out, precision, true, OutputFormat::Float)
}

fn latents(n: usize, dim: usize, seed: &str) -> Array2<f32> {
    Array2::from_shape_vec(
        (n, dim),
        normal_vec(&mut rng_for(30, seed), n * dim, 0.0, 1.0),
    )
    .unwrap()
}

/// Largest absolute difference and PSNR (peak-to-peak 2, the [-1, 1] range) of `got` vs `want`.
fn compare(got: &[f32], want: &[f32]) -> (f32, f64) {
    assert_eq!(got.len(), want.len());
    let max = got
        .iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    let mse = got
        .iter()
        .zip(want)
        .map(|(a, b)| ((a - b) as f64).powi(2))
        .sum::<f64>()
        / got.len() as f64;
    (max, 10.0 * (4.0 / mse.max(1e-30)).log10())
}

fn configs() -> Vec<(&'static str, ModelConfig)> {
    let dcgan = |size, channels, classes| ModelConfig {
        image_size: size,
        channels,
        g_width: 16,
        num_classes: classes,
        ..ModelConfig::default()
    };
    vec![
        ("dcgan 64x64x3", dcgan(64, 3, None)),
        ("dcgan 32x32x1 conditional", dcgan(32, 1, Some(4))),
        (
            "resnet 32x32x3",
            ModelConfig {
                g_width: 8,
                ..gantry_testkit::tiny_resnet_config(32, 3, None)
            },
        ),
        (
            "resnet 32x32x3 conditional",
            ModelConfig {
                g_width: 8,
                ..gantry_testkit::tiny_resnet_config(32, 3, Some(3))
            },
        ),
    ]
}

/// The calibration graph (every stride-2 transposed convolution as four 2x2 convolutions and
/// a DepthToSpace) gives the plain graph's images in ONNX Runtime within 1e-5: the same sums in
/// another order (observed below 1e-6).
#[test]
fn sub_pixel_graph_equals_the_transposed_convolutions() {
    for (what, cfg) in configs() {
        let tensors = trained_like_generator(&cfg, 21);
        let fp32 = GraphOptions {
            precision: Precision::Fp32,
            fold_batchnorm: true,
            output: OutputFormat::Float,
        };
        let run = |lowering: Lowering| {
            let graph = generator_graph(&cfg, &tensors, &fp32, lowering).unwrap();
            let ops: Vec<String> = graph.node.iter().map(|n| n.op_type.clone()).collect();
            let model = candle_onnx::onnx::ModelProto {
                ir_version: gantry_exporter::ir_version(17),
                opset_import: vec![candle_onnx::onnx::OperatorSetIdProto {
                    domain: String::new(),
                    version: 17,
                }],
                graph: Some(graph),
                ..Default::default()
            };
            let m = TensorModel::open(
                &model.encode_to_vec(),
                Path::new(what),
                ProviderChoice::Only(Provider::Cpu),
                &ProviderOptions::default(),
                Some(1),
            )
            .unwrap();
            let z = latents(3, cfg.latent_dim, what);
            let z = z.as_slice().unwrap();
            let labels = [0i64, 1, 2];
            let (z_shape, l_shape) = ([3, cfg.latent_dim], [3]);
            let mut feeds = vec![("z", Feed::F32(z, &z_shape))];
            if cfg.num_classes.is_some() {
                feeds.push(("label", Feed::I64(&labels, &l_shape)));
            }
            (ops, m.run_all(&feeds).unwrap().remove(0).values)
        };
        let (plain_ops, plain) = run(Lowering::Plain);
        let (sub_ops, sub) = run(Lowering::Calibrating);
        if cfg.arch == gantry_models::Arch::Dcgan {
            assert!(
                plain_ops.iter().any(|o| o == "ConvTranspose"),
                "{plain_ops:?}"
            );
        }
        assert!(!sub_ops.iter().any(|o| o == "ConvTranspose"), "{sub_ops:?}");
        let (max, _) = compare(&sub, &plain);
        assert!(max <= 1e-5, "{what}: sub-pixel vs ConvTranspose {max}");
    }
}

/// Tolerances of each reduced precision against fp32, per architecture: (bf16 min PSNR, bf16
/// max difference, int8 min PSNR, int8 max difference). Measured on these weights (PSNR in dB,
/// peak-to-peak 2; 16 held-out latents): DCGAN bf16 91 / max 2e-4, int8 73-78 / max 2e-3;
/// ResNet bf16 54-55 / max 0.04, int8 35-37 / max 0.28 (its unfolded pre-activation BatchNorms
/// divide by running variances as small as these synthetic weights have, amplifying every
/// rounding). The bounds leave 3-13 dB of margin, and each fails a weights error of the size
/// the precision could hide (asserted below): bf16's a 1% change of every BatchNorm shift
/// (DCGAN 73-75 dB, ResNet 48-50 dB), int8's a 10% change (53-55 dB, 29-31 dB).
fn tolerances(arch: gantry_models::Arch) -> (f64, f32, f64, f32) {
    match arch {
        gantry_models::Arch::Dcgan => (78.0, 1e-3, 66.0, 5e-3),
        gantry_models::Arch::Resnet => (51.0, 0.045, 32.0, 0.4),
    }
}

/// int8 and bf16 exports against the fp32 export of the same checkpoint, on latents the
/// calibration never saw, within [`tolerances`].
#[test]
fn int8_and_bf16_exports_match_fp32_within_their_tolerances() {
    let dir = tempfile::tempdir().unwrap();
    for (what, cfg) in configs() {
        let tensors = trained_like_generator(&cfg, 22);
        let tensors = &tensors;
        let stem = what.replace(' ', "-");
        let ckpt = dir.path().join(&stem);
        write_generator_checkpoint(&ckpt, &cfg, tensors.clone(), 3);
        let shifted_ckpt = |factor: f64| {
            let mut shifted = tensors.clone();
            for (name, t) in shifted.iter_mut() {
                if name.contains("bn") && name.ends_with(".bias") {
                    *t = (&*t * factor).unwrap();
                }
            }
            let ckpt = dir.path().join(format!("{stem}-shifted-{factor}"));
            write_generator_checkpoint(&ckpt, &cfg, shifted, 3);
            ckpt
        };
        let file = |ckpt: &Path, p: Precision, tag: &str| {
            let out = dir.path().join(format!("{stem}-{tag}-{}.onnx", p.name()));
            export(&options(ckpt, &out, p)).unwrap();
            out
        };
        let z = latents(16, cfg.latent_dim, &format!("{what} held out"));
        let labels = cfg
            .num_classes
            .map(|k| Array1::from_iter((0..16).map(|i| (i % k) as i64)));
        let images = |p: &Path| -> Vec<f32> {
            ort(p)
                .raw_output(&z, labels.as_ref())
                .unwrap()
                .iter()
                .copied()
                .collect()
        };
        let want = images(&file(&ckpt, Precision::Fp32, "ref"));
        let (bf16_psnr, bf16_max, int8_psnr, int8_max) = tolerances(cfg.arch);
        for (precision, min_psnr, max_diff, shift) in [
            (Precision::Bf16, bf16_psnr, bf16_max, 1.01),
            (Precision::Int8, int8_psnr, int8_max, 1.1),
        ] {
            let out = file(&ckpt, precision, "reduced");
            let g = ort(&out);
            assert_eq!(
                g.info()
                    .metadata
                    .get("gantry.precision")
                    .map(String::as_str),
                Some(precision.name())
            );
            let (max, psnr) = compare(&images(&out), &want);
            eprintln!(
                "{what} {}: max {max:.4} psnr {psnr:.1} dB",
                precision.name()
            );
            assert!(
                psnr >= min_psnr && max <= max_diff,
                "{what} {}: max {max} psnr {psnr:.1} dB",
                precision.name()
            );
            // The tolerance is tighter than a weights error of this size.
            let off = images(&file(&shifted_ckpt(shift), Precision::Fp32, "shifted"));
            let (off_max, off_psnr) = compare(&off, &want);
            eprintln!("{what} BatchNorm shifts x{shift}: max {off_max:.4} psnr {off_psnr:.1} dB");
            assert!(
                off_psnr < min_psnr || off_max > max_diff,
                "{what}: BatchNorm shifts x{shift} (max {off_max}, {off_psnr:.1} dB) pass the {} tolerance",
                precision.name()
            );
        }
    }
}

/// A saved calibration gives the same int8 model when reused; a corrupt one, one with an
/// impossible range, one measured on another checkpoint, one given to an fp32 export, and a
/// save over a file that is not a calibration are refused with the file named, before any
/// model is written.
#[test]
fn calibration_files_are_reused_and_refused_when_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = ModelConfig {
        image_size: 32,
        channels: 1,
        g_width: 8,
        ..ModelConfig::default()
    };
    let ckpt = dir.path().join("ckpt");
    write_generator_checkpoint(&ckpt, &cfg, trained_like_generator(&cfg, 23), 3);
    let other = dir.path().join("other");
    write_generator_checkpoint(&other, &cfg, trained_like_generator(&cfg, 24), 3);
    let int8 = |ckpt: &Path, out: &str, load: Option<&Path>, save: Option<&Path>| {
        let mut o = options(ckpt, &dir.path().join(out), Precision::Int8);
        o.calibration.load = load.map(Path::to_path_buf);
        o.calibration.save = save.map(Path::to_path_buf);
        o.calibration.batches = 2;
        export(&o)
    };
    let saved = dir.path().join("cal.json");
    let report = int8(&ckpt, "a.onnx", None, Some(&saved)).unwrap();
    let cal = report
        .calibration
        .expect("an int8 export reports its calibration");
    assert_eq!(
        (cal.batches, cal.batch_size, cal.method.as_str()),
        (2, 64, "minmax")
    );
    int8(&ckpt, "b.onnx", Some(&saved), None).unwrap();
    assert_eq!(
        std::fs::read(dir.path().join("a.onnx")).unwrap(),
        std::fs::read(dir.path().join("b.onnx")).unwrap(),
        "the reused calibration gives the same model"
    );
    let refused = |result: gantry_exporter::Result<gantry_exporter::ExportReport>,
                   out: &str,
                   words: &[&str]| {
        let e = result.expect_err("refused").to_string();
        for w in words {
            assert!(e.contains(w), "`{e}` lacks `{w}`");
        }
        assert!(!dir.path().join(out).exists(), "{out} was written: {e}");
    };
    let other_cal = dir.path().join("other.json");
    int8(&other, "o.onnx", None, Some(&other_cal)).unwrap();
    refused(
        int8(&ckpt, "c.onnx", Some(&other_cal), None),
        "c.onnx",
        &["other.json", "measured on model"],
    );
    let corrupt = dir.path().join("corrupt.json");
    std::fs::write(&corrupt, b"{\"format\": 1, \"ranges\": ").unwrap();
    refused(
        int8(&ckpt, "d.onnx", Some(&corrupt), None),
        "d.onnx",
        &["corrupt.json", "not a Gantry calibration file"],
    );
    let mut inverted: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&saved).unwrap()).unwrap();
    let first = inverted["ranges"]
        .as_object_mut()
        .unwrap()
        .values_mut()
        .next()
        .unwrap();
    *first = serde_json::json!([1.0, -1.0]);
    let inverted_file = dir.path().join("inverted.json");
    std::fs::write(&inverted_file, inverted.to_string()).unwrap();
    refused(
        int8(&ckpt, "e.onnx", Some(&inverted_file), None),
        "e.onnx",
        &["inverted.json", "has range"],
    );
    let mut fp32 = options(&ckpt, &dir.path().join("f.onnx"), Precision::Fp32);
    fp32.calibration.load = Some(saved.clone());
    refused(
        export(&fp32),
        "f.onnx",
        &["only int8 exports are calibrated"],
    );
    let precious = dir.path().join("notes.txt");
    std::fs::write(&precious, b"keep me").unwrap();
    refused(
        int8(&ckpt, "g.onnx", None, Some(&precious)),
        "g.onnx",
        &["notes.txt", "not a calibration file"],
    );
    assert_eq!(std::fs::read(&precious).unwrap(), b"keep me");
    let mut zero = options(&ckpt, &dir.path().join("h.onnx"), Precision::Int8);
    zero.calibration.batches = 0;
    refused(export(&zero), "h.onnx", &["calibration batches", "0"]);
}
