"""The step memo (explore.memo) changes nothing but speed: with it and without it, every
search takes the same steps and reaches the same states, counts, final states and
counterexamples, on small programs, random programs and the KVM model; and each check
a replay makes is needed (a test per check fails without it).
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings

from conftest import Box, Prog, Shared, log
from tdpmmu.api import Config, check
from tdpmmu.explore.execution import Execution, thread_frames
from tdpmmu.explore.memo import StepMemo
from tdpmmu.explore.result import Limits, Result
from tdpmmu.explore.runtime import Op
from tdpmmu.explore.search.dfs import DepthFirst
from tdpmmu.explore.search.dpor import Dpor
from tdpmmu.kernel.atomic import WRITE_ONCE
from tdpmmu.kernel.memory import kzalloc
from tdpmmu.kernel.wait import wait_event
from tdpmmu.kvm.registry import MUTANTS, SCENARIOS
from test_cache_crosscheck import POINTS, SMALL, random_program, threads_st
from test_movers import holder, setup_locked, waits_for_the_lock_held

FAST = Limits(shrink_time=0)


def counts(r: Result) -> tuple[object, ...]:
    s = r.stats
    v = r.violation
    return (r.verdict, s.states, s.executions, s.transitions, s.max_depth, r.schedule,
            (v.kind, v.message, v.thread, v.function) if v else None)


Searcher = DepthFirst | Dpor


def same(make: Callable[[], Any], search: type[Searcher] = DepthFirst, **kwargs: Any) -> Searcher:
    """Search the program with the memo and without; both must agree step for step."""
    runs = []
    for memo in (True, False):
        prog = make()
        prog.memo = memo
        s = search(prog, FAST, None, **kwargs)
        runs.append((s, s.run()))
    (a, ra), (b, rb) = runs
    assert counts(ra) == counts(rb)
    assert a.final_states == b.final_states
    assert ra.verdict != "incomplete"
    return a


@pytest.mark.parametrize("name", SMALL)
@pytest.mark.parametrize("search", [DepthFirst, Dpor])
def test_small_programs(name: str, search: type[Searcher]) -> None:
    same(SMALL[name], search)


@settings(max_examples=100, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(threads=threads_st)
def test_random_programs(threads: tuple[tuple, ...]) -> None:
    assume(sum(POINTS[op[0]] for ops in threads for op in ops) <= 10)
    incs = sum(1 for ops in threads for op in ops if op[0] in ("racy", "spin", "write") and op[1] == 0)
    searched = same(lambda: random_program(threads, True, incs), Dpor)
    assert searched.program.memo  # (the first of the two runs had it on)


# -- each check a replay makes ------------------------------------------------------------
def test_a_release_that_disables_a_waiter_is_not_replayed_fused(monkeypatch: pytest.MonkeyPatch) -> None:
    """The holder's write-and-unlock step is the same step whether or not a thread waits
    for the lock to be held; where one does, the unlock must not be fused (test_movers),
    so a replay of the fused step must check the waiters again. (The waiter is thread 0:
    the search runs it first, so the fused step is kept before a waiter meets it.)"""
    def make() -> Prog:
        return Prog(setup_locked, [waits_for_the_lock_held, holder], observe=lambda s: s.b.flag)
    searched = same(make)
    assert (1, True) in searched.program.outcomes  # type: ignore[attr-defined]
    monkeypatch.setattr(Execution, "_replayable", lambda self, tid, step: True)
    with pytest.raises(AssertionError):
        same(make)


def waits_twice(s: Shared) -> Generator[Op, int, None]:
    for i in (1, 2):  # the guard reads `i`, which the loop rebinds
        yield from wait_event(f"n >= {i}", lambda: s.b.n >= i)  # noqa: B023
        log(s.b, (i, s.b.n))


def bumps_twice(s: Shared) -> Generator[Op, int, None]:
    yield from WRITE_ONCE(s.b, "n", 1)
    yield from WRITE_ONCE(s.b, "n", 2)


@pytest.mark.parametrize("memo", [True, False])
def test_a_kept_op_says_what_it_said_when_yielded(memo: bool) -> None:
    """An op kept with a snapshot (or in the memo) has its guard's variables as they were
    when it was yielded, not as its generator has rebound them since."""
    prog = Prog(lambda: Shared(b=kzalloc(Box, "b")), [waits_twice, bumps_twice])
    prog.memo = memo
    ex = Execution(prog)
    ex.step((1, 0))  # n = 1
    snap = ex.snapshot()
    ex.step((0, 0))  # the waiter passes `n >= 1`, its loop goes on to i = 2
    ex.restore(snap)
    assert (0, 0) in ex.enabled()


def test_a_thread_that_fell_behind_catches_up_from_where_it_stands() -> None:
    """After memo hits, a thread's generator is behind its state; the next step that
    must run catches it up from its log instead of rebuilding it from the start."""
    prog = Prog(lambda: Shared(b=kzalloc(Box, "b")), [bumps_twice, waits_twice])
    ex = Execution(prog)
    snap = ex.snapshot()
    ex.step((0, 0))
    ex.restore(snap)
    ex.step((0, 0))  # a hit: the generator, which ran ahead, was put aside ...
    assert ex.memo is not None and ex.memo.hits == 1
    ex.step((0, 0))  # ... and is taken up again for the step not run before
    assert ex.threads[0].pos == ex.threads[0].steps == 2
    assert ex.rebuilt == 0


# -- the KVM model --------------------------------------------------------------------------
@pytest.mark.parametrize("scenario", [s for s in SCENARIOS if s != "stress"])
def test_kvm_scenarios(scenario: str) -> None:
    for search in ("dpor", "plain"):
        results = [check(Config(scenario, vcpus=1, search=search, memo=memo), FAST) for memo in (True, False)]
        assert counts(results[0]) == counts(results[1])


@pytest.mark.parametrize("mutant", MUTANTS)
def test_kvm_mutants(mutant: str) -> None:
    m = MUTANTS[mutant]
    vcpus = 2 if mutant == "no-recheck" else 1
    results = [check(Config(m.scenario, m.caught_kernels[0], mutant, vcpus, shrink=False, memo=memo), FAST)
               for memo in (True, False)]
    assert counts(results[0]) == counts(results[1])
    assert results[0].verdict == "violation"


def test_kvm_two_vcpus() -> None:
    limits = Limits(shrink_time=0, max_states=4000)
    results = [check(Config("memslot-delete", vcpus=2, memo=memo), limits) for memo in (True, False)]
    assert counts(results[0]) == counts(results[1])
    assert results[0].stats.replayed < results[1].stats.replayed


def test_a_memo_shared_by_executions_still_learns_what_movers_write() -> None:
    """A search's executions share its memo (explore.search.base): an execution that
    replays a fused release it never ran must still learn what the release writes, or
    an invariant reading it would go unreported (test_movers' model error)."""
    prog = Prog(setup_locked, [holder, holder])
    memo = StepMemo()
    schedule = [(0, 0), (0, 0), (0, 0), (1, 0), (1, 0), (1, 0)]
    first, second = Execution(prog, memo=memo), Execution(prog, memo=memo)
    for tr in schedule:
        first.step(tr)
    for tr in schedule:
        second.step(tr)
    assert memo.hits == len(schedule)
    assert second._mover_writes and second._mover_writes == first._mover_writes


def test_random_search() -> None:
    results = [check(Config("memslot-delete", vcpus=2, random_runs=30, seed=3, memo=memo), FAST)
               for memo in (True, False)]
    assert counts(results[0]) == counts(results[1])


def test_a_thread_fingerprints_alike_whenever_its_locals_were_read() -> None:
    """``frame.f_locals`` is kept with the frame and updated in place: its order is the
    order in which the locals were first seen bound, so a generator whose locals were
    read at an earlier point (the original, at every step) and one read only now (a
    rebuilt one) would list them differently. The fingerprint uses slot order."""

    def thread() -> Any:
        if False:
            early = 0  # (first in slot order, bound last)
        late = 1
        yield Op("a")
        early = 2
        yield Op("b", early, late)

    read_each_step, read_once = thread(), thread()
    next(read_each_step)
    thread_frames(read_each_step)
    next(read_each_step)
    next(read_once)
    next(read_once)
    assert thread_frames(read_each_step) == thread_frames(read_once)
