"""The per-module table of a mutation run: every part under mutants.out/ (scripts/mutants.sh).

For each source file: viable mutants (built), caught (a test failed or timed out), equivalent,
missed, awaiting the second pass (survivors of a two-pass part's first pass, not yet tested with
the part's other test packages), and the share caught of the viable mutants that are neither
equivalent nor awaiting (the mutation score);
modules under the goal (90%) are marked, and the survivors listed under the table for explaining
or killing. Equivalent mutants (no test can tell them from the code) are listed by name, each
with its reason, in scripts/mutants-equivalent.txt; a listed name no run reports as a survivor
any more (its line moved, or a test now catches it) is printed, so that the list stays true. Parts not finished are named, so a partial run says so. A part
rechecked after tests were added (`scripts/mutants.sh --recheck PART`) counts each survivor by
its recheck's outcome (a survivor the recheck did not find, its line having moved, stays
missed). A part resumed after a stop has its first pass in several runs; all are read.

    python3 scripts/mutants_table.py [mutants.out] [--missed]
"""
import collections
import math
import json
import os
import re
import sys

GOAL = 0.90
EQUIVALENT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mutants-equivalent.txt")


def equivalents(path=EQUIVALENT):
    """{mutant name or `re:PATTERN`: reason} from the list (`NAME -- REASON` lines, or
    `re:PATTERN -- REASON` for a family of mutants whose names match the regular expression
    PATTERN in full; `#` comments)."""
    found = {}
    if os.path.exists(path):
        for line in open(path):
            line = line.strip()
            if line and not line.startswith("#"):
                name, _, reason = line.partition(" -- ")
                found[name.strip()] = reason.strip()
    return found


def listed_as(name, known):
    """The entry of `known` (equivalents()) that lists mutant `name`: its exact name, or the
    first pattern it matches in full; None if none does."""
    if name in known:
        return name
    for entry in known:
        if entry.startswith("re:") and re.fullmatch(entry[3:], name):
            return entry
    return None


def percent(share):
    """A share as a percentage rounded down (99.6% is not shown as 100%)."""
    return f"{math.floor(share * 1000) / 10:.1f}%"


LISTS = {"caught.txt": "CaughtMutant", "missed.txt": "MissedMutant", "timeout.txt": "Timeout",
         "unviable.txt": "Unviable"}


def mutants_of(outcomes):
    """(name, file, summary) of every mutant in a cargo-mutants outcomes.json; from the run's
    lists beside it (one line per mutant tested, appended as it finishes) when the file does not
    parse (a run killed while rewriting it) or is not there (a run restored from bench/results,
    which keeps only the lists)."""
    try:
        with open(outcomes) as f:
            data = json.load(f)
    except (ValueError, FileNotFoundError):  # torn, or not kept (bench/results keeps the lists)
        run = os.path.dirname(outcomes)
        for list_name, summary in LISTS.items():
            path = os.path.join(run, list_name)
            for line in open(path) if os.path.exists(path) else []:
                if line.strip():
                    name = line.rstrip("\n")
                    yield name, name.split(":", 1)[0], summary
        return
    for o in data["outcomes"]:
        mutant = o["scenario"].get("Mutant") if isinstance(o["scenario"], dict) else None
        if mutant is not None:
            yield mutant["name"], mutant["file"], o["summary"]


