//! Gantry's runtime: generate images from a GAN generator ONNX file with ONNX Runtime
//! (TensorRT, CUDA or CPU execution providers), with no training stack involved.
//!
//! ```no_run
//! use gantry_runtime::{Generator, ProviderChoice};
//!
//! let generator = Generator::builder()
//!     .model("generator.onnx")
//!     .providers(ProviderChoice::Auto)
//!     .build()?;
//! println!("running on {}", generator.providers().active.ort_name());
//! for (i, img) in generator.generate(16, 42)?.iter().enumerate() {
//!     img.save(format!("sample_{i}.png")).unwrap();
//! }
//! # Ok::<(), gantry_runtime::RuntimeError>(())
//! ```
//!
//! Works with any DCGAN-style generator: input `[N, nz]` or `[N, nz, 1, 1]` float32 (plus an
//! int64 `[N]` label for conditional models), output NCHW float in [-1, 1] or NHWC uint8.
//! Gantry's `gantry.*` metadata is used when present.

pub mod commands;
pub mod error;
pub mod generator;
mod lanes;
pub mod latent;
pub mod library;
pub mod output;
pub mod providers;
mod session;
pub mod signature;

pub use error::{Result, RuntimeError};
pub use generator::{GenerateRequest, Generator, GeneratorBuilder, ImageBatch, MAX_IMAGES};
pub use latent::{slerp, LatentStream};
pub use providers::{Provider, ProviderChoice, ProviderOptions, ProviderReport};
pub use session::GraphOptimization;
pub use signature::{ModelInfo, OutputLayout, Signature};
