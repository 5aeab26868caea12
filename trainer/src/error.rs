//! Error type of the trainer library.

use std::path::PathBuf;

use gantry_models::ConfigField;

/// A setting of a training run, evaluation or benchmark (programs map them to their own option
/// names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Setting {
    Dataset,
    DataDir,
    Out,
    Resume,
    Checkpoint,
    Images,
    ImageSize,
    Channels,
    BatchSize,
    Epochs,
    MaxSteps,
    LearningRate,
    DiscriminatorLearningRate,
    Beta1,
    DSteps,
    Beta2,
    LatentDim,
    GeneratorWidth,
    DiscriminatorWidth,
    Ema,
    Conditional,
    Device,
    SampleCount,
    Steps,
    Accumulate,
    EvalSamples,
    R1,
    R1Every,
    /// The reference of the Inception metrics.
    Reference,
}

impl Setting {
    /// Every setting, in declaration order (for checks that each has a name and a flag).
    pub const ALL: &'static [Setting] = &[
        Self::Dataset,
        Self::DataDir,
        Self::Out,
        Self::Resume,
        Self::Checkpoint,
        Self::Images,
        Self::ImageSize,
        Self::Channels,
        Self::BatchSize,
        Self::Epochs,
        Self::MaxSteps,
        Self::LearningRate,
        Self::DiscriminatorLearningRate,
        Self::Beta1,
        Self::DSteps,
        Self::Beta2,
        Self::LatentDim,
        Self::GeneratorWidth,
        Self::DiscriminatorWidth,
        Self::Ema,
        Self::Conditional,
        Self::Device,
        Self::SampleCount,
        Self::Steps,
        Self::Accumulate,
        Self::EvalSamples,
        Self::R1,
        Self::R1Every,
        Self::Reference,
    ];
}

impl std::fmt::Display for Setting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Dataset => "data set",
            Self::DataDir => "data folder",
            Self::Out => "output folder",
            Self::Resume => "run to resume",
            Self::Checkpoint => "checkpoint",
            Self::Images => "image folder",
            Self::ImageSize => "image size",
            Self::Channels => "channels",
            Self::BatchSize => "batch size",
            Self::Epochs => "epochs",
            Self::MaxSteps => "step budget",
            Self::LearningRate => "learning rate",
            Self::DiscriminatorLearningRate => "discriminator learning rate",
            Self::Beta1 => "Adam beta1",
            Self::DSteps => "discriminator steps per generator step",
            Self::Beta2 => "Adam beta2",
            Self::LatentDim => "latent size",
            Self::GeneratorWidth => "generator width",
            Self::DiscriminatorWidth => "discriminator width",
            Self::Ema => "EMA decay",
            Self::Conditional => "conditioning",
            Self::Device => "device",
            Self::SampleCount => "sample count",
            Self::Steps => "steps",
            Self::Accumulate => "gradient accumulation",
            Self::EvalSamples => "samples per evaluation",
            Self::R1 => "R1 penalty",
            Self::R1Every => "R1 interval",
            Self::Reference => "reference statistics",
        })
    }
}

impl From<ConfigField> for Setting {
    fn from(field: ConfigField) -> Self {
        match field {
            ConfigField::ImageSize => Self::ImageSize,
            ConfigField::Channels => Self::Channels,
            ConfigField::LatentDim => Self::LatentDim,
            ConfigField::GeneratorWidth => Self::GeneratorWidth,
            ConfigField::DiscriminatorWidth => Self::DiscriminatorWidth,
            _ => Self::Conditional,
        }
    }
}

/// What can go wrong loading data or training.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrainError {
    /// A data file or folder is missing, unreadable or malformed (the message says how).
    #[error("{}: {message}", path.display())]
    Data { path: PathBuf, message: String },
    /// A setting is out of range or does not fit the data or checkpoint.
    #[error("{setting}: {problem}")]
    Invalid { setting: Setting, problem: String },
    /// A fresh run was pointed at a folder that already holds (part of) a run.
    #[error("{} already holds a run ({}); resume it or choose another output folder", out.display(), found.join(", "))]
    RunExists {
        out: PathBuf,
        /// The run's outputs found there.
        found: Vec<&'static str>,
    },
    /// Another trainer is writing into the run folder (it holds its lock).
    #[error("{} is in use by another trainer (it holds the folder's lock); wait for it to end or choose another folder", out.display())]
    RunInUse { out: PathBuf },
    /// The model, its tensors or a checkpoint failed.
    #[error(transparent)]
    Model(gantry_models::ModelError),
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// Writing an output failed.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Data-parallel training went wrong: a rank failed, ranks disagree, replicas drifted.
    #[error("distributed training: {0}")]
    Distributed(String),
    /// ONNX Runtime (which runs the Inception network of the metrics) failed.
    #[error("ONNX Runtime: {0}")]
    Runtime(String),
    /// A loss became NaN or infinite.
    #[error("{what} is {value} at step {step}{on}: training diverged and stopped; {kept}")]
    NonFinite {
        /// Where, in data-parallel training (` on rank 1`); empty otherwise.
        on: String,
        what: &'static str,
        value: f32,
        step: u64,
        /// What is left on disk (the last checkpoint, or nothing).
        kept: String,
    },
}

