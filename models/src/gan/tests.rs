//! Tests of the generator and discriminator modules.

use super::*;
use crate::candle_ops;
use crate::init::normal_vec;
use crate::test_util::{max_abs, max_diff};
use crate::Arch;

fn config(num_classes: Option<usize>) -> ModelConfig {
    ModelConfig {
        arch: crate::Arch::Dcgan,
        latent_dim: 12,
        image_size: 16,
        channels: 3,
        g_width: 8,
        d_width: 8,
        num_classes,
        label_embed_dim: 5,
        spectral_norm: false,
        g_spectral_norm: false,
    }
}

/// The largest singular value of `w` seen as a `[rows, rest]` matrix, by a power iteration
/// on `W^T W` in f64 (independent of the f32 candle ops under test).
fn largest_singular_value(w: &Tensor) -> f64 {
    let rows = w.dim(0).unwrap();
    let m: Vec<f64> = w
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .into_iter()
        .map(f64::from)
        .collect();
    let cols = m.len() / rows;
    let mut v = vec![1.0f64; cols];
    let mut sigma = 0.0;
    for _ in 0..500 {
        let wv: Vec<f64> = (0..rows)
            .map(|r| (0..cols).map(|c| m[r * cols + c] * v[c]).sum())
            .collect();
        let wtwv: Vec<f64> = (0..cols)
            .map(|c| (0..rows).map(|r| m[r * cols + c] * wv[r]).sum())
            .collect();
        let norm = wtwv.iter().map(|x| x * x).sum::<f64>().sqrt();
        sigma = norm.sqrt();
        v = wtwv.iter().map(|x| x / norm).collect();
    }
    sigma
}

/// After enough power iterations every spectrally normalised weight, as the convolutions
/// use it, has largest singular value 1 (without it, DCGAN's N(0, 0.02) weights do not), and
/// so has a projection discriminator's embedding table.
#[test]
fn spectral_norm_makes_the_largest_singular_value_one() {
    let dev = Device::Cpu;
    let projection = ModelConfig {
        arch: Arch::Resnet,
        image_size: 32,
        ..config(Some(3))
    };
    for (cfg, u) in [
        (config(None), "layers.0.weight_u"),
        (projection, "projection.weight_u"),
    ] {
        let sn = ModelConfig {
            spectral_norm: true,
            ..cfg.clone()
        };
        let d = Discriminator::new(&sn, 4, &dev).unwrap();
        let names: Vec<String> = d.net.vars_with_roles().into_iter().map(|t| t.0).collect();
        assert!(names.contains(&u.to_string()), "{names:?}");
        for _ in 0..50 {
            d.power_iteration().unwrap();
        }
        let plain = Discriminator::new(&cfg, 4, &dev).unwrap();
        for (net, normalised) in [(&d.net, true), (&plain.net, false)] {
            let mut weights: Vec<(String, Tensor)> = net
                .conv_blocks()
                .iter()
                .map(|b| (b.layer.name.clone(), b.conv_weight(false).unwrap()))
                .collect();
            weights.extend(
                net.embedding_table(false)
                    .unwrap()
                    .map(|t| ("table".into(), t)),
            );
            assert_eq!(
                weights.len(),
                d.net.conv_blocks().len() + cfg.num_classes.map_or(0, |_| 1)
            );
            for (name, w) in weights {
                let sigma = largest_singular_value(&w);
                assert_eq!(
                    (sigma - 1.0).abs() < 1e-3,
                    normalised,
                    "{name}: sigma {sigma}"
                );
                assert!(normalised || (sigma - 1.0).abs() > 0.05, "{name}: {sigma}");
            }
        }
    }
}

