//! `im2col` / `col2im` between channel-major images and the batch-merged column matrices the
//! GEMMs use.
//!
//! Images are stored channel-major, `[C, B, H, W]` (see [`super`] for why). The column matrix of
//! such an image seen through a `k x k` window with stride `s` and
//! padding `p` that yields `Hc x Wc` positions is `[C * k * k, B * Hc * Wc]`: row `(c, ky, kx)`,
//! column `(b, oy, ox)` holds `image[b, c, oy * s + ky - p, ox * s + kx - p]` (0 outside).

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
    pub fn is_whole_image(&self) -> bool {
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
}

/// Where the pixels of one `[H, W]` plane go once it is zero-padded and split into `stride`
/// column phases: padded column `stride * q + r` is stored in phase `r` at index `q`. Seen this
/// way, the pixels one window tap `(ky, kx)` reads along an output row are contiguous (phase
/// `kx % stride`, from index `kx / stride + ox`), so im2col and col2im become runs of plain
/// copies and adds with no bounds tests and no strided gathers.
#[derive(Debug, Clone, Copy)]
struct PhaseLayout {
    height: usize,
    width: usize,
    stride: usize,
    padding: usize,
    padded_height: usize,
    phase_width: usize,
}

impl PhaseLayout {
    fn new(w: &Window) -> Self {
        let padded_height = w.height + 2 * w.padding;
        let phase_width = (w.width + 2 * w.padding).div_ceil(w.stride);
        debug_assert!((w.col_height - 1) * w.stride + w.kernel <= padded_height);
        debug_assert!((w.col_width - 1) * w.stride + w.kernel <= w.width + 2 * w.padding);
        Self {
            height: w.height,
            width: w.width,
            stride: w.stride,
            padding: w.padding,
            padded_height,
            phase_width,
        }
    }

    /// Floats of one padded, phase-split plane.
    fn len(&self) -> usize {
        self.stride * self.padded_height * self.phase_width
    }

    /// Index of padded pixel `(py, px)`.
    #[inline]
    fn index(&self, py: usize, px: usize) -> usize {
        ((px % self.stride) * self.padded_height + py) * self.phase_width + px / self.stride
    }

    /// Calls `f(plane_index, buffer_index)` for every pixel of the unpadded plane.
    #[inline]
    fn for_each_pixel(&self, mut f: impl FnMut(usize, usize)) {
        for r in 0..self.stride {
            // the first padded column >= padding in phase r
            let first = self.padding + (r + self.stride - self.padding % self.stride) % self.stride;
            for iy in 0..self.height {
                let row = self.index(iy + self.padding, first);
                for (n, px) in (first..self.padding + self.width)
                    .step_by(self.stride)
                    .enumerate()
                {
                    f(iy * self.width + px - self.padding, row + n);
                }
            }
        }
    }

    /// For stride 2: where image row `iy`'s even and odd columns start in the buffer (each a
    /// contiguous run).
    #[inline]
    fn stride2_runs(&self, iy: usize) -> (usize, usize) {
        let py = iy + self.padding;
        (
            self.index(py, self.padding),
            self.index(py, self.padding + 1),
        )
    }

    /// Copies an unpadded plane into `buf` (whose padding must already be zero).
    fn load(&self, plane: &[f32], buf: &mut [f32]) {
        if self.stride != 2 || self.width < 2 {
            return self.for_each_pixel(|src, dst| buf[dst] = plane[src]);
        }
        // A DCGAN's stride-2 layers: de-interleave each row into two contiguous runs (the
        // per-pixel form spent a third of im2col on index arithmetic and scalar stores).
        let half = self.width / 2;
        for (iy, row) in plane.chunks_exact(self.width).enumerate() {
            let (even, odd) = self.stride2_runs(iy);
            for (t, pair) in row.chunks_exact(2).enumerate() {
                buf[even + t] = pair[0];
                buf[odd + t] = pair[1];
            }
            if self.width % 2 == 1 {
                buf[even + half] = row[self.width - 1];
            }
        }
    }

