//! NumPy's `.npy` arrays and `.npz` archives (a zip of `.npy` files), the format of the
//! reference statistics pytorch-fid, clean-fid and torch-fidelity exchange (`mu`, `sigma`).
//!
//! Read: little-endian `float32`/`float64`/`uint8` arrays in C order, format versions 1 to 3,
//! stored or deflated archives (`np.savez`, `np.savez_compressed`). Written: format 1.0,
//! stored, as `np.savez` writes them.

use std::collections::BTreeMap;
use std::io::{Cursor, Read, Write};
use std::path::Path;

use crate::error::{MetricsError, Result};

const MAGIC: &[u8] = b"\x93NUMPY";

/// An array's shape and values (converted to f64; uint8 arrays keep their bytes in `bytes`).
#[derive(Debug, Clone, PartialEq)]
pub struct Array {
    pub shape: Vec<usize>,
    pub values: Vec<f64>,
    /// The raw bytes of a `uint8` array (empty otherwise).
    pub bytes: Vec<u8>,
    /// Written as float32 (read: whether it was).
    pub single: bool,
}

impl Array {
    /// A float64 array.
    pub fn f64(shape: Vec<usize>, values: Vec<f64>) -> Self {
        Self {
            shape,
            values,
            bytes: Vec::new(),
            single: false,
        }
    }

    /// A float32 array.
    pub fn f32(shape: Vec<usize>, values: &[f32]) -> Self {
        Self {
            shape,
            values: values.iter().map(|&v| f64::from(v)).collect(),
            bytes: Vec::new(),
            single: true,
        }
    }

    /// A uint8 array of `bytes`.
    pub fn bytes(bytes: Vec<u8>) -> Self {
        Self {
            shape: vec![bytes.len()],
            values: bytes.iter().map(|&b| f64::from(b)).collect(),
            bytes,
            single: false,
        }
    }

    /// The values as float32.
    pub fn to_f32(&self) -> Vec<f32> {
        self.values.iter().map(|&v| v as f32).collect()
    }
}

/// What an `.npy` header says.
struct Header {
    descr: String,
    fortran: bool,
    shape: Vec<usize>,
}

/// Parses the Python-literal header dict `{'descr': '<f8', 'fortran_order': False, 'shape': (2, 3), }`.
fn parse_header(text: &str) -> std::result::Result<Header, String> {
    let field = |key: &str| -> std::result::Result<&str, String> {
        let at = text
            .find(&format!("'{key}'"))
            .ok_or_else(|| format!("no `{key}` in the header"))?;
        let rest = text[at + key.len() + 2..].trim_start();
        rest.strip_prefix(':')
            .map(str::trim_start)
            .ok_or_else(|| format!("malformed `{key}` in the header"))
    };
    let descr = field("descr")?;
    let descr = descr
        .strip_prefix('\'')
        .and_then(|d| d.split('\'').next())
        .ok_or("malformed `descr`")?
        .to_string();
    let fortran = field("fortran_order")?.starts_with("True");
    let shape_text = field("shape")?;
    let inner = shape_text
        .strip_prefix('(')
        .and_then(|s| s.split(')').next())
        .ok_or("malformed `shape`")?;
    let shape = inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<usize>()
                .map_err(|_| format!("bad dimension `{s}`"))
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    Ok(Header {
        descr,
        fortran,
        shape,
    })
}

/// Reads one `.npy` array from `bytes`.
pub fn read_npy(bytes: &[u8]) -> std::result::Result<Array, String> {
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err("not a .npy array (no \\x93NUMPY magic)".into());
    }
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10usize),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => return Err(format!(".npy format version {v} is not supported")),
    };
    let body = start
        .checked_add(header_len)
        .filter(|&b| b <= bytes.len())
        .ok_or("truncated .npy header")?;
    let text = std::str::from_utf8(&bytes[start..body]).map_err(|_| "non-text .npy header")?;
    let header = parse_header(text)?;
    if header.fortran {
        return Err(
            "Fortran-ordered arrays are not supported (save it with np.ascontiguousarray)".into(),
        );
    }
    let count = header
        .shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or("the shape overflows")?;
    let data = &bytes[body..];
    let need = |size: usize| -> std::result::Result<&[u8], String> {
        count
            .checked_mul(size)
            .filter(|&n| n <= data.len())
            .map(|n| &data[..n])
            .ok_or_else(|| {
                format!(
                    "truncated data: shape {:?} of {} needs {} bytes, {} present",
                    header.shape,
                    header.descr,
                    count.saturating_mul(size),
                    data.len()
                )
            })
    };
    let single = header.descr == "<f4";
    let (values, raw) = match header.descr.as_str() {
        "<f8" => (
            need(8)?
                .chunks_exact(8)
                .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")))
                .collect(),
            Vec::new(),
        ),
        "<f4" => (
            need(4)?
                .chunks_exact(4)
                .map(|b| f64::from(f32::from_le_bytes(b.try_into().expect("4 bytes"))))
                .collect(),
            Vec::new(),
        ),
        "|u1" => {
            let b = need(1)?.to_vec();
            (b.iter().map(|&v| f64::from(v)).collect(), b)
        }
        other => {
            return Err(format!(
                "element type `{other}` is not supported (little-endian float32/float64 or uint8)"
            ))
        }
    };
    Ok(Array {
        shape: header.shape,
        values,
        bytes: raw,
        single,
    })
}

