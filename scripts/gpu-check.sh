#!/usr/bin/env bash
# The GPU halves of issues 6 and 7, prepared here and run on a lent GPU machine (which has no
# Rust, no registries and no internet).
#
#   scripts/gpu-check.sh build   here: packs into .gpu/ (git-ignored, ~14 MB) the CUDA + cuDNN
#                                trainer, the gantry-kernels test binary, the CPU-built exporter and
#                                runtime (all stripped, xz); and into
#                                .gpu-ort/ ONNX Runtime's GPU build in two parts (<64 MiB each)
#   scripts/gpu-check.sh ort1    there, first call, carrying .gpu-ort/part1: stages it in /tmp
#   scripts/gpu-check.sh run     there, right after (the machine stays up ~30 s), carrying .gpu and
#                                .gpu-ort/part2: cuDNN parity tests, data-parallel training on
#                                NCCL (when the machine has libnccl), a step profile, training
#                                speed vs PyTorch; then a generator trained 2 steps on the GPU,
#                                exported fp32/fp16/uint8/int8/bf16 and timed on ONNX Runtime's CUDA
#                                provider vs PyTorch eager fp32/fp16. Everything also goes to $OUT.
#
# GPU_CHECK_DEVICE=cpu runs `run` here as a dry run of the script's logic (CPU builds, CPU
# provider). `build` needs a CUDA 13 toolkit with cuDNN: either one already set up (CUDA_HOME,
# nvcc on PATH, CUDNN_LIB) or GPU_RECIPES, a folder with the maintainers' recipes
# `cuda-toolkit.sh` (assembles the toolkit from PyPI wheels into CUDA_TK, default ../cuda-tk)
# and `ort-gpu-parts.sh` (splits ONNX Runtime's GPU build into transfers under 64 MiB; without
# it, point ORT_DYLIB_PATH at an installed onnxruntime-gpu on the GPU machine instead).
# GPU_TARGET_DIR: cargo's target folder for CUDA builds, default ../target-cuda. The PyTorch
# reference is the repository's bench/torch_dcgan.py; scripts/gpu/device-env.sh sets up the
# GPU machine's library path.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
carry="$root/.gpu"
ort_parts="$root/.gpu-ort"
ort_ver=1.31.1
device="${GPU_CHECK_DEVICE:-cuda}"

