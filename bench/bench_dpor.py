"""Partial-order reduction against plain search on memslot-delete, side by side.

    python bench/bench_dpor.py --vcpus 2 3 4 --time-limit 120 [--kernel v6.9] [--modes ...]

For every vCPU count and search mode: verdict, executions, states, seconds, and the
reduction factor in executions against plain search without symmetry and without left
movers (every interleaving of the unreduced system, every release a step). A mode
ending in ``+movers`` runs each release with the step before it where that is sound
(docs/design.md, "Left movers"); ``dpor+sym+movers`` is what ``tdpmmu check`` runs,
``plain+sym+movers`` what ``tdpmmu check --search plain`` runs.
A run stopped by ``--time-limit`` is reported as ``incomplete`` with what it covered; a
factor against an incomplete plain run is a lower bound (">"), and one of an incomplete
DPOR run is not computed ("?").
Results: bench/results/dpor.txt (by hand: redirect the output).
"""

from __future__ import annotations

import argparse
import platform
import time
from dataclasses import dataclass

from tdpmmu.api import Config
from tdpmmu.explore.result import Limits
from tdpmmu.explore.search.base import Search
from tdpmmu.explore.search.dfs import DepthFirst
from tdpmmu.explore.search.dpor import Dpor

# mode -> search and its options; a name ending in "+movers" also turns left movers on
MODES: dict[str, tuple[type[Search], dict[str, bool]]] = {
    "plain": (DepthFirst, {}),
    "plain+sym": (DepthFirst, {"symmetry": True}),
    "dpor": (Dpor, {}),
    "dpor+sym": (Dpor, {"symmetry": True}),
    "dpor-stateless": (Dpor, {"cache": False}),
    "plain+movers": (DepthFirst, {}),
    "plain+sym+movers": (DepthFirst, {"symmetry": True}),  # tdpmmu check --search plain
    "dpor+sym+movers": (Dpor, {"symmetry": True}),  # tdpmmu check's default
}


@dataclass
class Row:
    vcpus: int
    mode: str
    verdict: str
    executions: int
    states: int
    seconds: float
    finals: int


def run(scenario: str, kernel: str, vcpus: int, mode: str, budget: float) -> Row:
    program = Config(scenario, kernel, None, vcpus, movers=mode.endswith("+movers")).program()
    search_class, options = MODES[mode]
    search = search_class(program, Limits(time_limit=budget, shrink_time=0), None,
                          **{"cache": True, **options})  # type: ignore[call-arg]
    start = time.perf_counter()
    result = search.run()
    seconds = time.perf_counter() - start
    return Row(vcpus, mode, result.verdict, result.stats.executions, result.stats.states, seconds,
               len(search.final_states))


def factor(row: Row, base: Row | None) -> str:
    if base is None or row.mode == base.mode or row.verdict == "incomplete":
        return "" if base is None or row.mode == base.mode else "?"
    ratio = base.executions / max(row.executions, 1)
    return f"{'>' if base.verdict == 'incomplete' else ''}{ratio:.1f}x"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vcpus", type=int, nargs="+", default=[2, 3, 4])
    ap.add_argument("--time-limit", type=float, default=120.0, help="seconds per run (0: none)")
    ap.add_argument("--kernel", default="v6.9")
    ap.add_argument("--scenario", default="memslot-delete")
    ap.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES))
    args = ap.parse_args()
    print(f"# {args.scenario} on {args.kernel}, --time-limit {args.time_limit:g}s per run; "
          f"python {platform.python_version()}, {time.strftime('%Y-%m-%d %H:%M')}")
    header = f"{'vcpus':>5} {'mode':<16} {'verdict':<10} {'executions':>11} {'states':>9} " \
             f"{'seconds':>8} {'finals':>6} {'exec. reduction vs plain':>24}"
    print(header)
    for vcpus in args.vcpus:
        rows: list[Row] = []
        for mode in args.modes:
            rows.append(run(args.scenario, args.kernel, vcpus, mode, args.time_limit))
            base = next((r for r in rows if r.mode == "plain"), None)
            r = rows[-1]
            print(f"{r.vcpus:>5} {r.mode:<16} {r.verdict:<10} {r.executions:>11} {r.states:>9} "
                  f"{r.seconds:>8.1f} {r.finals:>6} {factor(r, base):>24}", flush=True)


if __name__ == "__main__":
    main()