    /// Copies the unpadded plane out of `buf`, dropping what was accumulated in the padding.
    fn store(&self, buf: &[f32], plane: &mut [f32]) {
        if self.stride != 2 || self.width < 2 {
            return self.for_each_pixel(|dst, src| plane[dst] = buf[src]);
        }
        let half = self.width / 2;
        for (iy, row) in plane.chunks_exact_mut(self.width).enumerate() {
            let (even, odd) = self.stride2_runs(iy);
            let (evens, odds) = (&buf[even..][..half], &buf[odd..][..half]);
            for ((pair, &e), &o) in row.chunks_exact_mut(2).zip(evens).zip(odds) {
                pair[0] = e;
                pair[1] = o;
            }
            if self.width % 2 == 1 {
                row[self.width - 1] = buf[even + half];
            }
        }
    }

    /// Start of the run tap `(ky, kx)` reads for output row 0, and the distance between the
    /// runs of consecutive output rows.
    #[inline]
    fn tap(&self, ky: usize, kx: usize) -> (usize, usize) {
        (self.index(ky, kx), self.stride * self.phase_width)
    }
}

/// `dst[..n] = src[..n]` for the short runs of a window tap, with the common lengths as
/// fixed-size copies, which compile to a few vector moves (a slice copy of 16 floats was a call
/// to `memcpy`).
#[inline(always)]
fn copy_run(dst: &mut [f32], src: &[f32]) {
    #[inline(always)]
    fn copy<const N: usize>(dst: &mut [f32], src: &[f32]) {
        let d: &mut [f32; N] = (&mut dst[..N]).try_into().expect("run length");
        let s: &[f32; N] = src[..N].try_into().expect("run length");
        // In 16-byte pieces: LLVM emits a whole 64-byte array copy as a `memcpy` call.
        for (d, s) in d.chunks_exact_mut(4).zip(s.chunks_exact(4)) {
            let d: &mut [f32; 4] = d.try_into().expect("piece");
            *d = s.try_into().expect("piece");
        }
    }
    match dst.len() {
        4 => copy::<4>(dst, src),
        8 => copy::<8>(dst, src),
        16 => copy::<16>(dst, src),
        32 => copy::<32>(dst, src),
        n => dst.copy_from_slice(&src[..n]),
    }
}

/// `dst[..n] += src[..n]`, the adjoint of [`copy_run`].
#[inline(always)]
fn add_run(dst: &mut [f32], src: &[f32]) {
    #[inline(always)]
    fn add<const N: usize>(dst: &mut [f32], src: &[f32]) {
        let (d, s): (&mut [f32; N], &[f32; N]) = (
            (&mut dst[..N]).try_into().expect("run length"),
            src[..N].try_into().expect("run length"),
        );
        for i in 0..N {
            d[i] += s[i];
        }
    }
    match dst.len() {
        4 => add::<4>(dst, src),
        8 => add::<8>(dst, src),
        16 => add::<16>(dst, src),
        32 => add::<32>(dst, src),
        n => dst.iter_mut().zip(&src[..n]).for_each(|(d, s)| *d += s),
    }
}

/// Unfolds `image` into the column matrix (see the module docs), written into `cols` (which
/// must hold `rows * cols` values; every value is written, so it needs no clearing).
/// Serial: the training kernels run [`im2col_images`] per group of images in parallel
/// ([`crate::tiled`]); this whole-batch form serves the 4x4 <-> 1x1 layers (a transpose) and
/// tests.
pub fn im2col_into(image: &[f32], w: &Window, cols: &mut [f32]) {
    let k = w.kernel;
    assert_eq!(cols.len(), w.rows() * w.cols(), "column buffer size");
    assert_eq!(image.len(), w.image_len(), "image size");
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
    im2col_images(image, w, 0..w.batch, cols, &mut Vec::new());
}

/// im2col of images `batches` alone: `out` is `[rows, batches.len() * hc * wc]` (serial; the
/// caller parallelises over image groups). `bufs` is scratch (any contents), resized as needed.
pub fn im2col_images(
    image: &[f32],
    w: &Window,
    batches: std::ops::Range<usize>,
    out: &mut [f32],
    bufs: &mut Vec<f32>,
) {
    let plane_len = w.height * w.width;
    let n = batches.len() * w.col_height * w.col_width;
    assert_eq!(out.len(), w.rows() * n, "column buffer size");
    assert!(batches.end <= w.batch, "images out of range");
    let layout = PhaseLayout::new(w);
    if bufs.len() < batches.len() * layout.len() {
        bufs.resize(batches.len() * layout.len(), 0.0);
    }
    // The scratch may hold another call's data; loading rewrites only the interior.
    bufs[..batches.len() * layout.len()].fill(0.0);
    for c in 0..w.channels {
        let planes =
            &image[(c * w.batch + batches.start) * plane_len..][..batches.len() * plane_len];
        let kk = w.kernel * w.kernel;
        unfold_planes(w, &layout, planes, bufs, &mut out[c * kk * n..][..kk * n]);
    }
}

