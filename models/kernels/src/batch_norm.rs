//! Training-mode BatchNorm fused with its activation, and the activations' backward pass (the
//! math; [`crate::fused`] runs it inside each convolution block's autograd node), on
//! channel-major tensors (`[C, B, H, W]`: each channel's values are one contiguous slab, so
//! statistics are plain slice reductions).
//!
//! Forward: `y = act(gamma * (x - mean) * inv_std + beta)` with batch statistics.
//! Backward, with `dz = dy * act'(y)` and `x_hat = (x - mean) * inv_std`:
//! `dbeta = sum(dz)`, `dgamma = sum(dz * x_hat)`,
//! `dx = gamma * inv_std / M * (M * dz - dbeta - x_hat * dgamma)`.

use candle_core::{CpuStorage, CustomOp2, Layout, Shape};
use rayon::prelude::*;

use crate::storage::f32_slice;

/// An activation that the kernels fuse; its derivative is read off the output `y`, which works
/// because each of these is monotonic with `y > 0` exactly when its input is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Act {
    Identity,
    Relu,
    LeakyRelu(f32),
}

impl Act {
    /// The slope for negative inputs: each activation is `max(z, 0) + neg * min(z, 0)`.
    pub(crate) fn negative_slope(self) -> f32 {
        match self {
            Self::Identity => 1.0,
            Self::Relu => 0.0,
            Self::LeakyRelu(s) => s,
        }
    }
}

/// `act(z)` for the activation with negative slope `neg`: branch-free, so that loops over it
/// vectorise (a `match` on [`Act`] per element, with data-dependent branches, did not).
#[inline(always)]
pub(crate) fn activate(z: f32, neg: f32) -> f32 {
    z.max(0.0) + neg * z.min(0.0)
}

/// `act'(z)` read off `y = act(z)` (positive exactly when `z` is).
#[inline(always)]
fn slope_at_output(y: f32, neg: f32) -> f32 {
    if y > 0.0 {
        1.0
    } else {
        neg
    }
}

/// Lanes of the partial sums below: independent accumulators let the compiler vectorise what
/// would otherwise be one long dependency chain of additions.
const LANES: usize = 16;

/// `sum(f(x))` over a slice with `LANES` f32 partial sums, combined in f64.
#[inline]
fn lane_sum(xs: &[f32], f: impl Fn(f32) -> f32) -> f64 {
    let mut acc = [0f32; LANES];
    let chunks = xs.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += f(v);
        }
    }
    acc.iter().map(|&a| a as f64).sum::<f64>() + tail.iter().map(|&v| f(v) as f64).sum::<f64>()
}

/// `(sum(g(x, y, dy)), sum(h(x, y, dy)))` over three equal slices, vectorised like [`lane_sum`].
#[inline]
fn lane_sum2(
    x: &[f32],
    y: &[f32],
    dy: &[f32],
    g: impl Fn(f32, f32, f32) -> (f32, f32),
) -> (f64, f64) {
    let (mut a, mut b) = ([0f32; LANES], [0f32; LANES]);
    let n = x.len() / LANES * LANES;
    for i in (0..n).step_by(LANES) {
        for l in 0..LANES {
            let (u, v) = g(x[i + l], y[i + l], dy[i + l]);
            a[l] += u;
            b[l] += v;
        }
    }
    let (mut sa, mut sb) = (
        a.iter().map(|&v| v as f64).sum::<f64>(),
        b.iter().map(|&v| v as f64).sum::<f64>(),
    );
    for i in n..x.len() {
        let (u, v) = g(x[i], y[i], dy[i]);
        sa += u as f64;
        sb += v as f64;
    }
    (sa, sb)
}

/// Per-channel batch statistics kept by the forward pass for the backward pass and the running
/// statistics update.
#[derive(Debug, Clone, Default)]
pub(crate) struct BatchStats {
    pub mean: Vec<f32>,
    /// Biased variance (divided by the count).
    pub var: Vec<f32>,
    pub inv_std: Vec<f32>,
}

