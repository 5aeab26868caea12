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

#[cfg(test)]
mod tests {
    use super::*;

    /// The calls and total time recorded under `name` by `take()`'s result.
    fn entry(taken: &[(String, u64, Duration)], name: &str) -> Option<(u64, Duration)> {
        taken
            .iter()
            .find(|(n, _, _)| n == name)
            .map(|&(_, calls, time)| (calls, time))
    }

    /// One test for the whole profiler: its switch is process-wide (other tests' kernels record
    /// spans while it is on, under their own names, which this test ignores).
    #[test]
    fn spans_count_calls_and_time_only_while_enabled_and_take_clears_them() {
        let pause = Duration::from_millis(3);
        set_enabled(false);
        assert!(!enabled());
        let mut named = false;
        let value = span(
            || {
                named = true;
                "profile-test-off".into()
            },
            || 7,
        );
        assert_eq!(value, 7, "a span returns what it ran");
        drop(Timer::start(|| "profile-test-off-timer".into()));
        assert!(!named, "disabled, a span does not even build its name");
        let taken = take();
        assert!(entry(&taken, "profile-test-off").is_none());
        assert!(entry(&taken, "profile-test-off-timer").is_none());

        set_enabled(true);
        assert!(enabled());
        for _ in 0..2 {
            span(|| "profile-test-span".into(), || std::thread::sleep(pause));
        }
        {
            let _timer = Timer::start(|| "profile-test-timer".into());
            std::thread::sleep(pause);
        }
        record("profile-test-record", Duration::from_millis(5));
        record("profile-test-record", Duration::from_millis(6));
        set_enabled(false);
        let taken = take();
        let (calls, time) = entry(&taken, "profile-test-span").expect("the span was recorded");
        assert_eq!(calls, 2);
        assert!(time >= 2 * pause, "two sleeps of {pause:?} took {time:?}");
        let (calls, time) = entry(&taken, "profile-test-timer").expect("the timer was recorded");
        assert_eq!(calls, 1);
        assert!(time >= pause);
        assert_eq!(
            entry(&taken, "profile-test-record"),
            Some((2, Duration::from_millis(11)))
        );
        assert!(
            entry(&take(), "profile-test-span").is_none(),
            "take clears the totals"
        );
    }
}