/// `--g-spectral-norm` for both architectures: G keeps a `u` per layer (the ResNet's linear
/// projection included), its weights as used reach singular value 1 after enough power
/// iterations, and [`Generator::inference_tensors`] holds exactly those weights, no `u`
/// (what the exporter writes), the rest unchanged.
#[test]
fn generator_spectral_norm_normalises_every_layer_and_exports_the_normalised_weights() {
    let dev = Device::Cpu;
    for arch in [Arch::Dcgan, Arch::Resnet] {
        let cfg = ModelConfig {
            arch,
            image_size: 32,
            g_spectral_norm: true,
            ..config(None)
        };
        let g = Generator::new(&cfg, 4, &dev).unwrap();
        let first = match arch {
            Arch::Dcgan => "layers.0.weight_u",
            Arch::Resnet => "linear.weight_u",
        };
        let tensors = g.net.to_tensors().unwrap();
        assert!(
            tensors.contains_key(first),
            "{arch:?}: {:?}",
            tensors.keys()
        );
        // Close top singular values converge slowly: the ResNet's 3x3 layers need hundreds.
        for _ in 0..400 {
            g.power_iteration().unwrap();
        }
        let inference = g.inference_tensors().unwrap();
        // The same from the generator's stored tensors (what the exporter reads): `v` is
        // derived from the stored `u` there rather than kept from the last iteration, which
        // moves sigma by float rounding only (measured 7e-9 after 400 iterations).
        let of = Generator::inference_tensors_of(&cfg, &g.net.to_tensors().unwrap()).unwrap();
        assert_eq!(of.len(), inference.len());
        for (name, t) in &of {
            assert!(max_diff(t, &inference[name]) < 1e-6, "{arch:?} {name}");
        }
        let blocks = g.net.conv_blocks();
        assert!(blocks.iter().all(|b| b.spectral_norm.is_some()), "{arch:?}");
        for block in blocks {
            let name = block.layer.weight_name();
            let sigma = largest_singular_value(&inference[&name]);
            assert!((sigma - 1.0).abs() < 1e-3, "{arch:?} {name}: sigma {sigma}");
            let raw = largest_singular_value(&tensors[&name]);
            assert!((raw - 1.0).abs() > 0.05, "{arch:?} {name}: raw sigma {raw}");
            assert!(!inference.contains_key(&block.layer.sn_u_name()));
        }
        let sn_tensors = g.net.conv_blocks().len();
        assert_eq!(inference.len(), tensors.len() - sn_tensors, "{arch:?}");
        for (name, t) in &inference {
            if !name.ends_with(".weight") || !tensors.contains_key(&format!("{name}_u")) {
                assert_eq!(max_diff(t, &tensors[name]), 0.0, "{arch:?} {name}");
            }
        }
    }
}

/// A small ResNet pair (32x32, 8-channel blocks).
fn resnet_config(num_classes: Option<usize>) -> ModelConfig {
    ModelConfig {
        arch: crate::Arch::Resnet,
        image_size: 32,
        g_width: 2,
        d_width: 4,
        spectral_norm: true,
        ..config(num_classes)
    }
}

