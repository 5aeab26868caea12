#!/usr/bin/env bash
# Mutation testing (cargo-mutants) of every library crate, in parts of a few hours each on 2
# cores, resumable: a part that finished leaves mutants.out/<part>/done and is skipped next time,
# and a part stopped half-way goes on where it stopped (its tested mutants are kept, on the
# commit it started on), so the whole run (tens of hours) accumulates across sessions. Not part
# of `make test`.
#
#   scripts/mutants.sh                 every part not done yet, in order
#   scripts/mutants.sh serve-1of3 ...  these parts (done or not)
#   scripts/mutants.sh --recheck PART  a done part's survivors again, on this commit, after
#                                      tests were added
#   scripts/mutants.sh --list          the parts, their mutant counts and which are done
#   MUTANTS_MIN_TIMEOUT=300 scripts/mutants.sh   beside a benchmark: a longer least test timeout
#
# The mutants are built and tested in a worktree of the current commit (.mutants/tree, its own
# target folder .mutants/target; .tools, .ort and data linked from here), mutated in place one
# at a time: the checkout you work in is never touched, and each mutant is an incremental
# build (about a second for a change to one crate, against 11 s without incremental
# compilation). Each part mutates one package's files (one shard of them when the package is
# large) and runs the tests that check that package: its own, plus the test packages named below
# where the behaviour is checked end to end (the kernels through gantry-models' tests against
# candle's ops, the atomic writer through the trainer's crash tests, the server through the real
# clients). A part fails the script (non-zero exit) if cargo-mutants cannot run it (a failing
# baseline, a build error, bad flags); surviving mutants are results,
# not failures: `scripts/mutants_table.py` turns every part's outcomes into the per-module table
# of docs/testing.md (goal: >= 90% of viable mutants caught in every module). The parts'
# mutant lists are kept in bench/results/mutants (scripts/results.sh: restored before the run,
# saved after each part; `scripts/results.sh save` by hand keeps a part stopped half-way, which
# then resumes on its commit), so that the run goes on across machines.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
command -v cargo-mutants >/dev/null || cargo install cargo-mutants --locked --version 27.1.0
scripts/setup-tools.sh
scripts/fetch-ort.sh >/dev/null
scripts/fetch-inception.sh >/dev/null

# part name | package | shards | test packages (besides the package) | more cargo-mutants flags |
# tests left out (libtest --skip: the test packages' modules that cannot see the part's code,
# left out for time: the workspace binary's training tests alone take half a minute a mutant)
# Code compiled only with a GPU feature (cuDNN, NCCL) is excluded: no test here can run it, and
# mutating code the build leaves out cannot be caught.
not_deploy="training:: golden_step:: architecture:: inception_metrics:: resnet_reference::"
not_train="architecture:: export_parity:: reduced_precision:: runtime_library:: inception_metrics:: resnet_reference::"
not_metrics="training:: golden_step:: architecture:: export_parity:: reduced_precision:: runtime_library:: resnet_reference:: end_to_end:: claims::"
not_serve="generate::" # the runtime CLI's generate, info and bench tests never reach gantry-serve
parts=(
    "kernels|gantry-kernels|8|gantry-models|-e models/kernels/src/cudnn.rs -E cudnn -E cuda_fwd|"
    "models|gantry-models|4|||"
    "trainer|gantry-trainer|5|gantry-tests gantry-trainer-cli||$not_train"
    "data|gantry-data|2|||"
    "metrics|gantry-metrics|8|gantry-tests gantry-trainer-cli||$not_metrics"
    "distributed|gantry-distributed|1|gantry-trainer-cli|--features gantry-trainer-cli/mpi -e trainer/distributed/src/nccl.rs|"
    "tensorboard|gantry-tensorboard|1|||"
    "exporter|gantry-exporter|3|gantry-tests gantry-exporter-cli||$not_deploy"
    "runtime|gantry-runtime|3|gantry-tests||$not_deploy"
    "files|gantry-files|1|gantry-trainer-cli||"
    "triton|gantry-triton|1|||"
    "serve|gantry-serve|3|gantry-runtime-cli||$not_serve"
)

# part_names: every part, shards expanded (`kernels-1of8` ...).
part_names() {
    local line name pkg shards k
    for line in "${parts[@]}"; do
        IFS='|' read -r name pkg shards _ _ _ <<<"$line"
        for ((k = 1; k <= shards; k++)); do
            if [ "$shards" = 1 ]; then echo "$name"; else echo "$name-${k}of$shards"; fi
        done
    done
}

# line_of PART: the parts table's line of a part (`kernels-3of8` is the line `kernels`).
line_of() {
    local line name
    for line in "${parts[@]}"; do
        IFS='|' read -r name _ <<<"$line"
        if [ "$1" = "$name" ] || [[ "$1" == "$name"-*of* ]]; then
            echo "$line"
            return 0
        fi
    done
}

