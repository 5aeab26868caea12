//! CIFAR-10 binary batches: records of one label byte and a 3x32x32 image (R, G, B planes).

use std::path::{Path, PathBuf};

use image::RgbImage;

use crate::error::{DataError, Result};

/// Bytes per record: label + 3 * 32 * 32.
pub const RECORD: usize = 1 + 3 * 32 * 32;
/// CIFAR-10's class names, in label order.
pub const CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

/// The batch files of a split: `data_batch_*.bin` (train) or `test_batch.bin` (test), sorted.
pub fn batch_files(dir: &Path, train: bool) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
            let name = name.unwrap_or_default();
            if train {
                name.starts_with("data_batch_") && name.ends_with(".bin")
            } else {
                name == "test_batch.bin"
            }
        })
        .collect();
    files.sort();
    if files.is_empty() {
        let want = if train {
            "data_batch_*.bin"
        } else {
            "test_batch.bin"
        };
        return Err(DataError::data(
            dir,
            format!("no CIFAR-10 {want} files in this folder"),
        ));
    }
    Ok(files)
}

/// Decodes one batch file into images and labels.
pub fn read_batch(path: &Path) -> Result<Vec<(RgbImage, u32)>> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    if bytes.is_empty() || bytes.len() % RECORD != 0 {
        return Err(DataError::data(
            path,
            format!(
                "{} bytes is not a whole number of {RECORD}-byte CIFAR-10 records (truncated or not a CIFAR-10 batch)",
                bytes.len()
            ),
        ));
    }
    bytes
        .chunks_exact(RECORD)
        .enumerate()
        .map(|(i, rec)| {
            let label = rec[0] as u32;
            if label >= 10 {
                return Err(DataError::data(
                    path,
                    format!("record {i} has label {label}, CIFAR-10 labels are 0..=9"),
                ));
            }
            let planes = &rec[1..];
            let img = RgbImage::from_fn(32, 32, |x, y| {
                let p = (y * 32 + x) as usize;
                image::Rgb([planes[p], planes[1024 + p], planes[2048 + p]])
            });
            Ok((img, label))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_planes_and_rejects_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let mut rec = vec![3u8];
        rec.extend(std::iter::repeat_n(10u8, 1024));
        rec.extend(std::iter::repeat_n(20u8, 1024));
        rec.extend(std::iter::repeat_n(30u8, 1024));
        let p = dir.path().join("data_batch_1.bin");
        std::fs::write(&p, [rec.clone(), rec.clone()].concat()).unwrap();
        let got = read_batch(&p).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].1, 3);
        assert_eq!(got[0].0.get_pixel(5, 7).0, [10, 20, 30]);
        assert_eq!(batch_files(dir.path(), true).unwrap(), vec![p.clone()]);
        assert!(batch_files(dir.path(), false).is_err());
        std::fs::write(&p, &rec[..100]).unwrap();
        let err = read_batch(&p).unwrap_err().to_string();
        assert!(
            err.contains("data_batch_1.bin") && err.contains("truncated"),
            "{err}"
        );
    }

    /// Pixel (x, y) of a plane is byte `y * 32 + x` of it (rows first), and only
    /// `data_batch_*.bin` files are train batches.
    #[test]
    fn pixels_are_row_major_and_train_batches_are_named_data_batch_bin() {
        let dir = tempfile::tempdir().unwrap();
        let mut rec = vec![1u8];
        for plane in 0..3u32 {
            rec.extend((0..1024u32).map(|p| ((p * 7 + plane * 50) % 256) as u8));
        }
        let p = dir.path().join("data_batch_2.bin");
        std::fs::write(&p, &rec).unwrap();
        let (img, _) = &read_batch(&p).unwrap()[0];
        for (x, y) in [(3u32, 1u32), (31, 0), (0, 31), (17, 9)] {
            let at = y * 32 + x;
            let want = [0u32, 1, 2].map(|c| ((at * 7 + c * 50) % 256) as u8);
            assert_eq!(img.get_pixel(x, y).0, want, "({x}, {y})");
        }
        for other in ["data_batch_3.txt", "batches.meta.bin", "readme.html"] {
            std::fs::write(dir.path().join(other), b"x").unwrap();
        }
        assert_eq!(batch_files(dir.path(), true).unwrap(), vec![p]);
    }
}