/// The fast kernels and candle's ops give the same outputs, gradients and running statistics
/// for whole networks of both architectures, in train and eval mode, conditional or not
/// (tolerance as in the kernel tests: float reordering only). The latents are ones where no
/// ReLU input lies within float noise of 0: with the stream "z" one of the ResNet's 32k
/// pre-activations flips sign between the two summation orders and moves G's gradients by
/// 0.4% (every other value agrees within 6e-6).
#[test]
fn fast_kernels_match_candle_for_whole_networks() {
    let dev = Device::Cpu;
    let configs = [None, Some(3)]
        .into_iter()
        .flat_map(|classes| [config(classes), resnet_config(classes)]);
    for cfg in configs {
        let classes = cfg.num_classes;
        let z = Tensor::from_vec(
            normal_vec(&mut crate::init::rng_for(0, "z7"), 4 * 12, 0.0, 1.0),
            (4, 12),
            &dev,
        )
        .unwrap();
        let labels = classes.map(|_| labels_tensor(&[0, 2, 1, 2], &dev).unwrap());
        let mut outs = Vec::new();
        for kernels in [Kernels::Candle, Kernels::Fast] {
            let mut g = Generator::new(&cfg, 3, &dev).unwrap();
            let mut d = Discriminator::new(&cfg, 3, &dev).unwrap();
            g.set_kernels(kernels);
            d.set_kernels(kernels);
            let img = g.forward(&z, labels.as_ref(), true).unwrap();
            let logits = d.forward(&img, labels.as_ref(), true).unwrap();
            let grads = logits.sqr().unwrap().sum_all().unwrap().backward().unwrap();
            let mut grad_list = Vec::new();
            for (name, v) in g.net.parameters().into_iter().chain(d.net.parameters()) {
                let gr = grads
                    .get(v.as_tensor())
                    .unwrap_or_else(|| panic!("no gradient for {name}"));
                grad_list.push((name, gr.clone()));
            }
            let eval = g.forward(&z, labels.as_ref(), false).unwrap();
            let stats = g.net.to_tensors().unwrap();
            outs.push((img, logits, grad_list, eval, stats));
        }
        let (a, b) = (&outs[0], &outs[1]);
        assert!(max_diff(&a.0, &b.0) < 1e-4, "generator output");
        assert!(max_diff(&a.1, &b.1) < 1e-4, "logits");
        for ((name, ga), (_, gb)) in a.2.iter().zip(&b.2) {
            let scale = max_abs(ga);
            assert!(
                max_diff(ga, gb) <= 1e-3 * scale.max(1e-3),
                "gradient of {name}: {} vs scale {scale}",
                max_diff(ga, gb)
            );
        }
        assert!(max_diff(&a.3, &b.3) < 1e-4, "eval-mode output");
        for (k, v) in &a.4 {
            assert!(max_diff(v, &b.4[k]) < 1e-5, "{k}");
        }
    }
}

#[test]
fn frozen_discriminator_passes_gradients_only_to_its_input() {
    let dev = Device::Cpu;
    let cfg = config(None);
    for kernels in [Kernels::Candle, Kernels::Fast] {
        let mut d = Discriminator::new(&cfg, 1, &dev).unwrap();
        d.set_kernels(kernels);
        let x = candle_core::Var::from_tensor(
            &Tensor::zeros((2, 3, 16, 16), candle_core::DType::F32, &dev).unwrap(),
        )
        .unwrap();
        let grads = d
            .forward_frozen(x.as_tensor(), None, true)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        assert!(grads.get(x.as_tensor()).is_some());
        for (name, v) in d.net.parameters() {
            assert!(grads.get(v.as_tensor()).is_none(), "{name} got a gradient");
        }
    }
}

/// Recalibrated statistics are the exact (unbiased) statistics of the layer inputs: feeding
/// the same batch twice must give that batch's mean and variance of the first layer's output.
#[test]
fn recalibration_sets_the_exact_batch_statistics() {
    let dev = Device::Cpu;
    let cfg = config(None);
    let g = Generator::new(&cfg, 2, &dev).unwrap();
    // Three different batches: the running statistics become the plain average of the three
    // batches' mean and (unbiased) variance, not a decayed one.
    let zs: Vec<Tensor> = (0..3)
        .map(|i| {
            let v = normal_vec(&mut crate::init::rng_for(i, "rz"), 6 * 12, i as f32, 1.0);
            Tensor::from_vec(v, (6, 12), &dev).unwrap()
        })
        .collect();
    let mut next = zs.iter();
    g.recalibrate_batchnorm(3, 6, |_| Ok((next.next().unwrap().clone(), None)))
        .unwrap();
    let block = g.net.conv_blocks()[0];
    let n = (6 * 4 * 4) as f64;
    let (mut mean, mut var) = (Vec::new(), Vec::new());
    for z in &zs {
        let y = candle_ops::conv(
            &z.reshape((6, 12, 1, 1)).unwrap(),
            block.weight.as_tensor(),
            &block.layer,
        )
        .unwrap();
        let m = y.mean_keepdim((0, 2, 3)).unwrap();
        let v = (y
            .broadcast_sub(&m)
            .unwrap()
            .sqr()
            .unwrap()
            .sum_keepdim((0, 2, 3))
            .unwrap()
            / (n - 1.0))
            .unwrap();
        mean.push(m.flatten_all().unwrap());
        var.push(v.flatten_all().unwrap());
    }
    let average = |ts: &[Tensor]| Tensor::stack(ts, 0).unwrap().mean(0).unwrap();
    let bn = block.bn.as_ref().unwrap();
    let off = max_diff(bn.running_mean.as_tensor(), &average(&mean));
    assert!(off < 1e-6, "{off}");
    assert!(max_diff(bn.running_var.as_tensor(), &average(&var)) < 1e-6);
    // The last batch alone (what a momentum of 1 would keep) is far from it.
    let last = max_diff(bn.running_mean.as_tensor(), &mean[2]);
    assert!(last > 100.0 * off.max(1e-8), "{last} vs {off}");
}

