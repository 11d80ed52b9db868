"""Exhaustive depth-first search, with or without a visited-state cache.

With the cache (the default) a state whose fingerprint was seen before is not expanded
again. The fingerprint covers the whole world and every thread's frames, locals and
value stacks, so for safety properties this prunes nothing reachable (the cross-check
tests compare it against the cache-less search). A state met again on the current path
closes a cycle: if the cycle is fair it is reported as a livelock, which the cache would
otherwise hide (without the cache, the per-thread step bound reports it). Without the
cache every interleaving is run to its end.
"""

from __future__ import annotations

from tdpmmu.explore.execution import Execution, Schedule, Transition
from tdpmmu.explore.runtime import Violation
from tdpmmu.explore.search.base import Search


class DepthFirst(Search):
    """``restore="snapshot"`` (default) comes back to an ancestor by copying the world
    back and rebuilding, lazily, only the threads that ran ahead; ``restore="replay"``
    re-runs the whole schedule prefix from the initial state (kept to measure against;
    see docs/design.md)."""

    def __init__(self, *args: object, cache: bool = True, restore: str = "snapshot",
                 symmetry: bool = False, depth_bound: int = 0,
                 preemptions: int | None = None, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        # CHESS's context bounding: only schedules that switch away from a thread that
        # could have gone on at most `preemptions` times (None: no bound).
        self.preemptions = preemptions
        self.cache = cache
        self.symmetry = symmetry
        # With a bound, states at that depth are not expanded, and a state is expanded
        # again if reached by a shorter path (so every violation within the bound is found).
        self.depth_bound = depth_bound
        self.restore_by_replay = restore == "replay"
        self._replayed = 0

    def not_exhaustive(self) -> str:
        if self.preemptions is not None:
            return (f"every schedule with at most {self.preemptions} "
                    f"preemption{'' if self.preemptions == 1 else 's'} explored; not a proof")
        if self.depth_bound:
            return f"every schedule of at most {self.depth_bound} steps explored; not a proof"
        return ""

    def explore(self) -> tuple[Violation, Schedule] | None:
        ex: Execution = self.new_execution()
        try:
            return self._dfs(ex)
        finally:
            self.stats.replayed = ex.rebuilt + self._replayed

    def _dfs(self, ex: Execution) -> tuple[Violation, Schedule] | None:
        stats = self.stats
        fingerprint = Execution.canonical_fingerprint if self.symmetry else Execution.fingerprint
        bound = self.depth_bound
        visited: dict[int, int] = {fingerprint(ex): 0}  # fingerprint -> shallowest depth seen
        # States on the current path: reaching one again means the execution can repeat
        # forever, which the step bound reports without the cache and the cache would hide.
        on_path: dict[int, int] = {next(iter(visited)): 0}
        path_fps: list[int] = [next(iter(visited))]
        stats.states = 1
        first = self._expand(ex, [])
        if isinstance(first, tuple):
            return first
        # stack[i] = enabled transitions at depth i; cursor[i] = the next one to try;
        # snaps[i] = the state at depth i, to come back to.
        stack: list[list[Transition]] = [first]
        cursor = [0]
        snaps = [] if self.restore_by_replay else [ex.snapshot()]
        path: Schedule = []  # transitions from the initial state to the top of the stack
        used = [0]  # preemptions spent to reach each depth
        pbound = self.preemptions
        live = True  # does `ex` stand at the top of the stack?
        while stack:
            self.tick()
            i = cursor[-1]
            todo = stack[-1]
            if i >= len(todo):
                stack.pop()
                cursor.pop()
                if snaps:
                    snaps.pop()
                if path:
                    path.pop()
                if self.cache:
                    del on_path[path_fps.pop()]
                used.pop()
                live = False
                continue
            cursor[-1] = i + 1
            tr = todo[i]
            spent = used[-1]
            if pbound is not None and path and tr[0] != path[-1][0] \
                    and any(t == path[-1][0] for t, _ in todo):
                spent += 1  # a preemption: the previous thread could have gone on
                if spent > pbound:
                    continue
            if not live:
                if self.restore_by_replay:
                    rebuilt = ex.rebuilt
                    ex = Execution.replay(self.program, path, max_steps=self.limits.max_steps)
                    ex.rebuilt = rebuilt
                    self._replayed += len(path)
                else:
                    ex.restore(snaps[-1])
            live = False
            stats.transitions += 1
            violation = ex.step(tr)
            if violation is not None:
                stats.executions += 1
                return violation, [*path, tr]
            depth = len(path) + 1
            if self.cache:
                fp = fingerprint(ex)
                if pbound is not None:  # the bounded future depends on these too
                    fp = hash((fp, tr[0], spent))
                if fp in on_path and self.fair_cycle(
                        [{t for t, _ in e} for e in stack[on_path[fp]:]], [*path[on_path[fp]:], tr]):
                    stats.executions += 1
                    return self.livelock(ex, tr[0], depth, on_path[fp]), [*path, tr]
                seen = visited.get(fp)
                if seen is not None and (not bound or seen <= depth):
                    stats.executions += 1
                    continue
                visited[fp] = depth
            stats.states += 1
            if bound and depth >= bound:
                stats.executions += 1
                continue
            path.append(tr)
            nxt = self._expand(ex, path)
            if isinstance(nxt, tuple):
                return nxt
            if not nxt:
                path.pop()
                continue
            stack.append(nxt)
            cursor.append(0)
            used.append(spent)
            if self.cache:
                on_path[fp] = depth
                path_fps.append(fp)
            if not self.restore_by_replay:
                snaps.append(ex.snapshot())
            live = True
            if len(path) > stats.max_depth:
                stats.max_depth = len(path)
        return None

    def _expand(
        self, ex: Execution, path: Schedule
    ) -> list[Transition] | tuple[Violation, Schedule]:
        """Enabled transitions of the current state; at a dead end, judge the execution."""
        enabled = ex.enabled()
        if enabled:
            return enabled
        return self.end_of_execution(ex, path) or []