build() {
    local target="${GPU_TARGET_DIR:-$root/../target-cuda}"
    "$root/scripts/setup-build.sh"  # protoc
    cargo build --release -p gantry-exporter-cli -p gantry-runtime-cli --bins >&2
    (
        if [ -n "${GPU_RECIPES:-}" ]; then
            # shellcheck disable=SC1091
            source "$GPU_RECIPES/cuda-toolkit.sh" "${CUDA_TK:-$root/../cuda-tk}" >&2
        elif [ -z "${CUDA_HOME:-}" ] || ! command -v nvcc >/dev/null; then
            echo "error: build needs a CUDA toolkit (CUDA_HOME and nvcc) or GPU_RECIPES (see the header)" >&2
            exit 1
        fi
        export CARGO_TARGET_DIR="$target"
        cargo build --release -p gantry-trainer-cli --features cudnn >&2
        cp "$target/release/trainer" "$target/release/trainer-cudnn"
        # The data-parallel trainer links NCCL: from the nvidia-nccl-cu13 wheel (PyPI).
        if [ ! -e "$CUDA_HOME/lib/libnccl.so" ]; then
            python3 -m pip download -q --no-deps --only-binary=:all: --platform manylinux2014_x86_64 \
                --python-version 3.11 -d "$target/nccl-whl" nvidia-nccl-cu13==2.27.7 >&2
            python3 -m zipfile -e "$target"/nccl-whl/nvidia_nccl_cu13-*.whl "$target/nccl-unpacked"
            cp "$target"/nccl-unpacked/nvidia/nccl/lib/libnccl.so.2 "$CUDA_HOME/lib/"
            ln -sf libnccl.so.2 "$CUDA_HOME/lib/libnccl.so"
        fi
        cargo build --release -p gantry-trainer-cli --features cudnn,nccl >&2
        cp "$target/release/trainer" "$target/release/trainer-nccl"
        cp "$target/release/trainer-cudnn" "$target/release/trainer"
        # Build the tests with errors shown, then ask cargo (no rebuild) where the binary is.
        cargo test --release -p gantry-kernels --features cudnn --no-run >&2
        cargo test --release -p gantry-kernels --features cudnn --no-run --message-format=json 2>/dev/null |
            python3 -c 'import sys, json
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "gantry_kernels":
        print(m["executable"])' > "$root/.gpu-tests-path"
    )
    local tests
    tests=$(cat "$root/.gpu-tests-path") && rm -f "$root/.gpu-tests-path"
    [ -n "$tests" ] || { echo "error: no gantry-kernels test binary was built" >&2; exit 1; }
    rm -rf "$carry" && mkdir -p "$carry"
    cp "$target/release/trainer" "$carry/trainer"
    cp "$target/release/trainer-nccl" "$carry/trainer-nccl"
    cp "$tests" "$carry/kernels-tests"
    cp target/release/exporter target/release/runtime "$carry/"
    for f in trainer trainer-nccl kernels-tests exporter runtime; do
        strip "$carry/$f"
        xz -T2 -6 "$carry/$f"
    done
    cp "$root/scripts/gpu/device-env.sh" "$carry/"
    [ -f "$ort_parts/part1/libonnxruntime.so.$ort_ver.xz" ] ||
        if [ -n "${GPU_RECIPES:-}" ]; then
            bash "$GPU_RECIPES/ort-gpu-parts.sh" "$ort_parts" "$ort_ver" >&2
        else
            echo "no GPU_RECIPES: ONNX Runtime's GPU build is not packed; set ORT_DYLIB_PATH on the GPU machine" >&2
        fi
    du -sh "$carry" "$ort_parts"/part* 2>/dev/null || true
    echo "on the GPU machine: 'scripts/gpu-check.sh ort1' carrying .gpu-ort/part1, then at once"
    echo "'scripts/gpu-check.sh run' carrying .gpu and .gpu-ort/part2"
}