/// The `.npy` bytes of an array: uint8 when `array.bytes` is set, else float32 or float64.
pub fn write_npy(array: &Array) -> Vec<u8> {
    let (descr, data): (&str, Vec<u8>) = if !array.bytes.is_empty() {
        ("|u1", array.bytes.clone())
    } else if array.single {
        (
            "<f4",
            array
                .values
                .iter()
                .flat_map(|&v| (v as f32).to_le_bytes())
                .collect(),
        )
    } else {
        (
            "<f8",
            array.values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        )
    };
    let shape = match array.shape.as_slice() {
        [one] => format!("({one},)"),
        dims => format!(
            "({})",
            dims.iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    // Pad with spaces so the data starts on a 64-byte boundary, ending with a newline.
    while (MAGIC.len() + 4 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + data.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(&data);
    out
}

/// Reads every array of the `.npz` archive at `path`, by name (without `.npy`).
pub fn read_npz(path: &Path) -> Result<BTreeMap<String, Array>> {
    let bytes = std::fs::read(path).map_err(|e| MetricsError::io(path, e))?;
    let mut zip = zip::ZipArchive::new(Cursor::new(bytes))
        .map_err(|e| MetricsError::data(path, format!("not a .npz archive: {e}")))?;
    let mut arrays = BTreeMap::new();
    for i in 0..zip.len() {
        let mut entry = zip
            .by_index(i)
            .map_err(|e| MetricsError::data(path, format!("not a .npz archive: {e}")))?;
        let name = entry
            .name()
            .map(|n| n.into_owned())
            .map_err(|e| MetricsError::data(path, format!("not a .npz archive: {e}")))?;
        let mut data = Vec::new();
        entry
            .read_to_end(&mut data)
            .map_err(|e| MetricsError::data(path, format!("{name}: {e}")))?;
        let array =
            read_npy(&data).map_err(|e| MetricsError::data(path, format!("{name}: {e}")))?;
        arrays.insert(name.trim_end_matches(".npy").to_string(), array);
    }
    Ok(arrays)
}

/// The bytes of an `.npz` archive of `arrays` (stored, as `np.savez`).
pub fn npz_bytes(arrays: &[(&str, &Array)]) -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Stored)
        .large_file(true);
    for (name, array) in arrays {
        zip.start_file(format!("{name}.npy"), options)
            .expect("writing to memory");
        zip.write_all(&write_npy(array)).expect("writing to memory");
    }
    zip.finish().expect("writing to memory").into_inner()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrays_round_trip_and_headers_are_aligned() {
        let a = Array::f64(vec![2, 3], vec![1.0, -2.5, 3.25, 0.0, 1e-300, f64::MAX]);
        let bytes = write_npy(&a);
        let header_end = 10 + u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
        assert_eq!(header_end % 64, 0);
        assert_eq!(read_npy(&bytes).unwrap(), a);
        let one = Array::f64(vec![4], vec![1.0, 2.0, 3.0, 4.0]);
        assert!(String::from_utf8_lossy(&write_npy(&one)).contains("'shape': (4,)"));
        let raw = Array::bytes(b"hi!".to_vec());
        assert_eq!(read_npy(&write_npy(&raw)).unwrap(), raw);
        let single = Array::f32(vec![2], &[0.1, -3.5]);
        assert_eq!(read_npy(&write_npy(&single)).unwrap(), single);
    }

    #[test]
    fn bad_arrays_are_refused_with_the_reason() {
        assert!(read_npy(b"PK\x03\x04 not npy")
            .unwrap_err()
            .contains("magic"));
        let mut bytes = write_npy(&Array::f64(vec![4], vec![0.0; 4]));
        bytes.truncate(bytes.len() - 1);
        assert!(read_npy(&bytes).unwrap_err().contains("truncated"));
        let mut big_endian = write_npy(&Array::f64(vec![1], vec![0.0]));
        let at = big_endian.windows(3).position(|w| w == b"<f8").unwrap();
        big_endian[at] = b'>';
        let err = read_npy(&big_endian).unwrap_err();
        assert!(err.contains(">f8"), "{err}");
    }

    #[test]
    fn archives_round_trip_through_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stats.npz");
        let mu = Array::f64(vec![2], vec![1.0, 2.0]);
        let sigma = Array::f64(vec![2, 2], vec![1.0, 0.5, 0.5, 2.0]);
        std::fs::write(&path, npz_bytes(&[("mu", &mu), ("sigma", &sigma)])).unwrap();
        let read = read_npz(&path).unwrap();
        assert_eq!(read["mu"], mu);
        assert_eq!(read["sigma"], sigma);
        std::fs::write(&path, b"not a zip").unwrap();
        let err = read_npz(&path).unwrap_err().to_string();
        assert!(
            err.contains("stats.npz") && err.contains("not a .npz"),
            "{err}"
        );
    }

    /// Statistics files come from anywhere: any bytes, as an array or an archive, give an
    /// array or an error, never a panic or a hang (gantry-fuzz; `make fuzz` runs it longer).
    #[test]
    fn fuzz_npy_and_npz_reading() {
        let npy = write_npy(&Array::f64(vec![2, 2], vec![1.0, 0.5, 0.5, 2.0]));
        let npz = npz_bytes(&[
            ("mu", &Array::f64(vec![2], vec![1.0, 2.0])),
            ("sigma", &Array::f32(vec![1], &[3.0])),
        ]);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fuzz.npz");
        gantry_fuzz::target!(|input| {
            let _ = read_npy(&gantry_fuzz::fuzzed_file(&npy, input));
            std::fs::write(&path, gantry_fuzz::fuzzed_file(&npz, input)).unwrap();
            let _ = read_npz(&path);
        });
    }
}
