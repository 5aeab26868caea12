//! Crash-safe writes: files via temp file + rename, directories via temp directory + atomic swap.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{FileError, Result};

/// A hidden sibling of `target` (`.{name}.{tag}-{pid}-{n}`) for a write in progress; unique
/// within the process, and [`remove_stale_temps`] knows the pattern.
pub fn temp_sibling(target: &Path, tag: &str) -> PathBuf {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into());
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    target.with_file_name(format!(".{name}.{tag}-{}-{n}", std::process::id()))
}

/// Test hook for crash tests, compiled only with the `fault-injection` feature (which tests turn
/// on; release binaries have none of it): the environment variable `GANTRY_FAULT_INJECTION`
/// lists points (`point` or `point:N`, comma-separated) at which the process aborts, as a crash
/// would, on the point's first (or N-th) visit. `no-exchange` makes [`write_dir_atomic`] take
/// its rename-aside path, as on file systems without `RENAME_EXCHANGE`.
#[cfg(any(test, feature = "fault-injection"))]
mod fault {
    use std::sync::Mutex;

    static VISITS: Mutex<Vec<(String, usize)>> = Mutex::new(Vec::new());

    fn spec() -> Option<String> {
        std::env::var("GANTRY_FAULT_INJECTION")
            .ok()
            .filter(|s| !s.is_empty())
    }

    /// Whether `flag` is set.
    pub(super) fn enabled(flag: &str) -> bool {
        spec().is_some_and(|s| listed(&s, flag))
    }

    /// Aborts the process if `point` is asked for at this visit.
    pub(super) fn crash_point(point: &str) {
        let Some(spec) = spec() else {
            return;
        };
        let mut visits = VISITS.lock().unwrap_or_else(|e| e.into_inner());
        if visit(&spec, point, &mut visits) {
            eprintln!("fault injection: crashing at {point}");
            std::process::abort();
        }
    }

    /// Counts a visit of `point` in `visits`; whether `spec` asks for a crash at this one.
    pub(super) fn visit(spec: &str, point: &str, visits: &mut Vec<(String, usize)>) -> bool {
        let count = match visits.iter_mut().find(|(p, _)| p == point) {
            Some((_, n)) => {
                *n += 1;
                *n
            }
            None => {
                visits.push((point.to_string(), 1));
                1
            }
        };
        spec.split(',').any(|item| {
            let (name, at) = match item.split_once(':') {
                Some((name, n)) => (name, n.parse().unwrap_or(1)),
                None => (item, 1),
            };
            name == point && count == at
        })
    }

    /// Whether `flag` is one of `spec`'s items.
    pub(super) fn listed(spec: &str, flag: &str) -> bool {
        spec.split(',').any(|p| p == flag)
    }
}

/// Without the `fault-injection` feature: no hooks at all.
#[cfg(not(any(test, feature = "fault-injection")))]
mod fault {
    pub(super) fn enabled(_flag: &str) -> bool {
        false
    }

    pub(super) fn crash_point(_point: &str) {}
}

fn sync_dir(dir: &Path) {
    // Persist the rename itself; failure only weakens durability, never correctness.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Writes `bytes` to `path` so that readers see the old file or the complete new one, never a
/// partial file: write a temp sibling, fsync, rename over.
pub fn write_file_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_file_checked(path, bytes, |_| Ok(()))
}

/// Replaces `path` with `bytes` through a temp sibling and a rename, without fsync: readers
/// and a killed process never see a partial file, but a power loss may lose the new one. For
/// bulk outputs that their seed regenerates (one PNG per generated image), where an fsync per
/// file would cost more than encoding it; state (checkpoints, models, configurations, logs)
/// goes through [`write_file_atomic`].
pub fn replace_file(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = temp_sibling(path, "tmp");
    let written = fs::write(&tmp, bytes).and_then(|()| fs::rename(&tmp, path));
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(FileError::io(path, e));
    }
    Ok(())
}

/// [`write_file_atomic`] with a check of the written temp file (read back from disk) before it
/// replaces `path`: when `check` fails, the temp file is removed, `path` is untouched, and the
/// check's error is returned.
pub fn write_file_checked<E: From<FileError>>(
    path: &Path,
    bytes: &[u8],
    check: impl FnOnce(&Path) -> std::result::Result<(), E>,
) -> std::result::Result<(), E> {
    let tmp = temp_sibling(path, "tmp");
    let written = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(FileError::io(path, e).into());
    }
    if let Err(e) = check(&tmp) {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    if let Err(e) = fs::rename(&tmp, path) {
        let _ = fs::remove_file(&tmp);
        return Err(FileError::io(path, e).into());
    }
    sync_dir(parent_of(path));
    Ok(())
}

