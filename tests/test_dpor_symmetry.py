"""DPOR with symmetry is sound: a cache hit on a state that is a permutation of one
explored before races the earlier subtree's summary renamed into the current threads
and cells. Against plain search (no reduction of either kind): the same verdict,
counterexamples that replay, and on a pass the same final states up to renaming, on
random programs with interchangeable threads and on the KVM model; and a broken
dependency relation must make these checks fail.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, assume, event, find, given, settings
from hypothesis import strategies as st

import test_dpor
from conftest import Box, Prog, Shared, dfs
from tdpmmu.api import Config
from tdpmmu.explore.search.base import Search
from tdpmmu.explore.search.dpor import Dpor
from tdpmmu.kernel.memory import kzalloc
from tdpmmu.kernel.rwlock import rwlock_t
from tdpmmu.kernel.spinlock import spinlock_t
from tdpmmu.kvm.mutants import MUTANTS
from tdpmmu.kvm.versions import KERNELS
from test_cache_crosscheck import POINTS, run_ops
from test_dpor import dpor


def dpor_sym(prog: object, *, broken: bool = False) -> Dpor:
    return dpor(prog, True, broken=broken, symmetry=True)


def agree(plain: Search, reduced: Dpor, prog: object) -> None:
    test_dpor.agree(plain, reduced, prog, up_to_renaming=True)


# -- random programs with interchangeable threads --------------------------------------------
def ops_on(targets: int) -> st.SearchStrategy[tuple]:
    """Up to three ops, each on one of the thread's first ``targets`` boxes."""
    op = st.one_of(
        st.tuples(st.sampled_from(["racy", "spin", "read", "write", "resched", "rcu", "call_rcu"]),
                  st.integers(0, targets - 1)),
        st.tuples(st.just("store"), st.integers(0, targets - 1), st.integers(0, 1)),
    )
    return st.lists(op, min_size=1, max_size=3).map(tuple)


# A copy acts on c0 (0), c1 (1) or its own box (2); the other thread also on the boxes of
# copies 0 and 1 (3, 4): the copies' own cells then race with someone, and a cache hit's
# summary must have them renamed.
ops_st = ops_on(3)
other_st = ops_on(5)


def symmetric_program(ops: tuple, copies: int, other: tuple, fair: bool,
                      forbidden: tuple[int, int] | None) -> Prog:
    """``copies`` threads running ``ops``, each on c0, c1 and its own box; maybe one
    other thread running ``other`` (on c0, c1, a box of its own and the copies' 0 and 1)."""
    nthreads = copies + bool(other)

    def setup() -> Shared:
        return Shared(boxes=(kzalloc(Box, "c0"), kzalloc(Box, "c1")),
                      own=tuple(kzalloc(Box, f"own{i}") for i in range(nthreads)),
                      lock=kzalloc(spinlock_t, "L"), rw=kzalloc(rwlock_t, "RW", fair=fair))

    def thread(i: int, code: tuple, others: tuple[int, ...] = ()):
        return lambda s: run_ops(code, Shared(boxes=(*s.boxes, s.own[i], *(s.own[j] for j in others)),
                                              lock=s.lock, rw=s.rw))

    threads = [(f"v{i}", thread(i, ops)) for i in range(copies)]
    if other:
        threads.append(("other", thread(copies, other, (0, 1))))
    prog = Prog(setup, threads, rcu=True, group=range(copies))
    if forbidden is not None:
        def state(s: Shared) -> str | None:
            now = (s.boxes[0].n, s.boxes[1].n)
            return f"(c0.n, c1.n) = {now}" if now == forbidden else None
        prog.state = state
    return prog


def small(ops: tuple, copies: int, other: tuple) -> bool:
    return copies * sum(POINTS[op[0]] for op in ops) + sum(POINTS[op[0]] for op in other) <= 9


@settings(max_examples=120, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=ops_st, copies=st.integers(2, 3), other=st.just(()) | other_st, fair=st.booleans(),
       forbidden=st.none() | st.tuples(st.integers(1, 2), st.integers(0, 2)))
def test_random_symmetric_programs(ops: tuple, copies: int, other: tuple, fair: bool,
                                   forbidden: tuple[int, int] | None) -> None:
    assume(small(ops, copies, other))
    prog = symmetric_program(ops, copies, other, fair, forbidden)
    plain = dfs(prog, True)
    agree(plain, dpor_sym(prog), prog)
    event(f"verdict {plain.result.verdict}")  # type: ignore[attr-defined]


def broken_disagrees(args: tuple) -> bool:
    prog = symmetric_program(*args)
    try:
        agree(dfs(prog, True), dpor_sym(prog, broken=True), prog)
    except AssertionError:
        return True
    return False


def test_random_symmetric_programs_catch_a_broken_dependency_relation() -> None:
    """With every pair of steps declared independent, the property above fails on some
    program: it can fail. (A program that claims a symmetry it lacks is no such test:
    a state's fingerprint shows its threads' code and locals, so threads running
    different code never match; 3,000 random programs whose threads chose their code by
    their thread id, which no state shows, gave no disagreement either.)"""
    args_st = st.tuples(ops_st, st.integers(2, 3), st.just(()) | other_st, st.booleans(),
                        st.none() | st.tuples(st.integers(1, 2), st.integers(0, 2)))
    args = find(args_st, lambda a: small(*a[:3]) and broken_disagrees(a),
                settings=settings(max_examples=300, database=None, deadline=None))
    assert broken_disagrees(args)


# -- the KVM model ----------------------------------------------------------------------------
def _dpor(config: Config, symmetry: bool) -> Dpor:
    return dpor(config.program(), True, symmetry=symmetry)


# DPOR without symmetry is the arbiter here (tests/test_dpor.py checks it against plain
# search on these configurations at up to 2 vCPUs); at 3 vCPUs plain search takes minutes.
# v6.1 at 3 vCPUs (a zap worker beside the vCPUs): DPOR alone takes over 2 minutes.
KVM = [("vcpu-load", k, v) for k in KERNELS if k != "v6.9+lockless-aging" for v in (2, 3)
       if v == 2 or not (k == "v6.1" or KERNELS[k].CORPUS_ERA)]


@pytest.mark.parametrize(("scenario", "kernel", "vcpus"), KVM, ids=[f"{s}-{k}-{v}" for s, k, v in KVM])
def test_kvm_same_final_states_fewer_states(scenario: str, kernel: str, vcpus: int) -> None:
    config = Config(scenario, kernel, None, vcpus)
    plain, reduced = _dpor(config, False), _dpor(config, True)
    agree(plain, reduced, config.program())
    assert reduced.result.stats.states < plain.result.stats.states  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", [n for n, m in MUTANTS.items() if m.vcpus >= 2])
def test_kvm_mutants_caught(name: str) -> None:
    m = MUTANTS[name]
    config = Config(m.scenario, m.kernel, name, 2)
    plain, reduced = _dpor(config, False), _dpor(config, True)
    agree(plain, reduced, config.program())
    assert reduced.result.violation.kind in m.expect  # type: ignore[attr-defined]
