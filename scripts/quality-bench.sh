#!/usr/bin/env bash
# The quality benchmark of docs/quality.md (issue 19): Gantry's default recipe against the
# PyTorch reference DCGAN, and DiffAugment on the 2000 cats and dogs.
#
#   scripts/quality-bench.sh [OUT]       (default OUT: runs/quality; about 8 hours on 2 cores)
#
# Suites (SUITES, default "mnist fashion-mnist catsdogs"):
#   mnist, fashion-mnist  32x32 (--fit pad), batch 128, STEPS steps (2814 = 6 epochs): `trainer
#                         train` with its defaults (the gantry preset) and, with PRESETS="gantry
#                         dcgan", the paper recipe; PyTorch (bench/torch_dcgan_mnist.py) the same way.
#   catsdogs              64x64, batch 64, CATSDOGS_STEPS steps, the default recipe without
#                         DiffAugment ("plain") and with each policy in CATSDOGS_AUGMENTS (default
#                         "translation", the policy docs/quality.md recommends, run
#                         "augment-translation"; the paper's full "translation,cutout,color" runs
#                         as "diffaugment", another policy, e.g. "translation,color", as
#                         "augment-translation-color").
# Every configuration runs once per seed in SEEDS (default "0 1 2"; cats and dogs: CATSDOGS_SEEDS,
# default SEEDS); each run is scored with
# `trainer eval` on 5000 samples (2000 for cats and dogs) and leaves OUT/<suite>/<run>/eval*.json,
# and with the standard Inception FID, KID and precision/recall (`trainer eval --metric inception`,
# INCEPTION_N samples, default 2000; INCEPTION=off leaves it out) in eval_inception*.json
# (cats and dogs also lattice.txt: scripts/lattice_score.py on the last sample grid; both kept per
# step count as eval_step_NNNNNN.json and lattice_step_NNNNNN.txt, so that rerunning with a larger
# CATSDOGS_STEPS extends finished runs and keeps the earlier scores).
# JOBS runs go in parallel, each with the cores / JOBS threads (default JOBS: the number of cores,
# so one thread each): on a small machine
# that is more throughput than one run using every core. Rerunning skips finished runs and
# resumes interrupted runs from their checkpoints (Gantry's; PyTorch's at its last epoch's end).
# Tables: scripts/quality_table.py OUT. With the default OUT, finished runs' scores are kept in
# bench/results/quality (scripts/results.sh: restored before the runs start, saved as each ends)
# so that the benchmark goes on across machines.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="$(realpath -m "${1:-$root/runs/quality}")"
py="${PYTHON:-$root/.tools/venv-bench/bin/python}"      # scripts/setup-bench.sh installs it
suites="${SUITES:-mnist fashion-mnist catsdogs}"
seeds="${SEEDS:-0 1 2}"
presets="${PRESETS:-gantry}"
steps="${STEPS:-2814}"
catsdogs_steps="${CATSDOGS_STEPS:-2000}"
catsdogs_seeds="${CATSDOGS_SEEDS:-$seeds}"
catsdogs_augments="${CATSDOGS_AUGMENTS:-translation}"
jobs="${JOBS:-$(nproc)}"
cd "$root"

"$py" -c "import torch" 2>/dev/null || { echo "error: $py cannot import torch (scripts/setup-bench.sh)" >&2; exit 1; }
for suite in $suites; do
    case $suite in mnist | fashion-mnist | catsdogs) ;; *) echo "error: unknown suite '$suite'" >&2; exit 2 ;; esac
    scripts/fetch-data.sh "$suite"
done
# keep: whether OUT is the default, whose results scripts/results.sh keeps in the repository
keep=no
[ "$out" = "$root/runs/quality" ] && keep=yes && scripts/results.sh restore
"$root/scripts/setup-build.sh"  # protoc
scripts/fetch-ort.sh >/dev/null  # the Inception scoring runs on ONNX Runtime
cargo build --release --bin trainer
mkdir -p "$out/bin"
cp target/release/trainer "$out/bin/trainer.tmp" && mv "$out/bin/trainer.tmp" "$out/bin/trainer"  # immune to rebuilds
T="$out/bin/trainer"
# each run gets its share of the cores (one thread each at the default JOBS)
export RAYON_NUM_THREADS=$(( $(nproc) / jobs > 1 ? $(nproc) / jobs : 1 ))

