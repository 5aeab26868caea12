//! What every request handler shares: the models and the server's limits.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::model::Models;

/// Limits of request handling.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RequestLimits {
    /// Longest a request may take (queue plus execution) before it fails.
    pub request_timeout: Duration,
    /// Largest request body (HTTP) or message (gRPC), in bytes.
    pub max_body_bytes: usize,
    /// Most images one PNG request (`generate`) may ask for.
    pub max_png_images: usize,
}

impl Default for RequestLimits {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(60),
            max_body_bytes: 64 << 20,
            max_png_images: 256,
        }
    }
}

/// The models and limits of a running server, and whether it is stopping.
pub struct ServerState {
    pub models: Models,
    pub options: RequestLimits,
    stopping: AtomicBool,
}

impl ServerState {
    /// A server state over `models`.
    pub fn new(models: Models, options: RequestLimits) -> Self {
        Self {
            models,
            options,
            stopping: AtomicBool::new(false),
        }
    }

    /// Ready: serving at least one model and not stopping.
    pub fn is_ready(&self) -> bool {
        !self.models.is_empty() && !self.stopping.load(Ordering::Relaxed)
    }

    /// Marks the server as stopping (readiness turns false; requests in flight finish).
    pub fn begin_stopping(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }
}