/// Writes the `k * k` column-matrix rows of one channel (`rows`, contiguous) for consecutive
/// images (`planes`).
fn unfold_planes(
    w: &Window,
    layout: &PhaseLayout,
    planes: &[f32],
    bufs: &mut [f32],
    rows: &mut [f32],
) {
    let wc = w.col_width;
    let block = w.col_height * wc;
    let plane_len = w.height * w.width;
    for (plane, buf) in planes
        .chunks_exact(plane_len)
        .zip(bufs.chunks_exact_mut(layout.len()))
    {
        layout.load(plane, buf);
    }
    let n = planes.len() / plane_len * block;
    for (tap, row) in rows.chunks_exact_mut(n).enumerate() {
        let (start, step) = layout.tap(tap / w.kernel, tap % w.kernel);
        for (dst, buf) in row
            .chunks_exact_mut(block)
            .zip(bufs.chunks_exact(layout.len()))
        {
            for (oy, run) in dst.chunks_exact_mut(wc).enumerate() {
                copy_run(run, &buf[start + oy * step..]);
            }
        }
    }
}

/// Unfolds `image` into a new column matrix (tests check the kernels against it).
#[cfg(test)]
pub fn im2col(image: &[f32], w: &Window) -> Vec<f32> {
    let mut cols = vec![0f32; w.rows() * w.cols()];
    im2col_into(image, w, &mut cols);
    cols
}

/// Folds a column matrix back into an image, summing overlapping windows (the adjoint of
/// [`im2col_into`]); serial, like [`im2col_into`].
pub fn col2im(cols: &[f32], w: &Window) -> Vec<f32> {
    let k = w.kernel;
    assert_eq!(cols.len(), w.rows() * w.cols(), "column buffer size");
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
    // SAFETY: `image` is this call's own buffer of `image_len` values.
    unsafe { col2im_images(cols, w, 0..w.batch, image.as_mut_ptr(), &mut Vec::new()) };
    image
}

/// col2im of images `batches` alone from their columns `cols` (`[rows, batches.len() * hc *
/// wc]`), written (not added) into those images' planes of `image`, the base of the whole
/// `[C, B, H, W]` image (serial; the caller parallelises over image groups).
///
/// # Safety
/// `image` must be valid for writes of `w.image_len()` values, and the planes of `batches`
/// must not be accessed by anyone else meanwhile.
pub unsafe fn col2im_images(
    cols: &[f32],
    w: &Window,
    batches: std::ops::Range<usize>,
    image: *mut f32,
    bufs: &mut Vec<f32>,
) {
    let plane_len = w.height * w.width;
    let n = batches.len() * w.col_height * w.col_width;
    assert_eq!(cols.len(), w.rows() * n, "column buffer size");
    assert!(batches.end <= w.batch, "images out of range");
    let layout = PhaseLayout::new(w);
    if bufs.len() < batches.len() * layout.len() {
        bufs.resize(batches.len() * layout.len(), 0.0);
    }
    for c in 0..w.channels {
        // SAFETY: these planes are inside the image and this call's alone (caller's promise).
        let planes = unsafe {
            std::slice::from_raw_parts_mut(
                image.add((c * w.batch + batches.start) * plane_len),
                batches.len() * plane_len,
            )
        };
        fold_planes(
            w,
            &layout,
            cols,
            c * w.kernel * w.kernel * n,
            n,
            bufs,
            planes,
        );
    }
}

/// Sums one channel's column-matrix rows back into consecutive images' planes (`planes`,
/// overwritten): tap row `t` is read from `cols[base + t * row_stride..]`,
/// `planes.len() / plane_len * hc * wc` values.
fn fold_planes(
    w: &Window,
    layout: &PhaseLayout,
    cols: &[f32],
    base: usize,
    row_stride: usize,
    bufs: &mut [f32],
    planes: &mut [f32],
) {
    let (k, wc) = (w.kernel, w.col_width);
    let block = w.col_height * wc;
    let plane_len = w.height * w.width;
    let count = planes.len() / plane_len;
    let bufs = &mut bufs[..count * layout.len()];
    bufs.fill(0.0);
    for ky in 0..k {
        for kx in 0..k {
            let src = &cols[base + (ky * k + kx) * row_stride..][..count * block];
            let (start, step) = layout.tap(ky, kx);
            for (src, buf) in src
                .chunks_exact(block)
                .zip(bufs.chunks_exact_mut(layout.len()))
            {
                for (oy, run) in src.chunks_exact(wc).enumerate() {
                    add_run(&mut buf[start + oy * step..][..wc], run);
                }
            }
        }
    }
    for (plane, buf) in planes
        .chunks_exact_mut(plane_len)
        .zip(bufs.chunks_exact(layout.len()))
    {
        layout.store(buf, plane);
    }
}

