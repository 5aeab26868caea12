//! IDX files (the MNIST family's format), raw or gzip-compressed.
//!
//! Layout: two zero bytes, a type byte (0x08 = unsigned byte), the number of dimensions, one
//! big-endian u32 per dimension, then the data.

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::error::{DataError, Result};

/// An unsigned-byte IDX array.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxArray {
    pub dims: Vec<usize>,
    pub data: Vec<u8>,
}

/// Reads a file, transparently un-gzipping it when it starts with the gzip magic bytes.
pub fn read_maybe_gzip(path: &Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(raw.as_slice())
            .read_to_end(&mut out)
            .map_err(|e| DataError::data(path, format!("corrupt gzip data ({e})")))?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// Most dimensions an IDX array may have (MNIST's images have 3, its labels 1).
pub const MAX_DIMS: usize = 4;

/// Largest image side accepted from an IDX file.
pub const MAX_SIDE: usize = 4096;

/// Parses IDX bytes; `path` names the source in errors.
pub fn parse_idx(bytes: &[u8], path: &Path) -> Result<IdxArray> {
    let bad = |msg: String| DataError::data(path, msg);
    if bytes.len() < 4 || bytes[0] != 0 || bytes[1] != 0 {
        return Err(bad(format!(
            "not an IDX file (magic bytes {:02x?}, expected 00 00 08 nn)",
            &bytes[..bytes.len().min(4)]
        )));
    }
    if bytes[2] != 0x08 {
        return Err(bad(format!(
            "IDX data type 0x{:02x} is not supported (only unsigned bytes, 0x08)",
            bytes[2]
        )));
    }
    let ndims = bytes[3] as usize;
    if !(1..=MAX_DIMS).contains(&ndims) {
        return Err(bad(format!(
            "IDX header declares {ndims} dimensions (1 to {MAX_DIMS} are supported)"
        )));
    }
    let header = 4 + 4 * ndims;
    if bytes.len() < header {
        return Err(bad(format!("truncated IDX header ({} bytes)", bytes.len())));
    }
    let dims: Vec<usize> = (0..ndims)
        .map(|i| u32::from_be_bytes(bytes[4 + 4 * i..8 + 4 * i].try_into().unwrap()) as usize)
        .collect();
    let expected = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| bad(format!("IDX dimensions {dims:?} overflow")))?;
    let found = bytes.len() - header;
    if found < expected {
        return Err(bad(format!(
            "truncated: dimensions {dims:?} need {expected} data bytes, the file has {found}"
        )));
    }
    if found > expected {
        return Err(bad(format!(
            "{} bytes of trailing data after the {dims:?} array",
            found - expected
        )));
    }
    Ok(IdxArray {
        dims,
        data: bytes[header..].to_vec(),
    })
}

/// Finds `stem` or `stem.gz` in `dir`.
pub fn find_idx_file(dir: &Path, stem: &str) -> Result<PathBuf> {
    [stem.to_string(), format!("{stem}.gz")]
        .iter()
        .map(|name| dir.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| DataError::data(dir, format!("no {stem} or {stem}.gz in this folder")))
}

