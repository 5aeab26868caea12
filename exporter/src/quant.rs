//! Int8 quantization as ONNX Runtime's QDQ kernels take it: activations as uint8 with one scale
//! and zero point per tensor (asymmetric over the calibrated range, widened to include 0), weights
//! as int8 with one symmetric scale per output channel (zero point 0, -127..=127, so no product
//! saturates VNNI's 16-bit pair sums), biases as int32 in the scale `input_scale * weight_scale`.
//!
//! And the transposed convolution in the form those kernels accept: ONNX Runtime has no int8
//! `ConvTranspose` on the CPU (a QDQ `ConvTranspose` runs in float, slower than fp32), so a
//! stride-2, kernel-4, padding-1 transposed convolution becomes four 2x2 convolutions, one per
//! output phase, interleaved by `DepthToSpace` (sub-pixel convolution).

/// uint8 quantization parameters of one activation tensor.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QParams {
    pub scale: f32,
    pub zero_point: u8,
}

impl QParams {
    /// Asymmetric parameters covering `[lo, hi]` widened to include 0 (so that 0, ReLU's floor
    /// and the zero padding of a convolution, is exact). A range of width 0 gets scale 1.
    pub fn from_range(lo: f32, hi: f32) -> Self {
        let (lo, hi) = (lo.min(0.0) as f64, hi.max(0.0) as f64);
        let scale = if hi > lo { (hi - lo) / 255.0 } else { 1.0 };
        let zero_point = (-lo / scale).round().clamp(0.0, 255.0) as u8;
        Self {
            scale: scale as f32,
            zero_point,
        }
    }

    /// The value `x` takes after quantizing and dequantizing, as ONNX's QuantizeLinear (round
    /// half to even, saturate) and DequantizeLinear compute it.
    pub fn fake_quantize(&self, x: f32) -> f32 {
        let q = (x / self.scale).round_ties_even() + self.zero_point as f32;
        (q.clamp(0.0, 255.0) - self.zero_point as f32) * self.scale
    }
}

/// An int8 weight quantized per output channel.
#[derive(Debug, Clone, PartialEq)]
pub struct ChannelQuantized {
    /// The int8 values, in the layout of the float weight.
    pub values: Vec<i8>,
    /// One scale per output channel.
    pub scales: Vec<f32>,
}

/// Quantizes a weight whose first axis is the output channel (`[C_out, ...]`, `channels` of
/// them) symmetrically: scale `max|w| / 127` per channel (1 for an all-zero channel).
pub fn quantize_per_channel(weight: &[f32], channels: usize) -> ChannelQuantized {
    let per = weight.len() / channels.max(1);
    let mut values = Vec::with_capacity(weight.len());
    let mut scales = Vec::with_capacity(channels);
    for row in weight.chunks(per.max(1)).take(channels) {
        let max = row.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let scale = if max > 0.0 { max / 127.0 } else { 1.0 };
        values.extend(
            row.iter()
                .map(|v| (v / scale).round_ties_even().clamp(-127.0, 127.0) as i8),
        );
        scales.push(scale);
    }
    ChannelQuantized { values, scales }
}

/// A bias as int32 in the scale of the product it is added to (`input_scale * weight_scale[o]`).
pub fn quantize_bias(bias: &[f32], input_scale: f32, weight_scales: &[f32]) -> Vec<i32> {
    bias.iter()
        .zip(weight_scales)
        .map(|(b, ws)| {
            let s = input_scale as f64 * *ws as f64;
            (*b as f64 / s)
                .round()
                .clamp(i32::MIN as f64, i32::MAX as f64) as i32
        })
        .collect()
}

/// One output phase of a sub-pixel convolution: the 2x2 convolution that computes the output
/// pixels `(2y + row, 2x + col)`.
#[derive(Debug, Clone, PartialEq)]
pub struct Phase {
    pub row: usize,
    pub col: usize,
    /// `[C_out, C_in, 2, 2]`.
    pub weight: Vec<f32>,
    /// ONNX `pads`: `[top, left, bottom, right]`.
    pub pads: [i64; 4],
}

/// Whether a transposed convolution has the sub-pixel form [`subpixel_phases`] writes.
pub fn has_subpixel_form(kernel: usize, stride: usize, padding: usize) -> bool {
    (kernel, stride, padding) == (4, 2, 1)
}

