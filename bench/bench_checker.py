"""Benchmark: states, executions and seconds of the exhaustive search.

    python bench/bench_checker.py                  # memslot-delete, 2..4 vCPUs, v6.9
    python bench/bench_checker.py --vcpus 2 --budget 60

For each vCPU count it runs, side by side in one process:
  * plain search with the cache, vCPU symmetry and snapshot restore (`tdpmmu check --search plain`;
    DPOR, the default, is measured beside it by bench/bench_dpor.py),
  * cache on without symmetry, restore by snapshot + lazy thread rebuild,
  * cache on, restore by replaying the schedule prefix (the alternative measured in
    docs/design.md),
  * cache off (every interleaving run to its end),
each with the same time budget; a run that hits it reports "incomplete" with what it
covered. Ratios are computed between runs of this same invocation (the machines are
noisy: compare within a run, not across runs). Results also go to bench/results/.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time
from pathlib import Path

from tdpmmu.api import Config
from tdpmmu.explore.result import Limits
from tdpmmu.explore.search.dfs import DepthFirst

MODES = {
    "default": {"cache": True, "restore": "snapshot", "symmetry": True},  # tdpmmu check --search plain
    "cache+snapshot": {"cache": True, "restore": "snapshot", "symmetry": False},
    "cache+replay": {"cache": True, "restore": "replay", "symmetry": False},
    "no-cache": {"cache": False, "restore": "snapshot", "symmetry": False},
}


def run(scenario: str, kernel: str, vcpus: int, mode: str, budget: float) -> dict[str, object]:
    program = Config(scenario, kernel, None, vcpus).program()
    search = DepthFirst(program, Limits(time_limit=budget), **MODES[mode])  # type: ignore[arg-type]
    r = search.run()
    s = r.stats
    return {
        "scenario": scenario, "kernel": kernel, "vcpus": vcpus, "mode": mode,
        "verdict": r.verdict, "states": s.states, "executions": s.executions,
        "transitions": s.transitions, "replayed_steps": s.replayed, "seconds": round(s.seconds, 3),
        "states_per_s": round(s.states / s.seconds) if s.seconds else 0,
        # peak RSS of this process so far (Linux: KiB); runs go in order, so it only grows
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }


def _ratio(a: dict[str, object], b: dict[str, object], key: str) -> str:
    return f"{float(a[key]) / max(float(b[key]), 1e-9):.1f}x"  # type: ignore[arg-type]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenario", default="memslot-delete")
    ap.add_argument("--kernel", default="v6.9")
    ap.add_argument("--vcpus", type=int, nargs="*", default=[2, 3, 4])
    ap.add_argument("--modes", nargs="*", default=list(MODES), choices=list(MODES))
    ap.add_argument("--budget", type=float, default=600.0, help="seconds per run (default 600)")
    args = ap.parse_args()

    rows = []
    header = f"{'vcpus':>5} {'mode':<15} {'verdict':<10} {'states':>9} {'executions':>10} " \
             f"{'replayed':>10} {'seconds':>8} {'states/s':>8} {'peakMiB':>7}"
    print(f"{args.scenario} on {args.kernel}, budget {args.budget:g}s per run, "
          f"python {platform.python_version()}")
    print(header)
    for n in args.vcpus:
        for mode in args.modes:
            row = run(args.scenario, args.kernel, n, mode, args.budget)
            rows.append(row)
            print(f"{n:>5} {mode:<15} {row['verdict']:<10} {row['states']:>9} {row['executions']:>10} "
                  f"{row['replayed_steps']:>10} {row['seconds']:>8} {row['states_per_s']:>8} "
                  f"{row['peak_rss_mib']:>7}", flush=True)
    by = {(r["vcpus"], r["mode"]): r for r in rows}
    for n in args.vcpus:
        a, b = by.get((n, "cache+snapshot")), by.get((n, "cache+replay"))
        if a and b and a["verdict"] == b["verdict"] == "pass":
            print(f"vcpus={n}: snapshot restore is {_ratio(b, a, 'seconds')} faster than replay "
                  "restore (same states)")
        d = by.get((n, "default"))
        if a and d and a["verdict"] == d["verdict"] == "pass":
            print(f"vcpus={n}: symmetry explores {_ratio(a, d, 'states')} fewer states, "
                  f"{_ratio(a, d, 'seconds')} less time")
    out = Path(__file__).parent / "results" / f"checker-{args.scenario}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(rows, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
