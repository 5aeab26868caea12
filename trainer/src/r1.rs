//! The R1 gradient penalty (Mescheder et al. 2018; lazy, as StyleGAN2 applies it): on real
//! images D should be flat, `R1 = gamma / 2 * E[ |grad_x D(x)|^2 ]`, which needs the gradient of
//! a gradient. candle 0.11 builds no graph of a backward pass unless the environment variable
//! `CANDLE_GRAD_DO_NOT_DETACH=1` is set before the thread's first backward ([`enable`]), and
//! Gantry's fast CPU kernels have first-order backward passes only, so the penalty runs D
//! through candle's own kernels (twice differentiable) on the steps that apply it.

use candle_core::{Tensor, Var};
use gantry_models::{Discriminator, Kernels};

use crate::error::{Result, TrainError};

/// Lazy interval by default: the penalty every 16 steps, scaled by 16 (StyleGAN2's choice).
pub const DEFAULT_EVERY: u64 = 16;

/// The environment variable that makes candle keep the graph of its backward passes.
const KEEP_BACKWARD_GRAPH: &str = "CANDLE_GRAD_DO_NOT_DETACH";

/// Makes candle keep the graph of backward passes on threads that have not run one yet (set
/// before training starts; it only keeps gradients attached, the values are the same).
pub fn enable() {
    if std::env::var_os(KEEP_BACKWARD_GRAPH).is_none() {
        std::env::set_var(KEEP_BACKWARD_GRAPH, "1");
    }
}

/// `E[ |grad_x D(x)|^2 ]` over the images `real` (`[N, C, H, W]`), differentiable in D's
/// parameters. D runs in train mode through candle's kernels (restored afterwards).
pub fn penalty(
    discriminator: &mut Discriminator,
    real: &Tensor,
    labels: Option<&Tensor>,
) -> Result<Tensor> {
    let x = Var::from_tensor(&real.detach())?;
    let kernels = discriminator.net.kernels;
    discriminator.set_kernels(Kernels::Candle);
    let logits = discriminator.forward(x.as_tensor(), labels, true);
    discriminator.set_kernels(kernels);
    let grads = logits?.sum_all()?.backward()?;
    let grad_x = grads.get(x.as_tensor()).ok_or_else(|| {
        TrainError::Distributed("R1: D's output does not depend on its input".into())
    })?;
    if !grad_x.track_op() {
        return Err(TrainError::invalid(
            crate::error::Setting::R1,
            format!(
                "needs candle to keep the graph of its backward pass: set {KEEP_BACKWARD_GRAPH}=1 before training starts"
            ),
        ));
    }
    let n = real.dim(0)? as f64;
    Ok((grad_x.sqr()?.sum_all()? / n)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use gantry_models::init::{normal_vec, rng_for};
    use gantry_models::ModelConfig;

    use crate::train::tests::small_model;

    /// The penalty's gradient with respect to D's weights (a second-order gradient through
    /// convolutions, BatchNorm and LeakyReLU) equals central finite differences of the penalty
    /// itself, for elements of every layer. In f64, with steps small enough (1e-6) that no
    /// LeakyReLU changes side: the penalty is only piecewise smooth in the weights.
    #[test]
    fn the_penalty_gradient_matches_finite_differences() {
        enable();
        let dev = Device::Cpu;
        let cfg = small_model();
        let spec = gantry_models::discriminator_spec(&cfg);
        let tensors: gantry_models::TensorMap = gantry_models::init::init_tensors(&spec, "d", 2)
            .unwrap()
            .into_iter()
            .map(|(k, t)| (k, t.to_dtype(candle_core::DType::F64).unwrap()))
            .collect();
        let mut d = Discriminator::from_tensors(&cfg, &tensors, &dev).unwrap();
        let values: Vec<f64> = normal_vec(&mut rng_for(5, "r1-images"), 4 * 256, 0.0, 0.5)
            .into_iter()
            .map(f64::from)
            .collect();
        let real = Tensor::from_vec(values, (4, 1, 16, 16), &dev).unwrap();
        let p = penalty(&mut d, &real, None).unwrap();
        let value = p.to_scalar::<f64>().unwrap();
        assert!(value.is_finite() && value > 0.0, "{value}");
        let grads = p.backward().unwrap();
        let weights: Vec<Var> = d
            .net
            .conv_blocks()
            .into_iter()
            .map(|b| b.weight.clone())
            .collect();
        for (layer, w) in weights.iter().enumerate() {
            let analytic = grads
                .get(w.as_tensor())
                .unwrap_or_else(|| panic!("no gradient for layer {layer}"))
                .flatten_all()
                .unwrap()
                .to_vec1::<f64>()
                .unwrap();
            let original = w
                .as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f64>()
                .unwrap();
            let scale = analytic.iter().fold(0f64, |m, g| m.max(g.abs()));
            assert!(scale > 0.0, "layer {layer}: zero gradient");
            // The element with the largest gradient in the layer, and two more.
            let biggest = analytic
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.abs().total_cmp(&b.1.abs()))
                .unwrap()
                .0;
            for i in [biggest, original.len() / 3, original.len() - 1] {
                let h = 1e-6;
                let mut at = |delta: f64| -> f64 {
                    let mut v = original.clone();
                    v[i] += delta;
                    w.set(&Tensor::from_vec(v, w.shape(), &dev).unwrap())
                        .unwrap();
                    penalty(&mut d, &real, None)
                        .unwrap()
                        .to_scalar::<f64>()
                        .unwrap()
                };
                let numeric = (at(h) - at(-h)) / (2.0 * h);
                w.set(&Tensor::from_vec(original.clone(), w.shape(), &dev).unwrap())
                    .unwrap();
                let a = analytic[i];
                assert!(
                    (a - numeric).abs() <= 1e-4 * scale,
                    "layer {layer} element {i}: autograd {a} vs finite difference {numeric} (scale {scale})"
                );
            }
        }
    }

    /// The penalty is a mean over the images: a batch of two copies of an image scores what the
    /// image alone does (D in train mode has no BatchNorm here: its statistics would differ).
    #[test]
    fn the_penalty_is_a_mean_over_the_images() {
        enable();
        let dev = Device::Cpu;
        let cfg = ModelConfig {
            spectral_norm: true,
            ..small_model()
        };
        let mut d = Discriminator::new(&cfg, 3, &dev).unwrap();
        let one: Vec<f32> = normal_vec(&mut rng_for(6, "r1-image"), 256, 0.0, 0.5);
        let image = Tensor::from_vec(one.clone(), (1, 1, 16, 16), &dev).unwrap();
        let twice = Tensor::from_vec([one.clone(), one].concat(), (2, 1, 16, 16), &dev).unwrap();
        let p1 = penalty(&mut d, &image, None)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let p2 = penalty(&mut d, &twice, None)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(p1 > 0.0 && (p1 - p2).abs() <= 1e-5 * p1, "{p1} vs {p2}");
    }
}
