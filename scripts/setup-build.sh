#!/usr/bin/env bash
# Installs what building Gantry needs beyond Rust, idempotently: protoc (Debian
# protobuf-compiler), which the build scripts of gantry-triton (prost) and candle-onnx run.
# Every script that builds Gantry calls it (scripts/setup-tools.sh too, with the test tools).
set -euo pipefail
if ! command -v protoc >/dev/null 2>&1; then
    echo "installing protoc (Debian protobuf-compiler)" >&2
    sudo=()
    [ "$(id -u)" = 0 ] || sudo=(sudo)
    "${sudo[@]}" apt-get install -y -q protobuf-compiler >/dev/null 2>&1 \
        || { "${sudo[@]}" apt-get update -q >/dev/null && "${sudo[@]}" apt-get install -y -q protobuf-compiler >/dev/null; }
fi
