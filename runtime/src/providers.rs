//! Execution providers: TensorRT, CUDA and CPU, registered one by one so that every failure is
//! seen and reported, never silently swallowed.

use std::path::PathBuf;

use ort::ep::{self, ExecutionProvider};
use ort::session::builder::SessionBuilder;

use crate::error::{Result, RuntimeError};

/// An execution provider Gantry knows how to configure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Provider {
    TensorRt,
    Cuda,
    Cpu,
}

impl std::fmt::Display for Provider {
    /// ONNX Runtime's name of the provider.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.ort_name())
    }
}

impl Provider {
    /// ONNX Runtime's name of the provider.
    pub fn ort_name(self) -> &'static str {
        match self {
            Self::TensorRt => "TensorrtExecutionProvider",
            Self::Cuda => "CUDAExecutionProvider",
            Self::Cpu => "CPUExecutionProvider",
        }
    }

    /// Short name used on the command line.
    pub fn short_name(self) -> &'static str {
        match self {
            Self::TensorRt => "tensorrt",
            Self::Cuda => "cuda",
            Self::Cpu => "cpu",
        }
    }

    /// Every provider, in the order [`ProviderChoice::Auto`] tries them.
    pub const ALL: [Provider; 3] = [Provider::TensorRt, Provider::Cuda, Provider::Cpu];

    /// Whether the loaded ONNX Runtime library was built with this provider (call after a
    /// [`crate::Generator`] was built: the library loads then).
    pub fn is_compiled_in(self) -> bool {
        match self {
            Self::TensorRt => ep::TensorRT::is_available().unwrap_or(false),
            Self::Cuda => ep::CUDA::is_available().unwrap_or(false),
            Self::Cpu => true,
        }
    }
}

/// Which providers to try.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ProviderChoice {
    /// TensorRT, then CUDA, then CPU: the first that registers wins; failures are logged.
    #[default]
    Auto,
    /// Exactly this provider; failing to register it is an error.
    Only(Provider),
}

impl std::str::FromStr for ProviderChoice {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "tensorrt" | "trt" => Ok(Self::Only(Provider::TensorRt)),
            "cuda" => Ok(Self::Only(Provider::Cuda)),
            "cpu" => Ok(Self::Only(Provider::Cpu)),
            other => Err(format!(
                "unknown execution provider `{other}` (expected auto, tensorrt, cuda or cpu)"
            )),
        }
    }
}

/// Provider settings: start from `ProviderOptions::default()` and set fields.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ProviderOptions {
    /// GPU ordinal for CUDA and TensorRT.
    pub device_id: i32,
    /// TensorRT engine cache folder (engines are built once per model and shape, then reused).
    pub trt_cache: Option<PathBuf>,
    /// Let TensorRT use fp16 kernels.
    pub trt_fp16: bool,
    /// Let TensorRT use int8 kernels (needed for the QDQ nodes of an int8 model; the generator
    /// turns it on by itself for a model whose `gantry.precision` is int8).
    pub trt_int8: bool,
    /// cuDNN convolution algorithm search: exhaustive benchmarking when true, heuristics otherwise.
    pub cudnn_exhaustive: bool,
    /// Allow TF32 tensor-core math in CUDA convolutions.
    pub tf32: bool,
}

impl Default for ProviderOptions {
    fn default() -> Self {
        Self {
            device_id: 0,
            trt_cache: None,
            trt_fp16: true,
            trt_int8: false,
            cudnn_exhaustive: true,
            tf32: true,
        }
    }
}

/// What happened when the providers were registered.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProviderReport {
    /// The provider the session runs on (CPU also takes any node the others cannot).
    pub active: Provider,
    /// Providers tried before `active` and why each could not be used.
    pub skipped: Vec<(Provider, String)>,
}

impl std::fmt::Display for ProviderReport {
    /// `CPUExecutionProvider (not used: TensorRT, CUDA: <reason>)`, reasons shared by several
    /// providers given once.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.active.ort_name())?;
        let mut groups: Vec<(Vec<&str>, &str)> = Vec::new();
        for (p, why) in &self.skipped {
            match groups.iter_mut().find(|(_, w)| w == why) {
                Some((names, _)) => names.push(p.ort_name()),
                None => groups.push((vec![p.ort_name()], why)),
            }
        }
        for (names, why) in groups {
            write!(f, " ({} not used: {why})", names.join(", "))?;
        }
        Ok(())
    }
}

fn try_register(
    provider: Provider,
    builder: &mut SessionBuilder,
    opts: &ProviderOptions,
) -> std::result::Result<(), String> {
    if !provider.is_compiled_in() {
        return Err("not in this ONNX Runtime build; GPU providers need the library of the onnxruntime-gpu package".into());
    }
    let result = match provider {
        Provider::TensorRt => {
            let mut trt = ep::TensorRT::default()
                .with_device_id(opts.device_id)
                .with_fp16(opts.trt_fp16)
                .with_int8(opts.trt_int8);
            if let Some(dir) = &opts.trt_cache {
                std::fs::create_dir_all(dir)
                    .map_err(|e| format!("engine cache {}: {e}", dir.display()))?;
                trt = trt
                    .with_engine_cache(true)
                    .with_engine_cache_path(dir.display().to_string())
                    .with_timing_cache(true)
                    .with_timing_cache_path(dir.display().to_string());
            }
            trt.register(builder)
        }
        Provider::Cuda => {
            let search = if opts.cudnn_exhaustive {
                ep::cuda::ConvAlgorithmSearch::Exhaustive
            } else {
                ep::cuda::ConvAlgorithmSearch::Heuristic
            };
            ep::CUDA::default()
                .with_device_id(opts.device_id)
                .with_conv_algorithm_search(search)
                .with_tf32(opts.tf32)
                .register(builder)
        }
        Provider::Cpu => ep::CPU::default().register(builder),
    };
    result.map_err(|e| e.to_string())
}

/// Registers providers on `builder` as `choice` asks and reports which one is active.
pub(crate) fn register(
    builder: &mut SessionBuilder,
    choice: ProviderChoice,
    opts: &ProviderOptions,
) -> Result<ProviderReport> {
    match choice {
        ProviderChoice::Only(p) => {
            try_register(p, builder, opts).map_err(|message| RuntimeError::Provider {
                provider: p,
                message,
            })?;
            Ok(ProviderReport {
                active: p,
                skipped: Vec::new(),
            })
        }
        ProviderChoice::Auto => {
            let mut skipped = Vec::new();
            for p in [Provider::TensorRt, Provider::Cuda] {
                match try_register(p, builder, opts) {
                    Ok(()) => return Ok(ProviderReport { active: p, skipped }),
                    Err(why) => skipped.push((p, why)),
                }
            }
            Ok(ProviderReport {
                active: Provider::Cpu,
                skipped,
            })
        }
    }
}
