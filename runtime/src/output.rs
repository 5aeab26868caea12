//! Writing generated images: numbered PNGs (encoded in parallel), a grid, a streaming `.npy`
//! array, image strips and animated GIFs. Every file is written to a temporary file beside it
//! and renamed into place when complete, so an interrupted run never leaves a partial file or
//! destroys a previous complete one.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use image::DynamicImage;
use rayon::prelude::*;

use crate::error::{Result, RuntimeError};
use crate::image_batch::ImageBatch;

pub use gantry_files::images::{grid, grid_with_columns};

/// Writes `bytes` to `path` through a temporary file, synced and renamed into place.
pub fn write_file_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    Ok(gantry_files::write_file_atomic(path, bytes)?)
}

/// PNG bytes of one image (fast zlib level: generation is the bottleneck we care about).
pub fn png_bytes(img: &DynamicImage) -> Result<Vec<u8>> {
    Ok(gantry_files::images::png_bytes(img)?)
}

/// Writes `img` to `path` as PNG.
pub fn save_png(img: &DynamicImage, path: &Path) -> Result<()> {
    Ok(gantry_files::images::save_png(img, path)?)
}

/// Writes each image of `batch` as `dir/{first + i:06}.png`, encoding in parallel.
pub fn write_pngs(dir: &Path, first: usize, batch: &ImageBatch) -> Result<()> {
    (0..batch.count()).into_par_iter().try_for_each(|i| {
        let path = dir.join(format!("{:06}.png", first + i));
        // One PNG per image, regenerated from its seed: replaced by rename, not fsynced each
        // (an fsync per file cost more than encoding it; the grid and .npy are fsynced).
        match batch.image(i) {
            Some(img) => Ok(gantry_files::atomic::replace_file(
                &path,
                &png_bytes(&img)?,
            )?),
            None => Ok(()),
        }
    })
}

/// The bytes of an animated GIF that plays `frames` forwards and back, looping.
pub fn gif_bytes(frames: &[DynamicImage], frame_ms: u32) -> Result<Vec<u8>> {
    Ok(gantry_files::images::gif_bytes(frames, frame_ms)?)
}

/// Writes an animated GIF that plays `frames` forwards and back, looping.
pub fn save_gif(frames: &[DynamicImage], path: &Path, frame_ms: u32) -> Result<()> {
    Ok(gantry_files::images::save_gif(frames, path, frame_ms)?)
}

/// Streams uint8 images into a NumPy `.npy` file of shape `[N, H, W, C]` without holding them
/// all: the header is written up front for the announced count, the data batch by batch, into
/// a temporary file that [`NpyWriter::finish`] renames into place once every image is there
/// (dropped unfinished, it removes the temporary file and leaves any previous file alone).
/// (The `.npy` v1.0 format: magic, version, a little header dict padded to 64 bytes, raw data.)
pub struct NpyWriter {
    path: PathBuf,
    tmp: PathBuf,
    file: Option<BufWriter<File>>,
    expected: usize,
    written: usize,
    image_shape: Option<(usize, usize, usize)>,
}

