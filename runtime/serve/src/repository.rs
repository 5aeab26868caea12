//! Where models come from: one ONNX file, or a Triton model repository (the layout
//! `exporter --triton-repo` writes: `<name>/config.pbtxt`, `<name>/<version>/model.onnx`), whose
//! `max_batch_size`, `dynamic_batching` and `version_policy` are honoured as Triton reads them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use gantry_runtime::{Generator, RuntimeError};

use crate::batcher::{BatchPolicy, DEFAULT_MAX_QUEUE_SIZE};
use crate::error::LoadError;
use crate::model::{Model, Models};

/// One model version to load.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ModelSource {
    pub name: String,
    pub version: String,
    pub path: PathBuf,
    pub policy: BatchPolicy,
}

impl ModelSource {
    /// A single ONNX file served as `name` (default: the file's stem), version 1.
    pub fn file(path: &Path, name: Option<&str>, policy: BatchPolicy) -> Result<Self, LoadError> {
        let name = match name {
            Some(n) => n.to_string(),
            None => path
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or("generator")
                .to_string(),
        };
        check_name(path, &name)?;
        Ok(Self {
            name,
            version: "1".into(),
            path: path.to_path_buf(),
            policy,
        })
    }
}

fn check_name(path: &Path, name: &str) -> Result<(), LoadError> {
    let ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(repo_error(
            path,
            format!("`{name}` is not a usable model name (letters, digits, `_`, `-`, `.`)"),
        ))
    }
}

fn repo_error(path: &Path, message: impl Into<String>) -> LoadError {
    LoadError::Repository {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// Every model version of a Triton model repository. Models without a `config.pbtxt` get
/// `defaults`; a configuration Gantry cannot serve is an error naming its file.
pub fn scan_repository(dir: &Path, defaults: BatchPolicy) -> Result<Vec<ModelSource>, LoadError> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| repo_error(dir, format!("cannot read the model repository: {e}")))?;
    let mut model_dirs: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir() && !is_hidden(p))
        .collect();
    model_dirs.sort();
    let mut sources = Vec::new();
    for model_dir in model_dirs {
        sources.extend(scan_model(&model_dir, defaults)?);
    }
    if sources.is_empty() {
        return Err(repo_error(
            dir,
            "no models: expected <name>/config.pbtxt and <name>/<version>/model.onnx (as `exporter --triton-repo` writes)",
        ));
    }
    Ok(sources)
}

fn is_hidden(p: &Path) -> bool {
    p.file_name()
        .and_then(|n| n.to_str())
        .is_none_or(|n| n.starts_with('.'))
}

/// The settings of one model's `config.pbtxt` that Gantry uses.
#[derive(Debug, Clone, PartialEq)]
struct ServedConfig {
    policy: BatchPolicy,
    filename: String,
    versions: VersionPolicy,
}

#[derive(Debug, Clone, PartialEq)]
enum VersionPolicy {
    Latest(usize),
    All,
    Specific(Vec<u64>),
}

fn scan_model(dir: &Path, defaults: BatchPolicy) -> Result<Vec<ModelSource>, LoadError> {
    let name = dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_string();
    check_name(dir, &name)?;
    let config_path = dir.join("config.pbtxt");
    let config = if config_path.exists() {
        let typed = gantry_triton::read(&config_path).map_err(|e| LoadError::Repository {
            path: config_path.clone(),
            message: match e.line {
                Some(line) => format!("line {line}: {}", e.message),
                None => e.message,
            },
        })?;
        served_config(&typed, &name, defaults).map_err(|m| repo_error(&config_path, m))?
    } else {
        ServedConfig {
            policy: defaults,
            filename: "model.onnx".into(),
            versions: VersionPolicy::Latest(1),
        }
    };
    let mut available: Vec<u64> = std::fs::read_dir(dir)
        .map_err(|e| repo_error(dir, format!("cannot read: {e}")))?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u64>().ok()))
        .filter(|v| dir.join(v.to_string()).join(&config.filename).is_file())
        .collect();
    available.sort_unstable();
    let chosen: Vec<u64> = match &config.versions {
        VersionPolicy::All => available.clone(),
        VersionPolicy::Latest(n) => available.iter().rev().take(*n).rev().copied().collect(),
        VersionPolicy::Specific(wanted) => {
            if let Some(missing) = wanted.iter().find(|v| !available.contains(v)) {
                return Err(repo_error(
                    dir,
                    format!(
                        "version_policy names version {missing}, which has no {}",
                        config.filename
                    ),
                ));
            }
            wanted.clone()
        }
    };
    if chosen.is_empty() {
        return Err(repo_error(
            dir,
            format!(
                "no version folder with a {} (expected {}/1/{})",
                config.filename,
                dir.display(),
                config.filename
            ),
        ));
    }
    Ok(chosen
        .into_iter()
        .map(|v| ModelSource {
            name: name.clone(),
            version: v.to_string(),
            path: dir.join(v.to_string()).join(&config.filename),
            policy: config.policy,
        })
        .collect())
}

