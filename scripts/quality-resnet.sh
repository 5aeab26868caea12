#!/usr/bin/env bash
# The ResNet quality benchmark (issue 29, docs/quality.md): Gantry's `--arch resnet --preset
# sngan` against the PyTorch reference of the same networks and recipe
# (bench/torch_resnet_train.py), trained the same way (data, 32x32, batch, steps, D steps,
# optimiser, EMA), SEEDS seeds each, scored with the standard Inception FID/KID
# (`trainer eval --metric inception`, INCEPTION_N samples of the EMA generator in eval mode).
#
#   scripts/quality-resnet.sh [OUT]       (default OUT: runs/quality-resnet; ~13 hours on 2 cores, resumable)
#
# Suites (SUITES, default "fashion-mnist catsdogs"): Fashion-MNIST padded to 32x32 (also scored
# with Gantry's classifier FID) and the 2000 CIFAR-10 cats and dogs at 32x32. STEPS G steps
# (default 1000; about 3.4 s each on one core at the default widths, so ~1 hour per run),
# D_STEPS D updates each (default 5), batch BATCH (64), widths G_WIDTH/D_WIDTH
# (16/16: blocks of 64 and 32 channels, what fits this machine; the same for both). With
# CONDITIONAL=on (the default), Fashion-MNIST also trains the class-conditional pair (conditional BatchNorm,
# projection D) on both sides and reports how often Gantry's classifier gives each sample its own
# class (PyTorch's samples sit in one subfolder per class). With DCGAN=on (the default), Gantry's
# default (DCGAN, `gantry` recipe) also trains on each suite for the wall-clock time of a ResNet
# run (see dcgan_steps), the comparison that decides the default architecture.
# JOBS runs in parallel, each with the cores / JOBS threads (default JOBS: the number of cores, so
# one thread each). Rerunning skips finished
# runs (a `done` marker) and resumes interrupted runs, Gantry's and PyTorch's, from their checkpoints.
# With the default OUT, finished runs' scores (and each suite's dcgan-steps) are kept in
# bench/results/quality-resnet (scripts/results.sh: restored before the runs start, saved as each
# ends) so that the benchmark goes on across machines.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="$(realpath -m "${1:-$root/runs/quality-resnet}")"
py="${PYTHON:-$root/.tools/venv-bench/bin/python}"      # scripts/setup-bench.sh installs it
suites="${SUITES:-fashion-mnist catsdogs}"
seeds="${SEEDS:-0 1 2}"
steps="${STEPS:-1000}"
d_steps="${D_STEPS:-5}"
batch="${BATCH:-64}"
gw="${G_WIDTH:-16}"
dw="${D_WIDTH:-16}"
n="${INCEPTION_N:-2000}"
jobs="${JOBS:-$(nproc)}"
cd "$root"

"$py" -c "import torch, PIL" 2>/dev/null || { echo "error: $py cannot import torch and PIL (scripts/setup-bench.sh)" >&2; exit 1; }
for suite in $suites; do
    case $suite in fashion-mnist | catsdogs) ;; *) echo "error: unknown suite '$suite'" >&2; exit 2 ;; esac
    scripts/fetch-data.sh "$suite"
done
scripts/fetch-inception.sh >/dev/null
# keep: whether OUT is the default, whose results scripts/results.sh keeps in the repository
keep=no
[ "$out" = "$root/runs/quality-resnet" ] && keep=yes && scripts/results.sh restore
"$root/scripts/setup-build.sh"  # protoc
scripts/fetch-ort.sh >/dev/null  # the Inception scoring runs on ONNX Runtime
cargo build --release --bin trainer
mkdir -p "$out/bin"
cp target/release/trainer "$out/bin/trainer.tmp" && mv "$out/bin/trainer.tmp" "$out/bin/trainer"  # immune to rebuilds
T="$out/bin/trainer"
# each run gets its share of the cores (one thread each at the default JOBS)
export RAYON_NUM_THREADS=$(( $(nproc) / jobs > 1 ? $(nproc) / jobs : 1 ))
case " $suites " in *" fashion-mnist "*) $T classifier --dataset fashion-mnist --fit pad ;; esac

# data flags of a suite for `trainer train` / `trainer eval`
data_flags() {
    case $1 in
        fashion-mnist) echo "--dataset fashion-mnist --data-dir data/fashion-mnist --fit pad" ;;
        catsdogs) echo "--dataset folder --data-dir data/catsdogs --fit crop" ;;
    esac
}