#[test]
fn batched_generation_equals_one_batch_with_cycling_labels() {
    let dev = Device::Cpu;
    let g = Generator::new(&config(Some(3)), 4, &dev).unwrap();
    let z = Tensor::from_vec(
        normal_vec(&mut crate::init::rng_for(0, "bz"), 5 * 12, 0.0, 1.0),
        (5, 12),
        &dev,
    )
    .unwrap();
    let whole = g
        .forward(
            &z,
            Some(&labels_tensor(&[0, 1, 2, 0, 1], &dev).unwrap()),
            false,
        )
        .unwrap();
    let batched = g.generate_batched(&z, 2, false).unwrap();
    assert!(max_diff(&whole, &batched) < 1e-6);
    assert!(g.generate_batched(&z, 0, false).is_err());
}

#[test]
fn label_errors_are_reported() {
    let dev = Device::Cpu;
    let g = Generator::new(&config(None), 1, &dev).unwrap();
    let z = Tensor::zeros((2, 12), candle_core::DType::F32, &dev).unwrap();
    let l = labels_tensor(&[0, 1], &dev).unwrap();
    assert!(g
        .forward(&z, Some(&l), false)
        .unwrap_err()
        .to_string()
        .contains("unconditional"));
    let gc = Generator::new(&config(Some(3)), 1, &dev).unwrap();
    assert!(gc
        .forward(&z, None, false)
        .unwrap_err()
        .to_string()
        .contains("needs labels"));
    let bad = Tensor::zeros((2, 7), candle_core::DType::F32, &dev).unwrap();
    assert!(g
        .forward(&bad, None, false)
        .unwrap_err()
        .to_string()
        .contains("7 dims"));
    // One label per latent, for G and D alike.
    let three = labels_tensor(&[0, 1, 2], &dev).unwrap();
    let err = gc.forward(&z, Some(&three), false).unwrap_err().to_string();
    assert!(err.contains("labels have shape [3], expected [2]"), "{err}");
    let d = Discriminator::new(&config(Some(3)), 1, &dev).unwrap();
    let images = Tensor::zeros((2, 3, 16, 16), candle_core::DType::F32, &dev).unwrap();
    let err = d
        .forward(&images, Some(&three), false)
        .unwrap_err()
        .to_string();
    assert!(err.contains("labels have shape [3], expected [2]"), "{err}");
}

/// `set_kernels` picks the implementation the forward passes use; both give the same images
/// and logits.
#[test]
fn kernels_are_selectable_and_agree() {
    let dev = Device::Cpu;
    let mut g = Generator::new(&config(None), 1, &dev).unwrap();
    let mut d = Discriminator::new(&config(None), 1, &dev).unwrap();
    let z = Tensor::randn(0f32, 1.0, (2, 12), &dev).unwrap();
    let mut outputs = Vec::new();
    for kernels in [Kernels::Candle, Kernels::Fast] {
        g.set_kernels(kernels);
        d.set_kernels(kernels);
        assert_eq!((g.net.kernels, d.net.kernels), (kernels, kernels));
        let images = g.forward(&z, None, false).unwrap();
        let logits = d.forward(&images, None, false).unwrap();
        let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        outputs.push([flat(&images), flat(&logits)].concat());
    }
    let diff = outputs[0]
        .iter()
        .zip(&outputs[1])
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(diff < 1e-5, "{diff}");
}

