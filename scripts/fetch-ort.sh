#!/usr/bin/env bash
# Installs the ONNX Runtime shared library from the PyPI wheel onnxruntime==1.31.1 into
# .ort/lib (git-ignored). Idempotent. Prints the library path.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
version=1.31.1
lib="$root/.ort/lib/libonnxruntime.so.$version"
if [ ! -f "$lib" ]; then
    echo "fetching ONNX Runtime $version (PyPI onnxruntime wheel) into .ort/lib" >&2
    work="$(mktemp -d)"
    trap 'rm -rf "$work"' EXIT
    python3 -m pip download --quiet --no-deps --only-binary=:all: "onnxruntime==$version" -d "$work" >&2
    mkdir -p "$root/.ort/lib"
    (cd "$work" && python3 -m zipfile -e onnxruntime-*.whl extracted >/dev/null)
    cp "$work/extracted/onnxruntime/capi/libonnxruntime.so.$version" "$lib.tmp"
    mv "$lib.tmp" "$lib"
fi
echo "$lib"
