#!/usr/bin/env bash
# Training speed, Gantry against the PyTorch reference, side by side on this machine.
#   scripts/bench-train.sh [PYTHON_WITH_TORCH]        (ROUNDS=3 STEPS=6 by default)
#   GANTRY_BENCH_DEVICE=cuda: on the GPU; TRAINER=path: a prebuilt trainer (no cargo needed).
# `make bench` makes the PyTorch virtualenv (.tools/venv-bench, scripts/setup-bench.sh) first.
# For each configuration the engines run back to back: Gantry's train step (`trainer bench`,
# fast kernels, and plain candle in the first round only: it is slow) and PyTorch's
# (bench/torch_dcgan.py: the same DCGAN, Adam, BCE-with-logits, all cores); then the SNGAN
# ResNet at 32x32x3 (blocks of 128 and 64 channels: --g-width 32 --d-width 32), hinge loss and
# spectral norm, against bench/torch_resnet.py (RESNET_STEPS steps, default 3: ~2 s each).
# Rounds alternate the engines so that a slow spell of this (shared, noisy) machine hits all of
# them alike; the table keeps each engine's best round and prints the ratio Gantry / PyTorch.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
py="${1:-$root/.tools/venv-bench/bin/python}"
cd "$root"
T=${TRAINER:-}
if [ -z "$T" ]; then
    "$root/scripts/setup-build.sh"  # protoc
    cargo build --release --bins >&2
    T=target/release/trainer
fi
device=cpu; [ "${GANTRY_BENCH_DEVICE:-}" = cuda ] && device=cuda
steps=${STEPS:-6}
rounds=${ROUNDS:-3}
results=$(mktemp)
for round in $(seq "$rounds"); do
    for cfg in "32 1 64" "32 1 128" "64 3 64" "64 3 128"; do
        set -- $cfg
        echo "== $1 $2 $3 round $round" | tee -a "$results" >&2
        $T bench --image-size $1 --channels $2 --batch-size $3 --steps $steps --warmup 2 --device $device |
            awk '/^RESULT/ {print "RESULT fast", $(NF-1)}' | tee -a "$results" >&2
        if [ "$round" = 1 ]; then
            $T bench --image-size $1 --channels $2 --batch-size $3 --steps 3 --warmup 1 --kernels candle --device $device |
                awk '/^RESULT/ {print "RESULT plain", $(NF-1)}' | tee -a "$results" >&2
        fi
        "$py" bench/torch_dcgan.py train $1 $2 $3 $steps 2>/dev/null | awk '/^RESULT/ {for (i=1;i<=NF;i++) if ($i=="img/s") print "RESULT torch", $(i-1)}' | tee -a "$results" >&2 || true
    done
    echo "== 32 3 64 resnet round $round" | tee -a "$results" >&2
    $T bench --arch resnet --image-size 32 --channels 3 --batch-size 64 --g-width 32 --d-width 32 \
        --loss hinge --spectral-norm --steps "${RESNET_STEPS:-3}" --warmup 1 --device $device |
        awk '/^RESULT/ {print "RESULT fast", $(NF-1)}' | tee -a "$results" >&2
    "$py" bench/torch_resnet.py train 32 3 64 32 32 "${RESNET_STEPS:-3}" 2>/dev/null |
        awk '/^RESULT/ {for (i=1;i<=NF;i++) if ($i=="img/s") print "RESULT torch", $(i-1)}' | tee -a "$results" >&2 || true
done
python3 - "$results" <<'PY'
import re, sys
best = {}
cfg = None
for line in open(sys.argv[1]):
    m = re.match(r"== (\d+) (\d+) (\d+)( resnet)?", line)
    if m:
        cfg = (*map(int, m.groups()[:3]), bool(m.group(4)))
        continue
    m = re.match(r"RESULT (\w+) ([\d.]+)", line)
    if m and cfg:
        key = (cfg, m.group(1))
        best[key] = max(float(m.group(2)), best.get(key, 0.0))
print("| config | Gantry fast kernels (img/s) | Gantry plain candle (img/s) | PyTorch (img/s) | Gantry / PyTorch |")
print("|---|---|---|---|---|")
for cfg in sorted({k[0] for k in best}):
    fast, plain, torch = (best.get((cfg, e)) for e in ("fast", "plain", "torch"))
    fmt = lambda v: "n/a" if v is None else f"{v:.0f}"
    ratio = f"{fast / torch:.2f}x" if fast and torch else "n/a"
    arch = "SNGAN ResNet (128/64 ch), " if cfg[3] else "DCGAN "
    print(f"| {arch}{cfg[0]}x{cfg[0]}x{cfg[1]}, batch {cfg[2]} | {fmt(fast)} | {fmt(plain)} | {fmt(torch)} | {ratio} |")
PY
rm -f "$results"
