//! A Triton Inference Server model repository entry for the exported model.

use std::path::{Path, PathBuf};

use gantry_models::ModelConfig;
use gantry_triton::proto::model_config::SchedulingChoice;
use gantry_triton::{self as triton, DataType};

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
    gantry_triton::to_text(&model_config(name, cfg, output, max_batch_size))
}

/// The typed configuration behind [`config_pbtxt`].
pub fn model_config(
    name: &str,
    cfg: &ModelConfig,
    output: OutputFormat,
    max_batch_size: usize,
) -> triton::ModelConfig {
    let (c, s) = (cfg.channels as i64, cfg.image_size as i64);
    let batched = max_batch_size > 0;
    // The dims Triton sees: without its own batch axis, the model's must be written out.
    let dims = |rest: &[i64]| -> Vec<i64> {
        if batched {
            rest.to_vec()
        } else {
            std::iter::once(-1).chain(rest.iter().copied()).collect()
        }
    };
    let (out_type, out_dims) = match output {
        OutputFormat::Float => (DataType::TypeFp32, dims(&[c, s, s])),
        OutputFormat::Uint8 => (DataType::TypeUint8, dims(&[s, s, c])),
    };
    let mut input = vec![triton::ModelInput {
        name: INPUT_Z.into(),
        data_type: DataType::TypeFp32.into(),
        dims: dims(&[cfg.latent_dim as i64]),
        ..Default::default()
    }];
    if cfg.num_classes.is_some() {
        input.push(if batched {
            // The model's label input is [N]; Triton batches a per-request [1] and drops that axis.
            triton::ModelInput {
                name: INPUT_LABEL.into(),
                data_type: DataType::TypeInt64.into(),
                dims: vec![1],
                reshape: Some(triton::ModelTensorReshape { shape: vec![] }),
                ..Default::default()
            }
        } else {
            triton::ModelInput {
                name: INPUT_LABEL.into(),
                data_type: DataType::TypeInt64.into(),
                dims: vec![-1],
                ..Default::default()
            }
        });
    }
    triton::ModelConfig {
        name: name.into(),
        platform: "onnxruntime_onnx".into(),
        max_batch_size: i32::try_from(max_batch_size).unwrap_or(i32::MAX),
        input,
        output: vec![triton::ModelOutput {
            name: OUTPUT_IMAGE.into(),
            data_type: out_type.into(),
            dims: out_dims,
            ..Default::default()
        }],
        scheduling_choice: batched.then(|| {
            SchedulingChoice::DynamicBatching(triton::ModelDynamicBatching {
                max_queue_delay_microseconds: 100,
                ..Default::default()
            })
        }),
        ..Default::default()
    }
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
    gantry_files::write_file_atomic(&version.join("model.onnx"), onnx)?;
    gantry_files::write_file_atomic(&dir.join("config.pbtxt"), config.as_bytes())?;
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
        let config = model_config("digits", &cfg, OutputFormat::Uint8, 256);
        assert_eq!(
            (config.name.as_str(), config.platform.as_str()),
            ("digits", "onnxruntime_onnx")
        );
        assert_eq!(config.max_batch_size, 256);
        let inputs: Vec<(&str, DataType, &[i64])> = config
            .input
            .iter()
            .map(|i| (i.name.as_str(), i.data_type(), i.dims.as_slice()))
            .collect();
        assert_eq!(
            inputs,
            [
                ("z", DataType::TypeFp32, &[100][..]),
                ("label", DataType::TypeInt64, &[1][..])
            ]
        );
        assert_eq!(
            config.input[1].reshape.as_ref().unwrap().shape,
            Vec::<i64>::new()
        );
        assert_eq!(config.output[0].data_type(), DataType::TypeUint8);
        assert_eq!(config.output[0].dims, vec![32, 32, 1]);
        assert!(matches!(
            config.scheduling_choice,
            Some(SchedulingChoice::DynamicBatching(_))
        ));
        let text = config_pbtxt("digits", &cfg, OutputFormat::Uint8, 256);
        let back = gantry_triton::parse(&text, std::path::Path::new("config.pbtxt")).unwrap();
        assert_eq!(
            back, config,
            "the text reads back as the configuration:\n{text}"
        );
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
        let config = model_config("g", &cfg, OutputFormat::Float, 0);
        assert_eq!(config.max_batch_size, 0);
        assert_eq!(config.input[0].dims, vec![-1, 100]);
        assert_eq!(config.input[1].dims, vec![-1]);
        assert!(config.input[1].reshape.is_none());
        assert_eq!(config.output[0].dims, vec![-1, 3, 16, 16]);
        assert!(config.scheduling_choice.is_none());
        let text = config_pbtxt("g", &cfg, OutputFormat::Float, 0);
        assert!(
            !text.contains("dynamic_batching") && !text.contains("reshape"),
            "{text}"
        );
        assert_eq!(
            gantry_triton::parse(&text, std::path::Path::new("c")).unwrap(),
            config
        );
    }
}