/// `act(batchnorm(x))` in training mode for a channel-major `x` (`c` channels): the output and
/// the batch statistics.
pub(crate) fn bn_act_forward(
    x: &[f32],
    c: usize,
    gamma: &[f32],
    beta: &[f32],
    eps: f64,
    act: Act,
) -> (Vec<f32>, BatchStats) {
    let _span =
        crate::profile::Timer::start(|| format!("batchnorm+act [{c}, {}] fwd", x.len() / c.max(1)));
    let m = x.len() / c;
    let mut y = vec![0f32; x.len()];
    let neg = act.negative_slope();
    let per_channel: Vec<(f32, f32, f32)> = y
        .par_chunks_mut(m)
        .zip(x.par_chunks(m))
        .enumerate()
        .map(|(ch, (out, xs))| {
            let mean = (lane_sum(xs, |v| v) / m as f64) as f32;
            let var = (lane_sum(xs, |v| (v - mean) * (v - mean)) / m as f64) as f32;
            let inv_std = 1.0 / (var as f64 + eps).sqrt() as f32;
            let scale = gamma[ch] * inv_std;
            let shift = beta[ch] - mean * scale;
            for (o, &v) in out.iter_mut().zip(xs) {
                *o = activate(v * scale + shift, neg);
            }
            (mean, var, inv_std)
        })
        .collect();
    let stats = BatchStats {
        mean: per_channel.iter().map(|s| s.0).collect(),
        var: per_channel.iter().map(|s| s.1).collect(),
        inv_std: per_channel.iter().map(|s| s.2).collect(),
    };
    (y, stats)
}

/// The backward pass of [`bn_act_forward`] from its input `x`, output `y` and the output's
/// gradient `dy`: `[dx, dgamma, dbeta]` packed in one vector.
pub(crate) fn bn_act_backward(
    x: &[f32],
    y: &[f32],
    dy: &[f32],
    gamma: &[f32],
    stats: &BatchStats,
    act: Act,
) -> Vec<f32> {
    let c = gamma.len();
    let _span =
        crate::profile::Timer::start(|| format!("batchnorm+act [{c}, {}] bwd", x.len() / c.max(1)));
    let m = x.len() / c;
    let neg = act.negative_slope();
    // Room for dgamma and dbeta behind dx from the start: growing it later copied dx.
    let mut dx = Vec::with_capacity(x.len() + 2 * c);
    dx.resize(x.len(), 0f32);
    let sums: Vec<(f32, f32)> = dx
        .par_chunks_mut(m)
        .enumerate()
        .map(|(ch, dxs)| {
            let range = ch * m..(ch + 1) * m;
            let (xs, ys, dys) = (&x[range.clone()], &y[range.clone()], &dy[range]);
            let (mean, inv_std) = (stats.mean[ch], stats.inv_std[ch]);
            let (dbeta, dgamma) = lane_sum2(xs, ys, dys, |xv, yv, g| {
                let dz = g * slope_at_output(yv, neg);
                (dz, dz * (xv - mean) * inv_std)
            });
            let (dbeta, dgamma) = (dbeta as f32, dgamma as f32);
            let k = gamma[ch] * inv_std / m as f32;
            for (((d, &xv), &yv), &g) in dxs.iter_mut().zip(xs).zip(ys).zip(dys) {
                let dz = g * slope_at_output(yv, neg);
                let x_hat = (xv - mean) * inv_std;
                *d = k * (m as f32 * dz - dbeta - x_hat * dgamma);
            }
            (dgamma, dbeta)
        })
        .collect();
    dx.extend(sums.iter().map(|s| s.0));
    dx.extend(sums.iter().map(|s| s.1));
    dx
}

/// `(dy, y) -> dx` of an activation, reading its slope off the output `y`.
pub(crate) struct ActGrad(pub Act);

impl CustomOp2 for ActGrad {
    fn name(&self) -> &'static str {
        "gantry-activation-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let dy = f32_slice(s1, l1, "gradient")?;
        let y = f32_slice(s2, l2, "output")?;
        let neg = self.0.negative_slope();
        let dx: Vec<f32> = dy
            .par_iter()
            .zip(y.par_iter())
            .with_min_len(4096)
            .map(|(&g, &v)| g * slope_at_output(v, neg))
            .collect();
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::normal;

