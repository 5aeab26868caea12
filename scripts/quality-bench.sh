#!/usr/bin/env bash
# The quality benchmark of docs/quality.md: FID and class coverage of Gantry's MNIST and
# Fashion-MNIST runs at several step counts (EMA and raw generator, BatchNorm in eval and train
# mode), a class-conditional MNIST run, and the PyTorch reference DCGAN at equal steps.
#   scripts/quality-bench.sh [OUT [PYTHON_WITH_TORCH]]      (about an hour on 2 cores)
# The PyTorch part is skipped when PYTHON_WITH_TORCH cannot import torch.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="$(realpath -m "${1:-$root/runs/quality}")"
py="${2:-$root/.tools/venv-bench/bin/python}"      # scripts/setup-bench.sh installs it
torch_script="$root/bench/torch_dcgan_mnist.py"
cd "$root"
scripts/fetch-data.sh mnist fashion-mnist
cargo build --release --bins
mkdir -p "$out/bin"
cp target/release/trainer "$out/bin/"          # immune to rebuilds while this runs
T="$out/bin/trainer"
N=5000
$T classifier --dataset mnist --fit pad
$T classifier --dataset fashion-mnist --fit pad

# train NAME STEPS ARGS...: trains (or resumes) runs to STEPS, then scores the checkpoint.
train() {
    local name=$1 steps=$2; shift 2
    if [ -f "$out/$name/checkpoint/config.json" ]; then
        $T train --resume "$out/$name" --max-steps "$steps" --log-every 100
    else
        $T train --out "$out/$name" --max-steps "$steps" --batch-size 128 --fit pad --sample-every 0 \
            --checkpoint-every 0 --log-every 100 "$@"
    fi
    $T eval --checkpoint "$out/$name" --n $N --out "$out/$name/eval_$steps.json"
}

# torch STEPS: the PyTorch reference (same DCGAN, MNIST padded to 32, batch 128) and its scores.
torch() {
    local steps=$1 dir="$out/torch_$1"
    "$py" -c "import torch" 2>/dev/null || { echo "skipping PyTorch: $py cannot import torch" >&2; return; }
    [ -f "$dir/run.json" ] || "$py" "$torch_script" --mnist data/mnist --out "$dir" --epochs 100 --max-steps "$steps" --n-samples $N
    for mode in eval train; do
        $T eval --images "$dir/samples_$mode" --dataset mnist --fit pad --n $N --out "$dir/eval_$mode.json"
    done
}

train mnist 200 --dataset mnist --ema 0.999
torch 200
train mnist 469 --dataset mnist --ema 0.999
torch 469
train mnist 938 --dataset mnist --ema 0.999
torch 938
train cond 938 --dataset mnist --conditional --ema 0.999
train cond 1876 --dataset mnist --conditional --ema 0.999
train hinge 938 --dataset mnist --loss hinge --ema 0.999
train fashion 469 --dataset fashion-mnist --ema 0.999
train fashion 938 --dataset fashion-mnist --ema 0.999
train mnist 2345 --dataset mnist --ema 0.999
echo "done: $out"
