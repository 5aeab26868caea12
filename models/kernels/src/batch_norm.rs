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
