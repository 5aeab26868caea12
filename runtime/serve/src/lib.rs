//! Gantry's inference server: GAN generator ONNX files served over the Open Inference Protocol
//! (KServe v2, as Triton serves it) on HTTP/REST and gRPC, with Triton-style dynamic batching,
//! Prometheus metrics, PNG endpoints and a web page.
//!
//! A library first: [`http::router`] and [`grpc::service`] mount in any axum / tonic service;
//! [`BoundServer`] runs both on their own ports (what `runtime serve` does).
//!
//! ```no_run
//! use gantry_serve::{load_models, BatchPolicy, BoundServer, Listen, ModelSource, RequestLimits};
//! use std::time::Duration;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let policy = BatchPolicy::dynamic(64, Duration::from_millis(2));
//! let sources = [ModelSource::file("generator.onnx".as_ref(), Some("digits"), policy)?];
//! let models = load_models(&sources, |path| gantry_runtime::Generator::builder().model(path).build())?;
//! let server = BoundServer::bind(models, &Listen::default(), RequestLimits::default()).await?;
//! println!("listening on http://{}", server.http_addr()?);
//! server.run(gantry_serve::shutdown_signal()).await?;
//! # Ok(()) }
//! ```

#![deny(unsafe_code)] // `deny`, not `forbid`: ndarray's `s!` allows it inside its expansion

mod batcher;
mod error;
#[cfg(test)]
mod fuzz;
pub mod grpc;
pub mod http;
mod metrics;
mod model;
mod repository;
mod server;
mod state;
mod tensor;

/// The protocol's messages and service, generated from `proto/inference.proto`.
#[allow(clippy::all, missing_docs)]
pub mod proto {
    tonic::include_proto!("inference");
}

pub use batcher::{BatchPolicy, DEFAULT_MAX_QUEUE_SIZE};
pub use error::{LoadError, ServeError};
pub use metrics::ModelMetrics;
pub use model::{Model, Models, MAX_REQUEST_IMAGES};
pub use repository::{load_models, scan_repository, ModelSource};
pub use server::{shutdown_signal, BoundServer, Listen};
pub use state::{RequestLimits, ServerState};
pub use tensor::{decode_inputs, DataType, Images, InputTensor, ModelInputs, TensorData};

/// The server's name in the protocol's server metadata.
pub const SERVER_NAME: &str = "gantry";
/// The platform reported for every model (Triton's name for ONNX Runtime models).
pub const PLATFORM: &str = "onnxruntime_onnx";
/// Protocol extensions the server implements.
pub const EXTENSIONS: &[&str] = &["binary_tensor_data", "model_configuration"];
