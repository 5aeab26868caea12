//! `im2col` / `col2im` between channel-major images and the batch-merged column matrices the
//! GEMMs use.
//!
//! Images are stored channel-major, `[C, B, H, W]` (see [`super`] for why). The column matrix of
//! such an image seen through a `k x k` window with stride `s` and
//! padding `p` that yields `Hc x Wc` positions is `[C * k * k, B * Hc * Wc]`: row `(c, ky, kx)`,
//! column `(b, oy, ox)` holds `image[b, c, oy * s + ky - p, ox * s + kx - p]` (0 outside).

use rayon::prelude::*;

/// Shape of an image and the window positions over it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub batch: usize,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
    /// Window positions vertically.
    pub col_height: usize,
    /// Window positions horizontally.
    pub col_width: usize,
}

impl Window {
    /// Rows of the column matrix: `C * k * k`.
    pub fn rows(&self) -> usize {
        self.channels * self.kernel * self.kernel
    }

    /// Columns of the column matrix: `B * Hc * Wc`.
    pub fn cols(&self) -> usize {
        self.batch * self.col_height * self.col_width
    }

    /// Whether the window covers the whole unpadded image in one position (a DCGAN's 4x4 <-> 1x1
    /// layers): the column matrix is then a transpose of the image.
    fn is_whole_image(&self) -> bool {
        self.padding == 0
            && self.col_height == 1
            && self.col_width == 1
            && self.kernel == self.height
            && self.kernel == self.width
    }

    /// Elements of the image.
    pub fn image_len(&self) -> usize {
        self.batch * self.channels * self.height * self.width
    }

    /// The positions `o` in `0..positions` whose source `o * stride + kk - padding` lies inside
    /// `0..size`, as a half-open range (so inner loops need no bounds tests).
    #[inline]
    fn valid_range(&self, kk: usize, size: usize, positions: usize) -> std::ops::Range<usize> {
        let (s, p) = (self.stride as isize, self.padding as isize);
        let kk = kk as isize;
        // o * s + kk - p >= 0  <=>  o >= ceil((p - kk) / s)
        let lo = if p - kk > 0 { (p - kk + s - 1) / s } else { 0 };
        // o * s + kk - p <= size - 1  <=>  o <= floor((size - 1 + p - kk) / s)
        let top = size as isize - 1 + p - kk;
        let hi = if top < 0 { 0 } else { top / s + 1 };
        let lo = (lo.max(0) as usize).min(positions);
        lo..(hi.max(0) as usize).min(positions).max(lo)
    }
}

/// Rows (or planes) of `len` values each one rayon task should take at least, so that small
/// layers are not split into thousands of tasks that cost more to schedule than to run.
fn min_rows_per_task(len: usize) -> usize {
    const MIN_VALUES_PER_TASK: usize = 16 * 1024;
    MIN_VALUES_PER_TASK.div_ceil(len.max(1))
}

/// Unfolds `image` into the column matrix (see the module docs), written into `cols` (which
/// must hold `rows * cols` values; every value is written, so it needs no clearing).
pub fn im2col_into(image: &[f32], w: &Window, cols: &mut [f32]) {
    let k = w.kernel;
    let (hc, wc) = (w.col_height, w.col_width);
    let plane = w.height * w.width;
    let stride = w.stride;
    assert_eq!(cols.len(), w.rows() * w.cols(), "column buffer size");
    if w.is_whole_image() {
        // Each channel's [B, k*k] block becomes a [k*k, B] block: a plain transpose.
        let (kk, b) = (k * k, w.batch);
        for (src, dst) in image
            .chunks_exact(b * kk)
            .zip(cols.chunks_exact_mut(kk * b))
        {
            for (bi, pixels) in src.chunks_exact(kk).enumerate() {
                for (t, &v) in pixels.iter().enumerate() {
                    dst[t * b + bi] = v;
                }
            }
        }
        return;
    }
    cols.par_chunks_mut(w.cols())
        .enumerate()
        .with_min_len(min_rows_per_task(w.cols()))
        .for_each(|(row, out)| {
            let c = row / (k * k);
            let (ky, kx) = ((row / k) % k, row % k);
            let xs = w.valid_range(kx, w.width, wc);
            let ys = w.valid_range(ky, w.height, hc);
            for b in 0..w.batch {
                let src = &image[(c * w.batch + b) * plane..][..plane];
                let dst = &mut out[b * hc * wc..][..hc * wc];
                for oy in 0..hc {
                    let dst_row = &mut dst[oy * wc..][..wc];
                    if !ys.contains(&oy) {
                        dst_row.fill(0.0);
                        continue;
                    }
                    let iy = oy * stride + ky - w.padding;
                    let src_row = &src[iy * w.width..][..w.width];
                    dst_row[..xs.start].fill(0.0);
                    dst_row[xs.end..].fill(0.0);
                    let first = xs.start * stride + kx - w.padding;
                    for (d, ox) in dst_row[xs.clone()].iter_mut().zip(0..) {
                        *d = src_row[first + ox * stride];
                    }
                }
            }
        });
}

/// Unfolds `image` into a new column matrix.
pub fn im2col(image: &[f32], w: &Window) -> Vec<f32> {
    let mut cols = vec![0f32; w.rows() * w.cols()];
    im2col_into(image, w, &mut cols);
    cols
}

