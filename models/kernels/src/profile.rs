//! A tiny opt-in profiler: named spans accumulate wall time when enabled (used by `trainer bench`
//! to show where a training step's time goes). Disabled, a span costs one atomic load.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

static ENABLED: AtomicBool = AtomicBool::new(false);
static TOTALS: Mutex<BTreeMap<String, (u64, Duration)>> = Mutex::new(BTreeMap::new());

/// Turns recording on or off.
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// Whether spans are being recorded.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Adds `elapsed` to the span `name`.
pub fn record(name: impl Into<String>, elapsed: Duration) {
    let mut totals = TOTALS.lock().unwrap_or_else(|e| e.into_inner());
    let entry = totals.entry(name.into()).or_default();
    entry.0 += 1;
    entry.1 += elapsed;
}

/// Runs `f`, recording its wall time under the name `name()` when enabled.
pub fn span<T>(name: impl FnOnce() -> String, f: impl FnOnce() -> T) -> T {
    if !enabled() {
        return f();
    }
    let start = Instant::now();
    let out = f();
    record(name(), start.elapsed());
    out
}

/// Takes the recorded totals `(name, calls, time)` and clears them.
pub fn take() -> Vec<(String, u64, Duration)> {
    let mut totals = TOTALS.lock().unwrap_or_else(|e| e.into_inner());
    std::mem::take(&mut *totals)
        .into_iter()
        .map(|(k, (n, d))| (k, n, d))
        .collect()
}

/// Records the time until it is dropped (when profiling is enabled).
pub struct Timer(Option<(String, Instant)>);

impl Timer {
    /// Starts a span named `name()` if profiling is on.
    pub fn start(name: impl FnOnce() -> String) -> Self {
        Self(enabled().then(|| (name(), Instant::now())))
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        if let Some((name, start)) = self.0.take() {
            record(name, start.elapsed());
        }
    }
}
