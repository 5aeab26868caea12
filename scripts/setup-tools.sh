#!/usr/bin/env bash
# Installs the build and test tools Gantry needs, idempotently:
# - protoc (Debian protobuf-compiler), needed to build candle-onnx;
# - a Python virtualenv in .tools/venv with the `onnx` package, used by the tests to run
#   onnx.checker.check_model on exported files, and `tritonclient` (whose model_config_pb2 is
#   Triton's own configuration schema, against which the tests parse exported config.pbtxt).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
if ! command -v protoc >/dev/null 2>&1; then
    echo "installing protoc (Debian protobuf-compiler)" >&2
    if [ "$(id -u)" = 0 ]; then
        { apt-get install -y -q protobuf-compiler >/dev/null 2>&1 \
            || { apt-get update -q >/dev/null && apt-get install -y -q protobuf-compiler >/dev/null; }; }
    else
        sudo apt-get install -y -q protobuf-compiler >/dev/null
    fi
fi
venv="$root/.tools/venv"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import onnx, tritonclient.grpc.model_config_pb2" 2>/dev/null; then
    echo "installing the onnx checker and tritonclient (PyPI) into .tools/venv" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet "onnx==1.23.2" "tritonclient[http,grpc]==2.73.0"
fi
