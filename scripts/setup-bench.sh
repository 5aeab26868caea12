#!/usr/bin/env bash
# Installs the benchmarks' Python side into .tools/venv-bench, idempotently: PyTorch (the
# reference in bench/torch_dcgan.py), numpy and onnxruntime (the Python runtime the generation
# benchmark compares with), all from PyPI. Not needed by `make test`. Prints the interpreter.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="$root/.tools/venv-bench"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import torch, numpy, onnxruntime" 2>/dev/null; then
    echo "installing PyTorch, numpy and onnxruntime (PyPI) into .tools/venv-bench (a few GB)" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet "torch==2.15.0" "numpy" "onnxruntime==1.31.1" >&2
fi
echo "$venv/bin/python"
