"""mmu_notifier aging (kernel-protocol.md §5 B15): SPTE Accessed bits, clear_young and
test_young under mmu_lock (v6.9) and under RCU alone (v6.9+lockless-aging), and the two
mutants of the lockless walk, each caught with the violation it really causes."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import pytest

from tdpmmu.api import BadInput, Config, check, kernel_for
from tdpmmu.explore.execution import Execution
from tdpmmu.explore.result import Limits
from tdpmmu.explore.runtime import World, set_world
from tdpmmu.kernel.memory import kzalloc
from tdpmmu.kernel.page import alloc_page
from tdpmmu.kvm.mutants import MUTANTS
from tdpmmu.kvm.spte import (
    REMOVED_SPTE,
    SHADOW_NONPRESENT_VALUE,
    is_accessed_spte,
    make_spte,
    shadow_accessed_mask,
)
from tdpmmu.kvm.structs import kvm_mmu_page
from tdpmmu.kvm.tdp_iter import tdp_mmu_clear_spte_bits, tdp_mmu_clear_spte_bits_atomic
from tdpmmu.kvm.tdp_mmu import live_roots, root_leaves

FAST = Limits(shrink_time=0)
LOCKLESS = "v6.9+lockless-aging"


def _run(gen: Generator[Any, int, Any]) -> Any:
    """Drive a primitive through its scheduling points; its return value."""
    try:
        next(gen)
        while True:
            gen.send(0)
    except StopIteration as stop:
        return stop.value


# -- the SPTE operations ---------------------------------------------------------------

def test_atomic_clear_takes_the_accessed_bit_off_whatever_the_spte_holds() -> None:
    set_world(World())
    page = alloc_page("page0")
    young = make_spte(page)
    pt = kzalloc(kvm_mmu_page, name="pt1", spt=(young, REMOVED_SPTE))
    assert _run(tdp_mmu_clear_spte_bits_atomic((pt, 0), shadow_accessed_mask)) == young
    assert pt.spt[0] == young._replace(accessed=False) and not is_accessed_spte(pt.spt[0])
    # FROZEN_SPTE and a non-present SPTE have no Accessed bit: the AND changes nothing.
    assert _run(tdp_mmu_clear_spte_bits_atomic((pt, 1), shadow_accessed_mask)) == REMOVED_SPTE
    assert pt.spt[1] == REMOVED_SPTE


def test_plain_clear_stores_what_it_read_and_undoes_a_change_made_since() -> None:
    set_world(World())
    young = make_spte(alloc_page("page0"))
    pt = kzalloc(kvm_mmu_page, name="pt1", spt=(SHADOW_NONPRESENT_VALUE, SHADOW_NONPRESENT_VALUE))
    # The SPTE was zapped after the walk read it young: the plain store brings it back.
    assert _run(tdp_mmu_clear_spte_bits((pt, 0), young, shadow_accessed_mask)) == young
    assert pt.spt[0] == young._replace(accessed=False)


# -- the aging paths -------------------------------------------------------------------

def _fault_then_age(kernel: str) -> Execution:
    """aging-unmap with one vCPU: vcpu0 faults gfn 0 and exits, then the mm ages."""
    ex = Execution(Config("aging-unmap", kernel, None, 1).program(), tracing=True)
    for tid in (0, 1):  # vcpu0, then aging
        while (tid, 0) in ex.enabled():
            assert ex.step((tid, 0)) is None
    return ex


@pytest.mark.parametrize(("kernel", "clear"), [("v6.9", "WRITE_ONCE"), (LOCKLESS, "atomic64_fetch_and")])
def test_clear_young_makes_the_faulted_leaf_old(kernel: str, clear: str) -> None:
    ex = _fault_then_age(kernel)
    set_world(ex.world)
    (root,) = live_roots()
    ((gfn, _pt, spte),) = root_leaves(root)
    assert gfn == 0 and not spte.accessed
    aging = [s for s in ex.trace if s.thread == "aging"]
    actions = [s.action for s in aging]
    assert sum(a.startswith(clear) for a in actions) == 1
    notes = [n for s in aging for n in s.notes]
    assert "clear_young: 1" in notes and "test_young: 0" in notes
    # v6.9 holds mmu_lock for write around each call (two steps each: a writer queues,
    # then takes the lock); the lockless kernel never takes it.
    locks = [a for a in actions if a.startswith("write_lock(")]
    assert len(locks) == (4 if kernel == "v6.9" else 0)
    if kernel == LOCKLESS:
        assert any(s.function == "_kvm_tdp_mmu_age_gfn_range" for s in aging)


# Both kernels pass both scenarios exhaustively: tests/test_model.py (every kernel, every
# scenario, one vCPU) and tests/test_dpor.py (DPOR against plain search).


# -- the mutants -----------------------------------------------------------------------

def _caught(name: str) -> Any:
    m = MUTANTS[name]
    config = Config(m.scenario, m.kernel, name, m.vcpus)
    r = check(config, Limits(shrink_time=5))
    assert r.verdict == "violation" and r.violation is not None and r.violation.kind in m.expect
    replayed = Execution.replay(config.program(), r.schedule, tracing=True)
    assert replayed.world.violation is not None and replayed.world.violation.kind == r.violation.kind
    return r


def test_aging_outside_rcu_reads_a_freed_page_table() -> None:
    r = _caught("aging-outside-rcu")
    assert r.violation.kind == "use-after-free" and r.violation.thread == "aging"
    # The table was freed by its RCU callback, which no read-side section held back.
    assert any(s.thread == "rcu" for s in r.trace)


def test_aging_nonatomic_clear_undoes_the_unmaps_zap() -> None:
    r = _caught("aging-nonatomic-clear")
    stores = [i for i, s in enumerate(r.trace) if s.thread == "aging" and s.action.startswith("WRITE_ONCE(")]
    unmap = [i for i, s in enumerate(r.trace) if s.thread == "mm" and s.action.startswith("write_lock(")]
    # The stale store lands after the unmap took mmu_lock (and zapped the leaf).
    assert stores and unmap and stores[0] > unmap[0]


def test_a_mutant_runs_on_the_kernel_it_changes() -> None:
    assert kernel_for("aging-outside-rcu") == LOCKLESS
    assert kernel_for("no-recheck") == kernel_for(None) == "v6.9"
    with pytest.raises(BadInput, match=r"--kernel v6\.9\+lockless-aging"):
        Config("aging", "v6.9", "aging-outside-rcu", 1).validate()
    Config("vcpu-load", LOCKLESS, "no-recheck", 1).validate()  # v6.9's code is in it
