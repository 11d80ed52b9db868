"""Partial-order reduction is sound: against plain search, the same verdicts, real
counterexamples and, on a pass, the same set of final states (fingerprints of whole
states: every cell and every thread's frames), on small programs, random programs and
the KVM model; and a deliberately broken dependency relation makes these checks fail.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, assume, event, find, given, settings
from hypothesis import strategies as st

import test_engine as eng
from conftest import Box, Prog, Shared, dfs, replay_violation
from tdpmmu.api import Config
from tdpmmu.explore.result import Limits
from tdpmmu.explore.search.base import Search
from tdpmmu.explore.search.dfs import DepthFirst
from tdpmmu.explore.search.dpor import Dpor
from tdpmmu.kernel.atomic import WRITE_ONCE
from tdpmmu.kernel.memory import kzalloc
from tdpmmu.kvm.mutants import build_kernel
from tdpmmu.kvm.program import KvmProgram
from tdpmmu.kvm.registry import MUTANTS, SCENARIOS
from tdpmmu.kvm.versions import KERNELS
from test_cache_crosscheck import POINTS, SMALL, random_program, threads_st

FAST = Limits(shrink_time=0)


def dpor(prog: object, cache: bool, *, broken: bool = False, symmetry: bool = False) -> Dpor:
    search = Dpor(prog, FAST, cache=cache, symmetry=symmetry, all_independent=broken)  # type: ignore[arg-type]
    search.result = search.run()  # type: ignore[attr-defined]
    return search


def agree(plain: Search, reduced: Dpor, prog: object, *, up_to_renaming: bool = False) -> None:
    """The reduced search's verdict is the plain one's; its counterexample is real; on a
    pass it reaches exactly the plain search's final states (or, for a search with
    symmetry, the same states up to renaming vCPUs)."""
    a, b = plain.result, reduced.result  # type: ignore[attr-defined]
    assert a.verdict != "incomplete" and b.verdict == a.verdict, (a.violation, b.violation)
    if b.verdict == "violation":
        replayed = replay_violation(prog, b.schedule, FAST.max_steps)
        assert replayed is not None and replayed.kind == b.violation.kind
    else:
        finals = "final_canonical" if up_to_renaming else "final_states"
        assert getattr(plain, finals) and getattr(reduced, finals) == getattr(plain, finals)


# -- small programs ---------------------------------------------------------------------
@pytest.mark.parametrize("cache", [False, True], ids=["stateless", "cache"])
@pytest.mark.parametrize("name", SMALL)
def test_small_programs(name: str, cache: bool) -> None:
    prog = SMALL[name]()
    full = dfs(prog, False)  # every interleaving, no cache
    reduced = dpor(prog, cache)
    agree(full, reduced, prog)
    if not cache and full.result.verdict == "pass":  # type: ignore[attr-defined]
        # Each stateless DPOR execution is a distinct path of the full tree.
        assert reduced.stats.executions <= full.stats.executions


def test_reduction_where_threads_touch_different_cells() -> None:
    """Two threads on different boxes: one execution up to reordering (plus the ones
    the sleep sets cut), where plain search runs every interleaving."""
    def setup() -> Shared:
        return Shared(a=kzalloc(Box, "a"), b=kzalloc(Box, "b"))

    def left(s: Shared):
        for v in (1, 2, 3):
            yield from WRITE_ONCE(s.a, "n", v)

    def right(s: Shared):
        for v in (1, 2, 3):
            yield from WRITE_ONCE(s.b, "n", v)

    prog = Prog(setup, [left, right])
    full, reduced = dfs(prog, False), dpor(prog, False)
    agree(full, reduced, prog)
    assert reduced.stats.executions - reduced.sleep_blocked == 1 < full.stats.executions


# -- invariants of intermediate states ----------------------------------------------------
def flip(field: str):
    def thread(s: Shared):
        yield from WRITE_ONCE(s.b, field, 1)
        yield from WRITE_ONCE(s.b, field, 0)
    thread.__name__ = f"flip_{field}"
    return thread


def box() -> Shared:
    return Shared(b=kzalloc(Box, "b"))


@pytest.mark.parametrize("cache", [False, True], ids=["stateless", "cache"])
def test_invariant_of_an_intermediate_state_is_checked(cache: bool) -> None:
    """n and m are never 1 together at the end, only in between: steps that change what
    the invariant reads must not be treated as independent."""
    prog = Prog(box, [flip("n"), flip("m")],
                state=lambda s: "n and m set" if s.b.n and s.b.m else None)
    assert dpor(prog, cache).result.verdict == "violation"  # type: ignore[attr-defined]


@pytest.mark.parametrize("cache", [False, True], ids=["stateless", "cache"])
def test_invariant_that_reads_a_field_only_in_some_states(cache: bool) -> None:
    """The invariant reads m only once flag is set: what it reads is learned while
    searching, and the search starts again when it learns something new."""
    def set_flag(s: Shared):
        yield from WRITE_ONCE(s.b, "flag", 1)

    prog = Prog(box, [set_flag, flip("m")],
                state=lambda s: "flag and m" if s.b.flag and s.b.m else None)
    search = dpor(prog, cache)
    assert search.result.verdict == "violation"  # type: ignore[attr-defined]
    assert search.restarts >= 1


# -- random programs ----------------------------------------------------------------------
def program_of(threads: tuple[tuple, ...], fair: bool, check: bool,
               forbidden: tuple[int, int] | None = None) -> Prog:
    """A random program; ``forbidden``: values (c0.n, c1.n) no state may have."""
    incs = sum(1 for ops in threads for op in ops if op[0] in ("racy", "spin", "write") and op[1] == 0)
    prog = random_program(threads, fair, incs if check else None)
    if forbidden is not None:
        def state(s: Shared) -> str | None:
            now = (s.boxes[0].n, s.boxes[1].n)
            return f"(c0.n, c1.n) = {now}" if now == forbidden else None
        prog.state = state
    return prog


def small(threads: tuple[tuple, ...]) -> bool:
    return sum(POINTS[op[0]] for ops in threads for op in ops) <= 10


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(threads=threads_st, fair=st.booleans(), check=st.booleans(),
       forbidden=st.none() | st.tuples(st.integers(1, 2), st.integers(0, 2)))
def test_random_programs(threads: tuple[tuple, ...], fair: bool, check: bool,
                         forbidden: tuple[int, int] | None) -> None:
    """Random threads (racy and locked increments, rwlock readers and writers,
    cond_resched branches, RCU readers and callbacks, plain stores), maybe with an
    invariant of every state, against the plain search with the cache (itself
    cross-checked against the cache-less one)."""
    assume(small(threads))
    prog = program_of(threads, fair, check, forbidden)
    plain = dfs(prog, True)
    for cache in (False, True):
        agree(plain, dpor(prog, cache), prog)
    event(f"verdict {plain.result.verdict}")  # type: ignore[attr-defined]


def disagrees(threads: tuple[tuple, ...]) -> bool:
    prog = program_of(threads, True, True)
    try:
        agree(dfs(prog, True), dpor(prog, True, broken=True), prog)
    except AssertionError:
        return True
    return False


def test_random_programs_catch_a_broken_dependency_relation() -> None:
    """With every pair of steps declared independent, the property above fails on some
    random program: it can fail."""
    threads = find(threads_st, lambda t: small(t) and disagrees(t),
                   settings=settings(max_examples=200, database=None, deadline=None))
    assert disagrees(threads)


@pytest.mark.parametrize("name", ["lost-update", "lost-update-outcomes", "abba", "rwlock-fifo", "rcu-uaf"])
def test_small_programs_catch_a_broken_dependency_relation(name: str) -> None:
    prog = SMALL[name]()
    with pytest.raises(AssertionError):
        agree(dfs(prog, False), dpor(prog, False, broken=True), prog)


def test_lost_update_needs_the_race_reversed() -> None:
    prog = Prog(eng.setup, [("t0", eng.racy_inc), ("t1", eng.racy_inc)], final=eng.n_is_2)
    assert dpor(prog, False).result.verdict == "violation"  # type: ignore[attr-defined]
    assert dpor(prog, False, broken=True).result.verdict == "pass"  # type: ignore[attr-defined]


# -- the KVM model --------------------------------------------------------------------------
# Every configuration plain search runs in about a second: the mutants' bugs and the real
# kernels, on every kernel version.
KVM = [("vcpu-load", 1), ("vcpu-load", 2), ("memslot-delete", 1)]


def _runs(kernel: str, mutant: str) -> bool:
    """The programs DPOR is compared with plain search on: a mutant on the kernels it is
    claimed on and on every kernel derived from them, whether or not that kernel still
    runs the mutated code (any program will do here); on the corpus's era kernels only
    the mutants claimed there (suite budget)."""
    m = MUTANTS[mutant]
    claimed = (m.kernel, *m.caught_on)
    if KERNELS[kernel].CORPUS_ERA:
        return kernel in claimed
    return any(issubclass(KERNELS[kernel], KERNELS[k]) for k in claimed)


def _program(scenario: str, vcpus: int, kernel: str, mutant: str | None) -> KvmProgram:
    """``Config.program()`` without ``Config.validate``'s refusal of a mutant on a kernel
    that replaced the code it changes (``_runs`` keeps those programs)."""
    config = Config(scenario, kernel, None, vcpus)
    return KvmProgram(build_kernel(KERNELS[kernel], MUTANTS[mutant] if mutant else None),
                      SCENARIOS[scenario], vcpus, config.nr_gfns)


# v6.9+lockless-aging is v6.9 but for the aging path, which only the aging scenarios run,
# and the aging mutants change nothing else: both are left out of the other scenarios.
# Likewise B07 (b)'s mutant changes a TLB flush, and only its scenarios model TLBs.
ROOT_KERNELS = [k for k in KERNELS if k != "v6.9+lockless-aging"]
CONFIGS = [(s, v, k, m) for s, v in KVM for k in ROOT_KERNELS for m in (None, *MUTANTS)
           if m is None or (_runs(k, m) and not MUTANTS[m].scenario.startswith("aging")
                            and not MUTANTS[m].scenario.endswith("root-reuse"))]
# The page-table layer: its scenarios on every kernel, its mutants on v6.9.
CONFIGS += [*((s, 1, k, None) for s in ("fault-vs-zap", "mmu-notifier") for k in ROOT_KERNELS),
            *(("stress", 1, "v6.9", m) for m in ("notifier-skips-invalid-roots", "notifier-no-root-refs"))]
# Aging (B15): under mmu_lock (v6.9) and lockless, and the lockless walk's mutants.
CONFIGS += [("aging-unmap", 1, "v6.9", None), ("aging-unmap", 1, "v6.9+lockless-aging", None),
            ("aging", 1, "v6.9+lockless-aging", None),
            *((MUTANTS[m].scenario, 1, MUTANTS[m].kernel, m)
              for m in ("aging-outside-rcu", "aging-nonatomic-clear"))]
# v6.14's mirror roots (B13): the TDX-like VM, with and without the mutant.
CONFIGS += [("tdx-teardown", 1, "v6.14", m) for m in (None, "uninit-zap-shared")]
# TLBs (B07 (b)): the Hyper-V scenario on v6.1, with and without the mutant.
CONFIGS += [("hyperv-root-reuse", 1, "v6.1", m) for m in (None, "hv-flush-current-asid-only")]


@pytest.mark.parametrize(("scenario", "vcpus", "kernel", "mutant"), CONFIGS,
                         ids=[f"{s}-{v}-{k}-{m}" for s, v, k, m in CONFIGS])
def test_kvm_same_verdict_and_final_states(scenario: str, vcpus: int, kernel: str,
                                           mutant: str | None) -> None:
    prog = _program(scenario, vcpus, kernel, mutant)
    plain = DepthFirst(prog, FAST)
    plain.result = plain.run()  # type: ignore[attr-defined]
    reduced = dpor(prog, True)
    agree(plain, reduced, prog)
    a, b = plain.result, reduced.result  # type: ignore[attr-defined]
    if b.verdict == "violation":
        assert mutant is not None
        assert b.violation.kind in MUTANTS[mutant].expect or b.violation.kind == a.violation.kind
    else:
        assert b.stats.executions <= a.stats.executions
        if (scenario, vcpus) != ("vcpu-load", 1):
            assert b.stats.executions < a.stats.executions


# v6.1's zap worker interleaves with the vCPU that queued it: every interleaving of
# vcpu-load is too many (66,000 executions in 60 s, unfinished); there stateless DPOR
# (1,654 executions) is compared with plain search with the cache, itself cross-checked
# against the cache-less search on smaller programs (tests/test_cache_crosscheck.py).
FULL_TREE_TOO_BIG = {"v6.1"}
# v5.11 frees roots at once (no RCU callback thread to interleave): vcpu-load at one vCPU
# is two executions, which DPOR cannot reduce.
NOTHING_TO_REDUCE = {"v5.11"}


@pytest.mark.parametrize("kernel", list(KERNELS))
def test_kvm_stateless(kernel: str) -> None:
    """Stateless DPOR against every interleaving (both without the cache), each release
    a step of its own (with movers, one vCPU leaves little to reduce)."""
    prog = Config("vcpu-load", kernel, None, 1, movers=False).program()
    full, reduced = dfs(prog, kernel in FULL_TREE_TOO_BIG), dpor(prog, False)
    agree(full, reduced, prog)
    if kernel in NOTHING_TO_REDUCE:
        assert reduced.stats.executions == full.stats.executions
    elif kernel not in FULL_TREE_TOO_BIG:
        assert reduced.stats.executions < full.stats.executions