impl From<gantry_data::DataError> for TrainError {
    /// Data errors keep their file and message.
    fn from(e: gantry_data::DataError) -> Self {
        match e {
            gantry_data::DataError::Data { path, message } => Self::Data { path, message },
            gantry_data::DataError::Io { path, source } => Self::Io { path, source },
            gantry_data::DataError::Candle(e) => Self::Candle(e),
            other => Self::Data {
                path: PathBuf::new(),
                message: other.to_string(),
            },
        }
    }
}

impl From<gantry_metrics::MetricsError> for TrainError {
    /// Metric errors keep their file, value and message.
    fn from(e: gantry_metrics::MetricsError) -> Self {
        use gantry_metrics::{MetricSetting, MetricsError};
        match e {
            MetricsError::Data { path, message } => Self::Data { path, message },
            MetricsError::Invalid { setting, problem } => Self::Invalid {
                setting: match setting {
                    MetricSetting::Dataset => Setting::Dataset,
                    MetricSetting::Images => Setting::Images,
                    MetricSetting::Reference => Setting::Reference,
                    _ => Setting::SampleCount,
                },
                problem,
            },
            MetricsError::Io { path, source } => Self::Io { path, source },
            MetricsError::Dataset(e) => e.into(),
            MetricsError::Model(e) => e.into(),
            MetricsError::Candle(e) => Self::Candle(e),
            MetricsError::Runtime(e) => {
                let mut text = e.to_string();
                let mut cause = std::error::Error::source(&e);
                while let Some(c) = cause {
                    text = format!("{text}: {c}");
                    cause = c.source();
                }
                Self::Runtime(text)
            }
            other => Self::Data {
                path: PathBuf::new(),
                message: other.to_string(),
            },
        }
    }
}

impl From<gantry_distributed::DistributedError> for TrainError {
    fn from(e: gantry_distributed::DistributedError) -> Self {
        use gantry_distributed::DistributedError;
        match e {
            DistributedError::Failed(message) => Self::Distributed(message),
            DistributedError::Data { path, message } => Self::Data { path, message },
            DistributedError::Candle(e) => Self::Candle(e),
            other => Self::Distributed(other.to_string()),
        }
    }
}

impl From<gantry_files::FileError> for TrainError {
    fn from(e: gantry_files::FileError) -> Self {
        match e {
            gantry_files::FileError::Io { path, source } => Self::Io { path, source },
            other => Self::Data {
                path: PathBuf::from("<image>"),
                message: other.to_string(),
            },
        }
    }
}

impl From<gantry_models::ModelError> for TrainError {
    /// Model config errors become errors of the setting that set the field.
    fn from(e: gantry_models::ModelError) -> Self {
        match e {
            gantry_models::ModelError::InvalidConfig { field, problem } => Self::Invalid {
                setting: field.into(),
                problem,
            },
            other => Self::Model(other),
        }
    }
}

impl TrainError {
    /// A data error on `path`.
    pub fn data(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Self::Data {
            path: path.into(),
            message: message.into(),
        }
    }

    /// An out-of-range `setting`.
    pub fn invalid(setting: Setting, problem: impl Into<String>) -> Self {
        Self::Invalid {
            setting,
            problem: problem.into(),
        }
    }

    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}

