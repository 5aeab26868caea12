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
//! println!("running on {}", generator.providers().active);
//! for (i, img) in generator.generate(16, 42)?.iter().enumerate() {
//!     gantry_runtime::output::save_png(img, format!("sample_{i}.png").as_ref())?;
//! }
//! # Ok::<(), gantry_runtime::RuntimeError>(())
//! ```
//!
//! Works with any DCGAN-style generator: input `[N, nz]` or `[N, nz, 1, 1]` float32 (plus an
//! int64 `[N]` label for conditional models), output NCHW float in [-1, 1] or NHWC uint8.
//! Gantry's `gantry.*` metadata is used when present.
//!
//! The library depends on ONNX Runtime (loaded at run time), `ndarray` and `image`; the
//! `runtime` command line is a separate package (`gantry-runtime-cli`).

#![deny(unsafe_code)] // `deny`, not `forbid`: ndarray's `s!` allows it inside its expansion

mod builder;
mod error;
mod generator;
mod image_batch;
mod lanes;
mod latent;
pub mod library;
pub mod output;
mod providers;
mod request;
mod session;
mod signature;
mod tensor_model;

pub use builder::GeneratorBuilder;
pub use error::{RequestField, Result, RuntimeError, SourceError};
pub use generator::Generator;
pub use image_batch::ImageBatch;
pub use latent::{slerp, LatentStream};
pub use providers::{Provider, ProviderChoice, ProviderOptions, ProviderReport};
pub use request::{
    GenerateRequest, DEFAULT_BATCH_SIZE, MAX_IMAGES, MAX_INTERPOLATION_STEPS, MIN_TRUNCATION,
};
pub use session::GraphOptimization;
pub use signature::{
    detect as detect_signature, ElementType, ModelInfo, OutputLayout, Signature, TensorInfo,
};
pub use tensor_model::{Feed, Fetched, TensorModel};