/// The four phases of a stride-2, kernel-4, padding-1 transposed convolution with weight
/// `[C_in, C_out, 4, 4]`, in the order `DepthToSpace` (mode DCR, block 2) interleaves them after
/// a channel `Concat`: (0,0), (0,1), (1,0), (1,1).
///
/// Output row `2m` reads input rows `m - 1` (kernel row 3) and `m` (kernel row 1); output row
/// `2m + 1` reads rows `m` (kernel row 2) and `m + 1` (kernel row 0). As a correlation over a
/// 2-row window that is kernel rows (3, 1) with one row of padding above, and (2, 0) with one
/// below; the same for columns.
pub fn subpixel_phases(weight: &[f32], in_channels: usize, out_channels: usize) -> Vec<Phase> {
    const TAPS: [[usize; 2]; 2] = [[3, 1], [2, 0]];
    const PADS: [(i64, i64); 2] = [(1, 0), (0, 1)];
    let mut phases = Vec::with_capacity(4);
    for row in 0..2 {
        for col in 0..2 {
            let mut w = Vec::with_capacity(out_channels * in_channels * 4);
            for o in 0..out_channels {
                for i in 0..in_channels {
                    for &kr in &TAPS[row] {
                        for &kc in &TAPS[col] {
                            w.push(weight[((i * out_channels + o) * 4 + kr) * 4 + kc]);
                        }
                    }
                }
            }
            phases.push(Phase {
                row,
                col,
                weight: w,
                pads: [PADS[row].0, PADS[col].0, PADS[row].1, PADS[col].1],
            });
        }
    }
    phases
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ConvTranspose by its definition (scatter), stride 2, kernel 4, padding 1, one image.
    fn conv_transpose(x: &[f32], w: &[f32], ci: usize, co: usize, h: usize) -> Vec<f32> {
        let oh = 2 * h;
        let mut y = vec![0.0; co * oh * oh];
        for i in 0..ci {
            for o in 0..co {
                for (r, c) in (0..h).flat_map(|r| (0..h).map(move |c| (r, c))) {
                    for (kr, kc) in (0..4).flat_map(|a| (0..4).map(move |b| (a, b))) {
                        let (yr, yc) = (2 * r + kr, 2 * c + kc);
                        if yr < 1 || yc < 1 || yr > oh || yc > oh {
                            continue;
                        }
                        y[(o * oh + yr - 1) * oh + yc - 1] +=
                            x[(i * h + r) * h + c] * w[((i * co + o) * 4 + kr) * 4 + kc];
                    }
                }
            }
        }
        y
    }

    /// The phases run as 2x2 correlations with their pads, interleaved.
    fn via_phases(x: &[f32], w: &[f32], ci: usize, co: usize, h: usize) -> Vec<f32> {
        let oh = 2 * h;
        let mut y = vec![0.0; co * oh * oh];
        for p in subpixel_phases(w, ci, co) {
            let (top, left) = (p.pads[0], p.pads[1]);
            for o in 0..co {
                for (m, n) in (0..h).flat_map(|m| (0..h).map(move |n| (m, n))) {
                    let mut acc = 0.0;
                    for i in 0..ci {
                        for (a, b) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
                            let (r, c) = (m as i64 + a - top, n as i64 + b - left);
                            if r < 0 || c < 0 || r >= h as i64 || c >= h as i64 {
                                continue;
                            }
                            acc += x[(i * h + r as usize) * h + c as usize]
                                * p.weight[((o * ci + i) * 2 + a as usize) * 2 + b as usize];
                        }
                    }
                    y[(o * oh + 2 * m + p.row) * oh + 2 * n + p.col] = acc;
                }
            }
        }
        y
    }

    #[test]
    fn subpixel_phases_equal_the_transposed_convolution() {
        let (ci, co, h) = (3, 2, 5);
        let x: Vec<f32> = (0..ci * h * h)
            .map(|k| ((k * 37 % 23) as f32 - 11.0) / 7.0)
            .collect();
        let w: Vec<f32> = (0..ci * co * 16)
            .map(|k| ((k * 53 % 31) as f32 - 15.0) / 9.0)
            .collect();
        let want = conv_transpose(&x, &w, ci, co, h);
        let got = via_phases(&x, &w, ci, co, h);
        let worst = want
            .iter()
            .zip(&got)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(worst < 1e-5, "largest difference {worst}");
    }

    #[test]
    fn activation_parameters_cover_the_range_and_keep_zero_exact() {
        let q = QParams::from_range(0.0, 6.0);
        assert_eq!(q.zero_point, 0);
        assert!((q.scale - 6.0 / 255.0).abs() < 1e-9);
        assert_eq!(
            q.fake_quantize(-1.0),
            0.0,
            "negatives saturate: ReLU is implied"
        );
        assert!((q.fake_quantize(6.0) - 6.0).abs() < 1e-5);
        let q = QParams::from_range(-1.0, 3.0);
        assert_eq!(q.fake_quantize(0.0), 0.0);
        assert!((q.fake_quantize(-1.0) + 1.0).abs() <= q.scale / 2.0 + 1e-6);
        assert_eq!(QParams::from_range(0.0, 0.0).scale, 1.0);
        // A range entirely above 0 is widened to include it.
        assert_eq!(QParams::from_range(2.0, 4.0).zero_point, 0);
    }

    #[test]
    fn weights_quantize_per_channel_within_half_a_step() {
        let w = [0.5f32, -1.0, 0.25, 0.0, 0.0, 0.0, 3.0, 1.5, -0.75];
        let q = quantize_per_channel(&w, 3);
        assert_eq!(q.scales, vec![1.0 / 127.0, 1.0, 3.0 / 127.0]);
        assert_eq!(&q.values[..3], &[64, -127, 32]);
        assert_eq!(&q.values[3..6], &[0, 0, 0]);
        for (k, v) in w.iter().enumerate() {
            let back = q.values[k] as f32 * q.scales[k / 3];
            assert!((back - v).abs() <= q.scales[k / 3] / 2.0 + 1e-7);
        }
        assert_eq!(
            quantize_bias(&[0.5, -0.25], 0.5, &[0.01, 0.1]),
            vec![100, -5]
        );
    }
}
