//! Named tensor maps and their safetensors files, validated against a [`NetworkSpec`].

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use crate::error::{ModelError, Result};
use crate::spec::NetworkSpec;

/// Tensors by checkpoint name, sorted so that files and iteration are deterministic.
pub type TensorMap = BTreeMap<String, Tensor>;

/// Reads a safetensors file into CPU f32 tensors; errors name the file.
pub fn read_safetensors(path: &Path) -> Result<TensorMap> {
    Ok(read_safetensors_with_metadata(path)?.0)
}

/// Reads a safetensors file into CPU f32 tensors and its string metadata; errors name the file.
/// (Values are not checked here; [`check_finite`] does.)
pub fn read_safetensors_with_metadata(
    path: &Path,
) -> Result<(TensorMap, std::collections::HashMap<String, String>)> {
    let bytes = std::fs::read(path).map_err(|e| ModelError::io(path, e))?;
    let invalid =
        |e: String| ModelError::checkpoint(path, format!("not a valid safetensors file ({e})"));
    let (_, header) =
        safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| invalid(e.to_string()))?;
    let metadata = header.metadata().clone().unwrap_or_default();
    let map = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)
        .map_err(|e| invalid(e.to_string()))?;
    let tensors = map
        .into_iter()
        .map(|(k, v)| Ok((k, v.to_dtype(DType::F32)?)))
        .collect::<Result<TensorMap>>()?;
    Ok((tensors, metadata))
}

/// Serialises `map` (and optional string metadata) to safetensors bytes, written by the caller.
/// The same tensors and metadata always give the same bytes (the header's keys are sorted).
pub fn safetensors_bytes(
    map: &TensorMap,
    metadata: Option<std::collections::HashMap<String, String>>,
) -> Result<Vec<u8>> {
    let cpu: Vec<(String, Tensor)> = map
        .iter()
        .map(|(k, v)| Ok((k.clone(), v.to_device(&Device::Cpu)?.contiguous()?)))
        .collect::<Result<_>>()?;
    let views: Vec<(&str, &Tensor)> = cpu.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let bytes = safetensors::tensor::serialize(views, metadata)
        .map_err(|e| ModelError::Input(format!("cannot serialise tensors: {e}")))?;
    sorted_header(bytes)
}

/// Rewrites a safetensors file's JSON header with its keys (and the metadata's) in sorted
/// order: `serialize` takes the metadata as a `HashMap`, whose order varies from run to run, so
/// checkpoints of identical runs differed in bytes. Data offsets are relative to the end of the
/// header, so the tensors' bytes are unchanged.
fn sorted_header(bytes: Vec<u8>) -> Result<Vec<u8>> {
    let broken = |why: &str| ModelError::Input(format!("safetensors serialisation: {why}"));
    let len = bytes
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_le_bytes)
        .ok_or_else(|| broken("no header"))? as usize;
    let end = 8usize.checked_add(len).filter(|&e| e <= bytes.len());
    let end = end.ok_or_else(|| broken("header past the end"))?;
    // The metadata object inside is sorted too: serde_json's `Map` is a `BTreeMap` (its
    // `preserve_order` feature is off; `json_objects_are_sorted_maps` fails if a dependency
    // ever turns it on).
    let header: BTreeMap<String, serde_json::Value> =
        serde_json::from_slice(&bytes[8..end]).map_err(|e| broken(&e.to_string()))?;
    let mut text = serde_json::to_vec(&header).map_err(|e| broken(&e.to_string()))?;
    // Keep the data 8-byte aligned, as safetensors itself pads the header with spaces.
    text.resize(text.len().next_multiple_of(8), b' ');
    let mut out = Vec::with_capacity(8 + text.len() + bytes.len() - end);
    out.extend_from_slice(&(text.len() as u64).to_le_bytes());
    out.extend_from_slice(&text);
    out.extend_from_slice(&bytes[end..]);
    Ok(out)
}

/// Checks that every value of every tensor is finite; the error names `file` and the first
/// tensor holding NaN or infinite values (a diverged run's weights, or a damaged file).
pub fn check_finite(map: &TensorMap, file: &Path) -> Result<()> {
    for (name, t) in map {
        let values: Vec<f32> = t.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?;
        let bad = values.iter().filter(|v| !v.is_finite()).count();
        if bad > 0 {
            return Err(ModelError::checkpoint(
                file,
                format!(
                    "tensor `{name}` holds {bad} NaN or infinite value(s) of {}: the weights are unusable (did training diverge?)",
                    values.len()
                ),
            ));
        }
    }
    Ok(())
}

