//! Gantry's `--arch resnet` against an independent implementation: PyTorch's layers
//! (bench/torch_resnet.py) with the same weights give the same images and logits, unconditional
//! and class-conditional, and the generator PyTorch exports itself runs in gantry-runtime
//! (`torch_resnet/make_fixture.py`).

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use gantry_exporter::{
    export, ExportOptions, GraphOptions, OutputFormat, Precision, WeightsChoice,
};
use gantry_models::{Discriminator, Generator, Kernels, ModelConfig, TensorMap};
use gantry_runtime::{Generator as OrtGenerator, Provider, ProviderChoice};
use gantry_testkit::write_generator_checkpoint;

#[derive(serde::Deserialize)]
struct Stored {
    shape: Vec<usize>,
    values: Vec<f32>,
}

/// One pair of the fixture: its configuration, weights, inputs and PyTorch's outputs.
#[derive(serde::Deserialize)]
struct Pair {
    config: ModelConfig,
    tensors: std::collections::BTreeMap<String, Stored>,
    z: Vec<f32>,
    labels: Option<Vec<u32>>,
    images: Vec<f32>,
    logits: Vec<f32>,
}

#[derive(serde::Deserialize)]
struct Fixture {
    unconditional: Pair,
    conditional: Pair,
}

impl Fixture {
    fn pairs(&self) -> [(&'static str, &Pair); 2] {
        [
            ("unconditional", &self.unconditional),
            ("conditional", &self.conditional),
        ]
    }
}

impl Pair {
    fn labels(&self) -> Option<Tensor> {
        self.labels
            .as_ref()
            .map(|l| gantry_models::labels_tensor(l, &Device::Cpu).unwrap())
    }
}

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/workspace/torch_resnet")
}

fn fixture() -> Fixture {
    serde_json::from_slice(&std::fs::read(dir().join("fixture.json")).unwrap()).unwrap()
}

/// The tensors stored under `{network}/`, by their checkpoint names.
fn tensors(f: &Pair, network: &str) -> TensorMap {
    f.tensors
        .iter()
        .filter_map(|(k, v)| {
            let name = k.strip_prefix(&format!("{network}/"))?;
            let t = Tensor::from_vec(v.values.clone(), v.shape.clone(), &Device::Cpu).unwrap();
            Some((name.to_string(), t))
        })
        .collect()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn latents(f: &Pair) -> Tensor {
    let n = f.z.len() / f.config.latent_dim;
    Tensor::from_vec(f.z.clone(), (n, f.config.latent_dim), &Device::Cpu).unwrap()
}

/// For an unconditional and a class-conditional pair (conditional BatchNorm in G, a projection
/// D): every tensor PyTorch's networks hold has a Gantry counterpart of the same shape and vice
/// versa; Gantry's generator (both kernel sets) gives PyTorch's eval-mode images and its
/// discriminator PyTorch's logits (spectral norm included). Tolerance: two engines' float32
/// summation orders on values of order 1 (measured below 1e-6); 1e-5.
#[test]
fn resnet_pairs_equal_the_pytorch_reference() {
    let fixture = fixture();
    for (which, f) in fixture.pairs() {
        let (g_tensors, d_tensors) = (tensors(f, "generator"), tensors(f, "discriminator"));
        for (spec, stored) in [
            (gantry_models::generator_spec(&f.config), &g_tensors),
            (gantry_models::discriminator_spec(&f.config), &d_tensors),
        ] {
            let mut ours: Vec<(String, Vec<usize>)> = spec
                .tensors()
                .into_iter()
                .map(|t| (t.name, t.shape))
                .collect();
            let mut theirs: Vec<(String, Vec<usize>)> = stored
                .iter()
                .map(|(k, v)| (k.clone(), v.dims().to_vec()))
                .collect();
            ours.sort();
            theirs.sort();
            assert_eq!(ours, theirs, "{which}");
        }
        let labels = f.labels();
        for kernels in [Kernels::Candle, Kernels::Fast] {
            let mut g = Generator::from_tensors(&f.config, &g_tensors, &Device::Cpu).unwrap();
            g.set_kernels(kernels);
            let images: Vec<f32> = g
                .forward(&latents(f), labels.as_ref(), false)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let diff = max_abs_diff(&images, &f.images);
            assert!(diff < 1e-5, "{which} {kernels:?} generator: {diff}");
            let mut d = Discriminator::from_tensors(&f.config, &d_tensors, &Device::Cpu).unwrap();
            d.set_kernels(kernels);
            let s = f.config.image_size;
            let c = f.config.channels;
            let x: Vec<f32> = (0..2 * c * s * s)
                .map(|i| (0.37 * i as f64).sin() as f32)
                .collect();
            let x = Tensor::from_vec(x, (2, c, s, s), &Device::Cpu).unwrap();
            let logits: Vec<f32> = d
                .forward(&x, labels.as_ref(), false)
                .unwrap()
                .to_vec1()
                .unwrap();
            let diff = max_abs_diff(&logits, &f.logits);
            assert!(
                diff < 1e-5,
                "{which} {kernels:?} discriminator: {logits:?} vs {:?}",
                f.logits
            );
        }
    }
}

/// The unconditional generator exported by `torch.onnx.export`, and both generators exported
/// by Gantry's exporter, run in gantry-runtime and give PyTorch's images (1e-5, as above).
#[test]
fn pytorch_and_gantry_exports_of_the_resnet_give_pytorchs_images() {
    let fixture = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let mut files = vec![(dir().join("g32x3.onnx"), &fixture.unconditional)];
    for (which, f) in fixture.pairs() {
        let ckpt = tmp.path().join(which);
        write_generator_checkpoint(&ckpt, &f.config, tensors(f, "generator"), 1);
        let ours = tmp.path().join(format!("{which}.onnx"));
        export(&ExportOptions {
            checkpoint: ckpt,
            which: Default::default(),
            out: Some(ours.clone()),
            opset: 17,
            graph: GraphOptions {
                precision: Precision::Fp32,
                fold_batchnorm: true,
                output: OutputFormat::Float,
            },
            weights: WeightsChoice::Auto,
            triton: None,
            calibration: Default::default(),
        })
        .unwrap();
        files.push((ours, f));
    }
    for (file, f) in files {
        let n = f.z.len() / f.config.latent_dim;
        let z = ndarray::Array2::from_shape_vec((n, f.config.latent_dim), f.z.clone()).unwrap();
        let labels = f
            .labels
            .as_ref()
            .map(|l| ndarray::Array1::from_iter(l.iter().map(|&x| x as i64)));
        let g = OrtGenerator::builder()
            .model(&file)
            .providers(ProviderChoice::Only(Provider::Cpu))
            .build()
            .unwrap();
        assert_eq!(g.info().signature.image_shape, Some((3, 32, 32)));
        let got: Vec<f32> = g
            .raw_output(&z, labels.as_ref())
            .unwrap()
            .iter()
            .copied()
            .collect();
        let diff = max_abs_diff(&got, &f.images);
        assert!(diff < 1e-5, "{}: {diff}", file.display());
    }
}
