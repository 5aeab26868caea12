//! Writing generated images: numbered PNGs (encoded in parallel), a grid, a streaming `.npy`
//! array, image strips and animated GIFs.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use image::codecs::png::{CompressionType, FilterType, PngEncoder};
use image::{DynamicImage, ImageEncoder};
use rayon::prelude::*;

use crate::error::{Result, RuntimeError};
use crate::generator::ImageBatch;

/// Images kept for the grid (the first ones generated).
pub const GRID_LIMIT: usize = 256;

/// Makes `dir` (and parents) and checks that files can be created in it.
pub fn prepare_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| RuntimeError::io(dir, e))?;
    let probe = dir.join(".gantry-write-test");
    File::create(&probe).map_err(|e| RuntimeError::io(dir, e))?;
    let _ = std::fs::remove_file(probe);
    Ok(())
}

/// PNG bytes of one image (fast zlib level: generation is the bottleneck we care about).
pub fn png_bytes(img: &DynamicImage) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let enc = PngEncoder::new_with_quality(&mut out, CompressionType::Fast, FilterType::Adaptive);
    enc.write_image(
        img.as_bytes(),
        img.width(),
        img.height(),
        img.color().into(),
    )
    .map_err(|e| RuntimeError::Encode {
        path: PathBuf::from("<memory>"),
        message: e.to_string(),
    })?;
    Ok(out)
}

/// Writes `img` to `path` as PNG.
pub fn save_png(img: &DynamicImage, path: &Path) -> Result<()> {
    let bytes = png_bytes(img)?;
    std::fs::write(path, bytes).map_err(|e| RuntimeError::io(path, e))
}

/// Writes each image of `batch` as `dir/{first + i:06}.png`, encoding in parallel.
pub fn write_pngs(dir: &Path, first: usize, batch: &ImageBatch) -> Result<()> {
    (0..batch.count).into_par_iter().try_for_each(|i| {
        let path = dir.join(format!("{:06}.png", first + i));
        save_png(&batch.image(i), &path)
    })
}

/// Tiles images into a near-square grid with `pad` black pixels between them.
pub fn grid(images: &[DynamicImage], pad: u32) -> DynamicImage {
    let cols = (images.len() as f64).sqrt().ceil().max(1.0) as usize;
    grid_with_columns(images, cols, pad)
}

/// Tiles images into rows of `cols`.
pub fn grid_with_columns(images: &[DynamicImage], cols: usize, pad: u32) -> DynamicImage {
    let rows = images.len().div_ceil(cols.max(1)).max(1);
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

/// Writes an animated GIF looping over `frames`.
pub fn save_gif(frames: &[DynamicImage], path: &Path, frame_ms: u32) -> Result<()> {
    let file = File::create(path).map_err(|e| RuntimeError::io(path, e))?;
    let mut enc = image::codecs::gif::GifEncoder::new(BufWriter::new(file));
    enc.set_repeat(image::codecs::gif::Repeat::Infinite)
        .map_err(|e| RuntimeError::Encode {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    let delay = image::Delay::from_numer_denom_ms(frame_ms, 1);
    let all = frames.iter().chain(frames.iter().rev().skip(1));
    enc.encode_frames(all.map(|f| image::Frame::from_parts(f.to_rgba8(), 0, 0, delay)))
        .map_err(|e| RuntimeError::Encode {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
}

/// Streams uint8 images into a NumPy `.npy` file of shape `[N, H, W, C]` without holding them
/// all: the header is written up front for the announced count, the data batch by batch.
/// (The `.npy` v1.0 format: magic, version, a little header dict padded to 64 bytes, raw data.)
pub struct NpyWriter {
    path: PathBuf,
    file: BufWriter<File>,
    expected: usize,
    written: usize,
    image_len: Option<usize>,
}

impl NpyWriter {
    /// Creates `path` for `count` images (the shape is written with the first batch).
    pub fn create(path: &Path, count: usize) -> Result<Self> {
        let file = File::create(path).map_err(|e| RuntimeError::io(path, e))?;
        Ok(Self {
            path: path.to_path_buf(),
            file: BufWriter::new(file),
            expected: count,
            written: 0,
            image_len: None,
        })
    }

    fn header(count: usize, h: usize, w: usize, c: usize) -> Vec<u8> {
        let dict = format!(
            "{{'descr': '|u1', 'fortran_order': False, 'shape': ({count}, {h}, {w}, {c}), }}"
        );
        let unpadded = 10 + dict.len() + 1;
        let pad = (64 - unpadded % 64) % 64;
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend_from_slice(&((dict.len() + pad + 1) as u16).to_le_bytes());
        out.extend_from_slice(dict.as_bytes());
        out.extend(std::iter::repeat_n(b' ', pad));
        out.push(b'\n');
        out
    }

    /// Appends a batch.
    pub fn append(&mut self, batch: &ImageBatch) -> Result<()> {
        let io = |e| RuntimeError::io(&self.path, e);
        if self.image_len.is_none() {
            let header = Self::header(self.expected, batch.height, batch.width, batch.channels);
            self.file.write_all(&header).map_err(io)?;
            self.image_len = Some(batch.height * batch.width * batch.channels);
        }
        self.file
            .write_all(&batch.pixels)
            .map_err(|e| RuntimeError::io(&self.path, e))?;
        self.written += batch.count;
        Ok(())
    }

    /// Flushes and checks that the announced number of images was written.
    pub fn finish(mut self) -> Result<()> {
        if self.written != self.expected {
            return Err(RuntimeError::Invalid(format!(
                "{}: {} images written, {} announced",
                self.path.display(),
                self.written,
                self.expected
            )));
        }
        self.file
            .flush()
            .map_err(|e| RuntimeError::io(&self.path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_header_is_aligned_and_describes_the_shape() {
        let h = NpyWriter::header(3, 32, 32, 1);
        assert_eq!(h.len() % 64, 0);
        assert!(h.starts_with(b"\x93NUMPY\x01\x00"));
        let text = String::from_utf8_lossy(&h[10..]);
        assert!(text.contains("'shape': (3, 32, 32, 1)"), "{text}");
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn grid_is_near_square() {
        let imgs = vec![DynamicImage::new_luma8(4, 4); 10];
        let g = grid(&imgs, 1);
        // 4 columns, 3 rows
        assert_eq!((g.width(), g.height()), (4 * 5 + 1, 3 * 5 + 1));
    }
}
