#!/usr/bin/env python3
"""The picture of docs/benchmarks.md's reduced-precision section: the same latents through the
fp32 and a reduced-precision export (`runtime generate --seed S` grids), and their absolute
difference amplified, side by side.
usage: precision_picture.py FP32_GRID.png REDUCED_GRID.png OUT.png [AMPLIFY [REDUCED_NAME]]"""
import sys

import numpy as np
from PIL import Image, ImageDraw

a = np.asarray(Image.open(sys.argv[1]).convert("RGB")).astype(np.int16)
b = np.asarray(Image.open(sys.argv[2]).convert("RGB")).astype(np.int16)
amplify = float(sys.argv[4]) if len(sys.argv) > 4 else 8.0
diff = np.clip(np.abs(a - b) * amplify, 0, 255).astype(np.uint8)
gap, label = 8, 18
h, w = a.shape[:2]
out = Image.new("RGB", (3 * w + 2 * gap, h + label), "white")
draw = ImageDraw.Draw(out)
for i, (img, text) in enumerate([(a, "fp32"), (b, sys.argv[5] if len(sys.argv) > 5 else "reduced"), (diff, f"|difference| x{amplify:g}")]):
    out.paste(Image.fromarray(img.astype(np.uint8)), (i * (w + gap), label))
    draw.text((i * (w + gap) + 4, 3), text, fill="black")
out.save(sys.argv[3])