/// A DCGAN's 4x4 <-> 1x1 window over 2 channels (the whole-image case), for tests.
#[cfg(test)]
pub(crate) fn whole_image_window(batch: usize) -> Window {
    Window {
        batch,
        channels: 2,
        height: 4,
        width: 4,
        kernel: 4,
        stride: 1,
        padding: 0,
        col_height: 1,
        col_width: 1,
    }
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

    /// im2col against its definition (a bounds-checked gather) and col2im against the
    /// adjoint identity, over strides, paddings and non-square images.
    #[test]
    fn im2col_matches_the_definition_for_many_windows() {
        for (stride, padding, kernel, height, width) in [
            (2, 1, 4, 16, 16),
            (2, 1, 4, 8, 6),
            (1, 0, 3, 5, 7),
            (1, 2, 3, 4, 4),
            (3, 2, 5, 11, 9),
            (2, 0, 2, 6, 4),
            (2, 1, 3, 7, 5),
            (2, 2, 4, 9, 7),
            // stride 2 on images one and two pixels wide (the row de-interleaving's edges)
            (2, 1, 3, 5, 1),
            (2, 1, 2, 4, 2),
        ] {
            let w = Window {
                batch: 3,
                channels: 2,
                height,
                width,
                kernel,
                stride,
                padding,
                col_height: (height + 2 * padding - kernel) / stride + 1,
                col_width: (width + 2 * padding - kernel) / stride + 1,
            };
            let x: Vec<f32> = (0..w.image_len()).map(|i| i as f32 + 1.0).collect();
            let cols = im2col(&x, &w);
            for c in 0..w.channels {
                for (ky, kx) in (0..kernel).flat_map(|ky| (0..kernel).map(move |kx| (ky, kx))) {
                    let row = (c * kernel + ky) * kernel + kx;
                    for b in 0..w.batch {
                        for oy in 0..w.col_height {
                            for ox in 0..w.col_width {
                                let iy = (oy * stride + ky) as isize - padding as isize;
                                let ix = (ox * stride + kx) as isize - padding as isize;
                                let want = if (0..height as isize).contains(&iy)
                                    && (0..width as isize).contains(&ix)
                                {
                                    x[((c * w.batch + b) * height + iy as usize) * width
                                        + ix as usize]
                                } else {
                                    0.0
                                };
                                let col = (b * w.col_height + oy) * w.col_width + ox;
                                assert_eq!(cols[row * w.cols() + col], want, "{w:?}");
                            }
                        }
                    }
                }
            }
            let y: Vec<f32> = (0..cols.len())
                .map(|i| ((i * 7) % 5) as f32 - 2.0)
                .collect();
            let lhs: f64 = cols.iter().zip(&y).map(|(a, b)| (a * b) as f64).sum();
            let rhs: f64 = x
                .iter()
                .zip(col2im(&y, &w))
                .map(|(a, b)| (a * b) as f64)
                .sum();
            assert_eq!(lhs, rhs, "adjoint for {w:?}");
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
        let w = whole_image_window(3);
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

    /// The fast path is taken only when every condition holds: one failing alone (an unpadded
    /// window with several positions, a padded one, one smaller than the image) keeps the
    /// general path.
    #[test]
    fn whole_image_needs_every_condition() {
        let whole = whole_image_window(2);
        assert!(whole.is_whole_image());
        let variants = [
            Window {
                padding: 1,
                ..whole
            },
            Window {
                col_height: 2,
                ..whole
            },
            Window {
                col_width: 2,
                ..whole
            },
            Window { height: 5, ..whole },
            Window { width: 5, ..whole },
        ];
        for w in variants {
            assert!(!w.is_whole_image(), "{w:?}");
        }
    }
}
