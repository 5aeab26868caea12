#!/usr/bin/env bash
# The GPU half of issues 6 and 7, prepared here and run on a lent GPU machine (which has no
# Rust, no registries and no internet; see ../shared/README.md, "gpu/").
#
#   scripts/gpu-check.sh build   here: builds the CUDA + cuDNN trainer and the gantry-models test
#                                binary, and packs them (stripped, xz) with the PyTorch reference
#                                into .gpu/ (git-ignored, ~15 MB)
#   scripts/gpu-check.sh run     there (repository root, .gpu/ carried): the cuDNN parity tests,
#                                then the training benchmark side by side with PyTorch on the GPU;
#                                everything is also written to $OUT when that is set
#
# Build needs ../shared/gpu/cuda-toolkit.sh (CUDA_TK: where it assembles the toolkit, default
# ../cuda-tk; GPU_TARGET_DIR: cargo's target folder for CUDA builds, default ../target-cuda).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
carry="$root/.gpu"

build() {
    local target="${GPU_TARGET_DIR:-$root/../target-cuda}"
    # shellcheck disable=SC1091
    source "$root/../shared/gpu/cuda-toolkit.sh" "${CUDA_TK:-$root/../cuda-tk}" >&2
    export CARGO_TARGET_DIR="$target"
    cargo build --release -p gantry-trainer --features cudnn >&2
    local tests
    tests=$(cargo test --release -p gantry-models --features cudnn --no-run --message-format=json 2>/dev/null |
        python3 -c 'import sys, json
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "gantry_models":
        print(m["executable"])')
    [ -n "$tests" ] || { echo "error: no gantry-models test binary was built" >&2; exit 1; }
    rm -rf "$carry" && mkdir -p "$carry"
    cp "$target/release/trainer" "$carry/trainer"
    cp "$tests" "$carry/models-tests"
    strip "$carry/trainer" "$carry/models-tests"
    xz -T2 -6 "$carry/trainer" "$carry/models-tests"
    cp "$root/../shared/bench/torch_dcgan_bench.py" "$root/../shared/gpu/device-env.sh" "$carry/"
    du -sh "$carry"/*
    echo "carry .gpu and run: scripts/gpu-check.sh run"
}

run() {
    [ -d "$carry" ] || { echo "error: .gpu/ is missing: run 'scripts/gpu-check.sh build' here and carry .gpu" >&2; exit 1; }
    local out="${OUT:-/tmp/gantry-gpu}"
    mkdir -p "$out"
    # shellcheck disable=SC1091
    source "$carry/device-env.sh"
    nvidia-smi -L | tee "$out/gpu.txt"
    local bin=/tmp/gantry-gpu-bin
    mkdir -p "$bin"
    for f in trainer models-tests; do
        xz -dc "$carry/$f.xz" > "$bin/$f"
        chmod +x "$bin/$f"
    done
    echo "== cuDNN ops against candle's CPU ops"
    "$bin/models-tests" cudnn --test-threads 1 2>&1 | tee "$out/cudnn-tests.txt"
    echo "== where a 64x64x3 batch-128 step spends its time"
    "$bin/trainer" bench --device cuda --image-size 64 --channels 3 --batch-size 128 --steps 20 \
        --warmup 3 --profile 2>&1 | tee "$out/profile-64x64x3-b128.txt"
    echo "== training speed, Gantry vs PyTorch"
    GANTRY_BENCH_DEVICE=cuda TRAINER="$bin/trainer" TORCH_BENCH_DIR="$carry" \
        ROUNDS="${ROUNDS:-2}" STEPS="${STEPS:-20}" scripts/bench-train.sh python3 2>&1 |
        tee "$out/bench-train-cuda.txt"
}

case "${1:-}" in
    build) build ;;
    run) run ;;
    *) echo "usage: scripts/gpu-check.sh build|run" >&2; exit 2 ;;
esac
