#!/usr/bin/env python3
"""Markdown table from the RESULT lines scripts/bench-generate.sh collects: for every model and
batch size, each engine's best round (ms per batch, img/s) and the ratios that matter.
usage: bench_generate_table.py RESULTS_TXT"""
import re
import sys

best = {}  # (model, batch, engine) -> ms; precision rounds' engines are prefixed "p:"
model = batch = None
precision = False
for line in open(sys.argv[1]):
    head = re.match(r"== (\S+) batch (\d+) round \d+( precision)?", line)
    if head:
        model, batch, precision = head.group(1), int(head.group(2)), bool(head.group(3))
        continue
    res = re.match(r"RESULT (\S+) .*?([\d.]+) ms/batch", line)
    if res and model:
        key = (model, batch, ("p:" if precision else "") + res.group(1))
        ms = float(res.group(2))
        best[key] = min(ms, best.get(key, ms))

engines = ["runtime", "runtime-uint8", "onnxruntime", "torch"]
print("| model | batch | Gantry runtime (float out) | Gantry runtime (uint8 out) | Python onnxruntime | PyTorch eager | runtime speed-up over PyTorch | over onnxruntime |")
print("|---|---|---|---|---|---|---|---|")
for m, b in sorted({(k[0], k[1]) for k in best if not k[2].startswith("p:")}):
    cell = []
    for e in engines:
        ms = best.get((m, b, e))
        cell.append("–" if ms is None else f"{ms:.2f} ms ({b / ms * 1e3:,.0f} img/s)")
    rt = min(v for v in (best.get((m, b, "runtime")), best.get((m, b, "runtime-uint8"))) if v)
    ratio = lambda other: "–" if best.get((m, b, other)) is None else f"{best[(m, b, other)] / rt:.2f}x"
    side = {"g32": "32x32x1", "g64": "64x64x3"}.get(m, m)
    print(f"| {side} | {b} | " + " | ".join(cell) + f" | {ratio('torch')} | {ratio('onnxruntime')} |")

rows = sorted({(k[0], k[1]) for k in best if k[2].startswith("p:")})
if rows:
    cols = ["runtime-fp32", "runtime-int8", "runtime-bf16", "onnxruntime-int8", "torch", "torch-int8"]
    print()
    print("| model | batch | Gantry fp32 | Gantry int8 | Gantry bf16 | Python onnxruntime int8 | PyTorch eager fp32 | PyTorch int8 (FX, x86) | int8 over Gantry fp32 | int8 over PyTorch fp32 | int8 over PyTorch int8 |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for m, b in rows:
        get = lambda e: best.get((m, b, "p:" + e))
        cell = ["–" if get(e) is None else f"{get(e):.2f} ms ({b / get(e) * 1e3:,.0f} img/s)" for e in cols]
        ratio = lambda other: "–" if None in (get(other), get("runtime-int8")) else f"{get(other) / get('runtime-int8'):.2f}x"
        side = {"g32": "32x32x1", "g64": "64x64x3"}.get(m, m)
        print(f"| {side} | {b} | " + " | ".join(cell) + f" | {ratio('runtime-fp32')} | {ratio('torch')} | {ratio('torch-int8')} |")