impl NpyWriter {
    /// Starts `path` for `count` images (the shape is written with the first batch).
    pub fn create(path: &Path, count: usize) -> Result<Self> {
        let tmp = gantry_files::atomic::temp_sibling(path, "tmp");
        let file = File::create(&tmp).map_err(|e| RuntimeError::io(path, e))?;
        Ok(Self {
            path: path.to_path_buf(),
            tmp,
            file: Some(BufWriter::new(file)),
            expected: count,
            written: 0,
            image_shape: None,
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

    fn mismatch(&self, message: String) -> RuntimeError {
        RuntimeError::io(&self.path, std::io::Error::other(message))
    }

    /// Appends a batch (of the same image size as the first, within the announced count).
    pub fn append(&mut self, batch: &ImageBatch) -> Result<()> {
        let shape = (batch.height(), batch.width(), batch.channels());
        if self.written + batch.count() > self.expected {
            return Err(self.mismatch(format!(
                "{} images would exceed the {} announced",
                self.written + batch.count(),
                self.expected
            )));
        }
        let first = self.image_shape.is_none();
        if *self.image_shape.get_or_insert(shape) != shape {
            return Err(self.mismatch(format!("images of {shape:?} after {:?}", self.image_shape)));
        }
        let path = self.path.clone();
        let file = self
            .file
            .as_mut()
            .ok_or_else(|| RuntimeError::io(&path, std::io::Error::other("already finished")))?;
        let io = |e| RuntimeError::io(&path, e);
        if first {
            let (h, w, c) = shape;
            file.write_all(&Self::header(self.expected, h, w, c))
                .map_err(io)?;
        }
        file.write_all(batch.pixels()).map_err(io)?;
        self.written += batch.count();
        Ok(())
    }

    /// Checks that the announced number of images was written, syncs the file and renames it
    /// into place.
    pub fn finish(mut self) -> Result<()> {
        if self.written != self.expected {
            return Err(self.mismatch(format!(
                "{} images written, {} announced",
                self.written, self.expected
            )));
        }
        let file = self.file.take();
        let done = file
            .map(|f| {
                f.into_inner()
                    .map_err(|e| e.into_error())
                    .and_then(|f| f.sync_all())
            })
            .unwrap_or(Ok(()))
            .and_then(|()| std::fs::rename(&self.tmp, &self.path));
        done.map_err(|e| RuntimeError::io(&self.path, e))
    }
}

impl Drop for NpyWriter {
    fn drop(&mut self) {
        // Unfinished or failed: the temporary file goes, a previous complete file stays.
        if self.file.is_some() || self.tmp.exists() {
            self.file = None;
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_header_is_aligned_and_describes_the_shape() {
        for shape in [(3, 32, 32, 1), (1_000_000, 64, 64, 3), (7, 5, 9, 3)] {
            let h = NpyWriter::header(shape.0, shape.1, shape.2, shape.3);
            assert_eq!(h.len() % 64, 0, "{shape:?}");
            let text = String::from_utf8_lossy(&h[10..]).into_owned();
            let padding = text.len() - text.trim_end().len();
            assert!(
                padding <= 64,
                "minimal padding (spaces and the newline): {padding}"
            );
        }
        let h = NpyWriter::header(3, 32, 32, 1);
        assert!(h.starts_with(b"\x93NUMPY\x01\x00"));
        let text = String::from_utf8_lossy(&h[10..]);
        assert!(text.contains("'shape': (3, 32, 32, 1)"), "{text}");
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn npy_is_written_whole_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("samples.npy");
        let batch = ImageBatch::new((0..8).collect(), 2, 2, 2, 1).unwrap();
        let mut w = NpyWriter::create(&path, 4).unwrap();
        w.append(&batch).unwrap();
        w.append(&batch).unwrap();
        w.finish().unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let header = 10 + u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
        assert_eq!(header % 64, 0);
        assert_eq!(bytes.len(), header + 16);
        assert_eq!(
            &bytes[header..header + 8],
            &[0, 1, 2, 3, 4, 5, 6, 7],
            "the data follows the header"
        );
        // An interrupted second run leaves the first file as it was, and no temporary file.
        let mut w = NpyWriter::create(&path, 4).unwrap();
        w.append(&batch).unwrap();
        assert!(w.finish().is_err(), "2 of 4 images");
        assert_eq!(std::fs::read(&path).unwrap(), bytes);
        let mut w = NpyWriter::create(&path, 2).unwrap();
        w.append(&batch).unwrap();
        drop(w);
        assert_eq!(std::fs::read(&path).unwrap(), bytes);
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "{names:?}");
        let mut w = NpyWriter::create(&path, 2).unwrap();
        let rgb = ImageBatch::new(vec![0; 12], 1, 2, 2, 3).unwrap();
        w.append(&rgb).unwrap();
        assert!(w.append(&batch).is_err(), "a different image size");
    }

    /// Distinct images (a grey level each) land at their tiles: row-major, `pad` apart.
    #[test]
    fn grid_puts_each_image_at_its_tile() {
        let imgs: Vec<DynamicImage> = (0..5u8)
            .map(|i| {
                DynamicImage::ImageLuma8(image::GrayImage::from_pixel(3, 2, image::Luma([10 + i])))
            })
            .collect();
        let g = grid_with_columns(&imgs, 2, 1).to_luma8();
        assert_eq!(g.dimensions(), (2 * 4 + 1, 3 * 3 + 1));
        for i in 0..5u32 {
            let (x, y) = (1 + (i % 2) * 4, 1 + (i / 2) * 3);
            for (dx, dy) in [(0, 0), (2, 1)] {
                assert_eq!(g.get_pixel(x + dx, y + dy).0, [10 + i as u8], "image {i}");
            }
            assert_eq!(g.get_pixel(x + 3, y).0, [0], "padding after image {i}");
        }
        let rgb = grid(&[DynamicImage::new_rgb8(2, 2)], 0);
        assert_eq!(rgb.color().channel_count(), 3);
    }

    #[test]
    fn pngs_and_gifs_decode_to_what_was_written() {
        let dir = tempfile::tempdir().unwrap();
        let batch = ImageBatch::new(
            (0..2 * 4 * 5 * 3).map(|i| (i * 7 % 256) as u8).collect(),
            2,
            4,
            5,
            3,
        )
        .unwrap();
        write_pngs(dir.path(), 10, &batch).unwrap();
        for i in 0..2 {
            let back = image::open(dir.path().join(format!("{:06}.png", 10 + i))).unwrap();
            assert_eq!(
                back.to_rgb8().as_raw(),
                batch.image(i).unwrap().to_rgb8().as_raw()
            );
        }
        let png = png_bytes(&batch.image(1).unwrap()).unwrap();
        assert_eq!(
            image::load_from_memory(&png).unwrap().to_rgb8().as_raw(),
            batch.image(1).unwrap().to_rgb8().as_raw()
        );
        let frames = batch.to_images();
        let gif_path = dir.path().join("walk.gif");
        save_gif(&frames, &gif_path, 80).unwrap();
        let decoder = image::codecs::gif::GifDecoder::new(std::io::Cursor::new(
            std::fs::read(&gif_path).unwrap(),
        ))
        .unwrap();
        use image::AnimationDecoder;
        let decoded = decoder.into_frames().collect_frames().unwrap();
        assert_eq!(decoded.len(), 3, "forwards and back: 2 frames, then 1");
        assert_eq!(decoded[0].buffer().dimensions(), (5, 4));
        assert_eq!(
            gif_bytes(&frames, 80).unwrap(),
            std::fs::read(&gif_path).unwrap()
        );
    }

    #[test]
    fn atomic_file_writes_replace_whole_files_and_fail_cleanly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.bin");
        write_file_atomic(&path, b"old").unwrap();
        write_file_atomic(&path, b"new!").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new!");
        let blocked = dir.path().join("f.bin/inner");
        assert!(write_file_atomic(&blocked, b"x").is_err());
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temp file left"
        );
    }

    #[test]
    fn npy_refuses_more_images_than_announced_and_cleans_up_a_failed_rename() {
        let dir = tempfile::tempdir().unwrap();
        let batch = ImageBatch::new(vec![0; 4 * 4], 4, 2, 2, 1).unwrap();
        let mut w = NpyWriter::create(&dir.path().join("a.npy"), 2).unwrap();
        assert!(w.append(&batch).is_err(), "4 images into 2");
        drop(w);
        // The target is a folder: the final rename fails; no temp file may stay.
        let target = dir.path().join("b.npy");
        std::fs::create_dir(&target).unwrap();
        let mut w = NpyWriter::create(&target, 4).unwrap();
        w.append(&batch).unwrap();
        assert!(w.finish().is_err());
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["b.npy"]);
    }

    #[test]
    fn grid_is_near_square() {
        let imgs = vec![DynamicImage::new_luma8(4, 4); 10];
        let g = grid(&imgs, 1);
        // 4 columns, 3 rows
        assert_eq!((g.width(), g.height()), (4 * 5 + 1, 3 * 5 + 1));
    }
}
