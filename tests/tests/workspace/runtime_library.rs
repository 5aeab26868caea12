//! The runtime library: decoupling from training, threads, determinism, batch lanes, third-party
//! models, and the embedding example.

use std::path::{Path, PathBuf};
use std::process::Command;

use gantry_exporter::OutputFormat;
use gantry_runtime::{GenerateRequest, Generator, LatentStream, Provider, ProviderChoice};
use gantry_testkit::{export_tiny_model, pytorch_style_model, stderr, stdout, zip_eq};

fn model(dir: &Path, num_classes: Option<usize>, output: OutputFormat) -> PathBuf {
    export_tiny_model(dir, num_classes, output)
}

#[test]
fn generator_is_shared_by_threads_with_the_same_results() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Generator>();
    let dir = tempfile::tempdir().unwrap();
    let g = Generator::builder()
        .model(model(dir.path(), None, OutputFormat::Float))
        .build()
        .unwrap();
    let single: Vec<_> = (0..8u64).map(|seed| g.generate(5, seed).unwrap()).collect();
    let threaded: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8u64)
            .map(|seed| {
                s.spawn({
                    let g = &g;
                    move || g.generate(5, seed).unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (a, b) in zip_eq(&single, &threaded) {
        let a: Vec<_> = a.iter().map(|i| i.as_bytes().to_vec()).collect();
        let b: Vec<_> = b.iter().map(|i| i.as_bytes().to_vec()).collect();
        assert_eq!(a, b);
    }
    assert_ne!(
        single[0][0].as_bytes(),
        single[1][0].as_bytes(),
        "different seeds give different images"
    );
}

#[test]
fn image_i_does_not_depend_on_the_batch_size() {
    let dir = tempfile::tempdir().unwrap();
    let g = Generator::builder()
        .model(model(dir.path(), None, OutputFormat::Uint8))
        .build()
        .unwrap();
    let mut req = GenerateRequest::new(10, 3);
    req.batch_size = 10;
    let whole = g.generate_request(&req).unwrap();
    req.batch_size = 3;
    let batched = g.generate_request(&req).unwrap();
    for (a, b) in zip_eq(&whole, &batched) {
        let diff = zip_eq(a.as_bytes(), b.as_bytes())
            .map(|(x, y)| x.abs_diff(*y))
            .max()
            .unwrap();
        assert!(diff <= 1, "batching changed a pixel by {diff}");
    }
}

/// Batch lanes split a batch over concurrent single-threaded sessions; the images (and their
/// order, and each image's label) must be those of one whole run. Both runs use the same graph
/// and kernels, only the batch split differs, which can change the accumulation order inside
/// ONNX Runtime's GEMMs by a few ulps; outputs lie in [-1, 1], so 1e-5 (~100 ulps at 1.0) allows
/// that. (Measured: identical. Slices given the wrong labels, or put back in the wrong order,
/// differ by ~1e-3 even in this tiny model.)

#[test]
fn batch_lanes_give_the_images_of_one_whole_run() {
    let dir = tempfile::tempdir().unwrap();
    let open = |m: &Path, lanes: usize| {
        Generator::builder()
            .model(m)
            .providers(ProviderChoice::Only(Provider::Cpu))
            .batch_lanes(lanes)
            .build()
            .unwrap()
    };
    let float = model(dir.path(), Some(4), OutputFormat::Float);
    let (whole, lanes) = (open(&float, 1), open(&float, 3));
    assert_eq!((whole.batch_lanes(), lanes.batch_lanes()), (1, 3));
    // 7 images over 3 lanes: slices of 3, 2 and 2; labels 0..4 cycling so every slice differs.
    let z = LatentStream::new(11, whole.latent_dim(), None).next_batch(7);
    let labels = ndarray::Array1::from_iter((0..7).map(|i| (i % 4) as i64));
    let a = whole.raw_output(&z, Some(&labels)).unwrap();
    // The first large batch runs whole (a one-batch job does not pay for opening the lanes);
    // the second opens them.
    let first = lanes.raw_output(&z, Some(&labels)).unwrap();
    assert!(!lanes.lanes_open());
    assert_eq!(first, a);
    let b = lanes.raw_output(&z, Some(&labels)).unwrap();
    assert!(lanes.lanes_open());
    assert!(!whole.lanes_open(), "no lanes to open with --lanes 1");
    assert_eq!(a.shape(), b.shape());
    let diff = a
        .iter()
        .zip(b.iter())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max);
    assert!(diff <= 1e-5, "lanes vs whole batch: max |diff| {diff}");
    // Fewer images than lanes run whole on the shared session.
    let small = z.slice(ndarray::s![..2, ..]).to_owned();
    let small_labels = labels.slice(ndarray::s![..2]).to_owned();
    let c = lanes.raw_output(&small, Some(&small_labels)).unwrap();
    let head = a.slice(ndarray::s![..2, .., .., ..]);
    assert!(zip_eq(c.iter(), head.iter()).all(|(x, y)| (x - y).abs() <= 1e-5));

    let bytes = model(dir.path(), None, OutputFormat::Uint8);
    let (whole, lanes) = (open(&bytes, 1), open(&bytes, 3));
    lanes.open_lanes().unwrap();
    assert!(lanes.lanes_open());
    let z = LatentStream::new(12, whole.latent_dim(), None).next_batch(8);
    let a = whole.generate_from_latents(&z, None).unwrap();
    let b = lanes.generate_from_latents(&z, None).unwrap();
    assert_eq!(
        (a.count(), a.height(), a.width(), a.channels()),
        (b.count(), b.height(), b.width(), b.channels())
    );
    // A few-ulp float difference can move a value across a rounding boundary: at most 1 level.
    let worst = a
        .pixels()
        .iter()
        .zip(b.pixels())
        .map(|(x, y)| x.abs_diff(*y))
        .max()
        .unwrap();
    assert!(worst <= 1, "lanes vs whole batch: {worst} levels apart");
}

#[test]
fn conditional_models_take_a_class() {
    let dir = tempfile::tempdir().unwrap();
    let m = model(dir.path(), Some(10), OutputFormat::Float);
    let g = Generator::builder().model(&m).build().unwrap();
    let mut req = GenerateRequest::new(4, 1);
    req.class = Some(3);
    let three = g.generate_request(&req).unwrap();
    req.class = Some(4);
    let four = g.generate_request(&req).unwrap();
    assert_ne!(three[0].as_bytes(), four[0].as_bytes());
    req.class = Some(10);
    assert!(matches!(
        g.generate_request(&req),
        Err(gantry_runtime::RuntimeError::InvalidRequest {
            field: gantry_runtime::RequestField::Class,
            ..
        })
    ));
}

#[test]
fn interpolation_ends_at_the_seeds_own_images() {
    let dir = tempfile::tempdir().unwrap();
    let m = model(dir.path(), None, OutputFormat::Float);
    let g = Generator::builder().model(&m).build().unwrap();
    let frames = g.interpolate(1, 2, 6, None).unwrap();
    assert_eq!(frames.len(), 6);
    let own = |seed| {
        g.generate_from_latents(&LatentStream::new(seed, 16, None).next_batch(1), None)
            .unwrap()
            .image(0)
            .unwrap()
    };
    assert_eq!(frames[0].as_bytes(), own(1).as_bytes());
    assert_eq!(frames[5].as_bytes(), own(2).as_bytes());
    assert_ne!(frames[2].as_bytes(), own(1).as_bytes());
}

#[test]
fn auto_providers_fall_back_to_the_cpu_and_say_why() {
    let dir = tempfile::tempdir().unwrap();
    let m = model(dir.path(), None, OutputFormat::Float);
    let g = Generator::builder()
        .model(&m)
        .providers(ProviderChoice::Auto)
        .build()
        .unwrap();
    assert_eq!(g.providers().active, Provider::Cpu);
    let skipped: Vec<_> = g.providers().skipped.iter().map(|(p, _)| *p).collect();
    assert_eq!(
        skipped,
        vec![Provider::TensorRt, Provider::Cuda],
        "auto tries TensorRT, then CUDA, and says so"
    );
    assert!(g
        .providers()
        .skipped
        .iter()
        .all(|(_, why)| why.contains("not in this ONNX Runtime build")));
    let err = Generator::builder()
        .model(&m)
        .providers(ProviderChoice::Only(Provider::Cuda))
        .build()
        .err()
        .expect("no CUDA provider in the CPU library");
    assert!(matches!(
        err,
        gantry_runtime::RuntimeError::Provider {
            provider: Provider::Cuda,
            ..
        }
    ));
}

#[test]
fn third_party_pytorch_style_generators_work() {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("torch.onnx");
    pytorch_style_model(&m);
    let g = Generator::builder().model(&m).build().unwrap();
    let sig = &g.info().signature;
    assert!(sig.latent_is_4d);
    assert_eq!(
        (
            sig.latent_input.as_str(),
            sig.latent_dim,
            sig.output.as_str()
        ),
        ("input", 8, "output")
    );
    let imgs = g.generate(3, 0).unwrap();
    assert_eq!(
        (
            imgs[0].width(),
            imgs[0].height(),
            imgs[0].color().channel_count()
        ),
        (8, 8, 3)
    );
}

/// `runtime/examples/embed.rs` (built by `cargo test`, which builds examples) loads a model,
/// shares it between four threads and writes their images.
#[test]
fn the_embedding_example_runs() {
    let dir = tempfile::tempdir().unwrap();
    let m = model(dir.path(), None, OutputFormat::Uint8);
    let exe = std::env::current_exe().unwrap();
    let example = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("examples/embed"))
        .unwrap();
    assert!(
        example.is_file(),
        "{} is missing: `cargo test --workspace` builds the examples",
        example.display()
    );
    let out = dir.path().join("embedded");
    let o = Command::new(&example)
        .args([m.to_str().unwrap(), out.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("on CPUExecutionProvider"),
        "{}",
        stdout(&o)
    );
    assert!(stdout(&o).contains("wrote 32 images"), "{}", stdout(&o));
    // Worker 2's images are the library's images of seed 1002 (truncation 2.0).
    let g = Generator::builder().model(&m).build().unwrap();
    let mut req = GenerateRequest::new(8, 1002);
    req.truncation = Some(2.0);
    let want = g.generate_request(&req).unwrap();
    for (i, img) in want.iter().enumerate() {
        let got = image::open(out.join(format!("worker2_{i}.png"))).unwrap();
        assert_eq!(
            got.to_luma8().as_raw(),
            img.to_luma8().as_raw(),
            "image {i}"
        );
    }
}

/// Generators exported by PyTorch's own `torch.onnx.export` (`torch_onnx/make_generators.py`:
/// latent `[N, nz, 1, 1]`, unfolded BatchNorm, no Gantry metadata) give, in gantry-runtime, the
/// images PyTorch computed for the same latents. Tolerance: the same fp32 graph evaluated by two
/// engines with different summation orders, values in [-1, 1]; measured 2.4e-7, asserted 1e-5.
#[test]
fn pytorch_exported_generators_give_pytorchs_images() {
    #[derive(serde::Deserialize)]
    struct Expected {
        latents: Vec<f32>,
        shape: Vec<usize>,
        output: Vec<f32>,
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/workspace/torch_onnx");
    let all: std::collections::BTreeMap<String, serde_json::Value> =
        serde_json::from_slice(&std::fs::read(dir.join("expected.json")).unwrap()).unwrap();
    for (name, channels) in [("g16x1", 1), ("g16x3", 3)] {
        let want: Expected = serde_json::from_value(all[name].clone()).unwrap();
        let g = Generator::builder()
            .model(dir.join(format!("{name}.onnx")))
            .providers(ProviderChoice::Only(Provider::Cpu))
            .build()
            .unwrap();
        let sig = &g.info().signature;
        assert!(sig.latent_is_4d, "{name}: PyTorch's [N, nz, 1, 1] latent");
        assert_eq!(sig.image_shape, Some((channels, 16, 16)));
        let n = want.shape[0];
        let z = ndarray::Array2::from_shape_vec((n, g.latent_dim()), want.latents).unwrap();
        let got = g.raw_output(&z, None).unwrap();
        assert_eq!(got.shape(), want.shape.as_slice(), "{name}");
        let diff = got
            .iter()
            .zip(&want.output)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        eprintln!("{name}: max |runtime - PyTorch| = {diff:e}");
        assert!(diff < 1e-5, "{name}: {diff}");
        // And as bytes, the same mapping as Gantry's own models.
        let bytes = g.generate_from_latents(&z, None).unwrap();
        assert_eq!((bytes.count(), bytes.channels()), (n, channels));
    }
}

/// `generate_each` streams: the sink gets one batch of at most `batch_size` images at a time,
/// in order, so memory is bounded for any count.
#[test]
fn generate_each_streams_batches_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let g = Generator::builder()
        .model(model(dir.path(), Some(4), OutputFormat::Uint8))
        .build()
        .unwrap();
    let mut request = GenerateRequest::new(10, 5);
    request.batch_size = 3;
    let mut calls = Vec::new();
    let mut images = Vec::new();
    g.generate_each(&request, |first, batch| {
        calls.push((first, batch.count()));
        images.extend(batch.to_images());
        Ok(())
    })
    .unwrap();
    assert_eq!(calls, vec![(0, 3), (3, 3), (6, 3), (9, 1)]);
    // Without a class the images cycle through the classes: image i is class i % 4.
    for (i, img) in images.iter().enumerate() {
        let mut one = GenerateRequest::new(i + 1, 5);
        one.class = Some(i % 4);
        let same_class = g.generate_request(&one).unwrap();
        assert_eq!(img.as_bytes(), same_class[i].as_bytes(), "image {i}");
    }
}