# The classifiers FID is computed in (cached next to the data; trained once, here, not by the workers).
for suite in $suites; do
    case $suite in
        catsdogs) $T classifier --dataset folder --data-dir data/catsdogs --image-size 64 ;;
        *) $T classifier --dataset "$suite" --fit pad ;;
    esac
done

# Each suite's Inception reference (its test split's features; the whole folder for the cats and
# dogs) is computed once here, with every core, and cached next to the data: the workers would
# otherwise compute it side by side, each on one core. Scoring two probe images computes it.
if [ "${INCEPTION:-on}" != off ]; then
    scripts/fetch-inception.sh >/dev/null
    probe="$out/.probe"
    for suite in $suites; do
        size=32 mode=L
        [ "$suite" = catsdogs ] && size=64 mode=RGB
        mkdir -p "$probe/$suite"
        "$py" -c "from PIL import Image; [Image.new('$mode', ($size, $size), 60 * i).save('$probe/$suite/%d.png' % i) for i in (1, 2)]"
        case $suite in
            catsdogs) flags=(--dataset folder --data-dir data/catsdogs --image-size 64) ;;
            *) flags=(--dataset "$suite" --fit pad) ;;
        esac
        env -u RAYON_NUM_THREADS $T eval --metric inception --images "$probe/$suite" "${flags[@]}" --n 2 \
            --out "$probe/$suite.json" >/dev/null
    done
fi

# The runs, most informative first, as "kind suite variant seed"; each in OUT/<suite>/<variant>-s<seed>.
runs=()
for suite in $suites; do
    if [ "$suite" = catsdogs ]; then
        for seed in $catsdogs_seeds; do
            runs+=("catsdogs $suite plain $seed")
            for policy in $catsdogs_augments; do
                variant="augment-${policy//,/-}"
                [ "$policy" = translation,cutout,color ] && variant=diffaugment
                runs+=("catsdogs $suite $variant $seed")
            done
        done
        continue
    fi
    for seed in $seeds; do
        for preset in $presets; do runs+=("gantry $suite $preset $seed"); done
        runs+=("pytorch $suite pytorch $seed")
    done
done

# finished DIR STEPS: whether the run in DIR reached STEPS (an interrupted trainer exits 0 after
# writing its checkpoint; its run must not be scored as finished).
finished() {
    grep -q "\"step\": $2," "$1/final/trainer_state.json" 2>/dev/null || {
        echo "the run in $1 stopped before step $2" >&2
        return 1
    }
}

# score_inception DIR SUITE: the standard Inception FID, KID and precision/recall of one finished
# run, beside its classifier scores (eval_inception*.json; a run that has them is skipped;
# INCEPTION_N samples per generator, 2000 by default: about 5 minutes on one core). The workers
# score each run as it finishes, so that the scoring runs beside the other runs' training.
score_inception() {
    local dir=$1 suite=$2 n=${INCEPTION_N:-2000} mode
    [ "${INCEPTION:-on}" = off ] && return
    if [ -f "$dir/run.json" ]; then
        for mode in eval train; do
            [ -f "$dir/eval_inception_$mode.json" ] && continue
            echo "$(date +%T) inception $suite $(basename "$dir") $mode mode"
            $T eval --metric inception --images "$dir/samples_$mode" --dataset "$suite" --fit pad \
                --n "$n" --out "$dir/eval_inception_$mode.json.tmp" || return 1
            mv "$dir/eval_inception_$mode.json.tmp" "$dir/eval_inception_$mode.json" || return 1
        done
    elif [ ! -f "$dir/eval_inception.json" ]; then
        echo "$(date +%T) inception $suite $(basename "$dir")"
        $T eval --metric inception --checkpoint "$dir" --n "$n" --out "$dir/eval_inception.json.tmp" || return 1
        mv "$dir/eval_inception.json.tmp" "$dir/eval_inception.json" || return 1
    fi
}

# start_afresh: empties $dir for a fresh run. A run killed before its first checkpoint (a session
# ending, not an interrupt: an interrupted trainer writes one) leaves a log of steps and samples
# that nothing can resume, and the trainer rightly refuses to train over them.
start_afresh() {
    if [ -n "$(ls -A "$dir")" ]; then
        echo "$(date +%T) $dir has no checkpoint to resume: starting it afresh"
        rm -rf "$dir" && mkdir -p "$dir"
    fi
}