/// Writes the files `(name, bytes)` as directory `dir`, replacing any previous one atomically: the
/// files go to a temp directory which is then swapped in (`renameat2(RENAME_EXCHANGE)`, or, where
/// the file system lacks it, rename-aside then rename). A crash at any moment leaves either the
/// old or the new directory complete; [`recover_dir`] finds a set-aside one.
pub fn write_dir_atomic(dir: &Path, files: &[(&str, Vec<u8>)]) -> Result<()> {
    let tmp = temp_sibling(dir, "tmp");
    let write_all = || -> std::io::Result<()> {
        fs::create_dir_all(&tmp)?;
        for (name, bytes) in files {
            let mut f = File::create(tmp.join(name))?;
            f.write_all(bytes)?;
            f.sync_all()?;
        }
        sync_dir(&tmp);
        Ok(())
    };
    if let Err(e) = write_all() {
        let _ = fs::remove_dir_all(&tmp);
        return Err(FileError::io(dir, e));
    }
    fault::crash_point("dir-written");
    let swap = || -> std::io::Result<()> {
        if !dir.exists() {
            return fs::rename(&tmp, dir);
        }
        if !fault::enabled("no-exchange") {
            let exchanged = rustix::fs::renameat_with(
                rustix::fs::CWD,
                &tmp,
                rustix::fs::CWD,
                dir,
                rustix::fs::RenameFlags::EXCHANGE,
            );
            if exchanged.is_ok() {
                // `tmp` now holds the previous directory.
                return fs::remove_dir_all(&tmp);
            }
        }
        let aside = temp_sibling(dir, "old");
        fs::rename(dir, &aside)?;
        fault::crash_point("dir-set-aside");
        fs::rename(&tmp, dir)?;
        fs::remove_dir_all(&aside)
    };
    if let Err(e) = swap() {
        let _ = fs::remove_dir_all(&tmp);
        return Err(FileError::io(dir, e));
    }
    sync_dir(parent_of(dir));
    // A copy of `dir` set aside by a crash in an earlier write is superseded now.
    if let (Some(name), Ok(entries)) = (dir.file_name(), fs::read_dir(parent_of(dir))) {
        let prefix = format!(".{}.old-", name.to_string_lossy());
        for entry in entries.filter_map(|e| e.ok()) {
            if entry.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = fs::remove_dir_all(entry.path());
            }
        }
    }
    Ok(())
}

/// If `dir` is missing because a crash hit the rename-aside fallback of [`write_dir_atomic`],
/// returns the set-aside complete directory (`.{name}.old-*`); otherwise `dir` itself.
pub fn recover_dir(dir: &Path) -> PathBuf {
    if dir.exists() {
        return dir.to_path_buf();
    }
    let Some(name) = dir.file_name().map(|n| n.to_string_lossy().into_owned()) else {
        return dir.to_path_buf();
    };
    let prefix = format!(".{name}.old-");
    fs::read_dir(parent_of(dir))
        .ok()
        .and_then(|entries| {
            entries
                .filter_map(|e| e.ok())
                .find(|e| e.file_name().to_string_lossy().starts_with(&prefix))
                .map(|e| e.path())
        })
        .unwrap_or_else(|| dir.to_path_buf())
}

