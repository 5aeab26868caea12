//! Three training steps against numbers produced by PyTorch (`golden/step.py` wrote
//! `golden/{dcgan,gantry}_step.json`): the same tiny DCGAN pair, the same weights, real batches
//! and latents, trained as the PyTorch DCGAN example does (train-mode BatchNorm,
//! BCE-with-logits, Adam), under the `dcgan` recipe and under Gantry's default `gantry` recipe
//! (`torch.nn.utils.spectral_norm` on D with one power iteration per D update from the same u
//! vector, lr 4e-4, the EMA of G). Losses, mean D outputs and every weight, u vector, running
//! statistic and EMA weight afterwards must agree.
//!
//! Tolerance: both sides compute in f32 with different summation orders, so they agree to
//! rounding per operation; measured on this machine, losses and D outputs within 4.8e-7 and
//! weights within 6e-8 after three steps under `dcgan`, 1.2e-7 for both under `gantry`
//! (Gantry's kernels and candle's ops alike). The asserts allow 1e-5 and 2e-6 (20x and 17x
//! margins): Adam moves each weight by up to lr = 2e-4 per step, so an error in a gradient's
//! sign or a wrong bias correction (1e-4 and more), a BatchNorm normalising with the unbiased
//! variance, or a mean instead of a sum of the two D losses, all fail them. Under `gantry`,
//! each of these was checked to fail: sigma treated as a constant in the backward pass, no
//! power iteration, a second power iteration before G's update (as a PyTorch module in
//! training mode would do on every forward), u off by 1e-4, the EMA decay not warmed up.

use candle_core::{Device, Tensor};
use gantry_models::{Adam, AdamConfig, Discriminator, Generator, Kernels, ModelConfig, TensorMap};
use gantry_testkit::zip_eq;
use gantry_trainer::loss::LossKind;
use gantry_trainer::train::Networks;
use serde::Deserialize;

#[derive(Deserialize)]
struct Stored {
    shape: Vec<usize>,
    values: Vec<f32>,
}

#[derive(Deserialize)]
struct Pair {
    generator: std::collections::BTreeMap<String, Stored>,
    discriminator: std::collections::BTreeMap<String, Stored>,
    /// The EMA of G (the `gantry` recipe).
    generator_ema: Option<std::collections::BTreeMap<String, Stored>>,
}

#[derive(Deserialize)]
struct Recipe {
    lr: f64,
    spectral_norm: bool,
    ema: Option<f64>,
}

#[derive(Deserialize)]
struct Step {
    real: Vec<f32>,
    z: Vec<f32>,
    loss_d: f32,
    loss_g: f32,
    d_real: f32,
    d_fake: f32,
}

#[derive(Deserialize)]
struct Golden {
    initial: Pair,
    steps: Vec<Step>,
    #[serde(rename = "final")]
    after: Pair,
    recipe: Recipe,
}

fn tensor_map(stored: &std::collections::BTreeMap<String, Stored>) -> TensorMap {
    stored
        .iter()
        .map(|(k, s)| {
            let t = Tensor::from_slice(&s.values, s.shape.as_slice(), &Device::Cpu).unwrap();
            (k.clone(), t)
        })
        .collect()
}

fn golden(recipe: &str) -> Golden {
    let text = match recipe {
        "dcgan" => include_str!("golden/dcgan_step.json"),
        "gantry" => include_str!("golden/gantry_step.json"),
        other => panic!("no golden steps for {other}"),
    };
    serde_json::from_str(text).unwrap()
}

/// The pair of the script: 16x16 grey, latent 8, widths 4.
fn config(spectral_norm: bool) -> ModelConfig {
    ModelConfig {
        latent_dim: 8,
        image_size: 16,
        channels: 1,
        g_width: 4,
        d_width: 4,
        spectral_norm,
        ..ModelConfig::default()
    }
}

/// Runs the golden steps of `recipe` with `kernels`; returns the largest scalar and weight
/// differences.
fn replay(recipe: &str, kernels: Kernels) -> (f32, f32) {
    let golden = golden(recipe);
    let (cfg, dev) = (config(golden.recipe.spectral_norm), Device::Cpu);
    let generator = Generator::from_tensors(&cfg, &tensor_map(&golden.initial.generator), &dev);
    let discriminator =
        Discriminator::from_tensors(&cfg, &tensor_map(&golden.initial.discriminator), &dev);
    let (generator, discriminator) = (generator.unwrap(), discriminator.unwrap());
    let generator_ema = golden.recipe.ema.map(|_| {
        Generator::from_tensors(&cfg, &tensor_map(&golden.initial.generator), &dev).unwrap()
    });
    let adam = AdamConfig {
        lr: golden.recipe.lr,
        ..AdamConfig::default()
    };
    let mut nets = Networks {
        opt_g: Adam::new(generator.net.parameters(), adam).unwrap(),
        opt_d: Adam::new(discriminator.net.parameters(), adam).unwrap(),
        generator,
        discriminator,
        generator_ema,
    };
    nets.set_kernels(kernels);
    let mut worst_scalar = 0f32;
    for (i, step) in golden.steps.iter().enumerate() {
        let real = Tensor::from_slice(&step.real, (4, 1, 16, 16), &dev).unwrap();
        let z = Tensor::from_slice(&step.z, (4, 8), &dev).unwrap();
        let got = nets
            .train_step(&real, None, &z, LossKind::Bce, golden.recipe.ema, i as u64)
            .unwrap();
        for (what, ours, theirs) in [
            ("loss_d", got.loss_d, step.loss_d),
            ("loss_g", got.loss_g, step.loss_g),
            ("d_real", got.d_real, step.d_real),
            ("d_fake", got.d_fake, step.d_fake),
        ] {
            let diff = (ours - theirs).abs();
            assert!(
                diff < 1e-5,
                "{recipe} {kernels:?} step {}: {what} {ours} vs PyTorch {theirs}",
                i + 1
            );
            worst_scalar = worst_scalar.max(diff);
        }
    }
    let mut worst_weight = 0f32;
    let ema = match (&nets.generator_ema, &golden.after.generator_ema) {
        (Some(ours), Some(theirs)) => Some(("G EMA", ours.net.to_tensors().unwrap(), theirs)),
        (None, None) => None,
        _ => panic!("{recipe}: an EMA on one side only"),
    };
    let pairs = [
        (
            "G",
            nets.generator.net.to_tensors().unwrap(),
            &golden.after.generator,
        ),
        (
            "D",
            nets.discriminator.net.to_tensors().unwrap(),
            &golden.after.discriminator,
        ),
    ];
    for (net, ours, theirs) in pairs.into_iter().chain(ema) {
        assert_eq!(ours.len(), theirs.len(), "{net}: tensor count");
        for (name, stored) in theirs {
            let values: Vec<f32> = ours[name].flatten_all().unwrap().to_vec1().unwrap();
            let diff = zip_eq(&values, &stored.values)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(
                diff < 2e-6,
                "{recipe} {kernels:?} {net} {name}: {diff} from PyTorch"
            );
            worst_weight = worst_weight.max(diff);
        }
    }
    (worst_scalar, worst_weight)
}

#[test]
fn three_training_steps_match_pytorch() {
    for recipe in ["dcgan", "gantry"] {
        for kernels in [Kernels::Fast, Kernels::Candle] {
            let (scalars, weights) = replay(recipe, kernels);
            eprintln!(
                "{recipe} {kernels:?}: scalars within {scalars:e}, weights within {weights:e} of PyTorch"
            );
        }
    }
}
