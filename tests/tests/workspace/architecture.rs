//! The design's dependency rules, checked on the real dependency graph (`cargo tree`) and the
//! sources: the deployment side never links candle or a training crate; no library links a CLI
//! crate; the embeddable runtime links no HTTP stack; release binaries carry no fault hooks;
//! `unsafe` lives in the kernels crate alone.

use std::path::Path;
use std::process::Command;

use gantry_testkit::{stderr, stdout, workspace};

/// The training side's crates (candle and what is built on it).
const TRAINING: [&str; 9] = [
    "gantry-kernels",
    "gantry-models",
    "gantry-trainer",
    "gantry-data",
    "gantry-metrics",
    "gantry-distributed",
    "gantry-tensorboard",
    "gantry-exporter",
    "gantry-trainer-cli",
];

/// The deployment side's crates.
const DEPLOYMENT: [&str; 5] = [
    "gantry-runtime",
    "gantry-files",
    "gantry-triton",
    "gantry-serve",
    "gantry-runtime-cli",
];

/// Every library of the workspace (what an application may link).
const LIBRARIES: [&str; 12] = [
    "gantry-kernels",
    "gantry-models",
    "gantry-trainer",
    "gantry-data",
    "gantry-metrics",
    "gantry-distributed",
    "gantry-tensorboard",
    "gantry-exporter",
    "gantry-runtime",
    "gantry-files",
    "gantry-triton",
    "gantry-serve",
];

const CLI_CRATES: [&str; 5] = ["clap", "anyhow", "indicatif", "ctrlc", "tracing-subscriber"];
const HTTP_CRATES: [&str; 4] = ["axum", "hyper", "tonic", "tokio"];

/// The normal (non-dev, non-build) dependencies of `package` with `features`, one
/// `name vX` per line (features as `name feature "f"` lines with `-e features`).
fn tree(package: &str, edges: &str) -> String {
    let out = Command::new(env!("CARGO"))
        .args([
            "tree",
            "--offline",
            "-p",
            package,
            "-e",
            edges,
            "--prefix",
            "none",
            "--format",
            "{p} {f}",
        ])
        .current_dir(workspace())
        .output()
        .expect("cargo tree runs");
    assert!(out.status.success(), "{package}: {}", stderr(&out));
    stdout(&out)
}

fn names(tree: &str) -> Vec<&str> {
    tree.lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect()
}

#[test]
fn the_deployment_side_links_neither_candle_nor_a_training_crate() {
    for package in DEPLOYMENT {
        let tree = tree(package, "normal,no-proc-macro");
        let deps = names(&tree);
        assert!(
            deps.contains(&package),
            "{package}: unexpected tree:\n{tree}"
        );
        for dep in &deps {
            assert!(!dep.starts_with("candle"), "{package} links {dep}");
            assert!(
                !TRAINING.contains(dep),
                "{package} links the training crate {dep}"
            );
        }
    }
    let runtime = tree("gantry-runtime", "normal,no-proc-macro");
    assert!(runtime.contains("ort v2.0.0-rc.15"), "{runtime}");
}

#[test]
fn no_library_links_a_cli_crate_and_the_runtime_no_http_stack() {
    for package in LIBRARIES {
        for dep in names(&tree(package, "normal,no-proc-macro")) {
            assert!(
                !CLI_CRATES.contains(&dep),
                "an application linking the library {package} would link {dep}"
            );
        }
    }
    for package in ["gantry-runtime", "gantry-files", "gantry-triton"] {
        for dep in names(&tree(package, "normal,no-proc-macro")) {
            assert!(
                !HTTP_CRATES.contains(&dep),
                "an application embedding {package} would link {dep}"
            );
        }
    }
    let serve = tree("gantry-serve", "normal,no-proc-macro");
    assert!(
        serve.contains("axum v") && serve.contains("gantry-runtime v"),
        "{serve}"
    );
}

#[test]
fn release_binaries_carry_no_fault_hooks() {
    for package in [
        "gantry-trainer-cli",
        "gantry-exporter-cli",
        "gantry-runtime-cli",
    ] {
        let tree = tree(package, "normal,features");
        assert!(
            !tree.contains("fault-injection"),
            "{package}'s release build enables fault injection:\n{}",
            tree.lines()
                .filter(|l| l.contains("fault-injection"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

#[test]
fn unsafe_code_lives_in_the_kernels_crate_alone() {
    let root = workspace();
    let mut roots = Vec::new();
    for side in ["models", "trainer", "exporter", "runtime", "tests"] {
        collect_crate_roots(&root.join(side), &mut roots);
    }
    assert!(roots.len() >= 16, "found only {roots:?}");
    for crate_root in roots {
        let rel = crate_root
            .strip_prefix(&root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        if rel.starts_with("models/kernels") {
            continue;
        }
        let text = std::fs::read_to_string(&crate_root).unwrap();
        assert!(
            text.contains("#![forbid(unsafe_code)]") || text.contains("#![deny(unsafe_code)]"),
            "{rel} does not forbid unsafe code (only models/kernels may have it)"
        );
    }
}

/// The `src/lib.rs` or `src/main.rs` of every package under `dir`.
fn collect_crate_roots(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    if dir.join("Cargo.toml").is_file() {
        for root in ["src/lib.rs", "src/main.rs"] {
            if dir.join(root).is_file() {
                out.push(dir.join(root));
            }
        }
    }
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        let name = entry.file_name();
        if path.is_dir()
            && name != "src"
            && name != "target"
            && !name.to_string_lossy().starts_with('.')
        {
            collect_crate_roots(&path, out);
        }
    }
}
