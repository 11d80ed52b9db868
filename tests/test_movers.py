"""Left movers are sound: running each release (``Op(moves_left=True)``) with the step
before it, against the unreduced system in which every release is a step of its own,
gives the same verdicts and, on a pass, the same final states (fingerprints of whole
states), on small programs, random programs and the KVM model; and an operation that
is not a left mover, declared one, makes the comparison fail.
"""

from __future__ import annotations

from collections.abc import Callable, Generator

import pytest
from hypothesis import HealthCheck, assume, given, settings

from conftest import Box, Prog, Shared, dfs, replay_violation
from tdpmmu.api import Config, check
from tdpmmu.explore.execution import Execution, thread_frames
from tdpmmu.explore.result import Limits
from tdpmmu.explore.runtime import MOVED, Op, primitive
from tdpmmu.explore.search.dfs import DepthFirst
from tdpmmu.kernel.atomic import READ_ONCE, WRITE_ONCE
from tdpmmu.kernel.memory import kzalloc
from tdpmmu.kernel.spinlock import NO_OWNER, spin_lock, spin_unlock, spinlock_t
from tdpmmu.kernel.wait import wait_event
from tdpmmu.kvm.registry import MUTANTS, SCENARIOS
from test_cache_crosscheck import POINTS, SMALL, random_program, threads_st

FAST = Limits(shrink_time=0)


def both(make: Callable[[bool], object], cache: bool = False) -> tuple[DepthFirst, DepthFirst]:
    """Plain depth-first search of the program with movers and without."""
    fused, unfused = dfs(make(True), cache), dfs(make(False), cache)
    return fused, unfused


def agree(fused: DepthFirst, unfused: DepthFirst, prog: object) -> None:
    a, b = fused.result, unfused.result  # type: ignore[attr-defined]
    assert a.verdict == b.verdict != "incomplete", (a.violation, b.violation)
    if a.verdict == "violation":
        replayed = replay_violation(prog, a.schedule, FAST.max_steps)
        assert replayed is not None and replayed.kind == a.violation.kind
    else:
        assert fused.final_states and fused.final_states == unfused.final_states
    assert a.stats.states <= b.stats.states


def with_movers(make: Callable[[], Prog]) -> Callable[[bool], Prog]:
    def build(movers: bool) -> Prog:
        prog = make()
        prog.movers = movers
        return prog
    return build


# -- small programs ---------------------------------------------------------------------
@pytest.mark.parametrize("name", SMALL)
def test_small_programs(name: str) -> None:
    make = with_movers(SMALL[name])
    fused, unfused = both(make)
    agree(fused, unfused, make(True))


@settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(threads=threads_st)
def test_random_programs(threads: tuple[tuple, ...]) -> None:
    """Random threads over spinlocks, rwlocks (readers, writers, cond_resched), RCU
    readers and callbacks, racy and plain stores, with a final check."""
    assume(sum(POINTS[op[0]] for ops in threads for op in ops) <= 10)
    incs = sum(1 for ops in threads for op in ops if op[0] in ("racy", "spin", "write") and op[1] == 0)
    make = with_movers(lambda: random_program(threads, True, incs))
    fused, unfused = both(make, cache=True)
    agree(fused, unfused, make(True))


# -- a false mover is caught ---------------------------------------------------------------
@primitive
def store_as_mover(box: Box, value: int) -> Generator[Op, int, None]:
    """A store that another thread reads: not a left mover, declared one."""
    yield Op("store", box, value, moves_left=True)
    box.n = value


def two_stores(s: Shared) -> Generator[Op, int, None]:
    yield from WRITE_ONCE(s.b, "m", 1)
    yield from store_as_mover(s.b, 1)


def reader(s: Shared) -> Generator[Op, int, None]:
    m = yield from READ_ONCE(s.b, "m")
    n = yield from READ_ONCE(s.b, "n")
    s.b.flag = (m, n)


def test_a_false_mover_loses_a_final_state() -> None:
    # Unreduced, the reader can see m = 1 and n = 0; with the store run together with
    # the one before it, it cannot.
    make = with_movers(lambda: Prog(lambda: Shared(b=kzalloc(Box, "b")), [two_stores, reader]))
    fused, unfused = both(make)
    with pytest.raises(AssertionError):
        agree(fused, unfused, make(True))
    assert len(fused.final_states) < len(unfused.final_states)


