//! Folding inference-mode BatchNorm into the preceding convolution or transposed convolution.
//!
//! With `s_o = gamma_o / sqrt(var_o + eps)`: `W'[:, o] = W[:, o] * s_o` and
//! `b'_o = beta_o - s_o * mean_o` (the convolution has no bias of its own). Computed in f64.

/// A folded weight (`[C_in, C_out, k, k]`, same layout) and its new bias.
pub struct Folded {
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
}

/// How a convolution weight orders its channel axes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightLayout {
    /// `[in_channels, out_channels, kernel_area]`: ConvTranspose.
    InOut,
    /// `[out_channels, in_channels, kernel_area]`: Conv.
    OutIn,
}

/// Folds BatchNorm (per output channel) into a convolution weight of `layout`.
#[allow(clippy::too_many_arguments)]
pub fn fold_batchnorm(
    weight: &[f32],
    layout: WeightLayout,
    in_channels: usize,
    out_channels: usize,
    kernel_area: usize,
    gamma: &[f32],
    beta: &[f32],
    mean: &[f32],
    var: &[f32],
    eps: f64,
) -> Folded {
    let scale: Vec<f64> = (0..out_channels)
        .map(|o| gamma[o] as f64 / (var[o] as f64 + eps).sqrt())
        .collect();
    let mut folded = weight.to_vec();
    for i in 0..in_channels {
        for (o, s) in scale.iter().enumerate() {
            let start = match layout {
                WeightLayout::InOut => (i * out_channels + o) * kernel_area,
                WeightLayout::OutIn => (o * in_channels + i) * kernel_area,
            };
            for w in &mut folded[start..start + kernel_area] {
                *w = (*w as f64 * s) as f32;
            }
        }
    }
    let bias = (0..out_channels)
        .map(|o| (beta[o] as f64 - scale[o] * mean[o] as f64) as f32)
        .collect();
    Folded {
        weight: folded,
        bias,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 2-input, 3-output, 4-tap transposed convolution from a 1x1 input
    /// (`y[o][k] = sum_i x[i] * W[i][o][k]`) followed by BatchNorm, against the folded map, for
    /// several inputs: every weight's position in the layout matters.
    #[test]
    fn folding_keeps_the_weight_layout_of_many_channels_and_taps() {
        let (ci, co, k) = (2, 3, 4);
        let w: Vec<f32> = (0..ci * co * k).map(|j| (j as f32 * 0.37).sin()).collect();
        let gamma = [1.5f32, 0.5, -0.8];
        let beta = [0.1f32, -0.2, 0.3];
        let mean = [0.05f32, -0.4, 0.9];
        let var = [2.0f32, 0.3, 1.1];
        let f = fold_batchnorm(
            &w,
            WeightLayout::InOut,
            ci,
            co,
            k,
            &gamma,
            &beta,
            &mean,
            &var,
            1e-5,
        );
        for x in [[1.0f32, 0.0], [0.0, 1.0], [0.7, -1.3]] {
            for o in 0..co {
                for t in 0..k {
                    let at = |i: usize| (i * co + o) * k + t;
                    let conv: f32 = (0..ci).map(|i| x[i] * w[at(i)]).sum();
                    let bn = gamma[o] * (conv - mean[o]) / (var[o] + 1e-5).sqrt() + beta[o];
                    let folded: f32 =
                        (0..ci).map(|i| x[i] * f.weight[at(i)]).sum::<f32>() + f.bias[o];
                    assert!(
                        (bn - folded).abs() < 1e-5,
                        "o {o} tap {t}: {bn} vs {folded}"
                    );
                }
            }
        }
    }

    /// A 1-input, 2-output, 1-tap "convolution": y_o = w_o * x; BN afterwards; the folded affine
    /// map must give the same output for any x.
    #[test]
    fn folded_affine_map_equals_conv_then_batchnorm() {
        let w = [0.5f32, -2.0];
        let (gamma, beta, mean, var) = (
            [1.5f32, 0.25],
            [0.1f32, -0.3],
            [0.2f32, -1.0],
            [4.0f32, 0.09],
        );
        let f = fold_batchnorm(
            &w,
            WeightLayout::InOut,
            1,
            2,
            1,
            &gamma,
            &beta,
            &mean,
            &var,
            1e-5,
        );
        for x in [-3.0f32, 0.0, 0.7, 5.0] {
            for o in 0..2 {
                let conv = w[o] * x;
                let bn = gamma[o] * (conv - mean[o]) / (var[o] + 1e-5).sqrt() + beta[o];
                let folded = f.weight[o] * x + f.bias[o];
                assert!((bn - folded).abs() < 1e-5, "{bn} vs {folded}");
            }
        }
    }

    /// The same check for a Conv weight `[out, in, taps]`: every output channel's weights are
    /// one contiguous run, scaled by that channel's factor.
    #[test]
    fn folding_a_conv_weight_scales_each_output_channel_run() {
        let (ci, co, k) = (3, 2, 2);
        let w: Vec<f32> = (0..ci * co * k).map(|j| (j as f32 * 0.61).cos()).collect();
        let gamma = [0.7f32, -1.2];
        let beta = [0.3f32, 0.05];
        let mean = [-0.2f32, 0.4];
        let var = [0.5f32, 1.7];
        let f = fold_batchnorm(
            &w,
            WeightLayout::OutIn,
            ci,
            co,
            k,
            &gamma,
            &beta,
            &mean,
            &var,
            1e-5,
        );
        let x = [0.4f32, -1.1, 0.9, 0.2, -0.5, 1.3]; // [in, taps]
        for o in 0..co {
            let at = |i: usize, t: usize| (o * ci + i) * k + t;
            let conv: f32 = (0..ci)
                .flat_map(|i| (0..k).map(move |t| (i, t)))
                .map(|(i, t)| x[i * k + t] * w[at(i, t)])
                .sum();
            let bn = gamma[o] * (conv - mean[o]) / (var[o] + 1e-5).sqrt() + beta[o];
            let folded: f32 = (0..ci)
                .flat_map(|i| (0..k).map(move |t| (i, t)))
                .map(|(i, t)| x[i * k + t] * f.weight[at(i, t)])
                .sum::<f32>()
                + f.bias[o];
            assert!((bn - folded).abs() < 1e-5, "o {o}: {bn} vs {folded}");
        }
    }
}
