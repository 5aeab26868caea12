#!/usr/bin/env bash
# Data-parallel training speed on this machine, side by side in one run (the 32x32 MNIST model,
# batch 128, STEPS steps each, img/s = median over the steps after the first WARMUP):
#   1 process x 1 thread, 1 process x N threads, and N MPI ranks x 1 thread (N = cores),
# plus the milliseconds per step the ranks spend in collectives (all-reduce + gather).
#   scripts/bench-distributed.sh        (STEPS=40 WARMUP=8 by default)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
scripts/setup-tools.sh
scripts/fetch-data.sh mnist >/dev/null
cargo build --release -p gantry-trainer-cli --features mpi --bin trainer >&2
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
steps=${STEPS:-40}
warmup=${WARMUP:-8}
cores=$(nproc)
work=runs/bench-distributed
rm -rf "$work"
mkdir -p "$work"
args=(train --dataset mnist --data-dir data/mnist --image-size 32 --fit pad --batch-size 128
      --max-steps "$steps" --sample-every 0 --checkpoint-every 0 --tensorboard off --log-every 1000)
summary() {  # median img/s and median sync ms after the warm-up steps of a run's metrics
    python3 - "$1" "$warmup" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])][int(sys.argv[2]):]
ips = statistics.median(r["img_per_sec"] for r in rows)
sync = [r["sync_ms"] for r in rows if "sync_ms" in r]
step_ms = statistics.median(128 / r["img_per_sec"] * 1e3 for r in rows)
print(f"{ips:.1f} {statistics.median(sync) if sync else 0:.1f} {step_ms:.1f}")
PY
}
RAYON_NUM_THREADS=1 target/release/trainer "${args[@]}" --out "$work/one-thread" >/dev/null 2>&1
RAYON_NUM_THREADS=$cores target/release/trainer "${args[@]}" --out "$work/threads" >/dev/null 2>&1
RAYON_NUM_THREADS=1 mpirun --oversubscribe -np "$cores" target/release/trainer "${args[@]}" \
    --out "$work/ranks" --distributed >/dev/null 2>&1
read -r one _ one_ms <<<"$(summary $work/one-thread/metrics.jsonl)"
read -r thr _ thr_ms <<<"$(summary $work/threads/metrics.jsonl)"
read -r rk sync rk_ms <<<"$(summary $work/ranks/metrics.jsonl)"
{
    echo "data-parallel training, 32x32 MNIST DCGAN, global batch 128, $steps steps (median after $warmup), $cores cores"
    printf '%-28s %9s %9s\n' configuration img/s ms/step
    printf '%-28s %9s %9s\n' "1 process x 1 thread" "$one" "$one_ms"
    printf '%-28s %9s %9s\n' "1 process x $cores threads" "$thr" "$thr_ms"
    printf '%-28s %9s %9s   (collectives %s ms/step)\n' "$cores MPI ranks x 1 thread" "$rk" "$rk_ms" "$sync"
    python3 -c "print(f'ranks vs 1 thread: {$rk/$one:.2f}x   ranks vs $cores threads: {$rk/$thr:.2f}x')"
} | tee "$work/results.txt"
