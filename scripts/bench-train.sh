#!/usr/bin/env bash
# Training speed, Gantry against the PyTorch reference, side by side on this machine.
#   scripts/bench-train.sh [PYTHON_WITH_TORCH]
# For each configuration the two run back to back (same machine state): Gantry's train step
# (`trainer bench`, fast kernels and plain candle) and PyTorch's (train_bench of
# ../shared/bench/torch_dcgan_bench.py: same DCGAN, Adam, BCE-with-logits, 2 threads).
# Prints a markdown table of img/s and the ratio Gantry / PyTorch.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
py="${1:-$root/../venv-bench/bin/python}"
cd "$root"
cargo build --release --bins >&2
T=target/release/trainer
device=cpu; [ "${GANTRY_BENCH_DEVICE:-}" = cuda ] && device=cuda
steps=${STEPS:-6}
export ROOT="$root"
echo "| config | Gantry fast (img/s) | Gantry plain candle (img/s) | PyTorch (img/s) | Gantry / PyTorch |"
echo "|---|---|---|---|---|"
for cfg in "32 1 64" "32 1 128" "64 3 64" "64 3 128"; do
    set -- $cfg
    fast=$($T bench --image-size $1 --channels $2 --batch-size $3 --steps $steps --warmup 2 --device $device | awk '/^RESULT/ {print $(NF-1)}')
    plain=$($T bench --image-size $1 --channels $2 --batch-size $3 --steps 3 --warmup 1 --kernels candle --device $device | awk '/^RESULT/ {print $(NF-1)}')
    torch=$("$py" - $1 $2 $3 $steps <<'PY' 2>/dev/null | awk '/^RESULT/ {for (i=1;i<=NF;i++) if ($i=="img/s") print $(i-1)}'
import sys, os, torch
sys.path.insert(0, os.path.join(os.environ["ROOT"], "..", "shared", "bench"))
img, nc, bs, steps = map(int, sys.argv[1:5])
sys.argv = ["x", "/tmp"]
import torch_dcgan_bench as b
if b.dev == "cpu":
    torch.set_num_threads(2)
b.train_bench(img, nc, bs, steps=steps, warm=2)
PY
)
    ratio=$(awk -v a="$fast" -v b="$torch" 'BEGIN { if (b > 0) printf "%.2fx", a / b; else print "n/a" }')
    echo "| ${1}x${1}x${2}, batch $3 | $fast | $plain | ${torch:-n/a} | $ratio |"
done