@primitive
def private_store_as_mover(box: Box) -> Generator[Op, int, None]:
    """A left mover whose effect reads nothing: a store to a cell no one else touches."""
    yield Op("private_store", box, moves_left=True)
    box.m = 1
    yield MOVED


def racy_then_private(s: Shared) -> Generator[Op, int, None]:
    v = yield from READ_ONCE(s.b, "n")
    yield from WRITE_ONCE(s.b, "n", v + 1)
    yield from private_store_as_mover(s.own[0])
    yield from WRITE_ONCE(s.b, "flag", 1)


def racy(s: Shared) -> Generator[Op, int, None]:
    v = yield from READ_ONCE(s.b, "n")
    yield from WRITE_ONCE(s.b, "n", v + 1)


def test_a_mover_whose_effect_reads_nothing_rebuilds_alike() -> None:
    """A rebuilt thread finds its fused movers by the mark they leave in its log, not by
    the effect's reads (this one has none): rebuilt, it is where it was."""
    make = with_movers(lambda: Prog(lambda: Shared(b=kzalloc(Box, "b"), own=(kzalloc(Box, "o"),)),
                                    [racy_then_private, racy], observe=lambda s: s.b.n))
    fused, unfused = both(make)
    agree(fused, unfused, make(True))
    ex = Execution(make(True))
    ex.step((0, 0))
    ex.step((0, 0))  # the write, the private store fused with it
    assert ex.threads[0].pending.name == "WRITE_ONCE"  # type: ignore[union-attr]
    ex.threads[0].pos = -1
    ex.step((1, 0))
    ex._rebuild(0)
    assert thread_frames(ex.threads[0].gen) == ex.frames[0]


# -- what the engine refuses to fuse ----------------------------------------------------------
def setup_locked() -> Shared:
    return Shared(b=kzalloc(Box, "b"), lock=kzalloc(spinlock_t, "L"))


def bump_under_lock(s: Shared) -> Generator[Op, int, None]:
    yield from spin_lock(s.lock)
    yield from WRITE_ONCE(s.b, "n", s.b.n + 1)
    yield from spin_unlock(s.lock)
    yield from WRITE_ONCE(s.b, "m", 1)


def bump_then_touch(s: Shared) -> Generator[Op, int, None]:
    yield from spin_lock(s.lock)
    yield from WRITE_ONCE(s.b, "n", s.b.n + 1)
    yield from spin_unlock(s.lock)
    s.b.flag = s.b.n  # shared memory before the next point: moves with the unlock


def test_an_invariant_that_reads_a_lock_is_a_model_error() -> None:
    """The states a fused release skips differ from the visited ones in the lock: here
    the only state that breaks the invariant (n = 2 with the lock still held) is one of
    them, so fusing would pass; the engine says so instead."""
    held = lambda s: "held" if s.lock.owner != NO_OWNER and s.b.n == 2 else None  # noqa: E731
    make = with_movers(lambda: Prog(setup_locked, [bump_under_lock, bump_under_lock], state=held))
    fused, unfused = both(make)
    assert unfused.result.violation.kind == "invariant"  # type: ignore[attr-defined]
    v = fused.result.violation  # type: ignore[attr-defined]
    assert v is not None and v.kind == "model-error" and "the invariant reads L.owner" in v.message


def test_code_after_a_release_that_touches_memory_keeps_the_release_a_step() -> None:
    make = with_movers(lambda: Prog(setup_locked, [bump_then_touch, bump_then_touch],
                                    observe=lambda s: (s.b.n, s.b.flag)))
    fused, unfused = both(make)
    agree(fused, unfused, make(True))
    ex = Execution(make(True), tracing=True)
    while ex.enabled():
        ex.step(ex.enabled()[0])
    assert "spin_unlock(L)" in [s.action for s in ex.trace]


def holder(s: Shared) -> Generator[Op, int, None]:
    yield from spin_lock(s.lock)
    yield from WRITE_ONCE(s.b, "n", 1)
    yield from spin_unlock(s.lock)
    yield from WRITE_ONCE(s.b, "m", 1)


