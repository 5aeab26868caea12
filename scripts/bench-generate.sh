#!/usr/bin/env bash
# Generation speed side by side: Gantry's runtime (library, via `runtime bench`, and the CLI end
# to end), Python onnxruntime on the same ONNX file, and PyTorch eager on the same weights; then
# per precision (fp32, int8, bf16 exports of the same weights; PyTorch eager fp32 and PyTorch's
# own static int8 quantization) at batch 1 and 64.
#   scripts/bench-generate.sh [PYTHON_WITH_TORCH_AND_ONNXRUNTIME]
# The raw weights are exported (--no-ema), the ones PyTorch loads.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
py="${1:-$root/.tools/venv-bench/bin/python}"
cd "$root"
scripts/fetch-ort.sh >/dev/null
scripts/fetch-data.sh mnist catsdogs
"$root/scripts/setup-build.sh"  # protoc
cargo build --release --bins >&2
T=target/release/trainer; E=target/release/exporter; R=target/release/runtime
work=runs/bench-generate
mkdir -p $work
# Two generators with the default architecture (weights after 2 training steps).
[ -f $work/g32/final/config.json ] || $T train --dataset mnist --image-size 32 --max-steps 2 --batch-size 16 --out $work/g32 --log-every 1000 >&2
[ -f $work/g64/final/config.json ] || $T train --dataset folder --data-dir data/catsdogs --image-size 64 --max-steps 2 --batch-size 16 --out $work/g64 --log-every 1000 >&2
for g in g32 g64; do
    $E --checkpoint $work/$g --no-ema --out $work/$g.onnx >&2
    $E --checkpoint $work/$g --no-ema --out $work/$g-u8.onnx --output uint8 >&2
    for p in int8 bf16; do
        $E --checkpoint $work/$g --no-ema --out $work/$g-$p.onnx --precision $p >&2
    done
done
# Rounds alternate the engines so that a slow spell of this (shared, noisy) machine hits all of
# them alike; the summary keeps each engine's best round.
rounds=${ROUNDS:-3}
for round in $(seq $rounds); do
    for g in g32 g64; do
        for b in 1 64 1024; do
            iters=30; [ $b = 1024 ] && iters=5
            echo "== $g batch $b round $round"
            $R bench --model $work/$g.onnx --batch-size $b --iterations $iters 2>/dev/null
            $R bench --model $work/$g-u8.onnx --batch-size $b --iterations $iters 2>/dev/null | sed 's/RESULT runtime/RESULT runtime-uint8/'
            "$py" scripts/bench_generate.py $work/$g/final $work/$g.onnx $b $iters
        done
    done
    for g in g32 g64; do
        for b in 1 64; do
            echo "== $g batch $b round $round precision"
            for p in fp32 int8 bf16; do
                f=$work/$g-$p.onnx; [ $p = fp32 ] && f=$work/$g.onnx
                $R bench --model $f --batch-size $b --iterations 30 2>/dev/null | sed "s/RESULT runtime/RESULT runtime-$p/"
            done
            "$py" scripts/bench_precision.py $work/$g/final $b 30 fp32=$work/$g.onnx int8=$work/$g-int8.onnx bf16=$work/$g-bf16.onnx
        done
    done
done | tee $work/results.txt
echo
python3 scripts/bench_generate_table.py $work/results.txt
echo
echo "== CLI end to end (process start to last PNG and grid written)"
for g in g32 g64; do
    for n in 64 1024; do
        best=$(for i in 1 2 3 4 5; do
            s=$(date +%s.%N); $R generate -n $n --batch-size 256 --model $work/$g-u8.onnx --out $work/out-$g >/dev/null 2>&1; e=$(date +%s.%N)
            echo "$e - $s" | bc
        done | sort -n | head -1)
        echo "RESULT cli $g -n $n: $(echo "$best * 1000" | bc | cut -d. -f1) ms ($(echo "$n / $best" | bc) img/s)"
    done
done
