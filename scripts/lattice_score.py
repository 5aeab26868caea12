#!/usr/bin/env python3
"""How strongly images carry a periodic lattice (the dot pattern of the cats-and-dogs runs in
docs/quality.md): per image, the power of the luminance spectrum on the harmonics of one period
(frequencies that are multiples of side/PERIOD cycles on both axes) over the power right beside
them. A spectrum without peaks there gives ~1 (real images: 1.1); a lattice pushes it up. The
default period, 16 pixels at 64x64, is the spacing of the cells of the generator's first 4x4
stage, which is where the lattice of docs/quality.md repeats.

usage: lattice_score.py [--period 16] [--tile 64 --gap 2] IMAGE.png ...
A PNG larger than one tile is read as a grid of tiles (Gantry's grids: `gap` pixels around each);
a PNG smaller than the tile is upsampled bilinearly to it first (the 32x32 real images). Prints
the median ratio over all images, its quartiles and the share of images above 2."""
import argparse
import struct
import sys
import zlib

import numpy as np


def read_png(path):
    """8-bit grayscale, RGB or RGBA PNG (non-interlaced) as float [H, W, C] in [0, 1]."""
    data = open(path, "rb").read()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError(f"{path}: not a PNG file")
    pos, idat, header = 8, b"", None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    width, height, depth, color, _, _, interlace = header
    channels = {0: 1, 2: 3, 6: 4}.get(color)
    if depth != 8 or channels is None or interlace:
        raise ValueError(f"{path}: only 8-bit gray/RGB/RGBA non-interlaced PNGs are read")
    raw = zlib.decompress(idat)
    stride = width * channels
    out = np.zeros((height, stride), dtype=np.int32)
    prev = np.zeros(stride, dtype=np.int32)
    for y in range(height):
        kind = raw[y * (stride + 1)]
        line = np.frombuffer(raw, np.uint8, stride, y * (stride + 1) + 1).astype(np.int32)
        if kind == 0:
            cur = line
        elif kind == 2:
            cur = (line + prev) & 255
        else:  # Sub, Average and Paeth depend on the pixel to the left: pixel by pixel
            cur = np.zeros(stride, dtype=np.int32)
            for i in range(stride):
                a = cur[i - channels] if i >= channels else 0
                b, c = prev[i], prev[i - channels] if i >= channels else 0
                if kind == 1:
                    p = a
                elif kind == 3:
                    p = (a + b) // 2
                elif kind == 4:
                    est = a + b - c
                    pa, pb, pc = abs(est - a), abs(est - b), abs(est - c)
                    p = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                else:
                    raise ValueError(f"{path}: unknown PNG filter {kind}")
                cur[i] = (line[i] + p) & 255
        out[y], prev = cur, cur
    return out.reshape(height, width, channels)[:, :, :3].astype(np.float64) / 255.0


def upsample(image, side):
    """Bilinear resize of [H, W, C] to side x side (pixel centres aligned, edges clamped)."""
    h, w, _ = image.shape
    ys = np.clip((np.arange(side) + 0.5) * h / side - 0.5, 0, h - 1)
    xs = np.clip((np.arange(side) + 0.5) * w / side - 0.5, 0, w - 1)
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    fy, fx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
    top = image[y0][:, x0] * (1 - fx) + image[y0][:, x1] * fx
    bottom = image[y1][:, x0] * (1 - fx) + image[y1][:, x1] * fx
    return top * (1 - fy) + bottom * fy


def tiles(image, tile, gap):
    """The tile x tile images of a grid, or the image itself (upsampled) when it is one."""
    h, w, _ = image.shape
    if h <= tile and w <= tile:
        return [upsample(image, tile) if (h, w) != (tile, tile) else image]
    rows, cols = (h - gap) // (tile + gap), (w - gap) // (tile + gap)
    return [image[gap + r * (tile + gap):gap + r * (tile + gap) + tile,
                  gap + c * (tile + gap):gap + c * (tile + gap) + tile]
            for r in range(rows) for c in range(cols)]


def lattice_ratio(image, period):
    """Power of the luminance on the harmonics of `period` pixels over the power right next to
    them (the mean of each harmonic's 8 neighbouring frequencies): ~1 for a spectrum with no
    peaks there, large for a lattice of that period."""
    side = image.shape[0]
    luminance = image @ np.array([0.299, 0.587, 0.114])
    power = np.abs(np.fft.fft2(luminance - luminance.mean())) ** 2
    step = side // period
    harmonics = [(y, x) for y in range(0, side, step) for x in range(0, side, step) if (y, x) != (0, 0)]
    peak = sum(power[y, x] for y, x in harmonics)
    around = sum(power[(y + dy) % side, (x + dx) % side]
                 for y, x in harmonics for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)) / 8
    return peak / around if around > 0 else 1.0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("images", nargs="+")
    parser.add_argument("--period", type=int, default=16)
    parser.add_argument("--tile", type=int, default=64)
    parser.add_argument("--gap", type=int, default=2)
    a = parser.parse_args()
    if a.period < 1 or a.tile % a.period or a.tile // a.period < 2:
        sys.exit(f"error: the period {a.period} must divide the tile side {a.tile} at least twice")
    shares = []
    for path in a.images:
        try:
            shares += [lattice_ratio(t, a.period) for t in tiles(read_png(path), a.tile, a.gap)]
        except (OSError, ValueError) as e:
            sys.exit(f"error: {e}")
    s = np.array(shares)
    print(f"{len(s)} images: lattice ratio median {np.median(s):.2f} "
          f"(quartiles {np.percentile(s, 25):.2f}-{np.percentile(s, 75):.2f}; over 2: {(s > 2).mean() * 100:.0f}%)")


if __name__ == "__main__":
    main()