def waits_for_the_lock_held(s: Shared) -> Generator[Op, int, None]:
    yield from wait_event("L held", lambda: s.lock.owner != NO_OWNER or s.b.m == 1)
    s.b.flag = (s.b.n, s.lock.owner != NO_OWNER)


def test_a_release_that_disables_a_waiter_keeps_the_release_a_step() -> None:
    """A thread waiting for the lock to be *held* can run between the write and the
    unlock (seeing n = 1 with the lock held) only if the unlock is a step of its own."""
    make = with_movers(lambda: Prog(setup_locked, [holder, waits_for_the_lock_held],
                                    observe=lambda s: s.b.flag))
    fused, unfused = both(make)
    agree(fused, unfused, make(True))
    assert (1, True) in fused.program.outcomes  # type: ignore[attr-defined]


# -- traces ----------------------------------------------------------------------------------
def test_a_fused_release_shows_in_its_step() -> None:
    ex = Execution(Config("memslot-delete", vcpus=1).program(), tracing=True)
    while ex.enabled():
        ex.step(ex.enabled()[0])
    actions = [s.action for s in ex.trace]
    assert any(a.endswith("; rcu_read_unlock()") for a in actions)
    assert "list_add_rcu(root1, kvm.arch.tdp_mmu_roots); spin_unlock(kvm.arch.tdp_mmu_pages_lock)" in actions
    # kvm_tdp_mmu_alloc_root() sets mmu->root.hpa after dropping mmu_lock: that code
    # would move with the unlock, so this read_unlock is a step of its own.
    i = actions.index("read_unlock(kvm.mmu_lock)")
    assert ex.trace[i].function == "kvm_tdp_mmu_alloc_root"
    ex = Execution(Config("memslot-delete", vcpus=1, movers=False).program(), tracing=True)
    while ex.enabled():
        ex.step(ex.enabled()[0])
    assert "rcu_read_unlock()" in [s.action for s in ex.trace]


# -- the KVM model -----------------------------------------------------------------------------
# Every scenario at one vCPU on v6.9 (but stress, which is fault-vs-zap and mmu-notifier
# together: a minute), and the 2-vCPU root protocol: plain search (with the cache, itself
# cross-checked against the cache-less search) with and without movers.
PASSING = [(s, 1) for s in SCENARIOS if s not in ("nested-pgd-switch", "stress")] + [("vcpu-load", 2)]


@pytest.mark.parametrize(("scenario", "vcpus"), PASSING, ids=[f"{s}-{v}" for s, v in PASSING])
def test_kvm_same_verdict_and_final_states(scenario: str, vcpus: int) -> None:
    def make(movers: bool) -> object:
        return Config(scenario, vcpus=vcpus, movers=movers).program()
    fused, unfused = both(make, cache=True)
    agree(fused, unfused, make(True))


# A duplicate root needs two vCPUs allocating at once; every other mutant is caught with
# one (the corpus, docs/corpus.md), where the search without movers takes seconds, not a
# minute.
NEEDS_TWO_VCPUS = {"no-recheck"}


@pytest.mark.parametrize("mutant", MUTANTS)
def test_kvm_mutants_caught_either_way(mutant: str) -> None:
    """Each mutant, on a kernel where it is a bug, with the default search (DPOR with vCPU
    symmetry): a violation of a kind it is known for, with movers and without."""
    m = MUTANTS[mutant]
    vcpus = 2 if mutant in NEEDS_TWO_VCPUS else 1
    for movers in (True, False):
        config = Config(m.scenario, m.caught_kernels[0], mutant, vcpus, movers=movers, search="dpor")
        result = check(config, FAST)
        assert result.verdict == "violation" and result.violation is not None
        assert result.violation.kind in m.expect, result.violation
        replayed = replay_violation(config.program(), result.schedule, FAST.max_steps)
        assert replayed is not None and replayed.kind == result.violation.kind


def test_movers_save_states_on_memslot_delete() -> None:
    fused = check(Config("memslot-delete", vcpus=1), FAST)
    unfused = check(Config("memslot-delete", vcpus=1, movers=False), FAST)
    assert fused.verdict == unfused.verdict == "pass"
    assert fused.stats.states < unfused.stats.states