# skips_of PART: the libtest arguments that leave the part's skipped tests out (cargo-mutants
# passes what follows its `--` to cargo test, and cargo test what follows its own to the tests);
# they go last on the command line.
skips_of() {
    local skips s
    IFS='|' read -r _ _ _ _ _ skips <<<"$(line_of "$1")"
    [ -n "$skips" ] || return 0
    echo -n "-- --"
    for s in $skips; do echo -n " --skip $s"; done
    echo
}

# flags_of PART [own]: the cargo-mutants arguments of one part (sharded parts: --shard k/n,
# 0-based); with `own`, the package's own tests only (the first of two passes, below).
flags_of() {
    local want=$1 mode=${2:-} line name pkg shards tests extra k t
    for line in "${parts[@]}"; do
        IFS='|' read -r name pkg shards tests extra _ <<<"$line"
        for ((k = 1; k <= shards; k++)); do
            local part=$name
            [ "$shards" = 1 ] || part="$name-${k}of$shards"
            [ "$part" = "$want" ] || continue
            echo -n "-p $pkg --test-package $pkg"
            [ "$mode" = own ] || for t in $tests; do echo -n " --test-package $t"; done
            [ "$shards" = 1 ] || echo -n " --shard $((k - 1))/$shards"
            echo " $extra"
            return 0
        done
    done
    echo "unknown part: $want (scripts/mutants.sh --list shows the parts)" >&2
    return 1
}

if [ "${1:-}" = "--list" ]; then
    for part in $(part_names); do
        # shellcheck disable=SC2046
        count=$(cargo mutants --list $(flags_of "$part") 2>/dev/null | wc -l)
        state=todo
        [ -f "mutants.out/$part/done" ] && state=done
        printf '%-22s %5s mutants  %s\n' "$part" "$count" "$state"
    done
    exit 0
fi

# One run at a time: they share the worktree.
mkdir -p "$root/.mutants"
exec 9>"$root/.mutants/lock"
flock -n 9 || { echo "mutants.sh: another run holds $root/.mutants/lock" >&2; exit 1; }
scripts/results.sh restore

# The worktree at this commit, reset (an interrupted run may have left a mutant in it).
tree="$root/.mutants/tree"
if [ ! -e "$tree/.git" ]; then
    git worktree prune
    git worktree add --detach "$tree" HEAD >/dev/null
fi
# check_out COMMIT: the worktree at COMMIT, clean (an interrupted run may have left a mutant in
# it, and a mutant's fuzz target may have saved inputs: crashes of the mutant, not of the code).
check_out() {
    git -C "$tree" checkout -q --detach "$1"
    git -C "$tree" reset -q --hard
    git -C "$tree" clean -fdq
    for link in .tools .ort data; do
        [ -e "$root/$link" ] && ln -sfn "$root/$link" "$tree/$link"
    done
    commit=$(git -C "$tree" rev-parse --short HEAD)
}
head=$(git rev-parse HEAD)
check_out "$head"
export CARGO_TARGET_DIR="$root/.mutants/target" CARGO_INCREMENTAL=1

# run_mutants OUT WHAT ARGS...: cargo-mutants in the worktree with ARGS, results in OUT; OUT/done
# records the commit when it ran. cargo-mutants exits 0 (every mutant caught), 2 (some missed)
# or 3 (some timed out); anything else (1 bad arguments, 4 the unmutated tree fails its tests)
# means it did not run, and stops the script. Without a `--timeout` in ARGS the test timeout is
# 3x the baseline's test time, at least a minute (MUTANTS_MIN_TIMEOUT seconds: raise it when
# the machine is shared, or a slowed-down test "times out" and counts as caught).
run_mutants() {
    local out=$1 what=$2 status=0 timing=(--timeout-multiplier 3 --minimum-test-timeout "${MUTANTS_MIN_TIMEOUT:-60}")
    shift 2
    [[ " $* " == *" --timeout "* ]] && timing=()
    (cd "$tree" && cargo mutants --in-place --no-shuffle "${timing[@]}" -o "$out" "$@") || status=$?
    case $status in
        0 | 2 | 3)
            echo "$commit $(date -u +%FT%TZ)" >"$out/done"
            scripts/results.sh save
            ;;
        *)
            echo "mutants.sh: $what failed (cargo-mutants exit $status): see $out/mutants.out/debug.log" >&2
            exit "$status"
            ;;
    esac
}

