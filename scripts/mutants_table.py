"""The per-module table of a mutation run: every part under mutants.out/ (scripts/mutants.sh).

For each source file: viable mutants (built), caught (a test failed or timed out), missed, and
the share caught; modules under the goal (90%) are marked, and the survivors listed under the
table for explaining or killing. Parts not finished are named, so a partial run says so. A part
rechecked after tests were added (`scripts/mutants.sh --recheck PART`) counts each survivor by
its recheck's outcome (a survivor the recheck did not find, its line having moved, stays
missed).

    python3 scripts/mutants_table.py [mutants.out] [--missed]
"""
import collections
import math
import json
import os
import sys

GOAL = 0.90


def percent(share):
    """A share as a percentage rounded down (99.6% is not shown as 100%)."""
    return f"{math.floor(share * 1000) / 10:.1f}%"


def mutants_of(outcomes):
    """(name, file, summary) of every mutant in a cargo-mutants outcomes.json."""
    with open(outcomes) as f:
        data = json.load(f)
    for o in data["outcomes"]:
        mutant = o["scenario"].get("Mutant") if isinstance(o["scenario"], dict) else None
        if mutant is not None:
            yield mutant["name"], mutant["file"], o["summary"]


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    root = args[0] if args else "mutants.out"
    show_missed = "--missed" in sys.argv
    per_file = collections.defaultdict(collections.Counter)
    missed = collections.defaultdict(list)
    parts_done, parts_open = [], []
    for part in sorted(os.listdir(root)) if os.path.isdir(root) else []:
        base = os.path.join(root, part)
        outcomes = os.path.join(base, "mutants.out", "outcomes.json")
        done = os.path.join(base, "done")
        recheck = os.path.join(base, "recheck")
        rechecked = os.path.exists(os.path.join(recheck, "done"))
        if not os.path.exists(done):
            parts_open.append(part)
        else:
            with open(done) as f:
                note = f.read().split()[0]
            if rechecked:
                with open(os.path.join(recheck, "done")) as f:
                    note += f", survivors rechecked on {f.read().split()[0]}"
            parts_done.append(f"{part} ({note})")
        if not os.path.exists(outcomes):
            continue
        second = {}
        if rechecked and os.path.exists(os.path.join(recheck, "mutants.out", "outcomes.json")):
            second = {name: summary for name, _, summary in mutants_of(
                os.path.join(recheck, "mutants.out", "outcomes.json"))}
        for name, file, summary in mutants_of(outcomes):
            if summary == "MissedMutant":
                summary = second.get(name, summary)
            per_file[file][summary] += 1
            if summary == "MissedMutant":
                missed[file].append(name)
    if not per_file:
        print(f"no outcomes under {root}/")
        return
    print("| module | viable | caught | timeout | missed | caught % |")
    print("|---|---:|---:|---:|---:|---:|")
    totals = collections.Counter()
    below = []
    for path in sorted(per_file):
        c = per_file[path]
        caught, timeout, miss = c["CaughtMutant"], c["Timeout"], c["MissedMutant"]
        viable = caught + timeout + miss
        totals.update(c)
        share = (caught + timeout) / viable if viable else 1.0
        mark = "" if share >= GOAL else " **below 90%**"
        if share < GOAL:
            below.append(path)
        print(f"| `{path}` | {viable} | {caught} | {timeout} | {miss} | {percent(share)}{mark} |")
    viable = totals["CaughtMutant"] + totals["Timeout"] + totals["MissedMutant"]
    share = (totals["CaughtMutant"] + totals["Timeout"]) / viable if viable else 1.0
    print(f"| **all** | **{viable}** | **{totals['CaughtMutant']}** | **{totals['Timeout']}** | "
          f"**{totals['MissedMutant']}** | **{percent(share)}** |")
    print()
    print(f"parts finished: {', '.join(parts_done) or 'none'}")
    if parts_open:
        print(f"parts started but not finished: {', '.join(parts_open)}")
    print(f"unviable (did not build, not counted): {totals['Unviable']}")
    if below:
        print(f"modules below the goal: {', '.join(below)}")
    if show_missed:
        for path in sorted(missed):
            print(f"\n{path}:")
            for name in missed[path]:
                print(f"  {name}")


main()