ort1() {
    mkdir -p /tmp/ortgpu
    cp "$ort_parts"/part1/* /tmp/ortgpu/
    ls -la /tmp/ortgpu
}

# The ONNX Runtime library the generation check uses: ORT_DYLIB_PATH when set, the GPU build
# staged by `ort1` plus part2, or (dry run) the CPU library `make ort` installs.
ort_library() {
    if [ "$device" = cpu ]; then
        echo "$root/.ort/lib/libonnxruntime.so.$ort_ver"
        return
    fi
    if [ -n "${ORT_DYLIB_PATH:-}" ]; then
        echo "$ORT_DYLIB_PATH"
        return
    fi
    local dir=/tmp/ortgpu
    if [ ! -f "$dir/libonnxruntime_providers_cuda.so" ]; then
        [ -f "$dir/cuda.xz.aa" ] && ls "$ort_parts"/part2/cuda.xz.* >/dev/null 2>&1 || return 1
        cat "$dir/cuda.xz.aa" "$ort_parts"/part2/cuda.xz.* | xz -dc > "$dir/libonnxruntime_providers_cuda.so"
        xz -dc "$dir/libonnxruntime.so.$ort_ver.xz" > "$dir/libonnxruntime.so.$ort_ver"
    fi
    echo "$dir/libonnxruntime.so.$ort_ver"
}

# Writes N random 64x64 RGB PNGs (the generator's speed does not depend on what it learnt).
make_pngs() {
    python3 - "$1" "$2" <<'PY'
import os, random, struct, sys, zlib
out, n = sys.argv[1], int(sys.argv[2])
os.makedirs(out, exist_ok=True)
def chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
rng = random.Random(0)
for i in range(n):
    rows = b"".join(b"\0" + bytes(rng.randrange(256) for _ in range(64 * 3)) for _ in range(64))
    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 64, 64, 8, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
    open(os.path.join(out, f"{i:03}.png"), "wb").write(png)
PY
}

# Data-parallel training on NCCL (docs/distributed.md): two ranks on two GPUs (one rank when
# the machine has one GPU) against one GPU accumulating the same micro-batches. Needs
# libnccl.so.2 on the machine (NCCL_LIB: its folder), which is too large to carry.
nccl_check() {
    local bin=$1 work=$2
    echo "== data-parallel training on NCCL"
    [ -n "${NCCL_LIB:-}" ] && export LD_LIBRARY_PATH="$NCCL_LIB:${LD_LIBRARY_PATH:-}"
    if ! ldconfig -p | grep -q 'libnccl.so.2' && ! ls "${NCCL_LIB:-/nonexistent}"/libnccl.so.2 >/dev/null 2>&1; then
        echo "skipped: no libnccl.so.2 on this machine (set NCCL_LIB to a folder holding it)"
        return 0
    fi
    xz -dc "$carry/trainer-nccl.xz" > "$bin/trainer-nccl" && chmod +x "$bin/trainer-nccl"
    local gpus ranks
    gpus=$(nvidia-smi -L | wc -l)
    ranks=1; [ "$gpus" -ge 2 ] && ranks=2
    make_pngs "$work/dp-pngs" 64
    rm -rf "$work/dp" "$work/dp-ref" "$work/nccl-id"
    local common=(train --device cuda --dataset folder --data-dir "$work/dp-pngs" --image-size 32
                  --batch-size 16 --max-steps 20 --sample-every 0 --checkpoint-every 0 --log-every 1000)
    local pids=() r
    for ((r = 0; r < ranks; r++)); do
        RANK=$r WORLD_SIZE=$ranks LOCAL_RANK=$r GANTRY_NCCL_ID_FILE="$work/nccl-id" \
            "$bin/trainer-nccl" "${common[@]}" --out "$work/dp" --distributed &
        pids+=($!)
    done
    local failed=0
    for p in "${pids[@]}"; do wait "$p" || failed=1; done
    [ "$failed" = 0 ] || { echo "FAILED: a rank exited with an error"; return 0; }
    "$bin/trainer" "${common[@]}" --out "$work/dp-ref" --accumulate "$ranks" 2>&1 | tail -1
    python3 - "$work/dp/final" "$work/dp-ref/final" "$ranks" <<'PY'
import json, struct, sys, array
def load(p):
    b = open(p, "rb").read(); n = struct.unpack("<Q", b[:8])[0]; h = json.loads(b[8:8 + n]); d = b[8 + n:]
    out = {}
    for k, v in h.items():
        if k == "__metadata__" or "running" in k: continue
        s, e = v["data_offsets"]; a = array.array("f"); a.frombytes(d[s:e]); out[k] = a
    return out
worst = 0.0
for f in ["generator", "discriminator", "optimizer_g", "optimizer_d"]:
    a, b = load(f"{sys.argv[1]}/{f}.safetensors"), load(f"{sys.argv[2]}/{f}.safetensors")
    for k in b:
        scale = max(max(abs(x) for x in b[k]), 1e-30)
        worst = max(worst, max(abs(x - y) for x, y in zip(a[k], b[k])) / scale)
print(f"RESULT nccl {sys.argv[3]} rank(s) vs one GPU accumulating: max relative difference {worst:.3g}")
PY
}

run() {
    [ -d "$carry" ] || { echo "error: .gpu/ is missing: run 'scripts/gpu-check.sh build' here and carry .gpu" >&2; exit 1; }
    local out="${OUT:-/tmp/gantry-gpu}" bin=/tmp/gantry-gpu-bin work=/tmp/gantry-gpu-work
    mkdir -p "$out" "$bin" "$work"
    if [ "$device" = cpu ]; then
        for f in trainer exporter runtime; do cp "target/release/$f" "$bin/"; done
    else
        # shellcheck disable=SC1091
        source "$carry/device-env.sh"
        nvidia-smi -L | tee "$out/gpu.txt"
        for f in trainer kernels-tests exporter runtime; do
            xz -dc "$carry/$f.xz" > "$bin/$f"
            chmod +x "$bin/$f"
        done
        echo "== cuDNN ops against candle's CPU ops"
        "$bin/kernels-tests" cudnn --test-threads 1 2>&1 | tee "$out/cudnn-tests.txt"
        nccl_check "$bin" "$work" 2>&1 | tee "$out/nccl.txt"
    fi
    local steps="${STEPS:-20}"
    echo "== where a 64x64x3 batch-128 step spends its time"
    "$bin/trainer" bench --device "$device" --image-size 64 --channels 3 --batch-size 128 \
        --steps "$steps" --warmup 3 --profile 2>&1 | tee "$out/profile-64x64x3-b128.txt"
    echo "== training speed, Gantry vs PyTorch"
    GANTRY_BENCH_DEVICE="$device" TRAINER="$bin/trainer" \
        ROUNDS="${ROUNDS:-2}" STEPS="$steps" scripts/bench-train.sh "${PYTHON:-python3}" 2>&1 |
        tee "$out/bench-train-$device.txt"

    local lib ep=cuda
    [ "$device" = cpu ] && ep=cpu
    if ! lib=$(ort_library); then
        echo "== generation skipped: ONNX Runtime's GPU build is not staged (run 'ort1' with .gpu-ort/part1 first)"
        return
    fi
    echo "== a 64x64x3 generator: 2 training steps on $device, exported six ways"
    make_pngs "$work/pngs" 32
    rm -rf "$work/g64"
    "$bin/trainer" train --device "$device" --dataset folder --data-dir "$work/pngs" --image-size 64 \
        --max-steps 2 --batch-size 16 --out "$work/g64" --log-every 1000 2>&1 | tail -3
    "$bin/exporter" --checkpoint "$work/g64" --out "$work/g64.onnx" >/dev/null
    "$bin/exporter" --checkpoint "$work/g64" --out "$work/g64-u8.onnx" --output uint8 >/dev/null
    "$bin/exporter" --checkpoint "$work/g64" --out "$work/g64-fp16.onnx" --precision fp16 >/dev/null
    "$bin/exporter" --checkpoint "$work/g64" --out "$work/g64-fp16-u8.onnx" --precision fp16 --output uint8 >/dev/null
    # int8 calibrates on ONNX Runtime's CPU provider (in the GPU library too); TensorRT builds an
    # int8 engine from its QDQ nodes (the runtime turns TensorRT's int8 mode on for it).
    ORT_DYLIB_PATH="$lib" "$bin/exporter" --checkpoint "$work/g64" --out "$work/g64-int8.onnx" --precision int8 >/dev/null
    "$bin/exporter" --checkpoint "$work/g64" --out "$work/g64-bf16.onnx" --precision bf16 >/dev/null
    local R=("$bin/runtime" --ort-lib "$lib" --ep "$ep")
    "${R[@]}" info --model "$work/g64.onnx" 2>&1 | grep -i provider | tee "$out/providers.txt"
    echo "== generation speed: runtime ($ep provider) vs PyTorch eager"
    {
        for b in 1 64 1024; do
            iters=50; [ "$device" = cpu ] && iters=5
            for m in g64 g64-u8 g64-fp16 g64-fp16-u8 g64-int8 g64-bf16; do
                "${R[@]}" bench --model "$work/$m.onnx" --batch-size $b --iterations $iters 2>/dev/null |
                    sed "s|RESULT runtime [^ ]*|RESULT runtime $m|"
            done
            "${PYTHON:-python3}" bench/torch_dcgan.py generate 64 3 $b $iters 2>/dev/null | grep RESULT || true
            if [ "$device" = cuda ]; then
                "${PYTHON:-python3}" bench/torch_dcgan.py generate 64 3 $b $iters fp16 2>/dev/null | grep RESULT || true
            fi
        done
        echo "== CLI end to end: runtime generate -n 1024 (process start to 1024 PNGs and the grid)"
        for i in 1 2 3; do
            s=$(date +%s%N)
            "${R[@]}" generate -n 1024 --batch-size 256 --model "$work/g64-u8.onnx" --out "$work/png-out" >/dev/null 2>&1
            e=$(date +%s%N)
            echo "RESULT cli -n 1024: $(( (e - s) / 1000000 )) ms"
        done
    } 2>&1 | tee "$out/bench-generate-$device.txt"
}

case "${1:-}" in
    build) build ;;
    ort1) ort1 ;;
    run) run ;;
    *) echo "usage: scripts/gpu-check.sh build|ort1|run" >&2; exit 2 ;;
esac