# wide_baseline PART OUT: the cargo-mutants arguments for a run with the part's other test
# packages. cargo-mutants (27.1) runs its baseline with the mutated package's tests only, not
# the --test-package ones, and derives the test timeout from that: seconds, where the trainer
# CLI's or the workspace's tests take minutes, so every mutant would "time out" (and count as
# caught). Here the unmutated tree's tests of every package of the part run first (a failure
# stops the script, as a failing baseline would), timed after their build; the mutants then get
# 3x that time (at least 5 minutes: the machine is shared with benchmarks) and the built-in
# baseline is skipped.
wide_baseline() {
    local part=$1 out=$2 pkg tests extra skips args=() t start secs
    IFS='|' read -r _ pkg _ tests extra skips <<<"$(line_of "$part")"
    args=(-p "$pkg")
    for t in $tests; do args+=(-p "$t"); done
    [[ "$extra" =~ --features\ ([^ ]+) ]] && args+=(--features "${BASH_REMATCH[1]}")
    local skip_args=()
    for t in $skips; do skip_args+=(--skip "$t"); done
    mkdir -p "$out"
    (cd "$tree" && cargo test --no-run "${args[@]}") >"$out/baseline.log" 2>&1 || {
        echo "mutants.sh: the unmutated tree's tests of $part do not build: see $out/baseline.log" >&2
        exit 4
    }
    start=$(date +%s)
    (cd "$tree" && cargo test "${args[@]}" -- "${skip_args[@]}") >>"$out/baseline.log" 2>&1 || {
        echo "mutants.sh: the unmutated tree fails the tests of $part: see $out/baseline.log" >&2
        exit 4
    }
    secs=$(($(date +%s) - start))
    echo "$secs" >"$out/baseline-seconds"
    echo "--baseline=skip --timeout $((secs * 3 > 300 ? secs * 3 : 300))"
}

# without_shard ARGS...: the cargo-mutants arguments without their `--shard k/n`.
without_shard() {
    sed -E 's/--shard [0-9]+\/[0-9]+//' <<<"$*"
}

