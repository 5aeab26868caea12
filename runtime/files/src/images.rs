//! Image grids and encodings: what the trainer's sample grids, the runtime's outputs and the
//! server's PNG endpoints share.

use std::path::{Path, PathBuf};

use image::codecs::png::{CompressionType, FilterType, PngEncoder};
use image::{DynamicImage, ImageEncoder};

use crate::atomic::write_file_atomic;
use crate::error::{FileError, Result};

/// Tiles images into a near-square grid with `pad` black pixels between them.
pub fn grid(images: &[DynamicImage], pad: u32) -> DynamicImage {
    let cols = (images.len() as f64).sqrt().ceil().max(1.0) as usize;
    grid_with_columns(images, cols, pad)
}

/// Tiles images into rows of `cols` with `pad` black pixels between and around them; grey when
/// every image is grey, RGB otherwise.
pub fn grid_with_columns(images: &[DynamicImage], cols: usize, pad: u32) -> DynamicImage {
    let cols = cols.max(1);
    let rows = images.len().div_ceil(cols).max(1);
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

fn encode_error(e: image::ImageError) -> FileError {
    FileError::Encode {
        path: PathBuf::from("<memory>"),
        message: e.to_string(),
    }
}

/// PNG bytes of one image (fast zlib level: encoding must not slow generation down).
pub fn png_bytes(img: &DynamicImage) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let enc = PngEncoder::new_with_quality(&mut out, CompressionType::Fast, FilterType::Adaptive);
    enc.write_image(
        img.as_bytes(),
        img.width(),
        img.height(),
        img.color().into(),
    )
    .map_err(encode_error)?;
    Ok(out)
}

/// Writes `img` to `path` as PNG, atomically.
pub fn save_png(img: &DynamicImage, path: &Path) -> Result<()> {
    write_file_atomic(path, &png_bytes(img)?)
}

/// The bytes of an animated GIF that plays `frames` forwards and back, looping.
pub fn gif_bytes(frames: &[DynamicImage], frame_ms: u32) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    {
        let mut enc = image::codecs::gif::GifEncoder::new(&mut out);
        enc.set_repeat(image::codecs::gif::Repeat::Infinite)
            .map_err(encode_error)?;
        let delay = image::Delay::from_numer_denom_ms(frame_ms, 1);
        let all = frames.iter().chain(frames.iter().rev().skip(1));
        enc.encode_frames(all.map(|f| image::Frame::from_parts(f.to_rgba8(), 0, 0, delay)))
            .map_err(encode_error)?;
    }
    Ok(out)
}

/// Writes an animated GIF that plays `frames` forwards and back, looping, atomically.
pub fn save_gif(frames: &[DynamicImage], path: &Path, frame_ms: u32) -> Result<()> {
    write_file_atomic(path, &gif_bytes(frames, frame_ms)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::GrayImage;

    #[test]
    fn grids_tile_with_padding_and_pngs_decode_to_the_same_pixels() {
        let img =
            DynamicImage::ImageLuma8(GrayImage::from_raw(2, 2, vec![0, 128, 255, 7]).unwrap());
        let g = grid_with_columns(&[img.clone(), img.clone(), img.clone()], 2, 1);
        assert_eq!((g.width(), g.height()), (7, 7));
        assert_eq!(g.to_luma8().get_pixel(1, 1).0, [0]);
        assert_eq!(g.to_luma8().get_pixel(2, 1).0, [128]);
        assert_eq!(
            g.to_luma8().get_pixel(4, 1).0,
            [0],
            "the second image starts after the pad"
        );
        assert_eq!(g.to_luma8().get_pixel(5, 2).0, [7]);
        assert_eq!(g.color().channel_count(), 1, "grey images make a grey grid");
        let second_row: Vec<u8> = [(1, 4), (2, 4), (1, 5), (2, 5), (4, 4)]
            .iter()
            .map(|&(x, y)| g.to_luma8().get_pixel(x, y).0[0])
            .collect();
        assert_eq!(
            second_row,
            [0, 128, 255, 7, 0],
            "the third image opens the second row, one pad below the first; nothing beside it"
        );
        assert_eq!(
            grid(&vec![img.clone(); 5], 0).width(),
            6,
            "5 images: 3 columns"
        );
        let back = image::load_from_memory(&png_bytes(&g).unwrap()).unwrap();
        assert_eq!(back.to_luma8(), g.to_luma8());
        let gif = gif_bytes(&[img.clone(), img], 50).unwrap();
        assert_eq!(&gif[..3], b"GIF");
    }

    #[test]
    fn a_grid_with_any_colour_image_is_rgb_and_an_empty_grid_is_only_its_padding() {
        let grey = DynamicImage::new_luma8(2, 2);
        let mut rgb = image::RgbImage::new(2, 2);
        rgb.put_pixel(0, 0, image::Rgb([200, 10, 20]));
        let g = grid_with_columns(&[grey, DynamicImage::ImageRgb8(rgb)], 2, 1);
        assert_eq!(g.color().channel_count(), 3);
        assert_eq!(g.to_rgb8().get_pixel(4, 1).0, [200, 10, 20]);
        let empty = grid(&[], 2);
        assert_eq!(
            (empty.width(), empty.height()),
            (5, 5),
            "one 1x1 cell and its padding"
        );
    }

    #[test]
    fn gifs_play_forwards_then_back_at_the_frame_time_asked_for() {
        use image::AnimationDecoder;
        let frames: Vec<DynamicImage> = [10u8, 120, 250]
            .iter()
            .map(|&v| DynamicImage::ImageLuma8(GrayImage::from_pixel(2, 2, image::Luma([v]))))
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("walk.gif");
        save_gif(&frames, &path, 70).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let decoded = image::codecs::gif::GifDecoder::new(std::io::Cursor::new(bytes))
            .unwrap()
            .into_frames()
            .collect_frames()
            .unwrap();
        let firsts: Vec<u8> = decoded
            .iter()
            .map(|f| f.buffer().get_pixel(0, 0).0[0])
            .collect();
        assert_eq!(
            firsts,
            [10, 120, 250, 120, 10],
            "forwards, then back without repeating the last"
        );
        for f in &decoded {
            let (num, den) = f.delay().numer_denom_ms();
            assert_eq!(num / den, 70);
        }
        let png = dir.path().join("grid.png");
        save_png(&frames[1], &png).unwrap();
        assert_eq!(image::open(&png).unwrap().to_luma8(), frames[1].to_luma8());
    }
}
