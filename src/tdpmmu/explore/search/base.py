"""What every search strategy shares: counters, limits, progress, interruption."""

from __future__ import annotations

import time
from collections.abc import Callable

from tdpmmu.explore.execution import Execution, Schedule
from tdpmmu.explore.program import Program
from tdpmmu.explore.result import Limits, Result, Stats
from tdpmmu.explore.runtime import Violation
from tdpmmu.explore.watchdog import watchdog

Progress = Callable[[Stats], None]


class LimitReached(Exception):
    """Raised inside a search to stop it; the search reports what it covered."""


class Search:
    """Bookkeeping for one search run. Strategies subclass it and implement ``explore``."""

    PROGRESS_EVERY = 2000  # iterations between limit/progress checks: keeps the loop lean

    def __init__(self, program: Program, limits: Limits, progress: Progress | None = None) -> None:
        self.program = program
        self.limits = limits
        self.progress = progress
        self.stats = Stats()
        self._start = 0.0
        self._tick = 0
        self.completed = False  # explore() ran to its end: no limit or interrupt stopped it

    # -- hooks for strategies ---------------------------------------------------------
    def explore(self) -> tuple[Violation, Schedule] | None:
        raise NotImplementedError

    def not_exhaustive(self) -> str:
        """Why finding nothing would not prove anything (a bounded or random search)."""
        return ""

    def tick(self) -> None:
        """Call once per search iteration; checks limits now and then."""
        self._tick += 1
        if self.limits.max_states and self.stats.states >= self.limits.max_states:
            raise LimitReached(f"--max-states {self.limits.max_states} reached")
        if self._tick % self.PROGRESS_EVERY:
            return
        self.stats.seconds = time.perf_counter() - self._start
        if self.progress is not None:
            self.progress(self.stats)
        lim = self.limits
        if lim.time_limit and self.stats.seconds >= lim.time_limit:
            raise LimitReached(f"--time-limit {lim.time_limit:g}s reached")

    def new_execution(self) -> Execution:
        return Execution(self.program, max_steps=self.limits.max_steps)

    # -- driver -----------------------------------------------------------------------
    def run(self) -> Result:
        with watchdog(self.limits.hang_seconds):
            return self._search()

    def _search(self) -> Result:
        self._start = time.perf_counter()
        reason = ""
        found = None
        try:
            found = self.explore()
            self.completed = True
        except LimitReached as stop:
            reason = str(stop)
        except KeyboardInterrupt:
            reason = "interrupted"
        self.stats.seconds = time.perf_counter() - self._start
        if found is not None:
            violation, schedule = found
            trace = Execution.replay(
                self.program, schedule, tracing=True, max_steps=self.limits.max_steps
            ).trace
            return Result("violation", self.stats, violation, schedule, trace)
        reason = reason or self.not_exhaustive()
        if reason:
            return Result("incomplete", self.stats, reason=reason)
        return Result("pass", self.stats)
