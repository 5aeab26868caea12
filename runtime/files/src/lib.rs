//! What both sides of Gantry write, in one place: crash-safe files and folders ([`atomic`]:
//! temp file, fsync, rename; folders swapped whole) and images ([`images`]: grids, PNG, GIF).
//! The trainer's checkpoints and samples, the exporter's models and the runtime's outputs all
//! go through it; it links neither candle nor ONNX Runtime.

#![forbid(unsafe_code)]

pub mod atomic;
mod error;
pub mod images;

pub use atomic::{write_dir_atomic, write_file_atomic, write_file_checked};
pub use error::{FileError, Result};
