#!/usr/bin/env python3
"""Markdown tables from what scripts/quality-bench.sh leaves in OUT: per suite and
configuration, FID of each seed, mean and standard deviation, the same for the patch SWD where
the evaluation reported it, class coverage and training speed,
and the ratio of each Gantry configuration's mean FID to the PyTorch reference's.

usage: quality_table.py OUT_DIR"""
import glob
import json
import os
import re
import statistics
import sys


def scores(run_dir):
    """{step or None: {label: (fid, classes >= 5%, smallest class share, mean SWD or None)}} of
    one finished run: per step count where the run kept its evaluations per step
    (eval_step_NNNNNN.json, cats and dogs), else one entry."""
    per_step = sorted(glob.glob(os.path.join(run_dir, "eval_step_*.json")))
    if per_step:
        files = [(int(re.search(r"(\d+)\.json$", p).group(1)), p, "eval.json") for p in per_step]
    else:
        files = [(None, os.path.join(run_dir, n), n) for n in ("eval.json", "eval_eval.json", "eval_train.json")]
    found = {}
    for step, path, name in files:
        if not os.path.exists(path):
            continue
        report = json.load(open(path))
        for r in report["results"]:
            label = r["variant"]
            if name != "eval.json":  # PyTorch's image folders: the mode is in the file name
                label = "eval mode" if name == "eval_eval.json" else "train mode"
            hist = r["coverage"]["histogram"]
            swd = r.get("swd", {}).get("mean")
            found.setdefault(step, {})[label] = (
                r["fid"], r["coverage"]["classes_over_5_percent"], min(hist) / sum(hist), swd)
    return found


def inception_scores(run_dir):
    """{label: (Inception FID, KID, precision, recall)} of one run's eval_inception*.json."""
    found = {}
    for name in ("eval_inception.json", "eval_inception_eval.json", "eval_inception_train.json"):
        path = os.path.join(run_dir, name)
        if not os.path.exists(path):
            continue
        for r in json.load(open(path))["results"]:
            label = r["variant"]
            if name != "eval_inception.json":
                label = "eval mode" if name == "eval_inception_eval.json" else "train mode"
            found[label] = (r["fid"], r.get("kid"), r.get("precision"), r.get("recall"))
    return found


def inception_table(configs_dirs):
    """The Inception columns: per configuration and generator, FID per seed, mean and sd, mean
    KID (x1000), mean precision and recall."""
    rows = []
    means = {}
    for config, dirs in sorted(configs_dirs.items()):
        per_label = {}
        for seed, d in sorted(dirs):
            for label, v in inception_scores(d).items():
                per_label.setdefault(label, []).append(v)
        for label, vs in sorted(per_label.items()):
            fids = [v[0] for v in vs]
            means[(config, label)] = statistics.mean(fids)
            sd = statistics.stdev(fids) if len(fids) > 1 else float("nan")
            mean_of = lambda i, k=1: statistics.mean([v[i] * k for v in vs]) if all(v[i] is not None for v in vs) else float("nan")
            rows.append(f"| {config} | {label} | {len(vs)} | " + ", ".join(f"{f:.1f}" for f in fids)
                        + f" | **{statistics.mean(fids):.1f}** | {sd:.1f} | {mean_of(1, 1000):.2f} | "
                        f"{mean_of(2):.3f} | {mean_of(3):.3f} |")
    if rows:
        print("\nStandard Inception metrics (`trainer eval --metric inception`, nv-bilinear, against the test split; cats and dogs: all 2000 images):\n")
        print("| configuration | generator | seeds | Inception FID per seed | mean | sd | KID x1000 (mean) | precision | recall |")
        print("|---|---|---|---|---|---|---|---|---|")
        print("\n".join(rows))
    print_ratios(means, "mean Inception FID")