/// Checks that `map` holds exactly the tensors of `spec` with their shapes; the error names
/// `file` and the first offending tensor.
pub fn validate_against_spec(map: &TensorMap, spec: &NetworkSpec, file: &Path) -> Result<()> {
    let expected = spec.tensors();
    for t in &expected {
        match map.get(&t.name) {
            None => {
                return Err(ModelError::checkpoint(
                    file,
                    format!("missing tensor `{}` (shape {:?})", t.name, t.shape),
                ))
            }
            Some(v) if v.dims() != t.shape.as_slice() => {
                return Err(ModelError::checkpoint(
                    file,
                    format!(
                        "tensor `{}` has shape {:?}, the config expects {:?}",
                        t.name,
                        v.dims(),
                        t.shape
                    ),
                ))
            }
            Some(_) => {}
        }
    }
    if let Some(extra) = map.keys().find(|k| !expected.iter().any(|t| &t.name == *k)) {
        return Err(ModelError::checkpoint(
            file,
            format!("unexpected tensor `{extra}` (does the config match the weights?)"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `sorted_header` relies on serde_json keeping objects sorted by key (no `preserve_order`).
    #[test]
    fn json_objects_are_sorted_maps() {
        let v: serde_json::Value =
            serde_json::from_str(r#"{"z": 1, "__metadata__": {"y": "1", "b": "2"}, "a": 2}"#)
                .unwrap();
        assert_eq!(
            serde_json::to_string(&v).unwrap(),
            r#"{"__metadata__":{"b":"2","y":"1"},"a":2,"z":1}"#
        );
    }

    #[test]
    fn the_same_tensors_and_metadata_give_the_same_bytes() {
        let mut map = TensorMap::new();
        map.insert("b".into(), Tensor::new(&[1f32, 2.0], &Device::Cpu).unwrap());
        map.insert("a".into(), Tensor::new(&[3f32], &Device::Cpu).unwrap());
        let meta = |order: &[(&str, &str)]| {
            Some(
                order
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            )
        };
        let first = safetensors_bytes(&map, meta(&[("step", "1"), ("config", "{}")])).unwrap();
        for _ in 0..20 {
            let again = safetensors_bytes(&map, meta(&[("config", "{}"), ("step", "1")])).unwrap();
            assert_eq!(first, again);
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.safetensors");
        std::fs::write(&path, &first).unwrap();
        let (back, metadata) = read_safetensors_with_metadata(&path).unwrap();
        assert_eq!(back["b"].to_vec1::<f32>().unwrap(), vec![1.0, 2.0]);
        assert_eq!(metadata["step"], "1");
        let header = u64::from_le_bytes(first[..8].try_into().unwrap());
        assert_eq!(header % 8, 0, "the data stays 8-byte aligned");
    }

    #[test]
    fn non_finite_values_are_named() {
        let mut map = TensorMap::new();
        map.insert("ok".into(), Tensor::new(&[1f32], &Device::Cpu).unwrap());
        check_finite(&map, Path::new("g.safetensors")).unwrap();
        map.insert(
            "w".into(),
            Tensor::new(&[1f32, f32::NAN, f32::INFINITY], &Device::Cpu).unwrap(),
        );
        let err = check_finite(&map, Path::new("g.safetensors"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("g.safetensors") && err.contains("`w`") && err.contains("2 NaN"),
            "{err}"
        );
    }

    /// A file must hold exactly the spec's tensors with their shapes: one missing, one of
    /// another shape or one too many is refused, naming it and the file.
    #[test]
    fn tensors_are_checked_against_the_spec() {
        let spec = crate::generator_spec(&crate::ModelConfig {
            image_size: 16,
            g_width: 4,
            ..Default::default()
        });
        let good = crate::init::init_tensors(&spec, "g", 1).unwrap();
        let file = Path::new("generator.safetensors");
        validate_against_spec(&good, &spec, file).unwrap();
        let mut extra = good.clone();
        extra.insert(
            "stray.weight".into(),
            Tensor::new(&[1f32], &Device::Cpu).unwrap(),
        );
        let mut missing = good.clone();
        missing.remove("layers.0.weight");
        let mut reshaped = good.clone();
        reshaped.insert(
            "layers.1.bn.bias".into(),
            Tensor::new(&[0f32; 3], &Device::Cpu).unwrap(),
        );
        for (map, problem) in [
            (extra, "unexpected tensor `stray.weight`"),
            (missing, "missing tensor `layers.0.weight`"),
            (reshaped, "tensor `layers.1.bn.bias` has shape [3]"),
        ] {
            let err = validate_against_spec(&map, &spec, file)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("generator.safetensors") && err.contains(problem),
                "{err}"
            );
        }
    }
}
