"""Random search with PCT priorities (Burckhardt et al., ASPLOS 2010).

Each run gives the threads random distinct priorities and picks ``depth - 1`` random
change points among the first ``steps`` steps; the highest-priority enabled thread runs,
and at the i-th change point the running thread drops to priority i. A bug that needs
``depth`` ordering constraints is found in one run with probability at least
1/(n·steps^(depth-1)). Branches (need_resched) are chosen uniformly. Finding nothing
proves nothing: the verdict is then "incomplete", with the number of runs.
"""

from __future__ import annotations

import random

from tdpmmu.explore.execution import Execution, Schedule
from tdpmmu.explore.runtime import Violation
from tdpmmu.explore.search.base import Search


class RandomPct(Search):
    def __init__(self, *args: object, runs: int = 1000, seed: int = 0, depth: int = 3,
                 **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.runs = runs
        self.rng = random.Random(seed)
        self.depth = depth
        self.seen: set[int] = set()

    def not_exhaustive(self) -> str:
        return f"{self.stats.executions} random (PCT) runs found no violation; not a proof"

    def explore(self) -> tuple[Violation, Schedule] | None:
        steps = 200  # estimate of an execution's length, refined by the runs
        for _ in range(self.runs):
            found = self._run(steps)
            if found is not None:
                return found
            steps = max(steps, self.stats.max_depth)
        return None

    def _run(self, steps: int) -> tuple[Violation, Schedule] | None:
        rng, stats = self.rng, self.stats
        ex: Execution = self.new_execution()
        n = len(ex.threads)
        prio = dict(zip(range(n), rng.sample(range(self.depth, self.depth + n), n), strict=True))
        changes = {rng.randrange(steps): i for i in range(self.depth - 1)}
        schedule: Schedule = []
        while True:
            self.tick()
            enabled = ex.enabled()
            if not enabled:
                stats.executions += 1
                v = ex.outcome()
                return (v, schedule) if v is not None else None
            top = max(prio[t] for t, _ in enabled)
            tid = next(t for t, _ in enabled if prio[t] == top)
            tr = rng.choice([x for x in enabled if x[0] == tid])
            if len(schedule) in changes:
                prio[tid] = changes[len(schedule)]
            schedule.append(tr)
            stats.transitions += 1
            v = ex.step(tr)
            stats.max_depth = max(stats.max_depth, len(schedule))
            fp = ex.fingerprint()
            if fp not in self.seen:
                self.seen.add(fp)
                stats.states += 1
            if v is not None:
                stats.executions += 1
                return v, schedule
