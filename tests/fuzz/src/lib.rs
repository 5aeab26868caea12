//! Gantry's fuzz harness over [bolero]: `gantry_fuzz::target!(|input| ...)` in a `#[test]` runs
//! the body on bolero's inputs (first the files kept in the target's `__fuzz__/<target>/corpus`
//! and `crashes` folders beside the test's source, then random ones for bolero's budget: 1 s
//! under `cargo test`, `BOLERO_RANDOM_TEST_TIME_MS` in `make fuzz`), and adds what bolero
//! alone does not:
//!
//! - **a per-input time limit** ([`input_limit`], 5 s unless `GANTRY_FUZZ_INPUT_LIMIT_MS` says
//!   otherwise): an input still running after it is a hang; the test process exits at once with
//!   code 124, naming the target and the saved input, so a hang fails `make test` instead of
//!   stalling it;
//! - **the corpus grows with every failure**: an input that panics or hangs is written to the
//!   target's `crashes` folder (named by its hash) before the test fails, and from then on is
//!   replayed on every run: commit it with the fix.
//!
//! Shrinking is off: every input it tried would be saved as another failure.

#![forbid(unsafe_code)]

use std::hash::{DefaultHasher, Hash, Hasher};
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

pub use bolero;

/// The longest one input may run before it counts as a hang: `GANTRY_FUZZ_INPUT_LIMIT_MS`, or
/// 5 s (the targets take micro- to milliseconds per input; the margin is for a loaded CI
/// machine running other tests beside them).
pub fn input_limit() -> Duration {
    std::env::var("GANTRY_FUZZ_INPUT_LIMIT_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(Duration::from_secs(5), Duration::from_millis)
}

/// Writes `input` into `crashes` as `<prefix>-<hash>`; returns where (or why not).
fn save(crashes: Option<&Path>, prefix: &str, input: &[u8]) -> String {
    let Some(dir) = crashes else {
        return "not saved: the target has no work folder".into();
    };
    let mut h = DefaultHasher::new();
    input.hash(&mut h);
    let path = dir.join(format!("{prefix}-{:016x}", h.finish()));
    match std::fs::create_dir_all(dir).and_then(|()| std::fs::write(&path, input)) {
        Ok(()) => format!("saved to {}", path.display()),
        Err(e) => format!("not saved to {}: {e}", path.display()),
    }
}

/// Runs `body(input)` under the time limit: a panic saves the input to `crashes` and goes on
/// (bolero reports it); a hang saves it and ends the process with code 124.
pub fn guarded(target: &str, crashes: Option<&Path>, input: &[u8], body: impl FnOnce(&[u8])) {
    guarded_with(target, crashes, input_limit(), input, body)
}

/// [`guarded`] with an explicit limit.
pub fn guarded_with(
    target: &str,
    crashes: Option<&Path>,
    limit: Duration,
    input: &[u8],
    body: impl FnOnce(&[u8]),
) {
    let (done, finished) = mpsc::channel::<()>();
    let watched = input.to_vec();
    let (target_name, dir) = (target.to_string(), crashes.map(Path::to_path_buf));
    let watchdog = std::thread::spawn(move || {
        if let Err(mpsc::RecvTimeoutError::Timeout) = finished.recv_timeout(limit) {
            let saved = save(dir.as_deref(), "hang", &watched);
            eprintln!(
                "fuzz target {target_name}: an input of {} bytes ran longer than {limit:?} (a hang); {saved}",
                watched.len()
            );
            std::process::exit(124);
        }
    });
    let outcome = catch_unwind(AssertUnwindSafe(|| body(input)));
    let _ = done.send(());
    let _ = watchdog.join();
    if let Err(panic) = outcome {
        let saved = save(crashes, "crash", input);
        eprintln!(
            "fuzz target {target}: an input of {} bytes panicked; {saved}",
            input.len()
        );
        resume_unwind(panic);
    }
}

/// A file for a fuzz target from the fuzzer's `input`: with an even first byte, the rest of
/// `input` is the file itself (what a coverage-guided fuzzer explores from nothing); with an
/// odd one, it edits `base`, a valid file, so that random inputs reach past the first check:
/// (position, value) byte pairs overwrite bytes, and a last odd-length byte truncates.
pub fn fuzzed_file(base: &[u8], input: &[u8]) -> Vec<u8> {
    let Some((&mode, edits)) = input.split_first() else {
        return Vec::new();
    };
    if mode % 2 == 0 {
        return edits.to_vec();
    }
    let mut file = base.to_vec();
    let mut pairs = edits.chunks_exact(2);
    for pair in pairs.by_ref() {
        if !file.is_empty() {
            let at = (pair[0] as usize * 7919 + mode as usize) % file.len();
            file[at] = pair[1];
        }
    }
    if let [cut] = pairs.remainder() {
        let keep = file.len() * *cut as usize / 256;
        file.truncate(keep);
    }
    file
}

/// The `crashes` folder of the bolero target at `work_dir`.
pub fn crashes_dir(work_dir: Option<PathBuf>) -> Option<PathBuf> {
    work_dir.map(|d| d.join("crashes"))
}

/// A fuzz target in a `#[test]` function: `gantry_fuzz::target!(|input| body)` with `input:
/// &[u8]`. A macro so that bolero names the target (and its corpus folder) after the test.
#[macro_export]
macro_rules! target {
    (|$input:ident| $body:expr) => {{
        let location = $crate::bolero::TargetLocation {
            package_name: env!("CARGO_PKG_NAME"),
            manifest_dir: env!("CARGO_MANIFEST_DIR"),
            module_path: module_path!(),
            file: file!(),
            line: line!(),
            item_path: $crate::bolero::__item_path__!(),
            test_name: None,
        };
        if !location.should_run() {
            return;
        }
        let crashes = $crate::crashes_dir(location.work_dir());
        let name = location
            .item_path
            .trim_end_matches("::__bolero_item_path__")
            .to_string();
        $crate::bolero::test(location)
            .with_shrink_time(::std::time::Duration::ZERO)
            .for_each(|input: &[u8]| {
                $crate::guarded(&name, crashes.as_deref(), input, |$input: &[u8]| $body)
            });
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panicking_input_is_saved_and_the_panic_goes_on() {
        let dir = std::env::temp_dir().join(format!("gantry-fuzz-test-{}", std::process::id()));
        let outcome = catch_unwind(|| {
            guarded("t", Some(&dir), b"boom", |input| {
                assert_ne!(input, b"boom", "found it");
            })
        });
        assert!(outcome.is_err(), "the panic reaches the caller");
        let saved: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(saved.len(), 1);
        assert_eq!(std::fs::read(&saved[0]).unwrap(), b"boom");
        assert!(saved[0]
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("crash-"));
        // A good input saves nothing more.
        guarded("t", Some(&dir), b"fine", |input| assert_eq!(input, b"fine"));
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A hang ends the process: run this test's body in a child process and read its exit.
    #[test]
    fn a_hanging_input_is_saved_and_ends_the_process_with_124() {
        if std::env::var("GANTRY_FUZZ_HANG_CHILD").is_ok() {
            let dir = PathBuf::from(std::env::var("GANTRY_FUZZ_HANG_CHILD").unwrap());
            guarded_with("t", Some(&dir), Duration::from_millis(200), b"slow", |_| {
                std::thread::sleep(Duration::from_secs(60))
            });
            unreachable!("the watchdog ends the process");
        }
        let dir = std::env::temp_dir().join(format!("gantry-fuzz-hang-{}", std::process::id()));
        let started = std::time::Instant::now();
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "tests::a_hanging_input_is_saved_and_ends_the_process_with_124",
                "--nocapture",
            ])
            .env("GANTRY_FUZZ_HANG_CHILD", &dir)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(124), "{out:?}");
        assert!(started.elapsed() < Duration::from_secs(30));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("ran longer than 200ms (a hang)"), "{err}");
        let saved: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(saved.len(), 1);
        assert_eq!(std::fs::read(&saved[0]).unwrap(), b"slow");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
