//! [`ImageBatch`]: generated images as bytes, and the conversion of a generator's float output
//! to them. Pure pixel code: no ONNX Runtime involved.

use image::DynamicImage;
use rayon::prelude::*;

use crate::error::{Result, RuntimeError};

/// A batch of images of one size: uint8 `[N, H, W, C]`, 1 (grey) or 3 (RGB) channels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageBatch {
    pixels: Vec<u8>,
    count: usize,
    height: usize,
    width: usize,
    channels: usize,
}

impl ImageBatch {
    /// A batch from its bytes (`[count, height, width, channels]`, row-major); fails unless the
    /// length matches and there are 1 or 3 channels.
    pub fn new(
        pixels: Vec<u8>,
        count: usize,
        height: usize,
        width: usize,
        channels: usize,
    ) -> Result<Self> {
        if channels != 1 && channels != 3 {
            return Err(RuntimeError::Unsupported(format!(
                "images must have 1 or 3 channels, not {channels}"
            )));
        }
        let want = count * height * width * channels;
        if pixels.len() != want || u32::try_from(height.max(width)).is_err() {
            return Err(RuntimeError::Unsupported(format!(
                "{} bytes do not hold {count} images of {height}x{width}x{channels}",
                pixels.len()
            )));
        }
        Ok(Self {
            pixels,
            count,
            height,
            width,
            channels,
        })
    }

    /// Number of images.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Image height in pixels.
    pub fn height(&self) -> usize {
        self.height
    }

    /// Image width in pixels.
    pub fn width(&self) -> usize {
        self.width
    }

    /// 1 (grey) or 3 (RGB).
    pub fn channels(&self) -> usize {
        self.channels
    }

    /// All bytes, `[N, H, W, C]`.
    pub fn pixels(&self) -> &[u8] {
        &self.pixels
    }

    /// The bytes, `[N, H, W, C]`.
    pub fn into_pixels(self) -> Vec<u8> {
        self.pixels
    }

    fn image_len(&self) -> usize {
        self.height * self.width * self.channels
    }

    /// Image `i` as an `image` crate image (grey or RGB), or `None` past the end.
    pub fn image(&self, i: usize) -> Option<DynamicImage> {
        if i >= self.count {
            return None;
        }
        let n = self.image_len();
        let px = self.pixels[i * n..(i + 1) * n].to_vec();
        let (w, h) = (self.width as u32, self.height as u32);
        // `new` guarantees the sizes agree, so `from_raw` cannot refuse them.
        if self.channels == 1 {
            image::GrayImage::from_raw(w, h, px).map(DynamicImage::ImageLuma8)
        } else {
            image::RgbImage::from_raw(w, h, px).map(DynamicImage::ImageRgb8)
        }
    }

    /// All images.
    pub fn to_images(&self) -> Vec<DynamicImage> {
        (0..self.count).filter_map(|i| self.image(i)).collect()
    }

    /// The batches one after another; they must all have the same image size.
    pub fn concat(parts: Vec<ImageBatch>) -> Result<ImageBatch> {
        let mut parts = parts.into_iter();
        let mut all = parts
            .next()
            .ok_or_else(|| RuntimeError::Unsupported("no batches to concatenate".into()))?;
        for part in parts {
            let shape = |b: &ImageBatch| (b.height, b.width, b.channels);
            if shape(&part) != shape(&all) {
                return Err(RuntimeError::Unsupported(format!(
                    "cannot concatenate images of {:?} and {:?} (height, width, channels)",
                    shape(&all),
                    shape(&part)
                )));
            }
            all.pixels.extend_from_slice(&part.pixels);
            all.count += part.count;
        }
        Ok(all)
    }

    /// Converts float NCHW images in [-1, 1] (`shape` = `[N, C, H, W]`) to bytes with
    /// `round((x + 1) * 127.5)`, clamped: the same mapping as the exporter's uint8 output.
    pub fn from_float_nchw(values: &[f32], shape: [usize; 4]) -> Result<ImageBatch> {
        let [n, c, h, w] = shape;
        if values.len() != n * c * h * w {
            return Err(RuntimeError::Unsupported(format!(
                "{} values do not hold a float batch of shape {shape:?}",
                values.len()
            )));
        }
        let plane = h * w;
        let mut pixels = vec![0u8; values.len()];
        if plane > 0 && c > 0 {
            pixels
                .par_chunks_mut(c * plane)
                .zip(values.par_chunks(c * plane))
                .for_each(|(dst, img)| {
                    for p in 0..plane {
                        for ch in 0..c {
                            dst[p * c + ch] = to_byte(img[ch * plane + p]);
                        }
                    }
                });
        }
        ImageBatch::new(pixels, n, h, w, c)
    }
}