    /// Channels and values per channel of the test data: 37 is two full lanes of 16 and a tail.
    const C: usize = 3;
    const M: usize = 37;
    const EPS: f64 = 1e-5;
    const ACTS: [Act; 3] = [Act::Identity, Act::Relu, Act::LeakyRelu(0.2)];

    /// The activation by its definition, in f64.
    fn act_f64(act: Act, z: f64) -> f64 {
        match act {
            Act::Identity => z,
            Act::Relu => z.max(0.0),
            Act::LeakyRelu(s) => {
                if z > 0.0 {
                    z
                } else {
                    s as f64 * z
                }
            }
        }
    }

    /// Training-mode BatchNorm and the activation in f64, straight from the definition:
    /// per channel, `act(gamma * (x - mean) / sqrt(var + eps) + beta)` with the biased variance.
    /// Also the pre-activations `z`.
    fn reference(x: &[f64], gamma: &[f64], beta: &[f64], act: Act) -> (Vec<f64>, Vec<f64>) {
        let (mut y, mut zs) = (Vec::new(), Vec::new());
        for ch in 0..C {
            let xs = &x[ch * M..(ch + 1) * M];
            let mean = xs.iter().sum::<f64>() / M as f64;
            let var = xs.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / M as f64;
            for v in xs {
                let z = gamma[ch] * (v - mean) / (var + EPS).sqrt() + beta[ch];
                zs.push(z);
                y.push(act_f64(act, z));
            }
        }
        (y, zs)
    }

    fn data() -> (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>) {
        // Channels with different means and spreads, so that the statistics matter.
        let x: Vec<f32> = normal(C * M, 11)
            .iter()
            .enumerate()
            .map(|(i, v)| v * (1.0 + (i / M) as f32) + (i / M) as f32 - 1.0)
            .collect();
        let gamma = vec![0.7, 1.3, -0.9];
        let beta = vec![0.1, -0.4, 0.25];
        (x, gamma, beta, normal(C * M, 12))
    }

    fn widen(v: &[f32]) -> Vec<f64> {
        v.iter().map(|&v| v as f64).collect()
    }

    #[test]
    fn the_fused_forward_pass_is_batchnorm_then_the_activation() {
        let (x, gamma, beta, _) = data();
        for act in ACTS {
            let (y, stats) = bn_act_forward(&x, C, &gamma, &beta, EPS, act);
            let (want, _) = reference(&widen(&x), &widen(&gamma), &widen(&beta), act);
            let worst = y
                .iter()
                .zip(&want)
                .map(|(&a, b)| (a as f64 - b).abs())
                .fold(0.0, f64::max);
            // f32 arithmetic on values of order 1: a few ulps (1e-7) per operation.
            assert!(worst < 1e-5, "{act:?}: off by {worst}");
            for ch in 0..C {
                let xs = widen(&x[ch * M..(ch + 1) * M]);
                let mean = xs.iter().sum::<f64>() / M as f64;
                let var = xs.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / M as f64;
                assert!((stats.mean[ch] as f64 - mean).abs() < 1e-6);
                assert!((stats.var[ch] as f64 - var).abs() < 1e-5 * var.max(1.0));
                assert!((stats.inv_std[ch] as f64 - 1.0 / (var + EPS).sqrt()).abs() < 1e-5);
            }
        }
    }

