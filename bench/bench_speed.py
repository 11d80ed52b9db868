"""Benchmark: the explorer's per-state cost, two source trees side by side.

    python bench/bench_speed.py                      # base = merge-base with main, new = this tree
    python bench/bench_speed.py --base f8ac802 --runs 3
    python bench/bench_speed.py --base-src /path/to/other/src

Each configuration runs with a fixed ``--max-states`` (or to completion), so both trees
do the same work; the script checks that they report the same counts (states,
executions, transitions, verdict) and fails loudly if not. Every run is a fresh
subprocess with ``PYTHONPATH`` pointing at one tree's ``src``; runs of the two trees
alternate, and the best of ``--runs`` is kept (the machines are noisy: compare within
one invocation, never across). Only the search is timed, in CPU seconds of the process
(``time.process_time``: the development machine is shared, and wall time there measures
the neighbours too), not the interpreter's start or the model's import. The base tree is extracted with
``git archive`` into a temporary directory (no worktree, nothing written to the repo).
Results also go to bench/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# name: (Config keyword arguments, max_states; 0 = run to completion)
CONFIGS: dict[str, tuple[dict[str, object], int]] = {
    "memslot-delete 1v dpor": ({"scenario": "memslot-delete", "vcpus": 1, "search": "dpor"}, 0),
    "memslot-delete 2v dpor": ({"scenario": "memslot-delete", "vcpus": 2, "search": "dpor"}, 15000),
    "fault-vs-zap 2v 1gfn dpor": (
        {"scenario": "fault-vs-zap", "vcpus": 2, "gfns": 1, "search": "dpor"}, 10000),
    "vcpu-load 3v plain": ({"scenario": "vcpu-load", "vcpus": 3, "search": "plain"}, 3000),
    "memslot-delete 2v plain": ({"scenario": "memslot-delete", "vcpus": 2, "search": "plain"}, 10000),
    # the README's command, to its verdict
    "memslot-delete 2v (default)": ({"scenario": "memslot-delete", "vcpus": 2}, 0),
    "memslot-delete-roots 3v dpor": (
        {"scenario": "memslot-delete-roots", "vcpus": 3, "search": "dpor"}, 20000),
}

RUNNER = """
import json, sys, time
from tdpmmu.api import Config, check
from tdpmmu.explore.result import Limits
kwargs, max_states = json.loads(sys.argv[1])
cpu = time.process_time()
r = check(Config(shrink=False, **kwargs), Limits(max_states=max_states))
cpu = time.process_time() - cpu
s = r.stats
print(json.dumps({"verdict": r.verdict, "states": s.states, "executions": s.executions,
                  "transitions": s.transitions, "replayed": s.replayed, "seconds": cpu, "wall": s.seconds}))
"""


def run_once(src: Path, kwargs: dict[str, object], max_states: int) -> dict[str, object]:
    env = {**os.environ, "PYTHONPATH": str(src), "PYTHONHASHSEED": "0"}
    out = subprocess.run([sys.executable, "-c", RUNNER, json.dumps([kwargs, max_states])],
                         env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]


def counts(row: dict[str, object]) -> tuple[object, ...]:
    return row["verdict"], row["states"], row["executions"], row["transitions"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", help="git revision of the base tree (default: where this branch left main)")
    ap.add_argument("--base-src", type=Path, help="a base tree's src directory instead of --base")
    ap.add_argument("--new-src", type=Path, default=ROOT / "src", help="default: this tree's src")
    ap.add_argument("--runs", type=int, default=3, help="runs per tree and configuration, best kept")
    ap.add_argument("--configs", nargs="*", default=list(CONFIGS), choices=list(CONFIGS))
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        base_src = args.base_src
        base_name = str(base_src)
        if base_src is None:
            base = args.base or subprocess.run(["git", "merge-base", "main", "HEAD"], cwd=ROOT, check=True,
                                               capture_output=True, text=True).stdout.strip()
            rev = subprocess.run(["git", "rev-parse", "--short", base], cwd=ROOT, check=True,
                                 capture_output=True, text=True).stdout.strip()
            archive = subprocess.run(["git", "archive", rev, "src"], cwd=ROOT, check=True,
                                     capture_output=True).stdout
            subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
            base_src = Path(tmp) / "src"
            base_name = rev
        new_rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, check=True,
                                 capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "src"], cwd=ROOT, check=True,
                               capture_output=True, text=True).stdout.strip()
        new_name = f"{new_rev}{'+dirty' if dirty else ''}"
        if args.new_src != ROOT / "src":
            new_name = str(args.new_src)

        print(f"base {base_name} vs new {new_name}; best of {args.runs}, runs alternating; "
              f"python {platform.python_version()}, {time.strftime('%Y-%m-%d %H:%M')}")
        header = f"{'configuration':<28} {'states':>7} {'execs':>7} {'base s':>7} {'new s':>7} " \
                 f"{'base st/s':>9} {'new st/s':>9} {'ratio':>6}"
        print(header, flush=True)
        rows = []
        for name in args.configs:
            kwargs, max_states = CONFIGS[name]
            best: dict[str, dict[str, object]] = {}
            for _ in range(args.runs):
                for tree, src in (("base", base_src), ("new", args.new_src)):
                    row = run_once(src, kwargs, max_states)
                    if tree in best and counts(best[tree]) != counts(row):
                        raise SystemExit(f"{name}: {tree} is not deterministic: {best[tree]} vs {row}")
                    if tree not in best or row["seconds"] < best[tree]["seconds"]:  # type: ignore[operator]
                        best[tree] = row
            b, n = best["base"], best["new"]
            if counts(b) != counts(n):
                raise SystemExit(f"{name}: the trees disagree: base {b} vs new {n}")
            bs, ns = float(b["seconds"]), float(n["seconds"])  # type: ignore[arg-type]
            states = int(b["states"])  # type: ignore[call-overload]
            row = {"configuration": name, "config": kwargs, "max_states": max_states,
                   "verdict": b["verdict"], "states": states, "executions": b["executions"],
                   "transitions": b["transitions"], "base_seconds": round(bs, 3),
                   "new_seconds": round(ns, 3), "base_states_per_s": round(states / bs),
                   "new_states_per_s": round(states / ns), "ratio": round(bs / ns, 2)}
            rows.append(row)
            print(f"{name:<28} {states:>7} {b['executions']:>7} {bs:>7.2f} {ns:>7.2f} "
                  f"{row['base_states_per_s']:>9} {row['new_states_per_s']:>9} {row['ratio']:>5.2f}x",
                  flush=True)
    out = ROOT / "bench" / "results" / f"speed-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps({"base": base_name, "new": new_name, "runs": args.runs, "rows": rows},
                              indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
