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
pub fn safetensors_bytes(
    map: &TensorMap,
    metadata: Option<std::collections::HashMap<String, String>>,
) -> Result<Vec<u8>> {
    let cpu: Vec<(String, Tensor)> = map
        .iter()
        .map(|(k, v)| Ok((k.clone(), v.to_device(&Device::Cpu)?.contiguous()?)))
        .collect::<Result<_>>()?;
    let views: Vec<(&str, &Tensor)> = cpu.iter().map(|(k, v)| (k.as_str(), v)).collect();
    safetensors::tensor::serialize(views, metadata)
        .map_err(|e| ModelError::Input(format!("cannot serialise tensors: {e}")))
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