/// The settings Gantry honours of a `config.pbtxt`, checked against what it can serve.
fn served_config(
    config: &gantry_triton::ModelConfig,
    dir_name: &str,
    defaults: BatchPolicy,
) -> Result<ServedConfig, String> {
    use gantry_triton::model_version_policy::PolicyChoice;
    use gantry_triton::proto::model_config::SchedulingChoice;
    if !config.name.is_empty() && config.name != dir_name {
        return Err(format!(
            "the name `{}` differs from its folder `{dir_name}`",
            config.name
        ));
    }
    match (config.platform.as_str(), config.backend.as_str()) {
        ("" | "onnxruntime_onnx", "" | "onnxruntime") => {}
        (p, b) => {
            return Err(format!(
                "platform {p:?} / backend {b:?}: Gantry serves ONNX models (onnxruntime_onnx)"
            ))
        }
    }
    let max_batch_size = usize::try_from(config.max_batch_size)
        .map_err(|_| format!("max_batch_size {} is negative", config.max_batch_size))?;
    let mut policy = BatchPolicy {
        max_batch_size,
        dynamic: false,
        max_queue_delay: Duration::ZERO,
        max_queue_size: defaults.max_queue_size,
    };
    if let Some(SchedulingChoice::DynamicBatching(db)) = &config.scheduling_choice {
        if max_batch_size == 0 {
            return Err("dynamic_batching needs max_batch_size > 0 (as in Triton)".into());
        }
        policy.dynamic = true;
        policy.max_queue_delay = Duration::from_micros(db.max_queue_delay_microseconds);
        if let Some(size) = db
            .default_queue_policy
            .as_ref()
            .map(|q| q.max_queue_size as usize)
            .filter(|&s| s > 0)
        {
            policy.max_queue_size = size;
        }
    }
    if policy.max_queue_size == 0 {
        policy.max_queue_size = DEFAULT_MAX_QUEUE_SIZE;
    }
    let filename = match config.default_model_filename.as_str() {
        "" => "model.onnx".to_string(),
        f => f.to_string(),
    };
    if filename.contains(['/', '\\']) || filename.starts_with('.') {
        return Err(format!(
            "default_model_filename `{filename}` must be a plain file name"
        ));
    }
    let versions = match config
        .version_policy
        .as_ref()
        .and_then(|p| p.policy_choice.as_ref())
    {
        None => VersionPolicy::Latest(1),
        Some(PolicyChoice::All(_)) => VersionPolicy::All,
        Some(PolicyChoice::Latest(latest)) => {
            // Triton's default for an unset count is the latest one.
            let n = if latest.num_versions == 0 {
                1
            } else {
                latest.num_versions as usize
            };
            VersionPolicy::Latest(n)
        }
        Some(PolicyChoice::Specific(specific)) => {
            let mut versions = Vec::new();
            for &v in &specific.versions {
                versions.push(
                    u64::try_from(v)
                        .map_err(|_| format!("version_policy: {v} is not a version number"))?,
                );
            }
            if versions.is_empty() {
                return Err("version_policy specific names no versions".into());
            }
            versions.sort_unstable();
            versions.dedup();
            VersionPolicy::Specific(versions)
        }
    };
    Ok(ServedConfig {
        policy,
        filename,
        versions,
    })
}

