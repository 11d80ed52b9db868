"""What every search strategy shares: counters, limits, progress, interruption."""

from __future__ import annotations

import time
from collections.abc import Callable

from tdpmmu.explore.execution import Execution, Schedule
from tdpmmu.explore.memo import StepMemo
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
        self.final_states: set[int] = set()  # fingerprints of finished executions
        self.final_canonical: set[int] = set()  # the same, up to symmetry
        self.memo = StepMemo()  # shared by the search's executions (explore.memo)

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

    def end_of_execution(self, ex: Execution, path: Schedule) -> tuple[Violation, Schedule] | None:
        """Judge an execution with no enabled transition: a deadlock, a failed
        end-of-execution check, or a final state to record. Counts the execution."""
        self.stats.executions += 1
        violation = ex.outcome()
        if violation is not None:
            return violation, list(path)
        self.final_states.add(ex.fingerprint())
        self.final_canonical.add(ex.canonical_fingerprint())
        return None

    @staticmethod
    def fair_cycle(enabled: list[set[int]], steps: Schedule) -> bool:
        """A cycle is a livelock only if it is fair: every thread enabled all along it
        takes a step in it. A spin-wait that another thread would end (if it ran) is a
        cycle too, but an unfair one, and no bug."""
        return set.intersection(*enabled) <= {t for t, _ in steps}

    @staticmethod
    def livelock(ex: Execution, tid: int, depth: int, seen_at: int) -> Violation:
        t = ex.threads[tid].name
        return Violation(
            "livelock",
            f"a cycle: the state after step {depth} ({t}) is the state after step "
            f"{seen_at}, so this schedule can repeat forever (unbounded retry)",
            thread=t,
        )

    def new_execution(self) -> Execution:
        return Execution(self.program, max_steps=self.limits.max_steps, memo=self.memo)

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
