//! Triton Inference Server's model configuration (`config.pbtxt`), typed: the subset of Triton's
//! `model_config.proto` that Gantry writes or honours ([`proto`], compiled with prost), read and
//! written in protobuf text format by prost-reflect. The exporter writes configurations with
//! [`to_text`]; the server reads them with [`parse`], which refuses an unknown or misspelt
//! field, a scalar set twice, or a value of the wrong type, naming the file and line.

#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use miette::Diagnostic;
use prost::Message;
use prost_reflect::text_format::FormatOptions;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor};

/// The configuration messages (Triton's names and field numbers).
#[allow(clippy::all, missing_docs)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/inference.rs"));
}

pub use proto::{
    model_version_policy, DataType, ModelConfig, ModelDynamicBatching, ModelInput, ModelOutput,
    ModelParameter, ModelQueuePolicy, ModelTensorReshape, ModelVersionPolicy,
};

/// A configuration that cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("{}{}: {message}", path.display(), line.map(|l| format!(" line {l}")).unwrap_or_default())]
pub struct ConfigError {
    /// The file.
    pub path: PathBuf,
    /// The line of the problem, when known.
    pub line: Option<usize>,
    /// What is wrong.
    pub message: String,
}

fn descriptor() -> &'static MessageDescriptor {
    static DESCRIPTOR: OnceLock<MessageDescriptor> = OnceLock::new();
    DESCRIPTOR.get_or_init(|| {
        let bytes = include_bytes!(concat!(env!("OUT_DIR"), "/model_config.bin"));
        DescriptorPool::decode(bytes.as_ref())
            .expect("the compiled descriptor set decodes")
            .get_message_by_name("inference.ModelConfig")
            .expect("the descriptor set holds inference.ModelConfig")
    })
}

/// `text` with the optional `:` written between a field name and a `[` list (`input [ ... ]`,
/// as Triton's own examples write it), which prost-reflect's parser requires; strings and
/// comments are left alone and lines keep their numbers.
fn with_list_colons(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 16);
    let mut chars = text.chars().peekable();
    let mut last_word_end = false;
    while let Some(c) = chars.next() {
        match c {
            '"' | '\'' => {
                out.push(c);
                while let Some(d) = chars.next() {
                    out.push(d);
                    if d == '\\' {
                        out.extend(chars.next());
                    } else if d == c || d == '\n' {
                        break;
                    }
                }
                last_word_end = false;
            }
            '#' => {
                out.push(c);
                while let Some(&d) = chars.peek() {
                    if d == '\n' {
                        break;
                    }
                    out.push(d);
                    chars.next();
                }
            }
            '[' if last_word_end => {
                out.push_str(": [");
                last_word_end = false;
            }
            c if c.is_whitespace() => out.push(c),
            c => {
                out.push(c);
                last_word_end = c.is_alphanumeric() || c == '_';
            }
        }
    }
    out
}

/// Reads the text-format configuration `text` (of the file `path`, for messages).
pub fn parse(text: &str, path: &Path) -> Result<ModelConfig, ConfigError> {
    let text = &with_list_colons(text);
    let message = DynamicMessage::parse_text_format(descriptor().clone(), text).map_err(|e| {
        let line = e
            .labels()
            .and_then(|mut labels| labels.next())
            .map(|label| text[..label.offset().min(text.len())].matches('\n').count() + 1);
        ConfigError {
            path: path.to_path_buf(),
            line,
            message: e.to_string(),
        }
    })?;
    message
        .transcode_to::<ModelConfig>()
        .map_err(|e| ConfigError {
            path: path.to_path_buf(),
            line: None,
            message: e.to_string(),
        })
}

/// Reads the configuration file `path`.
pub fn read(path: &Path) -> Result<ModelConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        path: path.to_path_buf(),
        line: None,
        message: e.to_string(),
    })?;
    parse(&text, path)
}

