//! The training step on its own (no CLI, no data set): a step in shards is the step of their
//! whole batch, the gather of the scalars names the first failure and the rank it came from,
//! and lazy R1 applies on its steps with its documented weight.

use candle_core::{Device, Tensor, Var};
use gantry_models::init::{normal_vec, rng_for};

use super::*;
use crate::train::tests::{small_model, ScriptedPeer};
use crate::train::TrainConfig;

fn fresh(config: &TrainConfig) -> Networks {
    Networks::new(config, &small_model(), &Device::Cpu).unwrap()
}

/// One shard of `n` images and latents drawn from `seed`.
fn shard(n: usize, seed: u64, weight: f64, index: usize) -> Shard {
    let dev = Device::Cpu;
    let pixels = normal_vec(&mut rng_for(seed, "images"), n * 256, 0.0, 0.5);
    let z = normal_vec(&mut rng_for(seed, "latents"), n * 8, 0.0, 1.0);
    Shard {
        real: Tensor::from_vec(pixels, (n, 1, 16, 16), &dev).unwrap(),
        labels: None,
        z: Tensor::from_vec(z, (n, 8), &dev).unwrap(),
        weight,
        index,
    }
}

/// Every value of the variables, flattened in order.
fn values<'a>(vars: impl Iterator<Item = &'a Var>) -> Vec<f32> {
    vars.flat_map(|v| {
        v.as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    })
    .collect()
}

/// The trainable state after a step: both networks' parameters, both optimisers' moments
/// (which hold the gradients' scale, unlike Adam's first update) and the EMA's parameters.
fn trained_state(nets: &Networks) -> Vec<f32> {
    let mut all = values(nets.opt_g.params());
    all.extend(values(nets.opt_d.params()));
    all.extend(values(nets.opt_g.moments()));
    all.extend(values(nets.opt_d.moments()));
    if let Some(ema) = &nets.generator_ema {
        let params = ema.net.parameters();
        all.extend(values(params.iter().map(|(_, v)| v)));
    }
    all
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()))
}

/// A batch taken as two shards of half its share each, the same images in both (so that
/// BatchNorm, which normalises each shard by its own statistics, sees the same batch), makes
/// exactly the step of that batch as one shard: the gradients are summed by share, the scalars
/// averaged by share. Halving is exact in floats, so the tolerance only absorbs reordering.
#[test]
fn two_half_shards_of_one_batch_make_its_step() {
    let config = TrainConfig {
        ema: Some(0.9),
        ..TrainConfig::default()
    };
    let options = StepOptions {
        loss: config.loss,
        ema_decay: config.ema,
        ..StepOptions::default()
    };
    let mut whole = fresh(&config);
    let mut halves = fresh(&config);
    let a = whole
        .train_step_sharded(&[shard(4, 1, 1.0, 0)], options, 0, &Solo)
        .unwrap();
    let b = halves
        .train_step_sharded(
            &[shard(4, 1, 0.5, 0), shard(4, 1, 0.5, 1)],
            options,
            0,
            &Solo,
        )
        .unwrap();
    // The BCE losses are positive and D's outputs probabilities (a scalar summed with the
    // wrong sign on both sides would still agree).
    assert!(a.loss_d > 0.0 && a.loss_g > 0.0, "{a:?}");
    assert!(
        (0.0..1.0).contains(&a.d_real) && (0.0..1.0).contains(&a.d_fake),
        "{a:?}"
    );
    for (what, x, y) in [
        ("loss_d", a.loss_d, b.loss_d),
        ("loss_g", a.loss_g, b.loss_g),
        ("d_real", a.d_real, b.d_real),
        ("d_fake", a.d_fake, b.d_fake),
    ] {
        assert!(
            (x - y).abs() <= 1e-6 * x.abs().max(1.0),
            "{what}: {x} vs {y}"
        );
    }
    let (x, y) = (trained_state(&whole), trained_state(&halves));
    assert!(max_abs_diff(&x, &y) <= 1e-6, "{}", max_abs_diff(&x, &y));
    // The comparison can fail: a different batch's step is far from it.
    let mut other = fresh(&config);
    other
        .train_step_sharded(&[shard(4, 2, 1.0, 0)], options, 0, &Solo)
        .unwrap();
    assert!(max_abs_diff(&x, &trained_state(&other)) > 1e-4);
}

