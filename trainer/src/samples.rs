//! Image grids and per-image conversion from generator output to pixels.

use std::path::Path;

use candle_core::{Device, Tensor};
use image::{DynamicImage, GrayImage, RgbImage};

use crate::error::{Result, TrainError};

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

/// Tiles images into a grid of `cols` columns with `pad` pixels of black between them.
pub fn grid(images: &[DynamicImage], cols: usize, pad: u32) -> DynamicImage {
    let cols = cols.max(1);
    let rows = images.len().div_ceil(cols);
    let (w, h) = images.first().map_or((1, 1), |i| (i.width(), i.height()));
    let gw = cols as u32 * (w + pad) + pad;
    let gh = rows as u32 * (h + pad) + pad;
    let grey = images.iter().all(|i| i.color().channel_count() == 1);
    let mut canvas = if grey {
        DynamicImage::new_luma8(gw, gh)
    } else {
        DynamicImage::new_rgb8(gw, gh)
    };
    for (i, img) in images.iter().enumerate() {
        let x = pad + (i % cols) as u32 * (w + pad);
        let y = pad + (i / cols) as u32 * (h + pad);
        image::imageops::replace(&mut canvas, img, x as i64, y as i64);
    }
    canvas
}

/// Encodes `img` as PNG bytes.
pub fn png_bytes(img: &DynamicImage) -> Result<Vec<u8>> {
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png)
        .map_err(|e| TrainError::data("<png>", format!("PNG encoding failed: {e}")))?;
    Ok(out.into_inner())
}

/// Writes `img` as a PNG file atomically.
pub fn save_png(img: &DynamicImage, path: &Path) -> Result<()> {
    gantry_models::atomic::write_file_atomic(path, &png_bytes(img)?)?;
    Ok(())
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
}