# run_one KIND SUITE VARIANT SEED: trains (or resumes) and scores one run in $dir.
run_one() {
    local kind=$1 suite=$2 variant=$3 seed=$4
    case $kind in
        gantry)
            if [ -f "$dir/checkpoint/config.json" ]; then
                $T train --resume "$dir" --max-steps "$steps" --log-every 200
            else
                start_afresh
                $T train --dataset "$suite" --fit pad --batch-size 128 --epochs 1000 --max-steps "$steps" \
                    --seed "$seed" --preset "$variant" --sample-every 938 --checkpoint-every 469 \
                    --tensorboard off --log-every 200 --out "$dir"
            fi
            finished "$dir" "$steps"
            $T eval --checkpoint "$dir" --n 5000 --out "$dir/eval.json"
            ;;
        pytorch)
            [ -f "$dir/run.json" ] || "$py" bench/torch_dcgan_mnist.py --data "data/$suite" --out "$dir" \
                --epochs 1000 --max-steps "$steps" --n-samples 5000 --seed "$seed" --threads 1
            for mode in eval train; do
                $T eval --images "$dir/samples_$mode" --dataset "$suite" --fit pad --n 5000 --out "$dir/eval_$mode.json"
            done
            ;;
        catsdogs)
            local augment=off
            case $variant in
                diffaugment) augment=translation,cutout,color ;;
                augment-*) augment="${variant#augment-}" && augment="${augment//-/,}" ;;
            esac
            if [ -f "$dir/checkpoint/config.json" ]; then
                $T train --resume "$dir" --max-steps "$catsdogs_steps" --log-every 200
            else
                start_afresh
                $T train --dataset folder --data-dir data/catsdogs --image-size 64 --batch-size 64 \
                    --epochs 100000 --max-steps "$catsdogs_steps" --seed "$seed" --augment "$augment" \
                    --sample-every 500 --checkpoint-every 250 --tensorboard off --log-every 200 --out "$dir"
            fi
            finished "$dir" "$catsdogs_steps"
            local at; at="step_$(printf %06d "$catsdogs_steps")"
            $T eval --checkpoint "$dir" --n 2000 --out "$dir/eval.json"
            cp "$dir/eval.json" "$dir/eval_$at.json"
            "$py" scripts/lattice_score.py "$dir/samples/$at.png" | tee "$dir/lattice.txt"
            cp "$dir/lattice.txt" "$dir/lattice_$at.txt"
            echo "$catsdogs_steps" >"$dir/done"
            score_inception "$dir" "$suite"
            return
            ;;
    esac
    touch "$dir/done"
    score_inception "$dir" "$suite"
}

# A worker takes the next run nobody has claimed (mkdir is atomic) until none is left.
worker() {
    local run kind suite variant seed dir
    for run in "${runs[@]}"; do
        read -r kind suite variant seed <<<"$run"
        dir="$out/$suite/$variant-s$seed"
        # A cats-and-dogs run is done at the step count in its marker: a larger CATSDOGS_STEPS extends it.
        [ -f "$dir/done" ] && { [ "$kind" != catsdogs ] || [ "$(cat "$dir/done")" = "$catsdogs_steps" ]; } && continue
        mkdir "$out/.claims/$suite-$variant-s$seed" 2>/dev/null || continue
        mkdir -p "$dir"
        echo "$(date +%T) start $suite $kind $variant seed $seed (log: $dir.log)"
        # In the background, not as an `if` condition: there bash would ignore `set -e` inside it.
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
# Runs finished before their scoring existed (or whose scoring failed) are scored now.
for dir in "$out"/*/*-s*; do
    [ -f "$dir/done" ] || continue
    score_inception "$dir" "$(basename "$(dirname "$dir")")" >>"$dir.log" 2>&1 || {
        echo "$(date +%T) FAILED inception scoring of $dir: see $dir.log" >&2
        touch "$out/.failed"
    }
done
[ "$keep" = no ] || scripts/results.sh save
python3 scripts/quality_table.py "$out"
[ ! -e "$out/.failed" ] || { echo "some runs failed" >&2; exit 1; }
echo "done: $out"