/// The global scalars are the sum of the ranks' shares; the first non-finite value in the
/// order the step makes them (D's loss, D's gradients, G's loss, G's gradients) is the error,
/// naming every rank where it is bad, its value (NaN for a gradient flag) and the step.
#[test]
fn the_gather_sums_the_ranks_and_names_the_first_failure() {
    let rank = |loss_d, bad_d, loss_g, bad_g| {
        StepScalars {
            loss_d,
            loss_g,
            d_real: 0.25,
            d_fake: 0.125,
            bad_d_grads: bad_d,
            bad_g_grads: bad_g,
            r1: 0.5,
        }
        .to_array()
    };
    let gather = |ranks: &[[f32; StepScalars::LEN]], collective: &dyn Collective| {
        gather_and_check(&ranks.concat(), collective, 9).map_err(|e| e.to_string())
    };
    let sum = gather(
        &[rank(1.0, 0.0, 2.0, 0.0), rank(3.0, 0.0, 5.0, 0.0)],
        &ScriptedPeer::identical(),
    )
    .unwrap();
    let want = StepScalars {
        loss_d: 4.0,
        loss_g: 7.0,
        d_real: 0.5,
        d_fake: 0.25,
        bad_d_grads: 0.0,
        bad_g_grads: 0.0,
        r1: 1.0,
    };
    assert_eq!(sum, want);

    let err = gather(
        &[rank(1.0, 0.0, 2.0, 0.0), rank(f32::NAN, 0.0, 2.0, 0.0)],
        &ScriptedPeer::identical(),
    )
    .unwrap_err();
    assert!(
        err.starts_with("loss_d is NaN at step 10 on rank 1:"),
        "{err}"
    );
    let err = gather(
        &[rank(1.0, 0.0, f32::INFINITY, 0.0), rank(1.0, 1.0, 2.0, 0.0)],
        &ScriptedPeer::identical(),
    )
    .unwrap_err();
    assert!(
        err.starts_with("a gradient of D is NaN at step 10 on rank 1:"),
        "{err}"
    );
    let err = gather(
        &[rank(1.0, 0.0, f32::INFINITY, 0.0), rank(1.0, 0.0, 2.0, 1.0)],
        &ScriptedPeer::identical(),
    )
    .unwrap_err();
    assert!(
        err.starts_with("loss_g is inf at step 10 on rank 0:"),
        "{err}"
    );
    let err = gather(
        &[rank(1.0, 0.0, 2.0, 1.0), rank(1.0, 0.0, 2.0, 1.0)],
        &ScriptedPeer::identical(),
    )
    .unwrap_err();
    assert!(
        err.starts_with("a gradient of G is NaN at step 10 on ranks 0, 1:"),
        "{err}"
    );
    // One process names no rank.
    let err = gather(&[rank(f32::NEG_INFINITY, 0.0, 2.0, 0.0)], &Solo).unwrap_err();
    assert!(
        err.starts_with("loss_d is -inf at step 10: training diverged"),
        "{err}"
    );
}

/// The gradients of D's parameters (in the optimiser's order) of `loss`.
fn d_gradients(nets: &Networks, loss: &Tensor) -> Vec<f32> {
    let grads = loss.backward().unwrap();
    nets.opt_d
        .gradients(&grads)
        .into_iter()
        .zip(nets.opt_d.params())
        .flat_map(|(g, p)| {
            g.unwrap_or_else(|| p.as_tensor().zeros_like().unwrap())
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        })
        .collect()
}

