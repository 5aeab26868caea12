#!/usr/bin/env bash
# Installs the build and test tools Gantry needs, idempotently:
# - protoc (Debian protobuf-compiler), needed to build gantry-triton and candle-onnx
#   (scripts/setup-build.sh, which every script that builds Gantry calls);
# - headless Chromium (Debian chromium), which the server's web-page test drives;
# - OpenMPI and libclang (Debian openmpi-bin, libopenmpi-dev, libclang-dev): the trainer's `mpi`
#   feature (data-parallel training) builds against them and its tests run `mpirun`;
# - a Python virtualenv in .tools/venv with the `onnx` package, used by the tests to run
#   onnx.checker.check_model on exported files, `tritonclient` (the real HTTP and gRPC clients
#   the server is tested with; its model_config_pb2 is Triton's own configuration schema,
#   against which the tests parse exported config.pbtxt), `playwright` (drives Chromium),
#   `tensorboard` (its own event-file reader checks the event files runs write), `kserve` (KServe's
#   SDK: its REST and gRPC inference clients and its data models of the Open Inference Protocol,
#   which the server is tested with too) and `schemathesis` (generates requests from the server's
#   OpenAPI document). kserve and tritonclient.grpc both register the protocol's `inference.*`
#   protobuf messages, so one process imports one of them: the check below imports each apart.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
# Installs Debian packages (as root, or with sudo), updating the package lists if needed.
apt_install() {
    local sudo=()
    [ "$(id -u)" = 0 ] || sudo=(sudo)
    { "${sudo[@]}" apt-get install -y -q "$@" >/dev/null 2>&1 \
        || { "${sudo[@]}" apt-get update -q >/dev/null && "${sudo[@]}" apt-get install -y -q "$@" >/dev/null; }; }
}
"$root/scripts/setup-build.sh"
if ! command -v mpirun >/dev/null 2>&1 || ! command -v mpicc >/dev/null 2>&1 \
    || ! ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1; then
    echo "installing OpenMPI and libclang (Debian openmpi-bin, libopenmpi-dev, libclang-dev) for distributed training" >&2
    apt_install openmpi-bin libopenmpi-dev libclang-dev
fi
if ! command -v chromium >/dev/null 2>&1; then
    echo "installing headless Chromium (Debian chromium)" >&2
    apt_install chromium
fi
venv="$root/.tools/venv"
venv_ready() {
    [ -x "$venv/bin/python" ] \
        && "$venv/bin/python" -c "import onnx, tritonclient.grpc.model_config_pb2, tritonclient.http, playwright.sync_api, tensorboard.backend.event_processing.event_accumulator" 2>/dev/null \
        && "$venv/bin/python" -c "import kserve.inference_client, kserve.protocol.rest.v2_datamodels" 2>/dev/null \
        && [ -x "$venv/bin/schemathesis" ]
}
if ! venv_ready; then
    echo "installing the onnx checker, tritonclient, kserve, schemathesis, playwright and tensorboard (PyPI) into .tools/venv" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet "onnx==1.23.2" "tritonclient[http,grpc]==2.73.0" "playwright==1.64.1" \
        "greenlet>=3.2.2" "tensorboard==2.21.0" "kserve==0.21.0" "schemathesis==4.32.5"
fi
