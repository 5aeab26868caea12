//! The exponential moving average of the generator's weights (the generator that samples and
//! is exported when the recipe keeps one).

use gantry_models::spec::TensorRole;
use gantry_models::Generator;

use crate::error::Result;

/// Moves `ema` towards `live` after the update of step `step + 1`: parameters (by their role
/// in the spec) averaged with the warmed-up `decay`; BatchNorm running statistics and other
/// buffers copied, not averaged (and recalibrated for the EMA weights when samples or
/// checkpoints are taken).
pub fn update(live: &Generator, ema: &Generator, decay: f64, step: u64) -> Result<()> {
    let decay = ema_decay_at(decay, step);
    let live = live.net.vars_with_roles();
    for ((_, live, role), (_, avg)) in live.iter().zip(ema.net.all_vars()) {
        let next = match role {
            TensorRole::Parameter => {
                ((avg.as_tensor() * decay)? + (live.as_tensor() * (1.0 - decay))?)?
            }
            TensorRole::Buffer => live.as_tensor().copy()?,
        };
        avg.set(&next)?;
    }
    Ok(())
}

/// The EMA decay used after the update of step `step + 1`: `decay`, warmed up as TensorFlow's
/// ExponentialMovingAverage with `num_updates` (`min(decay, (1 + t) / (10 + t))`), so that early
/// on the average follows the weights instead of holding on to the random initialisation.
pub fn ema_decay_at(decay: f64, step: u64) -> f64 {
    let t = step as f64;
    decay.min((1.0 + t) / (10.0 + t))
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};
    use gantry_models::init::{normal_vec, rng_for};
    use gantry_models::ModelConfig;

    use super::*;
    use crate::loss::LossKind;
    use crate::train::{Networks, TrainConfig};

    #[test]
    fn the_ema_decay_warms_up_then_holds() {
        assert_eq!(ema_decay_at(0.999, 0), 0.1);
        assert_eq!(ema_decay_at(0.999, 90), 0.91);
        assert_eq!(ema_decay_at(0.999, 1_000_000), 0.999);
        assert_eq!(ema_decay_at(0.5, 5), 0.4);
        assert_eq!(ema_decay_at(0.5, 8), 0.5);
    }

    /// After a step the EMA holds `d * before + (1 - d) * live` for every parameter (with the
    /// warmed-up `d`) and a copy of every buffer (BatchNorm statistics).
    #[test]
    fn the_ema_averages_parameters_and_copies_buffers() {
        let dev = Device::Cpu;
        let model = ModelConfig {
            image_size: 16,
            g_width: 4,
            d_width: 4,
            latent_dim: 8,
            ..ModelConfig::default()
        };
        let config = TrainConfig {
            ema: Some(0.5),
            ..TrainConfig::default()
        };
        let mut nets = Networks::new(&config, &model, &dev).unwrap();
        let tensor = |shape: &[usize], seed: &str| {
            let n = shape.iter().product();
            Tensor::from_vec(normal_vec(&mut rng_for(1, seed), n, 0.0, 0.5), shape, &dev).unwrap()
        };
        let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for step in 0..3u64 {
            let before = nets
                .generator_ema
                .as_ref()
                .unwrap()
                .net
                .to_tensors()
                .unwrap();
            let (real, z) = (tensor(&[4, 1, 16, 16], "real"), tensor(&[4, 8], "z"));
            nets.train_step(&real, None, &z, LossKind::Bce, config.ema, step)
                .unwrap();
            let d = ema_decay_at(0.5, step) as f32;
            let ema = nets
                .generator_ema
                .as_ref()
                .unwrap()
                .net
                .to_tensors()
                .unwrap();
            let roles = nets.generator.net.vars_with_roles();
            assert_eq!(roles.len(), ema.len());
            for (name, live, role) in roles {
                let (live, avg, old) = (
                    flat(live.as_tensor()),
                    flat(&ema[&name]),
                    flat(&before[&name]),
                );
                assert_eq!(live.len(), avg.len());
                for ((l, a), o) in live.iter().zip(&avg).zip(&old) {
                    let want = match role {
                        TensorRole::Parameter => d * o + (1.0 - d) * l,
                        TensorRole::Buffer => *l,
                    };
                    assert!(
                        (a - want).abs() <= 1e-6,
                        "step {step} {name}: {a} vs {want}"
                    );
                }
            }
        }
    }
}
