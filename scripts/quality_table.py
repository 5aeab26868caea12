#!/usr/bin/env python3
"""Markdown tables from the eval JSON files scripts/quality-bench.sh writes.
usage: quality_table.py OUT_DIR"""
import glob
import json
import os
import sys

out = sys.argv[1]


def row(name, steps, r, floor):
    c = r["coverage"]
    agree = c.get("class_agreement")
    return (f"| {name} | {steps} | {r['variant']} | {r['fid']:.1f} | {c['classes_over_5_percent']} | "
            f"{c['label_entropy_bits']:.3f} | {c['mean_confidence']:.3f} | "
            f"{'' if agree is None else f'{agree * 100:.1f}%'} | {floor:.1f} |")


print("| run | steps | variant | FID | classes >= 5% | label entropy (bits) | mean confidence | class agreement | real train vs test FID |")
print("|---|---|---|---|---|---|---|---|---|")
entries = []
for run in ("mnist", "hinge", "cond", "fashion"):
    for f in glob.glob(os.path.join(out, run, "eval_*.json")):
        steps = int(f.rsplit("_", 1)[1].split(".")[0])
        entries.append((run, steps, f))
for d in glob.glob(os.path.join(out, "torch_*")):
    steps = int(d.rsplit("_", 1)[1])
    for mode in ("eval", "train"):
        f = os.path.join(d, f"eval_{mode}.json")
        if os.path.exists(f):
            entries.append((f"pytorch ({mode} mode)", steps, f))
order = {"mnist": 0, "pytorch": 0, "hinge": 1, "cond": 2, "fashion": 3}
for name, steps, f in sorted(entries, key=lambda e: (order[e[0].split()[0]], e[1], e[0])):
    rep = json.load(open(f))
    for r in rep["results"]:
        print(row(name, steps, r, rep["reference_fid_train_vs_test"]))
