#!/usr/bin/env python3
"""Markdown tables from what scripts/quality-bench.sh leaves in OUT: per suite and
configuration, the classifier FID of each seed, mean and standard deviation; beside it the
standard Inception FID (per seed, mean, sd), KID and precision/recall where the run was scored
with them; the patch SWD where the evaluation reported it, class coverage and training speed;
and the ratio of each Gantry configuration's mean FIDs to the PyTorch reference's.

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


def inception_scores(run_dir, step=None):
    """{label: (Inception FID, KID, precision, recall)} of one run's eval_inception*.json; with
    `step`, only a checkpoint's scores made at that training step (the cats-and-dogs runs' rows
    are per step, and a run extended later has its Inception scores at its last step)."""
    found = {}
    for name in ("eval_inception.json", "eval_inception_eval.json", "eval_inception_train.json"):
        path = os.path.join(run_dir, name)
        if not os.path.exists(path):
            continue
        report = json.load(open(path))
        if step is not None and report.get("training_steps") != step:
            continue
        for r in report["results"]:
            label = r["variant"]
            if name != "eval_inception.json":
                label = "eval mode" if name == "eval_inception_eval.json" else "train mode"
            found[label] = (r["fid"], r.get("kid"), r.get("precision"), r.get("recall"))
    return found


def inception_cells(runs_dirs, label, step=None):
    """The Inception cells of one row (configuration, generator; `step` for rows of one training
    step): FID per seed, mean (bold) with its sd, mean KID x1000, mean precision / recall; blank
    where no seed was scored. Also the mean FID (None if none)."""
    vs = [found[label] for _, d in sorted(runs_dirs)
          if label in (found := inception_scores(d, step))]
    if not vs:
        return " | | | ", None
    fids = [v[0] for v in vs]
    mean = statistics.mean(fids)
    sd = f" ({statistics.stdev(fids):.1f})" if len(fids) > 1 else ""

    def mean_of(i, fmt, scale=1):
        values = [v[i] * scale for v in vs if v[i] is not None]
        return fmt.format(statistics.mean(values)) if len(values) == len(vs) else "-"

    partial = f" ({len(vs)} of {len(runs_dirs)} seeds scored)" if len(vs) < len(runs_dirs) else ""
    cells = (", ".join(f"{f:.1f}" for f in fids) + partial + f" | **{mean:.1f}**{sd} | "
             + mean_of(1, "{:.2f}", 1000) + " | " + mean_of(2, "{:.2f}") + " / " + mean_of(3, "{:.2f}"))
    return cells, mean


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


def swd_cell(values):
    """The SWD cell of a row: mean with its sd; blank where a seed has none."""
    if not values or None in values:
        return ""
    sd = f" ({statistics.stdev(values):.1f})" if len(values) > 1 else ""
    return f"{statistics.mean(values):.1f}{sd}"


def speed(run_dir):
    """Training img/s: the median of metrics.jsonl (Gantry; of a run restored from bench/results,
    that median as scripts/results.sh kept it in speed.txt) or steps x batch / seconds (PyTorch)."""
    metrics = os.path.join(run_dir, "metrics.jsonl")
    kept = os.path.join(run_dir, "speed.txt")
    if not os.path.exists(metrics) and os.path.exists(kept):
        text = open(kept).read().strip()
        return float(text) if text else None
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
        print("| configuration | generator | seeds | FID per seed | mean FID (sd) | Inception FID per seed "
              "| mean Inception FID (sd) | KID x1000 | precision / recall | mean SWD (sd) "
              "| classes >= 5% (min over seeds) | smallest class share | img/s (median) |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        means, inception_means = {}, {}
        for config, runs in sorted(configs.items()):
            # Gantry's generators in eval mode (what the exporter writes); PyTorch's in both modes
            labels = sorted({label for _, s, _ in runs for label in s if not label.endswith("/train")})
            rates = [r for _, _, r in runs if r]
            for label in labels:
                per_seed = [(seed, s[label]) for seed, s, _ in sorted(runs) if label in s]
                fids = [v[0] for _, v in per_seed]
                mean = statistics.mean(fids)
                means[(config, label)] = mean
                rate = f"{statistics.median(rates):.0f}" if rates else ""
                fmt = fid_format(mean)
                sd = f" ({fmt.format(statistics.stdev(fids))})" if len(fids) > 1 else ""
                # A row of one step (`name @ step`) gets the Inception scores made at that step.
                name, _, at = config.partition(" @ ")
                inception, inception_mean = inception_cells(
                    config_dirs.get(name, []), label, int(at) if at else None)
                if inception_mean is not None:
                    inception_means[(config, label)] = inception_mean
                print(f"| {config} | {label} | {len(fids)} | "
                      + ", ".join(fmt.format(f) for f in fids)
                      + f" | **{fmt.format(mean)}**{sd} | {inception} | {swd_cell([v[3] for _, v in per_seed])} | "
                      f"{min(v[1] for _, v in per_seed)} | "
                      f"{min(v[2] for _, v in per_seed) * 100:.1f}% | {rate} |")
        print_ratios(means, "mean FID")
        print_ratios(inception_means, "mean Inception FID")
        if inception_means:
            print("\nInception metrics: `trainer eval --metric inception`, nv-bilinear, 2000 samples against "
                  "the test split (cats and dogs: all 2000 images).")


if __name__ == "__main__":
    main(sys.argv[1])
