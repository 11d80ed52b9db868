"""Shortest counterexamples: after a search finds a violation, search again for one at
least one step shorter (a depth-bounded search), until none exists or time runs out.

The bounded search re-expands a state reached by a shorter path, so when it finishes
without a violation, no violation exists within the bound: the last one found is a
shortest one (in steps), and the result says so (``minimal``)."""

from __future__ import annotations

import time

from tdpmmu.explore.program import Program
from tdpmmu.explore.result import Limits, Result
from tdpmmu.explore.search.dfs import DepthFirst


def shortest(program: Program, found: Result, limits: Limits, *, symmetry: bool) -> Result:
    deadline = time.perf_counter() + limits.shrink_time
    best = found
    while len(best.schedule) > 1:
        left = deadline - time.perf_counter()
        if left <= 0:
            return best
        bounded = Limits(time_limit=left, max_steps=limits.max_steps)
        search = DepthFirst(program, bounded, cache=True, symmetry=symmetry,
                            depth_bound=len(best.schedule) - 1)
        shorter = search.run()
        if shorter.verdict != "violation":
            best.minimal = search.completed  # no violation within the bound: best is shortest
            return best
        shorter.stats = found.stats  # report the counts of the search that decided
        best = shorter
    best.minimal = True
    return best