/// Removes temp directories and files that [`write_dir_atomic`] / [`write_file_atomic`] left in
/// `dir` when a process was killed mid-write (`.{name}.tmp-*`), and set-aside old directories
/// (`.{name}.old-*`) once `{name}` itself is complete again. Complete data is never touched:
/// a set-aside directory whose target is missing is the one [`recover_dir`] reads.
pub fn remove_stale_temps(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.filter_map(|e| e.ok()) {
        let name = entry.file_name().to_string_lossy().into_owned();
        let superseded = name
            .strip_prefix('.')
            .and_then(|rest| rest.split_once(".old-"))
            .is_some_and(|(target, _)| dir.join(target).exists());
        if name.starts_with('.') && (name.contains(".tmp-") || superseded) {
            let path = entry.path();
            let _ = if path.is_dir() {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether this file system swaps two directories atomically (`RENAME_EXCHANGE`).
    fn exchange_supported(root: &Path) -> bool {
        let (a, b) = (root.join("probe-a"), root.join("probe-b"));
        fs::create_dir_all(&a).unwrap();
        fs::create_dir_all(&b).unwrap();
        let ok = rustix::fs::renameat_with(
            rustix::fs::CWD,
            &a,
            rustix::fs::CWD,
            &b,
            rustix::fs::RenameFlags::EXCHANGE,
        )
        .is_ok();
        fs::remove_dir_all(&a).unwrap();
        fs::remove_dir_all(&b).unwrap();
        ok
    }

    #[test]
    fn where_directories_can_be_exchanged_readers_never_see_the_directory_missing() {
        let root = tempfile::tempdir().unwrap();
        if !exchange_supported(root.path()) {
            eprintln!("skipped: this file system lacks RENAME_EXCHANGE");
            return;
        }
        let dir = root.path().join("ckpt");
        write_dir_atomic(&dir, &[("a", b"0".to_vec())]).unwrap();
        let done = std::sync::atomic::AtomicBool::new(false);
        let (missing, looks) = std::thread::scope(|s| {
            let watcher = s.spawn(|| {
                let (mut missing, mut looks) = (0, 0);
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    looks += 1;
                    if !dir.join("a").exists() {
                        missing += 1;
                    }
                }
                (missing, looks)
            });
            for i in 0..400 {
                write_dir_atomic(&dir, &[("a", i.to_string().into_bytes())]).unwrap();
            }
            done.store(true, std::sync::atomic::Ordering::Relaxed);
            watcher.join().unwrap()
        });
        assert!(looks > 100, "the watcher looked {looks} times");
        assert_eq!(
            missing, 0,
            "the directory was missing {missing} of {looks} looks"
        );
    }

    #[test]
    fn directory_swap_replaces_contents_and_leaves_no_temp() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("ckpt");
        write_dir_atomic(&dir, &[("a", b"one".to_vec())]).unwrap();
        write_dir_atomic(&dir, &[("a", b"two".to_vec()), ("b", b"x".to_vec())]).unwrap();
        assert_eq!(fs::read(dir.join("a")).unwrap(), b"two");
        assert_eq!(
            fs::read_dir(root.path()).unwrap().count(),
            1,
            "temp dirs left behind"
        );
    }

    #[test]
    fn failed_write_keeps_the_old_directory() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("ckpt");
        write_dir_atomic(&dir, &[("a", b"one".to_vec())]).unwrap();
        // A file name with a missing parent folder cannot be created: the write fails midway.
        let err = write_dir_atomic(&dir, &[("a", b"two".to_vec()), ("no/such", vec![1])]);
        assert!(err.is_err());
        assert_eq!(fs::read(dir.join("a")).unwrap(), b"one");
        assert_eq!(fs::read_dir(root.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_bare_name_lives_in_the_current_directory() {
        // Set-aside copies of `run` (a path relative to the working directory, as the CLIs
        // take them) are looked for in ".": an empty parent would make every lookup fail.
        assert_eq!(parent_of(Path::new("run")), Path::new("."));
        assert_eq!(parent_of(Path::new("runs/a")), Path::new("runs"));
        assert_eq!(parent_of(Path::new("/a")), Path::new("/"));
    }

    #[test]
    fn recovers_a_set_aside_directory() {
        let root = tempfile::tempdir().unwrap();
        let aside = root.path().join(".ckpt.old-1-2");
        fs::create_dir(&aside).unwrap();
        assert_eq!(recover_dir(&root.path().join("ckpt")), aside);
    }

    #[test]
    fn fault_points_crash_at_the_visit_asked_for() {
        let mut visits = Vec::new();
        let spec = "no-exchange,dir-written:2,dir-set-aside";
        assert!(fault::listed(spec, "no-exchange"));
        assert!(!fault::listed(spec, "exchange"));
        assert!(!fault::visit(spec, "dir-written", &mut visits), "visit 1");
        assert!(fault::visit(spec, "dir-written", &mut visits), "visit 2");
        assert!(!fault::visit(spec, "dir-written", &mut visits), "visit 3");
        assert!(
            fault::visit(spec, "dir-set-aside", &mut visits),
            "its first visit"
        );
        assert!(!fault::visit(spec, "other", &mut visits));
        assert_eq!(visits.len(), 3);
    }

    #[test]
    fn stale_temps_and_superseded_copies_are_removed_and_nothing_else() {
        let root = tempfile::tempdir().unwrap();
        let d = root.path();
        for name in [
            "ckpt",
            ".ckpt.tmp-1-2",
            ".ckpt.old-3-4",
            ".gone.old-5-6",
            ".lock",
            "data",
        ] {
            fs::create_dir(d.join(name)).unwrap();
        }
        fs::write(d.join(".f.tmp-7-8"), b"partial").unwrap();
        remove_stale_temps(d);
        let mut left: Vec<String> = fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        // `.gone.old-*` is the only copy of `gone` (recover_dir reads it): it stays.
        assert_eq!(left, [".gone.old-5-6", ".lock", "ckpt", "data"]);
    }

    #[test]
    fn writing_a_directory_removes_a_copy_set_aside_by_a_crash() {
        let root = tempfile::tempdir().unwrap();
        let aside = root.path().join(".ckpt.old-1-2");
        fs::create_dir(&aside).unwrap();
        fs::write(aside.join("a"), b"old").unwrap();
        let dir = root.path().join("ckpt");
        assert_eq!(recover_dir(&dir), aside);
        write_dir_atomic(&dir, &[("a", b"new".to_vec())]).unwrap();
        assert!(!aside.exists());
        assert_eq!(fs::read(dir.join("a")).unwrap(), b"new");
    }

    #[test]
    fn replacing_a_file_leaves_the_new_bytes_and_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.png");
        fs::write(&path, b"old").unwrap();
        replace_file(&path, b"new bytes").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new bytes");
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["a.png"]);
        let missing = dir.path().join("no/such/dir/b.png");
        assert!(replace_file(&missing, b"x").is_err());
    }

    #[test]
    fn file_write_is_all_or_nothing() {
        let root = tempfile::tempdir().unwrap();
        let path = root.path().join("f.txt");
        write_file_atomic(&path, b"hello").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"hello");
        let err = write_file_atomic(&root.path().join("missing/f.txt"), b"x").unwrap_err();
        assert!(err.to_string().contains("missing/f.txt"), "{err}");
    }
}