def print_ratios(means, what):
    """Each Gantry configuration's mean over the PyTorch reference's better mode (`means`:
    {(configuration, generator): mean}); nothing without a PyTorch run."""
    torch = [m for (c, _), m in means.items() if c == "pytorch"]
    if not torch:
        return
    best = min(torch)
    print(f"\nRatio of {what} to the PyTorch reference's better mode ({best:.1f}):\n")
    for (config, label), mean in sorted(means.items()):
        if config != "pytorch":
            print(f"- {config}, {label}: **{mean / best:.2f}x**")


def fid_format(mean):
    """FIDs to one decimal, or to three when the mean is below 1 (the two-class cats-and-dogs
    space scores in tenths); a row's seeds, mean and sd share it."""
    return "{:.3f}" if mean < 1 else "{:.1f}"


def swd_cells(values):
    """The SWD cells of a row: per seed, mean (bold) and sd; blank where a seed has none."""
    if not values or None in values:
        return " | | "
    sd = f"{statistics.stdev(values):.1f}" if len(values) > 1 else "nan"
    return ", ".join(f"{v:.1f}" for v in values) + f" | **{statistics.mean(values):.1f}** | {sd}"


def speed(run_dir):
    """Training img/s: the median of metrics.jsonl (Gantry) or steps x batch / seconds (PyTorch)."""
    metrics = os.path.join(run_dir, "metrics.jsonl")
    if os.path.exists(metrics):
        rates = [json.loads(line).get("img_per_sec") for line in open(metrics) if line.strip()]
        rates = [r for r in rates if r]
        return statistics.median(rates) if rates else None
    run = os.path.join(run_dir, "run.json")
    if os.path.exists(run):
        r = json.load(open(run))
        return r["steps"] * r["batch"] / r["seconds"]
    return None


def main(out):
    for suite_dir in sorted(glob.glob(os.path.join(out, "*"))):
        suite = os.path.basename(suite_dir)
        if suite == "bin" or not os.path.isdir(suite_dir):
            continue
        configs = {}
        config_dirs = {}
        for run_dir in sorted(glob.glob(os.path.join(suite_dir, "*-s*"))):
            m = re.fullmatch(r"(.+)-s(\d+)", os.path.basename(run_dir))
            if not m or not os.path.isdir(run_dir) or not os.path.exists(os.path.join(run_dir, "done")):
                continue
            config_dirs.setdefault(m.group(1), []).append((int(m.group(2)), run_dir))
            for step, found in scores(run_dir).items():
                config = m.group(1) if step is None else f"{m.group(1)} @ {step}"
                configs.setdefault(config, []).append((int(m.group(2)), found, speed(run_dir)))
        if not configs:
            continue
        print(f"\n### {suite}\n")
        print("| configuration | generator | seeds | FID per seed | mean FID | sd | SWD per seed | mean SWD | sd | classes >= 5% (min over seeds) | smallest class share | img/s (median) |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|")
        means = {}
        for config, runs in sorted(configs.items()):
            # Gantry's generators in eval mode (what the exporter writes); PyTorch's in both modes
            labels = sorted({label for _, s, _ in runs for label in s if not label.endswith("/train")})
            rates = [r for _, _, r in runs if r]
            for label in labels:
                per_seed = [(seed, s[label]) for seed, s, _ in sorted(runs) if label in s]
                fids = [v[0] for _, v in per_seed]
                mean = statistics.mean(fids)
                sd = statistics.stdev(fids) if len(fids) > 1 else float("nan")
                means[(config, label)] = mean
                rate = f"{statistics.median(rates):.0f}" if rates else ""
                fmt = fid_format(mean)
                print(f"| {config} | {label} | {len(fids)} | "
                      + ", ".join(fmt.format(f) for f in fids)
                      + f" | **{fmt.format(mean)}** | {fmt.format(sd)} | {swd_cells([v[3] for _, v in per_seed])} | "
                      f"{min(v[1] for _, v in per_seed)} | "
                      f"{min(v[2] for _, v in per_seed) * 100:.1f}% | {rate} |")
        print_ratios(means, "mean FID")
        inception_table(config_dirs)


if __name__ == "__main__":
    main(sys.argv[1])
