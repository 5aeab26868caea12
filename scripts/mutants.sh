#!/usr/bin/env bash
# Mutation testing (cargo-mutants) of the modules where a silent bug would cost users most:
# the Adam and EMA updates, the losses, BatchNorm folding, the atomic writer, latent sampling and
# truncation, image and output conversion, IDX parsing, FID. Each mutant is tested with its own
# package's tests. Not part of `make test` (hours on 2 cores); run it after changing these
# modules and compare with the counts in docs/testing.md. Results: mutants.out*/ (git-ignored).
#   scripts/mutants.sh [extra cargo-mutants flags, e.g. --shard 1/4]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
command -v cargo-mutants >/dev/null || cargo install cargo-mutants --locked
scripts/setup-tools.sh
scripts/fetch-ort.sh >/dev/null
files=(
    exporter/src/fold.rs
    trainer/src/loss.rs
    runtime/src/latent.rs
    runtime/src/image_batch.rs
    runtime/src/output.rs
    models/kernels/src/adam.rs
    trainer/data/src/idx.rs
    trainer/metrics/src/fid.rs
)
args=()
for f in "${files[@]}"; do args+=(-f "$f"); done
cargo mutants --no-shuffle --copy-target=true -o mutants.out "${args[@]}" "$@" || true
# The atomic writer's crash behaviour is tested through the trainer (kill -9 and injected
# crashes), so its mutants run the trainer's tests too.
cargo mutants --no-shuffle --copy-target=true -o mutants.out-atomic -f runtime/files/src/atomic.rs \
    --test-package gantry-files --test-package gantry-trainer-cli "$@" || true
# The EMA has a module of its own in the training step.
cargo mutants --no-shuffle --copy-target=true -o mutants.out-ema -f trainer/src/train/ema.rs \
    "$@" || true
for d in mutants.out mutants.out-atomic mutants.out-ema; do
    echo "== $d"
    for kind in caught missed timeout unviable; do
        printf '%-9s %s\n' "$kind" "$(wc -l < "$d/mutants.out/$kind.txt" 2>/dev/null || echo 0)"
    done
done
