//! Per-image conversion from generator output to pixels; grids and PNGs are `gantry-files`'.

use std::path::Path;

use candle_core::{Device, Tensor};
use image::{DynamicImage, GrayImage, RgbImage};

use crate::error::Result;

/// Converts `[N, C, H, W]` floats in [-1, 1] to images (1 channel: grey, 3: RGB).
pub fn to_images(batch: &Tensor) -> Result<Vec<DynamicImage>> {
    let (n, c, h, w) = batch.dims4()?;
    let bytes: Vec<u8> = ((batch.to_device(&Device::Cpu)?.clamp(-1f32, 1f32)? + 1.0)? * 127.5)?
        .round()?
        .to_dtype(candle_core::DType::U8)?
        .flatten_all()?
        .to_vec1()?;
    let plane = h * w;
    Ok((0..n)
        .map(|i| {
            let img = &bytes[i * c * plane..(i + 1) * c * plane];
            if c == 1 {
                DynamicImage::ImageLuma8(
                    GrayImage::from_raw(w as u32, h as u32, img.to_vec()).unwrap(),
                )
            } else {
                DynamicImage::ImageRgb8(RgbImage::from_fn(w as u32, h as u32, |x, y| {
                    let p = y as usize * w + x as usize;
                    image::Rgb([img[p], img[plane + p], img[2 * plane + p]])
                }))
            }
        })
        .collect())
}

pub use gantry_files::images::{grid_with_columns as grid, png_bytes};

/// Writes `img` as a PNG file atomically.
pub fn save_png(img: &DynamicImage, path: &Path) -> Result<()> {
    Ok(gantry_files::images::save_png(img, path)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_and_tiles() {
        let t = Tensor::new(&[-1.0f32, 0.0, 1.0, 2.0], &Device::Cpu)
            .unwrap()
            .reshape((1, 1, 2, 2))
            .unwrap();
        let imgs = to_images(&t).unwrap();
        assert_eq!(imgs[0].to_luma8().into_raw(), vec![0, 128, 255, 255]);
        let g = grid(&[imgs[0].clone(), imgs[0].clone(), imgs[0].clone()], 2, 1);
        assert_eq!((g.width(), g.height()), (7, 7));
        assert_eq!(g.to_luma8().get_pixel(1, 1).0, [0]);
        assert_eq!(g.to_luma8().get_pixel(2, 1).0, [128]);
        assert_eq!(g.to_luma8().get_pixel(0, 0).0, [0]);
    }

    /// Each image of a batch, grey or RGB, gets its own pixels: channel `c` of pixel `(x, y)`
    /// of image `i` is `round((v + 1) * 127.5)` of the tensor's `[i, c, y, x]` (non-square, so
    /// that rows and columns cannot be swapped unseen).
    #[test]
    fn every_image_channel_and_pixel_lands_in_place() {
        let (h, w) = (2usize, 3usize);
        for c in [1usize, 3] {
            let n = 2;
            let len = n * c * h * w;
            let values: Vec<f32> = (0..len)
                .map(|k| k as f32 / len as f32 * 2.0 - 1.0)
                .collect();
            let t = Tensor::from_vec(values.clone(), (n, c, h, w), &Device::Cpu).unwrap();
            let imgs = to_images(&t).unwrap();
            assert_eq!(imgs.len(), n);
            for (i, img) in imgs.iter().enumerate() {
                assert_eq!((img.width(), img.height()), (w as u32, h as u32));
                let rgb = img.to_rgb8();
                for y in 0..h {
                    for x in 0..w {
                        for ch in 0..3 {
                            let v = values[((i * c + ch.min(c - 1)) * h + y) * w + x];
                            let want = ((v + 1.0) * 127.5).round() as u8;
                            let got = rgb.get_pixel(x as u32, y as u32).0[ch];
                            assert_eq!(
                                got, want,
                                "{c} channels: image {i} ({x}, {y}) channel {ch}"
                            );
                        }
                    }
                }
            }
        }
    }
}
