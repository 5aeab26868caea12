#!/usr/bin/env bash
# What each training option costs in speed: `trainer bench` steps of the bare DCGAN (the
# `dcgan` preset, what the PyTorch reference trains) against the same step with each option of
# the default `gantry` preset and the extras, side by side on this machine.
#   scripts/bench-recipe.sh          (ROUNDS=2 STEPS=32; TRAINER=path: a prebuilt trainer)
# img/s is from the mean step time over STEPS steps (R1 runs every 16 steps, so the mean is what
# it costs over a run); rounds alternate the configurations and each keeps its best round.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
T=${TRAINER:-}
if [ -z "$T" ]; then
    "$root/scripts/setup-build.sh"  # protoc
    cargo build --release --bin trainer >&2
    T=target/release/trainer
fi
steps=${STEPS:-32}
rounds=${ROUNDS:-2}
configs=(
    "32 1 128|dcgan preset (bare DCGAN)|"
    "32 1 128|+ EMA 0.999|--ema 0.999"
    "32 1 128|+ spectral norm|--spectral-norm"
    "32 1 128|gantry preset (EMA + spectral norm)|--ema 0.999 --spectral-norm"
    "32 1 128|gantry + DiffAugment translation,cutout,color|--ema 0.999 --spectral-norm --augment translation,cutout,color"
    "32 1 128|gantry + R1 10 every 16 steps|--ema 0.999 --spectral-norm --r1 10 --r1-every 16"
    "64 3 64|dcgan preset (bare DCGAN)|"
    "64 3 64|gantry preset (EMA + spectral norm)|--ema 0.999 --spectral-norm"
    "64 3 64|gantry + DiffAugment translation,cutout,color|--ema 0.999 --spectral-norm --augment translation,cutout,color"
)
results=$(mktemp)
for round in $(seq "$rounds"); do
    for index in "${!configs[@]}"; do
        IFS='|' read -r shape name flags <<<"${configs[$index]}"
        read -r size channels batch <<<"$shape"
        echo "== round $round: ${size}x${size}x$channels batch $batch, $name" >&2
        # shellcheck disable=SC2086
        rate=$($T bench --image-size "$size" --channels "$channels" --batch-size "$batch" \
            --steps "$steps" --warmup 2 $flags | awk '/^MEAN/ {print $(NF-1)}')
        echo "$index $rate" | tee -a "$results" >&2
    done
done
echo "| model, batch | configuration | img/s (mean step, best of $rounds) | vs dcgan preset |"
echo "|---|---|---|---|"
for index in "${!configs[@]}"; do
    IFS='|' read -r shape name _ <<<"${configs[$index]}"
    best=$(awk -v i="$index" '$1 == i && $2 > b {b = $2} END {print b}' "$results")
    [[ $name == dcgan* ]] && base=$best
    read -r size channels batch <<<"$shape"
    awk -v s="${size}x${size}x$channels, $batch" -v n="$name" -v b="$best" -v r="$base" \
        'BEGIN {printf "| %s | %s | %.0f | %.2fx |\n", s, n, b, b / r}'
done
rm -f "$results"