/// Result alias of this crate.
pub type Result<T, E = TrainError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;
    use gantry_models::ModelError;

    /// The setting and problem of an `Invalid` error (any other error fails the test).
    fn setting_and_problem(e: TrainError) -> (Setting, String) {
        match e {
            TrainError::Invalid { setting, problem } => (setting, problem),
            other => panic!("not an invalid setting: {other:?}"),
        }
    }

    /// A model configuration error names the trainer setting that set its field (the CLI then
    /// names the flag); the class fields are set by conditioning.
    #[test]
    fn model_config_errors_become_errors_of_the_setting_that_set_the_field() {
        let cases = [
            (ConfigField::ImageSize, Setting::ImageSize),
            (ConfigField::Channels, Setting::Channels),
            (ConfigField::LatentDim, Setting::LatentDim),
            (ConfigField::GeneratorWidth, Setting::GeneratorWidth),
            (ConfigField::DiscriminatorWidth, Setting::DiscriminatorWidth),
            (ConfigField::NumClasses, Setting::Conditional),
            (ConfigField::LabelEmbedDim, Setting::Conditional),
        ];
        for (field, expected) in cases {
            let e = ModelError::invalid(field, "is 0").into();
            assert_eq!(setting_and_problem(e), (expected, "is 0".into()), "{field}");
        }
    }

    /// Errors of the crates below keep their file, setting and message as the trainer's.
    #[test]
    fn errors_of_the_other_crates_keep_their_file_setting_and_message() {
        use gantry_metrics::{MetricSetting, MetricsError};
        let data = |path: &str| gantry_data::DataError::Data {
            path: path.into(),
            message: "truncated".into(),
        };
        let io = || std::io::Error::new(std::io::ErrorKind::NotFound, "gone");
        let is_data = |e: TrainError, want: &str| match e {
            TrainError::Data { path, message } => {
                assert_eq!(
                    (path.to_str().unwrap(), message.as_str()),
                    (want, "truncated")
                )
            }
            other => panic!("{want}: {other:?}"),
        };
        let is_io = |e: TrainError, want: &str| match e {
            TrainError::Io { path, .. } => assert_eq!(path.to_str().unwrap(), want),
            other => panic!("{want}: {other:?}"),
        };
        is_data(data("a.idx").into(), "a.idx");
        is_io(
            gantry_data::DataError::Io {
                path: "b.idx".into(),
                source: io(),
            }
            .into(),
            "b.idx",
        );
        is_data(MetricsError::Dataset(data("c.idx")).into(), "c.idx");
        is_data(
            MetricsError::Data {
                path: "ref.npz".into(),
                message: "truncated".into(),
            }
            .into(),
            "ref.npz",
        );
        is_io(
            MetricsError::Io {
                path: "out.json".into(),
                source: io(),
            }
            .into(),
            "out.json",
        );
        for (metric, expected) in [
            (MetricSetting::Dataset, Setting::Dataset),
            (MetricSetting::Images, Setting::Images),
            (MetricSetting::Reference, Setting::Reference),
            (MetricSetting::SampleCount, Setting::SampleCount),
        ] {
            let e = MetricsError::Invalid {
                setting: metric,
                problem: "too few".into(),
            }
            .into();
            assert_eq!(
                setting_and_problem(e),
                (expected, "too few".into()),
                "{metric:?}"
            );
        }
        let model = MetricsError::Model(ModelError::invalid(ConfigField::Channels, "is 2"));
        assert!(matches!(
            TrainError::from(model),
            TrainError::Invalid {
                setting: Setting::Channels,
                ..
            }
        ));
        use gantry_distributed::DistributedError;
        match DistributedError::Failed("rank 1 stopped".into()).into() {
            TrainError::Distributed(m) => assert_eq!(m, "rank 1 stopped"),
            other => panic!("{other:?}"),
        }
        is_data(
            DistributedError::Data {
                path: "shard".into(),
                message: "truncated".into(),
            }
            .into(),
            "shard",
        );
        is_io(
            gantry_files::FileError::Io {
                path: "grid.png".into(),
                source: io(),
            }
            .into(),
            "grid.png",
        );
    }

    /// Every setting reads as its own words in a message ("batch size: must be positive").
    #[test]
    fn every_setting_has_a_name_of_its_own() {
        let all = Setting::ALL;
        let names: std::collections::HashSet<String> = all.iter().map(|s| s.to_string()).collect();
        assert_eq!(
            names.len(),
            all.len(),
            "two settings share a name: {names:?}"
        );
        assert!(names.iter().all(|n| !n.trim().is_empty()), "{names:?}");
        assert_eq!(
            TrainError::invalid(Setting::BatchSize, "must be positive").to_string(),
            "batch size: must be positive"
        );
    }
}