/// Folds a column matrix back into an image, summing overlapping windows (the adjoint of
/// [`im2col`]).
pub fn col2im(cols: &[f32], w: &Window) -> Vec<f32> {
    let k = w.kernel;
    let (hc, wc) = (w.col_height, w.col_width);
    let plane = w.height * w.width;
    let ncols = w.cols();
    let stride = w.stride;
    let mut image = vec![0f32; w.image_len()];
    if w.is_whole_image() {
        // The inverse transpose of im2col's (windows do not overlap: nothing to sum).
        let (kk, b) = (k * k, w.batch);
        for (dst, src) in image
            .chunks_exact_mut(b * kk)
            .zip(cols.chunks_exact(kk * b))
        {
            for (bi, pixels) in dst.chunks_exact_mut(kk).enumerate() {
                for (t, v) in pixels.iter_mut().enumerate() {
                    *v = src[t * b + bi];
                }
            }
        }
        return image;
    }
    image
        .par_chunks_mut(plane)
        .enumerate()
        .with_min_len(min_rows_per_task(plane * k * k))
        .for_each(|(cb, out)| {
            let (c, b) = (cb / w.batch, cb % w.batch);
            for ky in 0..k {
                let ys = w.valid_range(ky, w.height, hc);
                for kx in 0..k {
                    let xs = w.valid_range(kx, w.width, wc);
                    let row = (c * k + ky) * k + kx;
                    let src = &cols[row * ncols + b * hc * wc..][..hc * wc];
                    for oy in ys.clone() {
                        let iy = oy * stride + ky - w.padding;
                        let out_row = &mut out[iy * w.width..][..w.width];
                        let src_row = &src[oy * wc..][..wc];
                        let first = xs.start * stride + kx - w.padding;
                        for (&v, ox) in src_row[xs.clone()].iter().zip(0..) {
                            out_row[first + ox * stride] += v;
                        }
                    }
                }
            }
        });
    image
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window() -> Window {
        Window {
            batch: 2,
            channels: 3,
            height: 5,
            width: 4,
            kernel: 3,
            stride: 2,
            padding: 1,
            col_height: 3,
            col_width: 2,
        }
    }

    /// col2im is the adjoint of im2col: <im2col(x), y> == <x, col2im(y)> for any x, y.
    #[test]
    fn col2im_is_the_adjoint_of_im2col() {
        let w = window();
        let x: Vec<f32> = (0..w.image_len())
            .map(|i| ((i * 7919) % 13) as f32 - 6.0)
            .collect();
        let y: Vec<f32> = (0..w.rows() * w.cols())
            .map(|i| ((i * 104729) % 11) as f32 - 5.0)
            .collect();
        let lhs: f64 = im2col(&x, &w)
            .iter()
            .zip(&y)
            .map(|(a, b)| (*a * *b) as f64)
            .sum();
        let rhs: f64 = x
            .iter()
            .zip(col2im(&y, &w))
            .map(|(a, b)| (*a * b) as f64)
            .sum();
        assert_eq!(lhs, rhs);
    }

    #[test]
    fn valid_ranges_match_a_bounds_check() {
        for (stride, padding, kernel, size, positions) in [
            (2, 1, 4, 16, 8),
            (1, 0, 4, 4, 1),
            (2, 1, 4, 1, 1),
            (3, 2, 5, 7, 3),
            (1, 3, 3, 2, 6),
        ] {
            let w = Window {
                batch: 1,
                channels: 1,
                height: size,
                width: size,
                kernel,
                stride,
                padding,
                col_height: positions,
                col_width: positions,
            };
            for kk in 0..kernel {
                let want: Vec<usize> = (0..positions)
                    .filter(|&o| {
                        let i = (o * stride + kk) as isize - padding as isize;
                        i >= 0 && (i as usize) < size
                    })
                    .collect();
                let got: Vec<usize> = w.valid_range(kk, size, positions).collect();
                assert_eq!(
                    got, want,
                    "stride {stride} pad {padding} kk {kk} size {size}"
                );
            }
        }
    }

    #[test]
    fn im2col_picks_the_window_pixels() {
        let w = window();
        let x: Vec<f32> = (0..w.image_len()).map(|i| i as f32).collect();
        let cols = im2col(&x, &w);
        // row (c=1, ky=1, kx=2), column (b=1, oy=2, ox=1): image[c=1, b=1, 4, 3]
        let row = (3 + 1) * 3 + 2;
        let col = 6 + 2 * 2 + 1;
        assert_eq!(cols[row * w.cols() + col], x[((2 + 1) * 5 + 4) * 4 + 3]);
        // row (c=0, ky=0, kx=0), column (b=0, oy=0, ox=0): padding
        assert_eq!(cols[0], 0.0);
    }

    /// The whole-image fast path (4x4 image, 4x4 window, one position) agrees with the
    /// definition in the module docs, and col2im inverts it.
    #[test]
    fn whole_image_window_is_a_transpose() {
        let w = Window {
            batch: 3,
            channels: 2,
            height: 4,
            width: 4,
            kernel: 4,
            stride: 1,
            padding: 0,
            col_height: 1,
            col_width: 1,
        };
        assert!(w.is_whole_image());
        let x: Vec<f32> = (0..w.image_len()).map(|i| i as f32).collect();
        let cols = im2col(&x, &w);
        for c in 0..2 {
            for b in 0..3 {
                for ky in 0..4 {
                    for kx in 0..4 {
                        let row = (c * 4 + ky) * 4 + kx;
                        let pixel = ((c * 3 + b) * 4 + ky) * 4 + kx;
                        assert_eq!(cols[row * w.cols() + b], x[pixel]);
                    }
                }
            }
        }
        assert_eq!(col2im(&cols, &w), x);
    }
}