# Each suite's Inception reference (its test split's features; the whole folder for the cats and
# dogs) is computed once here and cached next to the data: the workers would otherwise compute it
# side by side. Scoring two probe images is what computes it.
probe="$out/.probe"
for suite in $suites; do
    mode=RGB; [ "$suite" = fashion-mnist ] && mode=L
    mkdir -p "$probe/$suite"
    "$py" -c "from PIL import Image; [Image.new('$mode', (32, 32), 60 * i).save('$probe/$suite/%d.png' % i) for i in (1, 2)]"
    # shellcheck disable=SC2046
    $T eval --metric inception --images "$probe/$suite" $(data_flags "$suite") --image-size 32 --n 2 \
        --out "$probe/$suite.json" >/dev/null
done

# Equal wall-clock time: Gantry's default (DCGAN, the `gantry` recipe, batch 128) trains as many
# steps as fit in the time of STEPS ResNet steps, from the two step times measured here once per
# suite (`trainer bench`, single-threaded) and kept in $out/SUITE/dcgan-steps, so that every seed
# and a resumed run train the same count. The step times are CPU time, not wall time: the runs
# share the cores with each other (and whatever else runs), which inflates wall time unevenly;
# a single-threaded step's CPU time is its wall time on an idle core.
cpu_seconds() {
    local record
    record=$(mktemp)
    RAYON_NUM_THREADS=1 /usr/bin/time -f "%U %S" -o "$record" "$T" bench "$@" >/dev/null 2>&1
    awk '{ print $1 + $2 }' "$record"
    rm -f "$record"
}
# step_ms BENCH-FLAGS: CPU milliseconds of one step (6 timed steps less 1, so start-up cancels).
step_ms() {
    local one six
    one=$(cpu_seconds "$@" --steps 1 --warmup 1)
    six=$(cpu_seconds "$@" --steps 6 --warmup 1)
    python3 -c "print(round(($six - $one) * 1000 / 5, 1))"
}
dcgan_steps() {
    local suite=$1 file="$out/$1/dcgan-steps" channels=1 resnet dcgan
    [ "$suite" = catsdogs ] && channels=3
    if [ ! -s "$file" ]; then
        resnet=$(step_ms --arch resnet --g-width "$gw" --d-width "$dw" --d-steps "$d_steps" --loss hinge \
            --spectral-norm --ema 0.999 --batch-size "$batch" --image-size 32 --channels $channels)
        dcgan=$(step_ms --spectral-norm --ema 0.999 --batch-size 128 --image-size 32 --channels $channels)
        mkdir -p "$out/$suite"
        python3 -c "print(round($steps * $resnet / $dcgan))" >"$file.tmp" && mv "$file.tmp" "$file"
        echo "$suite: ResNet step $resnet ms, DCGAN step $dcgan ms (CPU): DCGAN trains $(cat "$file") steps" >&2
    fi
    cat "$file"
}
[ "${DCGAN:-on}" = on ] && for suite in $suites; do dcgan_steps "$suite" >/dev/null; done

# Seed by seed, each pair side by side (two workers take a pair together), so that an
# interrupted benchmark has comparable results: the conditional pair first, then each suite's
# ResNet pair, then the DCGAN runs.
runs=()
for seed in $seeds; do
    if [ "${CONDITIONAL:-on}" = on ] && [[ " $suites " == *" fashion-mnist "* ]]; then
        runs+=("gantry fashion-mnist resnet-conditional $seed" "pytorch fashion-mnist resnet-conditional $seed")
    fi
    for suite in $suites; do
        runs+=("gantry $suite resnet $seed" "pytorch $suite resnet $seed")
    done
    if [ "${DCGAN:-on}" = on ]; then
        for suite in $suites; do runs+=("gantry $suite dcgan $seed"); done
    fi
done

