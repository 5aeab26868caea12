//! Finding and loading the ONNX Runtime shared library (`load-dynamic`), once per process.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use crate::error::{Result, RuntimeError};

/// The library file `make ort` installs (from the PyPI `onnxruntime` wheel).
pub const LIBRARY_NAME: &str = "libonnxruntime.so.1.31.1";

/// How to install the library, for error messages.
const INSTALL_HINT: &str = "install it with `make ort` (scripts/fetch-ort.sh puts libonnxruntime.so.1.31.1 in .ort/lib) \
or point ORT_DYLIB_PATH at a libonnxruntime.so; for CUDA/TensorRT use the library of the onnxruntime-gpu package";

/// How many folders above the executable's are searched for `.ort/lib` (a binary in
/// `target/release/` or a test in `target/debug/deps/` of a checkout finds the checkout's).
const SEARCH_DEPTH: usize = 4;

static ENVIRONMENT: OnceLock<(PathBuf, ort::environment::Environment)> = OnceLock::new();
static LOADING: Mutex<()> = Mutex::new(());

/// Candidate library paths in order: `explicit`, else `ORT_DYLIB_PATH`, else `.ort/lib` of the
/// current folder, the executable's folder, and `.ort/lib` of the folders above it.
pub fn candidates(explicit: Option<&Path>) -> Vec<PathBuf> {
    if let Some(p) = explicit {
        return vec![p.to_path_buf()];
    }
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        return vec![PathBuf::from(p)];
    }
    let mut out = vec![PathBuf::from(".ort/lib").join(LIBRARY_NAME)];
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        out.push(dir.join(LIBRARY_NAME));
        out.extend(
            dir.ancestors()
                .take(SEARCH_DEPTH + 1)
                .map(|d| d.join(".ort/lib").join(LIBRARY_NAME)),
        );
    }
    out
}

/// Loads ONNX Runtime (the first successful call wins for the whole process; failures are not
/// remembered, so a later call with a better path can succeed) and returns the library path.
pub fn ensure_loaded(explicit: Option<&Path>) -> Result<PathBuf> {
    let _guard = LOADING.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((path, _)) = ENVIRONMENT.get() {
        return match explicit {
            Some(p) if p != path => Err(RuntimeError::library(
                format!(
                    "{} was requested but {} is already loaded in this process",
                    p.display(),
                    path.display()
                ),
                None,
            )),
            _ => Ok(path.clone()),
        };
    }
    let tried = candidates(explicit);
    let path = tried.iter().find(|p| p.is_file()).cloned().ok_or_else(|| {
        let list: Vec<String> = tried.iter().map(|p| p.display().to_string()).collect();
        RuntimeError::library(
            format!("not found (looked at {}); {INSTALL_HINT}", list.join(", ")),
            None,
        )
    })?;
    let builder = ort::init_from(&path).map_err(|e| {
        RuntimeError::library(
            format!("{}: cannot load it; {INSTALL_HINT}", path.display()),
            Some(e.into()),
        )
    })?;
    let env = builder.with_name("gantry").build().map_err(|e| {
        RuntimeError::library(
            format!("{}: cannot create the environment", path.display()),
            Some(e.into()),
        )
    })?;
    let _ = ENVIRONMENT.set((path.clone(), env));
    Ok(path)
}

/// The process-wide ONNX Runtime environment (after [`ensure_loaded`]).
pub(crate) fn environment() -> Result<&'static ort::environment::Environment> {
    ENVIRONMENT
        .get()
        .map(|(_, env)| env)
        .ok_or_else(|| RuntimeError::library("not loaded yet", None))
}
