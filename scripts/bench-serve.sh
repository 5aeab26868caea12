#!/usr/bin/env bash
# Serving speed on loopback (CPU provider), the 64x64x3 generator, side by side in one run:
#  - 64 concurrent clients asking for 1 image each, dynamic batching vs --max-batch-size 1;
#  - saturated throughput of the server (binary tensors, 64 images a request) vs `runtime bench`
#    (the library alone) at the same batch size; the PNG endpoint separately;
#  - the same 64-client load through tritonclient (binary data), as a real client sees it.
# The load tool is wrk (Debian), installed here if missing.
#   scripts/bench-serve.sh            (SECONDS_PER_RUN=20 by default)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
scripts/setup-tools.sh
scripts/fetch-ort.sh >/dev/null
scripts/fetch-data.sh catsdogs
if ! command -v wrk >/dev/null 2>&1; then
    echo "installing wrk (Debian)" >&2
    sudo=(); [ "$(id -u)" = 0 ] || sudo=(sudo)
    "${sudo[@]}" apt-get install -y -q wrk >/dev/null 2>&1 || { "${sudo[@]}" apt-get update -q >/dev/null && "${sudo[@]}" apt-get install -y -q wrk >/dev/null; }
fi
cargo build --release --bins >&2
work=runs/bench-serve
mkdir -p $work
# The default 64x64x3 architecture (weights after 2 training steps), as `make bench-generate`.
[ -f $work/g64/final/config.json ] || target/release/trainer train --dataset folder --data-dir data/catsdogs \
    --image-size 64 --max-steps 2 --batch-size 16 --out $work/g64 --log-every 1000 >&2
[ -f $work/g64.onnx ] || target/release/exporter --checkpoint $work/g64 --out $work/g64.onnx >&2
python3 scripts/bench_serve.py target/release/runtime $work/g64.onnx .tools/venv/bin/python "${SECONDS_PER_RUN:-20}" \
    | tee $work/results.txt