    /// Activations far from zero (a mean of 1000, spread 0.1) keep their statistics: the
    /// variance is the mean squared deviation from the mean, not the difference of two
    /// nearly equal large sums (which would lose it entirely in f32). Tolerances: the f32 mean
    /// of values near 1000 is off by up to an ulp there (6e-5), which shifts the variance by
    /// its square, negligible against 0.01; each squared deviation carries f32 rounding (1e-7
    /// relative).
    #[test]
    fn statistics_far_from_zero_keep_their_precision() {
        let x: Vec<f32> = normal(C * M, 21)
            .iter()
            .enumerate()
            .map(|(i, v)| 1000.0 + 250.0 * (i / M) as f32 + 0.1 * v)
            .collect();
        let (gamma, beta) = (vec![1.0; C], vec![0.0; C]);
        let (y, stats) = bn_act_forward(&x, C, &gamma, &beta, EPS, Act::Identity);
        let (want, _) = reference(&widen(&x), &widen(&gamma), &widen(&beta), Act::Identity);
        for ch in 0..C {
            let xs = widen(&x[ch * M..(ch + 1) * M]);
            let mean = xs.iter().sum::<f64>() / M as f64;
            let var = xs.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / M as f64;
            let rel = (stats.var[ch] as f64 - var).abs() / var;
            assert!(
                rel < 1e-3,
                "channel {ch}: variance {} against {var}",
                stats.var[ch]
            );
        }
        let worst = y
            .iter()
            .zip(&want)
            .map(|(&a, b)| (a as f64 - b).abs())
            .fold(0.0, f64::max);
        // normalised outputs of order 1, each from a deviation known to ~1e-3 relative
        assert!(worst < 2e-3, "outputs off by {worst}");
    }

    #[test]
    fn the_backward_pass_matches_finite_differences_of_the_definition() {
        let (x, gamma, beta, dy) = data();
        let (xd, gd, bd, dyd) = (widen(&x), widen(&gamma), widen(&beta), widen(&dy));
        for act in ACTS {
            // The loss sum(dy * y) in f64; its central differences are the gradients.
            let loss = |x: &[f64], g: &[f64], b: &[f64]| -> f64 {
                let (y, _) = reference(x, g, b, act);
                y.iter().zip(&dyd).map(|(y, d)| y * d).sum()
            };
            let (_, z) = reference(&xd, &gd, &bd, act);
            let margin = z.iter().map(|z| z.abs()).fold(f64::MAX, f64::min);
            assert!(
                margin > 1e-4,
                "a pre-activation at the kink ({margin}): pick other data"
            );
            let h = 1e-6;
            let diff = |v: &[f64], k: usize, f: &dyn Fn(&[f64]) -> f64| {
                let (mut up, mut down) = (v.to_vec(), v.to_vec());
                up[k] += h;
                down[k] -= h;
                (f(&up) - f(&down)) / (2.0 * h)
            };
            let mut want: Vec<f64> = (0..C * M)
                .map(|k| diff(&xd, k, &|x| loss(x, &gd, &bd)))
                .collect();
            want.extend((0..C).map(|k| diff(&gd, k, &|g| loss(&xd, g, &bd))));
            want.extend((0..C).map(|k| diff(&bd, k, &|b| loss(&xd, &gd, b))));

            let (y, stats) = bn_act_forward(&x, C, &gamma, &beta, EPS, act);
            let got = bn_act_backward(&x, &y, &dy, &gamma, &stats, act);
            assert_eq!(got.len(), C * M + 2 * C, "[dx, dgamma, dbeta]");
            let scale = want.iter().map(|v| v.abs()).fold(0.0, f64::max);
            let worst = got
                .iter()
                .zip(&want)
                .map(|(&a, b)| (a as f64 - b).abs())
                .fold(0.0, f64::max);
            // f32 sums over 37 values against f64 differences (whose own error is ~1e-9).
            assert!(worst < 1e-4 * scale, "{act:?}: off by {worst} of {scale}");
        }
    }

    #[test]
    fn the_activation_gradient_reads_the_slope_off_the_output() {
        let (x, gamma, beta, dy) = data();
        for act in ACTS {
            let (y, _) = bn_act_forward(&x, C, &gamma, &beta, EPS, act);
            let dev = candle_core::Device::Cpu;
            let dy_t = candle_core::Tensor::from_vec(dy.clone(), C * M, &dev).unwrap();
            let y_t = candle_core::Tensor::from_vec(y.clone(), C * M, &dev).unwrap();
            let got = dy_t
                .apply_op2_no_bwd(&y_t, &ActGrad(act))
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let slope = |y: f32| match act {
                Act::Identity => 1.0,
                _ if y > 0.0 => 1.0,
                Act::Relu => 0.0,
                Act::LeakyRelu(s) => s,
            };
            let want: Vec<f32> = dy.iter().zip(&y).map(|(&g, &y)| g * slope(y)).collect();
            assert_eq!(got, want, "{act:?}");
        }
    }
}
