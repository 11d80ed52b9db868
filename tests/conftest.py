"""Shared helpers: a tiny Program built from thread functions, and ways to explore it.

A test writes its threads as generator functions of one argument, the shared objects
``s`` that ``setup()`` allocates inside ``build()`` (after ``World()``, ``set_world`` and
``rcu_init``). ``s`` is a :class:`Shared`, hashed by value so that thread fingerprints are
the same in every build of the program (the cache cross-check compares fingerprints of
final states across two separate searches).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from functools import partial
from types import SimpleNamespace
from typing import Any

from tdpmmu.explore.execution import Execution, Schedule
from tdpmmu.explore.program import ThreadSpec
from tdpmmu.explore.result import Limits, Result
from tdpmmu.explore.runtime import Thread, Violation, World, set_world, world
from tdpmmu.explore.search.dfs import DepthFirst
from tdpmmu.kernel.memory import Field, Struct
from tdpmmu.kernel.rcu import rcu_callback_thread, rcu_init


class Shared(SimpleNamespace):
    """The shared objects of one build: attribute access, hashed by value."""

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(tuple(sorted(vars(self).items())))

    def renamed(self, oid_map: dict[int, int]) -> Shared:
        """Symmetry reduction renames the objects it holds (struct handles, in tuples too)."""
        def rename(v: Any) -> Any:
            if isinstance(v, tuple):
                return tuple(map(rename, v))
            return v.renamed(oid_map) if isinstance(v, Struct) else v
        return Shared(**{k: rename(v) for k, v in vars(self).items()})


class Box(Struct):
    """A generic shared object: two counters, a flag and an event log (a tuple)."""

    C_NAME = "box"
    n = Field(0)
    m = Field(0)
    flag = Field(0)
    log = Field(())


def log(box: Box, event: Hashable) -> None:
    """Append to ``box.log``: a plain write, atomic with the step that does it."""
    box.log = (*box.log, event)


ThreadFn = Callable[[Any], Thread]
Check = Callable[[Any], "str | None"]


class Prog:
    """A Program from thread functions.

    ``threads``: functions ``f(s)`` returning a generator (the thread is named after the
    function) or ``(name, f)`` pairs. ``final(s)`` / ``state(s)`` return a message when the
    property is broken (reported as kind ``final_kind`` / ``state_kind``), or report
    themselves through ``world().report``. ``observe(s)`` is called at every final state
    and its value collected in ``self.outcomes``. ``rcu=True`` adds the RCU callback
    daemon; ``daemons``: more daemon threads, ``(name, f)`` pairs (a workqueue's workers).
    ``group``: indices of threads that run the same code, each on its own object
    ``s.own[i]``: interchangeable for symmetry reduction. ``movers=False``: the unreduced
    system, in which every left mover (``runtime.Op``) is a scheduling point.
    """

    def __init__(
        self,
        setup: Callable[[], Shared],
        threads: list[ThreadFn | tuple[str, ThreadFn]],
        *,
        final: Check | None = None,
        state: Check | None = None,
        observe: Callable[[Any], Hashable] | None = None,
        rcu: bool = False,
        daemons: Sequence[tuple[str, ThreadFn]] = (),
        final_kind: str = "final-check",
        state_kind: str = "invariant",
        group: Sequence[int] = (),
        movers: bool = True,
    ) -> None:
        self.group = tuple(group)
        self.movers = movers  # False: every left mover is a step of its own
        self.setup = setup
        self.threads = [t if isinstance(t, tuple) else (t.__name__, t) for t in threads]
        self.final = final
        self.state = state
        self.observe = observe
        self.rcu = rcu
        self.daemons = list(daemons)
        self.final_kind = final_kind
        self.state_kind = state_kind
        self.outcomes: set[Hashable] = set()
        self.s: Shared | None = None

    def build(self) -> tuple[World, list[ThreadSpec]]:
        w = World()
        set_world(w)
        rcu_init()
        s = self.s = self.setup()
        specs = [ThreadSpec(name, partial(fn, s)) for name, fn in self.threads]
        if self.rcu:
            specs.append(ThreadSpec("rcu", rcu_callback_thread, daemon=True))
        specs += [ThreadSpec(name, partial(fn, s), daemon=True) for name, fn in self.daemons]
        return w, specs

    def symmetry(self, w: World) -> list[list[tuple[int, int]]] | None:
        if len(self.group) < 2:
            return None
        return [[(i, self.s.own[i].oid) for i in self.group]]  # type: ignore[union-attr]

    def check_state(self, w: World) -> None:
        if self.state is not None:
            msg = self.state(self.s)
            if msg:
                w.report(self.state_kind, msg)

    def check_final(self, w: World) -> None:
        if self.observe is not None:
            self.outcomes.add(self.observe(self.s))
        if self.final is not None:
            msg = self.final(self.s)
            if msg:
                w.report(self.final_kind, msg)


def dfs(prog: Any, cache: bool = True, **limits: Any) -> DepthFirst:
    """Run a depth-first search; the returned search holds ``final_states``."""
    search = DepthFirst(prog, Limits(**limits), None, cache=cache)
    search.result = search.run()  # type: ignore[attr-defined]
    return search


def explore(prog: Any, cache: bool = True, **limits: Any) -> Result:
    """Explore every interleaving of ``prog``; ``limits`` are ``Limits`` fields."""
    result: Result = dfs(prog, cache, **limits).result  # type: ignore[attr-defined]
    return result


def outcomes(prog: Prog, cache: bool = True) -> set[Hashable]:
    """Every value ``prog.observe`` takes at a final state; the search must pass."""
    prog.outcomes = set()
    result = explore(prog, cache)
    assert result.verdict == "pass", result.violation
    return prog.outcomes


def expect_violation(prog: Any, kind: str, text: str = "", cache: bool = True, **limits: Any) -> Result:
    """The checker must find a violation of ``kind`` (its message containing ``text``),
    and its schedule must replay to the same kind."""
    result = explore(prog, cache, **limits)
    assert result.verdict == "violation", f"expected {kind}, got {result.verdict}"
    assert result.violation is not None
    assert result.violation.kind == kind, result.violation
    assert text in result.violation.message, result.violation.message
    replayed = replay_violation(prog, result.schedule, limits.get("max_steps", Limits().max_steps))
    assert replayed is not None and replayed.kind == kind, replayed
    return result


def expect_pass(prog: Any, cache: bool = True, **limits: Any) -> Result:
    result = explore(prog, cache, **limits)
    assert result.verdict == "pass", result.violation
    return result


def replay_violation(prog: Any, schedule: Schedule, max_steps: int = 0) -> Violation | None:
    """Re-run ``schedule`` from a fresh build, checking that every step is enabled when
    it is taken, and say what it ends in: the violation of its last step (no earlier
    step may report one), or, at its end, a deadlock or an end-of-execution check."""
    ex = Execution(prog, max_steps=max_steps)
    for i, tr in enumerate(schedule):
        assert tr in ex.enabled(), f"step {i} {tr} is not enabled on replay"
        v = ex.step(tr)
        if v is not None:
            assert i == len(schedule) - 1, f"replay reported {v.kind} early, at step {i}"
            return v
    if not ex.enabled():
        return ex.outcome()
    return None


def me() -> str:
    return world().thread_name