/// Loads an image file `[N, H, W]` and its label file `[N]`, checking that they agree.
pub fn load_images_and_labels(images: &Path, labels: &Path) -> Result<(IdxArray, Vec<u32>)> {
    let imgs = parse_idx(&read_maybe_gzip(images)?, images)?;
    if imgs.dims.len() != 3 {
        return Err(DataError::data(
            images,
            format!(
                "expected a 3-D image array [N, H, W], found dimensions {:?}",
                imgs.dims
            ),
        ));
    }
    let (h, w) = (imgs.dims[1], imgs.dims[2]);
    if !(1..=MAX_SIDE).contains(&h) || !(1..=MAX_SIDE).contains(&w) {
        return Err(DataError::data(
            images,
            format!("images of {h}x{w} pixels: each side must be 1 to {MAX_SIDE}"),
        ));
    }
    let labs = parse_idx(&read_maybe_gzip(labels)?, labels)?;
    if labs.dims.len() != 1 {
        return Err(DataError::data(
            labels,
            format!(
                "expected a 1-D label array, found dimensions {:?}",
                labs.dims
            ),
        ));
    }
    if labs.dims[0] != imgs.dims[0] {
        return Err(DataError::data(
            labels,
            format!(
                "{} labels but {} has {} images",
                labs.dims[0],
                images.display(),
                imgs.dims[0]
            ),
        ));
    }
    Ok((imgs, labs.data.iter().map(|&l| l as u32).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use gantry_testkit::encode_idx;
    use std::io::Write;

    #[test]
    fn parses_raw_and_gzip() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = encode_idx(&[2, 2, 3], &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
        let raw = dir.path().join("a");
        std::fs::write(&raw, &bytes).unwrap();
        let gz = dir.path().join("a.gz");
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(&bytes).unwrap();
        std::fs::write(&gz, enc.finish().unwrap()).unwrap();
        for p in [&raw, &gz] {
            let arr = parse_idx(&read_maybe_gzip(p).unwrap(), p).unwrap();
            assert_eq!(arr.dims, vec![2, 2, 3]);
            assert_eq!(arr.data[11], 12);
        }
    }

    #[test]
    fn rejects_bad_magic_type_and_truncation() {
        let p = Path::new("x-idx3-ubyte");
        let err = parse_idx(b"PK\x03\x04rest", p).unwrap_err().to_string();
        assert!(
            err.contains("x-idx3-ubyte") && err.contains("not an IDX file"),
            "{err}"
        );
        // Either of the two zero bytes of the magic number being wrong is enough.
        for first_two in [[0u8, 1], [1, 0]] {
            let mut bad = encode_idx(&[1], &[5]);
            bad[..2].copy_from_slice(&first_two);
            let err = parse_idx(&bad, p).unwrap_err().to_string();
            assert!(err.contains("not an IDX file"), "{first_two:?}: {err}");
        }
        let mut floats = encode_idx(&[1], &[0, 0, 0, 0]);
        floats[2] = 0x0d;
        let err = parse_idx(&floats, p).unwrap_err().to_string();
        assert!(err.contains("0x0d"), "{err}");
        let full = encode_idx(&[3, 2, 2], &[7; 12]);
        let err = parse_idx(&full[..full.len() - 5], p)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("truncated") && err.contains("need 12") && err.contains("has 7"),
            "{err}"
        );
        let err = parse_idx(&full[..6], p).unwrap_err().to_string();
        assert!(err.contains("truncated IDX header"), "{err}");
        let mut longer = full.clone();
        longer.extend_from_slice(&[1, 2, 3]);
        let err = parse_idx(&longer, p).unwrap_err().to_string();
        assert!(err.contains("3 bytes of trailing data"), "{err}");
        assert_eq!(parse_idx(&full, p).unwrap().dims, vec![3, 2, 2]);
        // Shorter than a magic number, or exactly one: each is named for what it is.
        for short in [&b""[..], &[0u8], &[0, 0, 8]] {
            let err = parse_idx(short, p).unwrap_err().to_string();
            assert!(err.contains("not an IDX file"), "{err}");
        }
        let err = parse_idx(&[0, 0, 8, 1], p).unwrap_err().to_string();
        assert!(err.contains("truncated IDX header"), "{err}");
        // One bad header byte (255 dimensions) gives a short message, not the dimensions.
        let mut many = full.clone();
        many[3] = 255;
        let err = parse_idx(&many, p).unwrap_err().to_string();
        assert!(err.contains("255 dimensions") && err.len() < 120, "{err}");
    }

    #[test]
    fn images_without_pixels_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (imgs, labs) = (dir.path().join("i"), dir.path().join("l"));
        std::fs::write(&imgs, encode_idx(&[4, 0, 28], &[])).unwrap();
        std::fs::write(&labs, encode_idx(&[4], &[0; 4])).unwrap();
        let err = load_images_and_labels(&imgs, &labs)
            .unwrap_err()
            .to_string();
        assert!(err.contains("0x28 pixels"), "{err}");
    }

    #[test]
    fn corrupt_gzip_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bad.gz");
        std::fs::write(&p, [0x1f, 0x8b, 8, 0, 1, 2, 3]).unwrap();
        let err = read_maybe_gzip(&p).unwrap_err().to_string();
        assert!(
            err.contains("bad.gz") && err.contains("corrupt gzip"),
            "{err}"
        );
    }

    #[test]
    fn image_label_count_mismatch_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let imgs = dir.path().join("i");
        let labs = dir.path().join("l");
        std::fs::write(&imgs, encode_idx(&[3, 2, 2], &[0; 12])).unwrap();
        std::fs::write(&labs, encode_idx(&[2], &[0, 1])).unwrap();
        let err = load_images_and_labels(&imgs, &labs)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("2 labels but") && err.contains("3 images"),
            "{err}"
        );
    }
}