/// `[-1, 1]` -> `0..=255`, rounded.
#[inline]
fn to_byte(v: f32) -> u8 {
    ((v.clamp(-1.0, 1.0) + 1.0) * 127.5).round() as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float_nchw_becomes_rounded_nhwc_bytes() {
        // Two 1x2 RGB images; channel planes in NCHW order.
        let values = [
            -1.0, 1.0, // image 0, red
            0.0, 0.5, // green
            -0.5, 2.0, // blue (2.0 clamps to 255)
            0.25, -0.25, 1.0, -1.0, 0.0, 0.0, // image 1
        ];
        let b = ImageBatch::from_float_nchw(&values, [2, 3, 1, 2]).unwrap();
        assert_eq!(
            (b.count(), b.height(), b.width(), b.channels()),
            (2, 1, 2, 3)
        );
        // (x + 1) * 127.5 rounded: -1 -> 0, 1 -> 255, 0 -> 128 (127.5 rounds away), 0.5 -> 191,
        // -0.5 -> 64, 0.25 -> 159, -0.25 -> 96.
        assert_eq!(
            b.pixels(),
            &[0, 128, 64, 255, 191, 255, 159, 255, 128, 96, 0, 128]
        );
        let img = b.image(1).unwrap().to_rgb8();
        assert_eq!(img.get_pixel(1, 0).0, [96, 0, 128]);
        assert!(b.image(2).is_none());
    }

    /// A 2x3 (non-square) RGB batch: every pixel lands at its NHWC place.
    #[test]
    fn every_pixel_lands_in_place() {
        let (n, c, h, w) = (2, 3, 2, 3);
        let values: Vec<f32> = (0..n * c * h * w)
            .map(|i| (i as f32 / 35.0) * 2.0 - 1.0)
            .collect();
        let b = ImageBatch::from_float_nchw(&values, [n, c, h, w]).unwrap();
        assert_eq!(
            (b.count(), b.height(), b.width(), b.channels()),
            (n, h, w, c)
        );
        for img in 0..n {
            for y in 0..h {
                for x in 0..w {
                    for ch in 0..c {
                        let v = values[((img * c + ch) * h + y) * w + x];
                        let at = ((img * h + y) * w + x) * c + ch;
                        assert_eq!(b.pixels()[at], to_byte(v), "{img} {y} {x} {ch}");
                    }
                }
            }
        }
        let images = b.to_images();
        assert_eq!(images.len(), n);
        assert_eq!(
            images[1].to_rgb8().get_pixel(2, 1).0[0],
            b.pixels()[(h + 1) * w * c + 2 * c]
        );
        assert_eq!(
            (images[0].width(), images[0].height()),
            (w as u32, h as u32)
        );
        let pixels = b.clone().into_pixels();
        assert_eq!(pixels.as_slice(), b.pixels());
        assert_eq!(pixels.len(), n * c * h * w);
    }

    /// Batches with nothing in them convert without panicking.
    #[test]
    fn empty_shapes_do_not_panic() {
        for shape in [[0, 3, 4, 4], [2, 3, 0, 4], [2, 3, 4, 0], [1, 1, 0, 0]] {
            let b = ImageBatch::from_float_nchw(&[], shape).unwrap();
            assert!(b.pixels().is_empty(), "{shape:?}");
        }
        // No channels: refused (images have 1 or 3), not a panic.
        assert!(ImageBatch::from_float_nchw(&[], [2, 0, 4, 4]).is_err());
    }

    #[test]
    fn batches_check_their_sizes() {
        assert!(ImageBatch::new(vec![0; 5], 1, 2, 2, 1).is_err());
        assert!(ImageBatch::new(vec![0; 8], 2, 2, 2, 2).is_err());
        let a = ImageBatch::new(vec![1; 4], 1, 2, 2, 1).unwrap();
        let b = ImageBatch::new(vec![2; 8], 2, 2, 2, 1).unwrap();
        let ab = ImageBatch::concat(vec![a.clone(), b]).unwrap();
        assert_eq!(ab.count(), 3);
        assert_eq!(&ab.pixels()[..5], &[1, 1, 1, 1, 2]);
        let rgb = ImageBatch::new(vec![0; 12], 1, 2, 2, 3).unwrap();
        assert!(ImageBatch::concat(vec![a, rgb]).is_err());
        assert!(ImageBatch::concat(Vec::new()).is_err());
        assert!(ImageBatch::from_float_nchw(&[0.0; 3], [1, 1, 2, 2]).is_err());
    }
}