def first_pass_outcomes(base):
    """The outcomes.json of every run of a part's first pass: the runs a resumed part stopped
    in (base/earlier/<n>/, scripts/mutants.sh moves them there) and its last run."""
    earlier = os.path.join(base, "earlier")
    runs = [os.path.join(earlier, r) for r in sorted(os.listdir(earlier))] if os.path.isdir(earlier) else []
    runs.append(os.path.join(base, "mutants.out"))
    return [os.path.join(r, "outcomes.json") for r in runs
            if any(os.path.exists(os.path.join(r, n)) for n in ("outcomes.json", *LISTS))]


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    root = args[0] if args else "mutants.out"
    show_missed = "--missed" in sys.argv
    known = equivalents()
    per_file = collections.defaultdict(collections.Counter)
    missed = collections.defaultdict(list)
    parts_done, parts_open = [], []
    listed_found = set()
    for part in sorted(os.listdir(root)) if os.path.isdir(root) else []:
        base = os.path.join(root, part)
        runs = first_pass_outcomes(base)
        done = os.path.join(base, "done")
        recheck = os.path.join(base, "recheck")
        rechecked = os.path.exists(os.path.join(recheck, "done"))
        # A two-pass part (scripts/mutants.sh) whose second pass has not run: its first pass's
        # survivors are not missed yet, only untested with the other packages.
        pending = os.path.exists(os.path.join(base, "two-passes")) and not rechecked
        if not os.path.exists(done):
            parts_open.append(part)
        elif pending:
            parts_open.append(f"{part} (first pass done; its survivors await the second)")
        else:
            with open(done) as f:
                note = f.read().split()[0]
            if rechecked:
                with open(os.path.join(recheck, "done")) as f:
                    note += f", survivors rechecked on {f.read().split()[0]}"
            parts_done.append(f"{part} ({note})")
        if not runs:
            continue
        second = {}
        if rechecked and first_pass_outcomes(recheck):
            second = {name: summary for name, _, summary in mutants_of(
                os.path.join(recheck, "mutants.out", "outcomes.json"))}
        # A mutant tested again by a later run (one taken out of a run's lists to be retested,
        # e.g. a timeout on a loaded machine) counts once, with its latest outcome.
        latest = {}
        for run in runs:
            for name, file, summary in mutants_of(run):
                latest[name] = (file, summary)
        for name, (file, summary) in latest.items():
            if summary == "MissedMutant":
                summary = second.get(name, summary)
            entry = listed_as(name, known) if summary == "MissedMutant" else None
            if entry is not None:
                summary = "Equivalent"
                listed_found.add(entry)
            elif summary == "MissedMutant" and pending:
                summary = "Pending"
            per_file[file][summary] += 1
            if summary == "MissedMutant":
                missed[file].append(name)
    if not per_file:
        print(f"no outcomes under {root}/")
        return
    print("| module | viable | caught | timeout | equivalent | missed | awaiting 2nd pass | caught % of the rest |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    totals = collections.Counter()
    below = []

    def counts(c):
        """Viable counts of one module and its score: the share caught of the mutants that are
        neither equivalent nor awaiting their second pass (None when there are none)."""
        caught, timeout, same, miss, wait = (c["CaughtMutant"], c["Timeout"], c["Equivalent"],
                                             c["MissedMutant"], c["Pending"])
        scored = caught + timeout + miss
        share = (caught + timeout) / scored if scored else (None if wait else 1.0)
        return caught, timeout, same, miss, wait, scored + same + wait, share

    def shown(share):
        return "-" if share is None else percent(share)

    for path in sorted(per_file):
        caught, timeout, same, miss, wait, viable, share = counts(per_file[path])
        totals.update(per_file[path])
        mark = "" if share is None or share >= GOAL else " **below 90%**"
        if mark:
            below.append(path)
        print(f"| `{path}` | {viable} | {caught} | {timeout} | {same} | {miss} | {wait} | {shown(share)}{mark} |")
    caught, timeout, same, miss, wait, viable, share = counts(totals)
    print(f"| **all** | **{viable}** | **{caught}** | **{timeout}** | **{same}** | **{miss}** | **{wait}** | "
          f"**{shown(share)}** |")
    print()
    print(f"parts finished: {', '.join(parts_done) or 'none'}")
    if parts_open:
        print(f"parts started but not finished: {', '.join(parts_open)}")
    print(f"unviable (did not build, not counted): {totals['Unviable']}")
    if below:
        print(f"modules below the goal: {', '.join(below)}")
    stale = sorted(set(known) - listed_found)
    if stale:
        print("listed as equivalent but not a survivor of any run (remove or rename):")
        for name in stale:
            print(f"  {name}")
    if show_missed:
        for path in sorted(missed):
            print(f"\n{path}:")
            for name in missed[path]:
                print(f"  {name}")


main()