/// A projection discriminator's logit is the unconditional head plus `<E[y], h>`, `E` the
/// (spectrally normalised) table and `h` the pooled features, per image.
#[test]
fn projection_adds_the_label_embedding_dotted_with_the_features() {
    let dev = Device::Cpu;
    let d = Discriminator::new(&resnet_config(Some(3)), 5, &dev).unwrap();
    d.power_iteration().unwrap();
    let x = Tensor::randn(0f32, 1.0, (2, 3, 32, 32), &dev).unwrap();
    let labels = [2u32, 0];
    let logits = d
        .forward(&x, Some(&labels_tensor(&labels, &dev).unwrap()), false)
        .unwrap();
    let (head, h) = d.net.forward_with_features(&x, None, false, true).unwrap();
    let head = head.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let h = h.flatten_from(1).unwrap().to_vec2::<f32>().unwrap();
    let table = d
        .net
        .embedding_table(true)
        .unwrap()
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    let logits = logits.to_vec1::<f32>().unwrap();
    for i in 0..2 {
        let dot: f64 = table[labels[i] as usize]
            .iter()
            .zip(&h[i])
            .map(|(e, f)| (e * f) as f64)
            .sum();
        let expected = head[i] as f64 + dot;
        assert!(
            (logits[i] as f64 - expected).abs() < 1e-4,
            "{i}: {} vs {expected}",
            logits[i]
        );
        assert!(dot.abs() > 1e-2, "the projection matters here: {dot}");
    }
}

/// A conditional ResNet takes its labels through class-conditional BatchNorm (G: no
/// concatenated code) and a projection (D: no label maps): other labels change the images
/// and the logits, and missing labels are an error, not a silent unconditional pass.
#[test]
fn conditional_resnet_uses_its_labels_in_both_networks() {
    let dev = Device::Cpu;
    let cfg = resnet_config(Some(3));
    let g = Generator::new(&cfg, 5, &dev).unwrap();
    let d = Discriminator::new(&cfg, 5, &dev).unwrap();
    assert_eq!(g.net.conv_blocks()[0].layer.in_channels, cfg.latent_dim);
    assert_eq!(d.net.conv_blocks()[0].layer.in_channels, cfg.channels);
    let gains: Vec<String> = g
        .net
        .vars_with_roles()
        .into_iter()
        .filter(|(_, v, _)| v.as_tensor().dims() == [3, 8])
        .map(|(n, _, _)| n)
        .collect();
    assert_eq!(
        gains.len(),
        12,
        "gain and shift of 6 conditional BatchNorms: {gains:?}"
    );
    // Per-class gains as a trained model has them (fresh ones are all 1).
    for (name, v, _) in g.net.vars_with_roles() {
        if name.ends_with(".weight") && v.as_tensor().rank() == 2 {
            let n = v.as_tensor().elem_count();
            let values = normal_vec(&mut crate::init::rng_for(1, &name), n, 1.0, 0.3);
            v.set(&Tensor::from_vec(values, (3, 8), &dev).unwrap())
                .unwrap();
        }
    }
    let z = Tensor::from_vec(
        normal_vec(&mut crate::init::rng_for(0, "cz"), 2 * 12, 0.0, 1.0),
        (2, 12),
        &dev,
    )
    .unwrap();
    let (a, b) = (
        labels_tensor(&[0, 1], &dev).unwrap(),
        labels_tensor(&[2, 2], &dev).unwrap(),
    );
    for train in [true, false] {
        let ia = g.forward(&z, Some(&a), train).unwrap();
        let ib = g.forward(&z, Some(&b), train).unwrap();
        assert!(
            max_diff(&ia, &ib) > 1e-3,
            "train {train}: labels ignored by G"
        );
        let la = d.forward(&ia, Some(&a), false).unwrap();
        let lb = d.forward(&ia, Some(&b), false).unwrap();
        assert!(max_diff(&la, &lb) > 1e-6, "labels ignored by D");
    }
    assert!(g.forward(&z, None, false).is_err());
}