# recheck_part PART: the part's survivors (missed.txt of its first run), tested again on this
# commit with every test package of the part: cargo-mutants on the files that hold them,
# filtered to their exact names (a survivor whose line moved since is not found and stays
# counted as missed). The results go to mutants.out/<part>/recheck (the first run stays);
# scripts/mutants_table.py counts a survivor by its recheck when there is one.
recheck_part() {
    local part=$1 first="$root/mutants.out/$1" missed out flags
    [ -f "$first/done" ] || { echo "mutants.sh: part $part has not run yet" >&2; exit 1; }
    out="$first/recheck"
    rm -rf "$out"
    mkdir -p "$out"
    # The survivors of the first pass: of its last run and of the runs it resumed from.
    missed="$out/survivors.txt"
    local list lists=()
    for list in "$first"/earlier/*/missed.txt "$first/mutants.out/missed.txt"; do
        [ -f "$list" ] && lists+=("$list")
    done
    sort -u "${lists[@]}" /dev/null >"$missed"
    if [ ! -s "$missed" ]; then
        echo "== $part (recheck): no survivors"
        echo "$commit $(date -u +%FT%TZ)" >"$out/done"
        return
    fi
    # The package and its test packages, without the shard; then one -f per file and one
    # anchored regex of every survivor's name.
    flags=$(without_shard "$(flags_of "$part")")
    mapfile -t select < <(python3 - "$missed" <<'PY'
import re, sys
names = [l.rstrip("\n") for l in open(sys.argv[1]) if l.strip()]
for f in sorted({n.split(":", 1)[0] for n in names}):
    print("-f"); print(f)
escape = lambda n: re.sub(r"([\\.+*?()|\[\]{}^$#&~-])", r"\\\1", n)
print("-F"); print("^(" + "|".join(escape(n) for n in names) + ")$")
PY
)
    local timing
    timing=$(wide_baseline "$part" "$out")
    echo "== $part (recheck of $(wc -l <"$missed") survivors): cargo mutants $flags $timing"
    # shellcheck disable=SC2086
    run_mutants "$out" "recheck of $part" $flags $timing "${select[@]}" $(skips_of "$part")
}

# --recheck: the named parts' survivors again, after tests were added.
if [ "${1:-}" = "--recheck" ]; then
    shift
    [ $# -gt 0 ] || { echo "mutants.sh --recheck: name the parts" >&2; exit 2; }
    for part in "$@"; do recheck_part "$part"; done
    python3 scripts/mutants_table.py mutants.out
    exit 0
fi

# A part runs in two passes. The first tests every mutant with the package's own tests only:
# each mutant rebuilds one library and its unit-test binary, and most mutants fail there. The
# second (recheck_part) tests the first pass's survivors with the part's test packages as well
# (the workspace tests, the CLIs' tests: each mutant relinks those binaries and runs tests that
# take minutes). A mutant is caught if either pass catches it: the outcome of one run with every
# test package, at a fraction of its time. Parts with no other test package run once. Every
# part's first pass runs before any second pass, so that the first passes' survivors can be
# read (and unit tests written for them) while the slower second passes are still to come: a
# second pass runs on the commit checked out when it starts.
if [ $# -gt 0 ]; then todo=("$@"); else mapfile -t todo < <(part_names); fi

# two_passes PART: whether the part has other test packages (and its flags do not enable
# features of one of them, as distributed's gantry-trainer-cli/mpi, which its own package cannot
# be built with).
two_passes() {
    local flags own
    flags=$(flags_of "$1")
    own=$(flags_of "$1" own)
    [ "$own" != "$flags" ] && [[ "$flags" != *--features* ]]
}

# resume_args OUT FLAGS...: for a part stopped half-way in OUT (on the commit checked out), the
# cargo-mutants arguments that test only the mutants of its shard that no earlier run of it
# tested. Its earlier runs move to OUT/earlier/<n>/ (the table and the second pass read them);
# cargo-mutants applies --shard after --iterate's exclusions, so the shard is computed here
# from the unsharded list and everything else is excluded through --iterate's list of
# previously caught mutants (OUT/mutants.out/caught.txt, which cargo-mutants reads and moves to
# mutants.out.old; the table reads only each run's outcomes).
resume_args() {
    local out=$1 remaining
    shift
    mkdir -p "$out/earlier"
    [ -d "$out/mutants.out" ] && mv "$out/mutants.out" "$out/earlier/$(date +%s)"
    local unsharded
    unsharded=$(without_shard "$@")
    # shellcheck disable=SC2086
    (cd "$tree" && cargo mutants --list "$@") >"$out/shard.txt"
    # shellcheck disable=SC2086
    (cd "$tree" && cargo mutants --list $unsharded) >"$out/all.txt"
    mkdir -p "$out/mutants.out"
    remaining=$(python3 - "$out" <<'PY'
import glob, os, sys
out = sys.argv[1]
tested = set()
for run in glob.glob(os.path.join(out, "earlier", "*")):
    for kind in ("caught", "missed", "timeout", "unviable"):
        path = os.path.join(run, f"{kind}.txt")
        if os.path.exists(path):
            tested.update(l.rstrip("\n") for l in open(path) if l.strip())
shard = [l.rstrip("\n") for l in open(os.path.join(out, "shard.txt")) if l.strip()]
remaining = set(shard) - tested
with open(os.path.join(out, "mutants.out", "caught.txt"), "w") as f:
    for name in open(os.path.join(out, "all.txt")):
        if name.strip() and name.rstrip("\n") not in remaining:
            f.write(name)
print(len(remaining))
PY
)
    echo "$remaining"
}

for part in "${todo[@]}"; do
    out="$root/mutants.out/$part"
    if [ $# -eq 0 ] && [ -f "$out/done" ]; then
        echo "== $part: first pass done ($(cat "$out/done"))"
        continue
    fi
    resume=""
    if [ ! -f "$out/done" ] && [ -f "$out/commit" ] \
        && { compgen -G "$out/mutants.out/*.txt" || compgen -G "$out/earlier/*/*.txt"; } >/dev/null; then
        check_out "$(cat "$out/commit")"
        resume=yes
    else
        check_out "$head"
        rm -rf "$out"
        mkdir -p "$out"
        git -C "$tree" rev-parse HEAD >"$out/commit"
    fi
    flags=$(flags_of "$part")
    own=$(flags_of "$part" own)
    two_passes "$part" && touch "$out/two-passes" # the table counts this pass's survivors as awaiting the second
    timing="" skips=""
    if two_passes "$part"; then
        what="first pass, the package's own tests"
        args=$own
    else
        what="one pass"
        args=$flags
        if [ "$own" != "$flags" ]; then timing=$(wide_baseline "$part" "$out") skips=$(skips_of "$part"); fi
    fi
    if [ -n "$resume" ]; then
        # shellcheck disable=SC2086
        left=$(resume_args "$out" $args)
        echo "== $part ($what): resumed on $commit, $left mutants of its shard left"
        args="$(without_shard "$args") --iterate"
    else
        echo "== $part ($what): cargo mutants $args $timing $skips"
    fi
    # shellcheck disable=SC2086
    run_mutants "$out" "part $part" $args $timing $skips
    rm -rf "$out/mutants.out/mutants.out.old" "$out/mutants.out.old"
done
check_out "$head"
for part in "${todo[@]}"; do
    two_passes "$part" || continue
    if [ $# -eq 0 ] && [ -f "$root/mutants.out/$part/recheck/done" ]; then
        echo "== $part: second pass done ($(cat "$root/mutants.out/$part/recheck/done"))"
        continue
    fi
    recheck_part "$part"
done
python3 scripts/mutants_table.py mutants.out