/// `config` in protobuf text format, one field a line (what Triton reads as `config.pbtxt`).
pub fn to_text(config: &ModelConfig) -> String {
    let message = DynamicMessage::decode(descriptor().clone(), config.encode_to_vec().as_slice())
        .expect("a ModelConfig re-decodes under its own descriptor");
    let mut text = message.to_text_format_with_options(&FormatOptions::new().pretty(true));
    if !text.ends_with('\n') {
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRITON_STYLE: &str = r#"
# a comment
name: "digits"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [
  {
    name: "z"
    data_type: TYPE_FP32
    dims: [ 100 ]
  },
  {
    name: "label"
    data_type: TYPE_INT64
    dims: [ 1 ]
    reshape: { shape: [ ] }
  }
]
output [ { name: "image", data_type: TYPE_FP32, dims: [ 1, 32, 32 ] } ]
dynamic_batching {
  max_queue_delay_microseconds: 100
  default_queue_policy { max_queue_size: 7 }
}
version_policy: { specific { versions: [ 1, 3 ] } }
instance_group [ { kind: KIND_CPU, count: 2 } ]
parameters { key: "gantry.latent_dim" value { string_value: "100" } }
"#;

    #[test]
    fn reads_a_triton_configuration_into_typed_fields() {
        let c = parse(TRITON_STYLE, Path::new("config.pbtxt")).unwrap();
        assert_eq!((c.name.as_str(), c.max_batch_size), ("digits", 8));
        assert_eq!(c.input.len(), 2);
        assert_eq!(c.input[0].data_type(), DataType::TypeFp32);
        assert_eq!(c.input[0].dims, vec![100]);
        assert_eq!(
            c.input[1].reshape.as_ref().unwrap().shape,
            Vec::<i64>::new()
        );
        assert_eq!(c.output[0].dims, vec![1, 32, 32]);
        let Some(proto::model_config::SchedulingChoice::DynamicBatching(db)) = &c.scheduling_choice
        else {
            panic!("no dynamic batching: {c:?}");
        };
        assert_eq!(db.max_queue_delay_microseconds, 100);
        assert_eq!(db.default_queue_policy.as_ref().unwrap().max_queue_size, 7);
        let Some(model_version_policy::PolicyChoice::Specific(s)) = c
            .version_policy
            .as_ref()
            .and_then(|p| p.policy_choice.clone())
        else {
            panic!("no specific policy");
        };
        assert_eq!(s.versions, vec![1, 3]);
        assert_eq!(c.parameters["gantry.latent_dim"].string_value, "100");
    }

    #[test]
    fn written_text_reads_back_to_the_same_configuration() {
        let c = parse(TRITON_STYLE, Path::new("config.pbtxt")).unwrap();
        let text = to_text(&c);
        assert!(
            text.contains("name: \"digits\"") && text.contains("TYPE_FP32"),
            "{text}"
        );
        assert_eq!(parse(&text, Path::new("again")).unwrap(), c);
    }

    #[test]
    fn written_text_ends_with_one_newline_and_files_read_as_their_text() {
        let c = parse(TRITON_STYLE, Path::new("config.pbtxt")).unwrap();
        let text = to_text(&c);
        assert!(text.ends_with('\n') && !text.ends_with("\n\n"), "{text:?}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.pbtxt");
        std::fs::write(&path, TRITON_STYLE).unwrap();
        assert_eq!(read(&path).unwrap(), c);
        let missing = read(&dir.path().join("none.pbtxt")).unwrap_err();
        assert!(missing.to_string().contains("none.pbtxt"), "{missing}");
    }

    /// A list without `:` gets one only outside strings and comments: a `[` in a string with an
    /// escaped quote stays as written, and a comment whose quote and backslash would otherwise
    /// swallow the next line leaves that line's list alone.
    #[test]
    fn list_colons_skip_strings_and_comments() {
        let text = "name: \"xy [z\\\" [w\"\n# it's C:\\\ninput [ { name: \"z\" data_type: TYPE_FP32 dims: [ 4 ] } ]\n";
        let c = parse(text, Path::new("config.pbtxt")).unwrap();
        assert_eq!(c.name, "xy [z\" [w");
        assert_eq!(c.input.len(), 1);
        assert_eq!(c.input[0].dims, vec![4]);
    }

    #[test]
    fn misspelt_repeated_and_mistyped_fields_are_refused_with_file_and_line() {
        for (text, line, want) in [
            ("name: \"m\"\nmax_bach_size: 8\n", 2, "max_bach_size"),
            (
                "max_batch_size: 8\nmax_batch_size: 4\n",
                2,
                "max_batch_size",
            ),
            ("name: \"m\"\n\nmax_batch_size: \"eight\"\n", 3, "expected"),
            (
                "input [ { name: \"z\" data_type: TYPE_FLOAT32 } ]\n",
                1,
                "TYPE_FLOAT32",
            ),
            (
                "dynamic_batching { max_queue_delay_microseconds: -1 }\n",
                1,
                "",
            ),
            (
                "name: \"m\"\ninstance_group [ { kind: KIND_CPU count: 2 rate_limiter { } } ]\n",
                2,
                "rate_limiter",
            ),
        ] {
            let e = parse(text, Path::new("models/m/config.pbtxt")).unwrap_err();
            let shown = e.to_string();
            assert!(
                shown.starts_with(&format!("models/m/config.pbtxt line {line}: "))
                    && shown.contains(want),
                "{text:?}: {shown}"
            );
        }
    }

    /// Any text, valid or an edit of a Triton-style configuration, is read or refused naming
    /// the file, never a panic or a hang; and what is read, written back with [`to_text`], reads
    /// back the same (so what the exporter writes is what the server reads).
    #[test]
    fn fuzz_config_text() {
        let path = Path::new("fuzz/config.pbtxt");
        let first = parse(TRITON_STYLE, path).unwrap();
        assert_eq!(parse(&to_text(&first), path).unwrap(), first);
        gantry_fuzz::target!(|input| {
            let text = gantry_fuzz::fuzzed_file(TRITON_STYLE.as_bytes(), input);
            let Ok(text) = std::str::from_utf8(&text) else {
                return;
            };
            match parse(text, path) {
                Ok(config) => {
                    let again = parse(&to_text(&config), path);
                    assert_eq!(again.as_ref().ok(), Some(&config), "{text:?} -> {again:?}");
                }
                Err(e) => assert!(e.to_string().starts_with("fuzz/config.pbtxt"), "{e}"),
            }
        });
    }
}
