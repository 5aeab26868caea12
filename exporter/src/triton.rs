//! A Triton Inference Server model repository entry for the exported model.

use std::path::{Path, PathBuf};

use gantry_models::ModelConfig;

use crate::error::{ExportError, ExportSetting, Result};
use crate::graph::{OutputFormat, INPUT_LABEL, INPUT_Z, OUTPUT_IMAGE};

/// `config.pbtxt` for Triton's ONNX Runtime backend. With `max_batch_size` > 0 Triton batches
/// requests itself (`dynamic_batching`) and the dims leave the batch axis out; with 0 the model
/// "does not support batching" in Triton's terms: the dims are the full shapes, the batch axis
/// `-1`, and there is no `dynamic_batching` block (Triton allows it only for batching models).
pub fn config_pbtxt(
    name: &str,
    cfg: &ModelConfig,
    output: OutputFormat,
    max_batch_size: usize,
) -> String {
    let (c, s) = (cfg.channels, cfg.image_size);
    let batched = max_batch_size > 0;
    // The dims Triton sees: without its own batch axis, the model's must be written out.
    let dims = |rest: &[usize]| {
        let mut all: Vec<String> = rest.iter().map(usize::to_string).collect();
        if !batched {
            all.insert(0, "-1".into());
        }
        format!("[ {} ]", all.join(", "))
    };
    let (out_type, out_dims) = match output {
        OutputFormat::Float => ("TYPE_FP32", dims(&[c, s, s])),
        OutputFormat::Uint8 => ("TYPE_UINT8", dims(&[s, s, c])),
    };
    let mut inputs = vec![format!(
        "  {{\n    name: \"{INPUT_Z}\"\n    data_type: TYPE_FP32\n    dims: {}\n  }}",
        dims(&[cfg.latent_dim])
    )];
    if cfg.num_classes.is_some() {
        inputs.push(if batched {
            // The model's label input is [N]; Triton batches a per-request [1] and drops that axis.
            format!(
                "  {{\n    name: \"{INPUT_LABEL}\"\n    data_type: TYPE_INT64\n    dims: [ 1 ]\n    reshape: {{ shape: [ ] }}\n  }}"
            )
        } else {
            format!("  {{\n    name: \"{INPUT_LABEL}\"\n    data_type: TYPE_INT64\n    dims: [ -1 ]\n  }}")
        });
    }
    let batching = if batched {
        "dynamic_batching {\n  max_queue_delay_microseconds: 100\n}\n"
    } else {
        ""
    };
    format!(
        "name: \"{name}\"\nplatform: \"onnxruntime_onnx\"\nmax_batch_size: {max_batch_size}\ninput [\n{}\n]\noutput [\n  {{\n    name: \"{OUTPUT_IMAGE}\"\n    data_type: {out_type}\n    dims: {out_dims}\n  }}\n]\n{batching}",
        inputs.join(",\n")
    )
}

/// Checks that `name` can name a model folder of a Triton repository.
pub fn check_name(name: &str) -> Result<()> {
    if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') {
        return Err(ExportError::invalid(
            ExportSetting::TritonName,
            format!("`{name}` is not a valid Triton model name"),
        ));
    }
    Ok(())
}

/// Writes `repo/name/config.pbtxt` and `repo/name/1/model.onnx` (atomically each); returns the
/// model's folder.
pub fn write_repository(repo: &Path, name: &str, onnx: &[u8], config: &str) -> Result<PathBuf> {
    check_name(name)?;
    let dir = repo.join(name);
    let version = dir.join("1");
    std::fs::create_dir_all(&version).map_err(|e| ExportError::Io {
        path: version.clone(),
        source: e,
    })?;
    gantry_models::atomic::write_file_atomic(&version.join("model.onnx"), onnx)?;
    gantry_models::atomic::write_file_atomic(&dir.join("config.pbtxt"), config.as_bytes())?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_names_inputs_outputs_and_batching() {
        let cfg = ModelConfig {
            image_size: 32,
            channels: 1,
            num_classes: Some(10),
            ..Default::default()
        };
        let text = config_pbtxt("digits", &cfg, OutputFormat::Uint8, 256);
        for needle in [
            "name: \"digits\"",
            "platform: \"onnxruntime_onnx\"",
            "max_batch_size: 256",
            "name: \"z\"",
            "dims: [ 100 ]",
            "name: \"label\"",
            "TYPE_INT64",
            "TYPE_UINT8",
            "dims: [ 32, 32, 1 ]",
            "dynamic_batching",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
    }

    /// Without Triton's batching the shapes carry the batch axis and no batcher is configured.
    #[test]
    fn max_batch_size_zero_writes_full_shapes_and_no_batcher() {
        let cfg = ModelConfig {
            image_size: 16,
            channels: 3,
            num_classes: Some(2),
            ..Default::default()
        };
        let text = config_pbtxt("g", &cfg, OutputFormat::Float, 0);
        for needle in [
            "max_batch_size: 0",
            "dims: [ -1, 100 ]",
            "dims: [ -1 ]",
            "dims: [ -1, 3, 16, 16 ]",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
        assert!(
            !text.contains("dynamic_batching") && !text.contains("reshape"),
            "{text}"
        );
    }
}
