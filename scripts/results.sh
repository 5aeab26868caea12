#!/usr/bin/env bash
# Keeps the long measurements' results in the repository, so that they outlive the machine they
# ran on: the quality benchmarks (runs/quality, runs/quality-resnet) and the mutation run
# (mutants.out) take tens of hours on 2 cores, more than one session's machine lives, and their
# working folders (git-ignored: checkpoints, samples, build trees) go with it.
#
#   scripts/results.sh save      the small text results (scores, metrics, mutant lists) into
#                                bench/results/, to commit
#   scripts/results.sh restore   bench/results/ back into the working folders where these lack a
#                                run or part (what is there, finished or in progress, is kept)
#
# Kept: a finished quality run's top-level *.json and *.txt files and its `done` marker (never a
# checkpoint, a sample or a log; for metrics.jsonl, a line per step, its median img/s in
# speed.txt), and the ResNet benchmark's step count for DCGAN at equal
# time (`dcgan-steps`, measured once per suite); a mutation part's markers (done, commit, two-passes,
# baseline-seconds) and the mutant lists of its runs (caught, missed, timeout, unviable,
# survivors: one name per line), also of a part stopped half-way, which scripts/mutants.sh then
# resumes on its commit. A restored quality run counts as finished and is not trained again (a
# larger CATSDOGS_STEPS retrains it: it has no checkpoint). The benchmarks and scripts/mutants.sh
# restore before they start and save as each run or part ends.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
kept="$root/bench/results"
benches=(quality quality-resnet)

# copy_new SRC DEST: SRC's file to DEST through a temporary file, when they differ.
copy_new() {
    cmp -s "$1" "$2" 2>/dev/null && return 0
    mkdir -p "$(dirname "$2")"
    cp "$1" "$2.tmp" && mv "$2.tmp" "$2"
}

# quality_files RUN_DIR: the files kept of one finished quality run, relative to it.
quality_files() {
    (cd "$1" && find . -maxdepth 1 -type f \( -name '*.json' -o -name '*.txt' -o -name done \) \
        ! -name '*.tmp' -printf '%P\n' | sort)
}

# mutants_files PART_DIR: the files kept of one mutation part, relative to it.
mutants_files() {
    (cd "$1" && find . -type f \( -name done -o -name commit -o -name two-passes -o -name baseline-seconds \
        -o -name caught.txt -o -name missed.txt -o -name timeout.txt -o -name unviable.txt \
        -o -name survivors.txt \) ! -path '*mutants.out.old*' -printf '%P\n' | sort)
}

save() {
    local bench run rel part f
    for bench in "${benches[@]}"; do
        for run in "$root/runs/$bench"/*/*-s*; do
            [ -d "$run" ] && [ -f "$run/done" ] || continue
            rel=${run#"$root/runs/"}
            for f in $(quality_files "$run"); do copy_new "$run/$f" "$kept/$rel/$f"; done
            # the training speed instead of metrics.jsonl (a line per step: ~360 KB a run)
            if [ -f "$run/metrics.jsonl" ]; then
                python3 -c 'import json, statistics, sys
rates = [json.loads(l).get("img_per_sec") for l in open(sys.argv[1]) if l.strip()]
rates = [r for r in rates if r]
print(f"{statistics.median(rates):.2f}" if rates else "")' "$run/metrics.jsonl" >"$run/speed.txt.tmp"
                mv "$run/speed.txt.tmp" "$run/speed.txt"
                copy_new "$run/speed.txt" "$kept/$rel/speed.txt"
            fi
        done
        for f in "$root/runs/$bench"/*/dcgan-steps; do
            if [ -f "$f" ]; then copy_new "$f" "$kept/${f#"$root/runs/"}"; fi
        done
    done
    for part in "$root/mutants.out"/*; do
        [ -d "$part" ] || continue
        rel="mutants/$(basename "$part")"
        # a part rerun from the start replaces what was kept of it
        if [ -f "$kept/$rel/commit" ] && ! cmp -s "$part/commit" "$kept/$rel/commit"; then rm -rf "${kept:?}/$rel"; fi
        for f in $(mutants_files "$part"); do copy_new "$part/$f" "$kept/$rel/$f"; done
    done
}

restore() {
    local bench run rel part
    for bench in "${benches[@]}"; do
        for run in "$kept/$bench"/*/*-s*; do
            [ -d "$run" ] || continue
            rel=${run#"$kept/"}
            [ -e "$root/runs/$rel" ] && continue
            mkdir -p "$(dirname "$root/runs/$rel")"
            cp -r "$run" "$root/runs/$rel.tmp" && mv "$root/runs/$rel.tmp" "$root/runs/$rel"
        done
        for f in "$kept/$bench"/*/dcgan-steps; do
            if [ -f "$f" ] && [ ! -e "$root/runs/${f#"$kept/"}" ]; then copy_new "$f" "$root/runs/${f#"$kept/"}"; fi
        done
    done
    for part in "$kept/mutants"/*; do
        [ -d "$part" ] || continue
        rel="mutants.out/$(basename "$part")"
        [ -e "$root/$rel" ] && continue
        mkdir -p "$root/mutants.out"
        cp -r "$part" "$root/$rel.tmp" && mv "$root/$rel.tmp" "$root/$rel"
    done
}

# one save or restore at a time (the benchmarks' workers save as their runs end)
mkdir -p "$root/runs"
exec 8>"$root/runs/.results.lock"
flock 8
case "${1:-}" in
    save) save ;;
    restore) restore ;;
    *) echo "usage: scripts/results.sh save|restore" >&2; exit 2 ;;
esac