/// Loads every source with `load` (the caller's choice of providers and threads) and starts
/// its batching thread.
pub fn load_models(
    sources: &[ModelSource],
    load: impl Fn(&Path) -> Result<Generator, RuntimeError>,
) -> Result<Models, LoadError> {
    let mut models = Models::default();
    for s in sources {
        let generator = load(&s.path).map_err(|source| LoadError::Model {
            name: s.name.clone(),
            version: s.version.clone(),
            source,
        })?;
        let model = Model::new(&s.name, &s.version, generator, s.policy)
            .map_err(|e| repo_error(&s.path, format!("cannot start its batching thread: {e}")))?;
        models.insert(model).map_err(|m| repo_error(&s.path, m))?;
    }
    Ok(models)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> BatchPolicy {
        BatchPolicy::dynamic(64, Duration::from_millis(2))
    }

    fn touch(path: &Path) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, b"onnx").unwrap();
    }

    #[test]
    fn reads_triton_settings_and_version_policies() {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path();
        std::fs::create_dir_all(repo.join("digits")).unwrap();
        std::fs::write(
            repo.join("digits/config.pbtxt"),
            "name: \"digits\"\nplatform: \"onnxruntime_onnx\"\nmax_batch_size: 32\ndynamic_batching { max_queue_delay_microseconds: 500 default_queue_policy { max_queue_size: 7 } }\nversion_policy: { all { } }\n",
        )
        .unwrap();
        for v in ["1", "2", "10"] {
            touch(&repo.join("digits").join(v).join("model.onnx"));
        }
        std::fs::create_dir_all(repo.join("faces/3")).unwrap(); // no model file: not a version
        touch(&repo.join("faces/1/model.onnx"));
        touch(&repo.join("faces/2/model.onnx"));
        std::fs::write(repo.join("faces/config.pbtxt"), "max_batch_size: 0\n").unwrap();
        std::fs::create_dir_all(repo.join(".hidden")).unwrap();
        let sources = scan_repository(repo, defaults()).unwrap();
        let listed: Vec<(&str, &str)> = sources
            .iter()
            .map(|s| (s.name.as_str(), s.version.as_str()))
            .collect();
        assert_eq!(
            listed,
            [
                ("digits", "1"),
                ("digits", "2"),
                ("digits", "10"),
                ("faces", "2")
            ]
        );
        let digits = &sources[0].policy;
        assert_eq!((digits.max_batch_size, digits.dynamic), (32, true));
        assert_eq!(digits.max_queue_delay, Duration::from_micros(500));
        assert_eq!(digits.max_queue_size, 7);
        let faces = &sources[3].policy;
        assert_eq!(
            (faces.max_batch_size, faces.dynamic),
            (0, false),
            "Triton's no-batching model"
        );
    }

    #[test]
    fn unusable_repositories_are_named_errors() {
        // (config, what the error says, whether it names config.pbtxt itself)
        let cases: &[(&str, &str, bool)] = &[
            ("name: \"other\"\n", "differs from its folder", true),
            (
                "platform: \"tensorflow_savedmodel\"\n",
                "Gantry serves ONNX",
                true,
            ),
            (
                "max_batch_size: 0\ndynamic_batching { }\n",
                "needs max_batch_size > 0",
                true,
            ),
            ("max_batch_size: -1\n", "max_batch_size", true),
            (
                "version_policy: { specific { versions: [4] } }\n",
                "version 4",
                false,
            ),
            ("max_batch_size: {\n", "line 1", true),
            (
                "name: \"m\"\nmax_bach_size: 8\n",
                "line 2: field 'max_bach_size' not found",
                true,
            ),
            ("max_batch_size: 8\nmax_batch_size: 4\n", "line 2", true),
            ("max_batch_size: \"8\"\n", "line 1", true),
        ];
        for (config, want, names_file) in cases {
            let dir = tempfile::tempdir().unwrap();
            touch(&dir.path().join("m/1/model.onnx"));
            std::fs::write(dir.path().join("m/config.pbtxt"), config).unwrap();
            let e = scan_repository(dir.path(), defaults())
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{config}: {e}");
            assert_eq!(e.contains("config.pbtxt"), *names_file, "{config}: {e}");
            assert!(
                e.contains(&dir.path().join("m").display().to_string()),
                "names the model: {e}"
            );
        }
        let empty = tempfile::tempdir().unwrap();
        let e = scan_repository(empty.path(), defaults())
            .unwrap_err()
            .to_string();
        assert!(e.contains("no models"), "{e}");
        let no_versions = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(no_versions.path().join("m")).unwrap();
        let e = scan_repository(no_versions.path(), defaults())
            .unwrap_err()
            .to_string();
        assert!(e.contains("no version folder"), "{e}");
    }
}