# run_one KIND SUITE VARIANT SEED: trains (or resumes) and scores one run in $dir.
run_one() {
    local kind=$1 suite=$2 variant=$3 seed=$4 flags
    flags=$(data_flags "$suite")
    case $kind in
        gantry)
            local model=(--arch resnet --preset sngan --batch-size "$batch" --g-width "$gw"
                --d-width "$dw" --d-steps "$d_steps") total=$steps
            [ "$variant" = resnet-conditional ] && model+=(--conditional)
            if [ "$variant" = dcgan ]; then
                model=()  # the defaults: DCGAN, the gantry recipe, batch 128
                total=$(dcgan_steps "$suite")
            fi
            if [ -f "$dir/checkpoint/config.json" ]; then
                $T train --resume "$dir" --max-steps "$total" --log-every 100
            else
                # A run stopped before its first checkpoint left only logs: start it again.
                rm -rf "$dir"
                # shellcheck disable=SC2086
                $T train $flags "${model[@]}" --image-size 32 --epochs 100000 --max-steps "$total" \
                    --seed "$seed" --sample-every 500 --checkpoint-every 100 --tensorboard off \
                    --log-every 100 --out "$dir"
            fi
            grep -q "\"step\": $total," "$dir/final/trainer_state.json"
            $T eval --metric inception --checkpoint "$dir" --n "$n" --out "$dir/eval_inception.json"
            if [ "$suite" = fashion-mnist ]; then
                $T eval --checkpoint "$dir" --n "$n" --out "$dir/eval.json"
            fi
            ;;
        pytorch)
            local src=data/$suite cond=()
            [ "$variant" = resnet-conditional ] && cond=(--conditional)
            [ -f "$dir/run.json" ] || "$py" bench/torch_resnet_train.py --data "$src" --out "$dir" \
                --max-steps "$steps" --g-width "$gw" --d-width "$dw" --batch "$batch" \
                --d-steps "$d_steps" --n-samples "$n" --seed "$seed" --threads 1 "${cond[@]}"
            # shellcheck disable=SC2086
            $T eval --metric inception --images "$dir/samples" $flags --image-size 32 --n "$n" \
                --out "$dir/eval_inception.json"
            if [ "$suite" = fashion-mnist ]; then
                # shellcheck disable=SC2086
                $T eval --images "$dir/samples" $flags --n "$n" --out "$dir/eval.json"
            fi
            ;;
    esac
    touch "$dir/done"
}

# A worker takes the next run nobody has claimed (mkdir is atomic) until none is left.
worker() {
    local run kind suite variant seed dir
    for run in "${runs[@]}"; do
        read -r kind suite variant seed <<<"$run"
        dir="$out/$suite/$kind-$variant-s$seed"
        [ -f "$dir/done" ] && continue
        mkdir "$out/.claims/$suite-$kind-$variant-s$seed" 2>/dev/null || continue
        mkdir -p "$dir"
        echo "$(date +%T) start $suite $kind $variant seed $seed (log: $dir.log)"
        run_one "$kind" "$suite" "$variant" "$seed" >>"$dir.log" 2>&1 &
        if wait $!; then
            echo "$(date +%T) done  $suite $kind $variant seed $seed"
            [ "$keep" = no ] || scripts/results.sh save
        else
            echo "$(date +%T) FAILED $suite $kind $variant seed $seed: see $dir.log" >&2
            touch "$out/.failed"
        fi
    done
}

rm -rf "$out/.claims" "$out/.failed"
mkdir -p "$out/.claims"
for _ in $(seq "$jobs"); do worker & done
wait
python3 - "$out" <<'PY'
import json, os, statistics, sys
out = sys.argv[1]
rows = {}
for suite in sorted(os.listdir(out)):
    base = os.path.join(out, suite)
    if not os.path.isdir(base) or suite == "bin" or suite.startswith("."):
        continue
    for run in sorted(os.listdir(base)):
        path = os.path.join(base, run, "eval_inception.json")
        if not os.path.exists(path):
            continue
        name = run.rsplit("-s", 1)[0]
        e = json.load(open(path))
        c = os.path.join(base, run, "eval.json")
        # The classifier's headline: the first variant (the EMA generator in eval mode, or the folder).
        first = (json.load(open(c))["results"][0] if os.path.exists(c) else {})
        agreement = first.get("coverage", {}).get("class_agreement")
        rows.setdefault((suite, name), []).append((e["fid"], e["kid"], first.get("fid"), agreement))
print("| suite | run | seeds | Inception FID | KID x 1000 | classifier FID | class agreement % |")
print("|---|---|---|---|---|---|---|")
def ms(v):
    v = [x for x in v if x is not None]
    if not v:
        return "-"
    return f"{statistics.mean(v):.2f}" + (f" ± {statistics.stdev(v):.2f}" if len(v) > 1 else "")
for (suite, name), r in sorted(rows.items()):
    print(f"| {suite} | {name} | {len(r)} | {ms([x[0] for x in r])} | {ms([x[1] * 1000 for x in r])} | "
          f"{ms([x[2] for x in r])} | {ms([None if x[3] is None else x[3] * 100 for x in r])} |")
PY
[ ! -e "$out/.failed" ] || { echo "some runs failed" >&2; exit 1; }
echo "done: $out"