/// Lazy R1 with gamma and interval k applies on the steps divisible by k only, and adds
/// `gamma / 2 * k * penalty` to D's loss: the first moment of D's Adam after the step
/// (`(1 - beta1) * gradient`) is that of the plain step plus `(1 - beta1) * gamma / 2 * k`
/// times the penalty's own gradient, computed here independently on the same D.
#[test]
fn lazy_r1_applies_on_its_steps_with_its_weight() {
    crate::r1::enable();
    let config = TrainConfig::default();
    let data = shard(4, 3, 1.0, 0);
    let (gamma, every) = (3.0, 2u64);
    let with_r1 = StepOptions {
        loss: config.loss,
        r1: Some((gamma, every)),
        ..StepOptions::default()
    };
    let plain = StepOptions {
        r1: None,
        ..with_r1
    };
    let first_moment_d = |nets: &Networks| -> Vec<f32> {
        let n: usize = nets.opt_d.params().map(|p| p.elem_count()).sum();
        values(nets.opt_d.moments()).into_iter().take(n).collect()
    };
    // Off its steps R1 changes nothing and reports nothing.
    let (mut a, mut b) = (fresh(&config), fresh(&config));
    let off = a
        .train_step_sharded(std::slice::from_ref(&data), with_r1, 1, &Solo)
        .unwrap();
    b.train_step_sharded(std::slice::from_ref(&data), plain, 1, &Solo)
        .unwrap();
    assert_eq!(off.r1_penalty, None);
    assert_eq!(trained_state(&a), trained_state(&b));

    // On them: the penalty reported is R1's of D as the step found it (after its power
    // iteration), and its gradient enters D's update with weight gamma / 2 * every.
    let mut reference = fresh(&config);
    reference.discriminator.power_iteration().unwrap();
    let penalty = crate::r1::penalty(&mut reference.discriminator, &data.real, None).unwrap();
    let penalty_value = penalty.to_scalar::<f32>().unwrap();
    let penalty_grad = d_gradients(&reference, &penalty);
    let (mut a, mut b) = (fresh(&config), fresh(&config));
    let on = a
        .train_step_sharded(std::slice::from_ref(&data), with_r1, 4, &Solo)
        .unwrap();
    b.train_step_sharded(&[data], plain, 4, &Solo).unwrap();
    let reported = on
        .r1_penalty
        .expect("R1 on a step divisible by its interval");
    assert!(
        (reported - penalty_value).abs() <= 1e-5 * penalty_value.abs(),
        "{reported} vs {penalty_value}"
    );
    let weight = (1.0 - config.adam.beta1) as f32 * (gamma / 2.0 * every as f64) as f32;
    let (m_r1, m_plain) = (first_moment_d(&a), first_moment_d(&b));
    let scale = penalty_grad
        .iter()
        .fold(0f32, |m, g| m.max(weight * g.abs()));
    assert!(scale > 0.0);
    for (i, ((r, p), g)) in m_r1.iter().zip(&m_plain).zip(&penalty_grad).enumerate() {
        let (added, want) = (r - p, weight * g);
        assert!(
            (added - want).abs() <= 1e-4 * scale,
            "element {i}: R1 added {added} to the first moment, expected {want}"
        );
    }
}

/// DiffAugment in a step: off (or no policy) the images pass unchanged; on, the draw is named
/// by the step, the part of the batch and the purpose, so the same names draw the same
/// augmentation (on any number of ranks) and another name another one.
#[test]
fn augmentation_draws_are_named_by_step_part_and_purpose() {
    let data = shard(4, 5, 1.0, 0);
    let x = &data.real;
    let same = |a: &Tensor, b: &Tensor| {
        max_abs_diff(
            &a.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            &b.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        ) == 0.0
    };
    let policy: Augment = "translation".parse().unwrap();
    let off = Some((Augment::OFF, 7));
    for augment in [None, off] {
        assert!(same(&augmented(augment, 3, x, &data, "real").unwrap(), x));
    }
    let on = Some((policy, 7));
    let drawn = augmented(on, 3, x, &data, "real").unwrap();
    assert!(!same(&drawn, x), "translation moved nothing");
    assert!(same(&augmented(on, 3, x, &data, "real").unwrap(), &drawn));
    let other_part = Shard {
        index: 1,
        ..data.clone()
    };
    for other in [
        augmented(on, 4, x, &data, "real").unwrap(),
        augmented(on, 3, x, &other_part, "real").unwrap(),
        augmented(on, 3, x, &data, "fake").unwrap(),
        augmented(Some((policy, 8)), 3, x, &data, "real").unwrap(),
    ] {
        assert!(!same(&other, &drawn));
    }
}
