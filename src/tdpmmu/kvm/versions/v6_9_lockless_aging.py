"""v6.9 with the lockless TDP MMU aging of v6.15 (B15)."""

from __future__ import annotations

from collections.abc import Generator

from tdpmmu.explore.runtime import Op, inline
from tdpmmu.kernel.rcu import rcu_read_lock, rcu_read_unlock
from tdpmmu.kernel.rculist import list_first_or_null_rcu, list_next_or_null_rcu
from tdpmmu.kvm.spte import shadow_accessed_mask
from tdpmmu.kvm.structs import Kvm
from tdpmmu.kvm.tdp_iter import TdpIter, tdp_mmu_clear_spte_bits_atomic
from tdpmmu.kvm.tdp_mmu import ListFirst, ListNext, kvm_mmu_page_as_id
from tdpmmu.kvm.x86 import Kernel


class V6_9_LocklessAging(Kernel):
    """v6.9 with the TDP MMU aging of v6.15 (kernel-protocol.md §5 B15): the
    mmu_notifier's clear_young/test_young take no mmu_lock (aa34b811650c "KVM: Add
    lockless memslot walk to KVM", selected for x86 by b146a9b34aed "KVM: x86/mmu:
    Relax locking for kvm_test_age_gfn() and kvm_age_gfn()"), and the TDP MMU walks the
    valid roots (526e609f0567 "Process only valid TDP MMU roots when aging a gfn
    range") under RCU alone, clearing Accessed bits with an atomic AND (e29b74920e6f);
    test_young stops at the first young SPTE (51192ebdd145). Everything else is v6.9."""

    NAME = "v6.9+lockless-aging"
    COMMIT = "b146a9b34aed (KVM: x86/mmu: Relax locking for kvm_test_age_gfn() and kvm_age_gfn())"
    KVM_MMU_LOCKLESS_AGING = True

    def kvm_tdp_mmu_age_gfn_range(self, kvm: Kvm, as_id: int, start: int,
                                  end: int) -> Generator[Op, int, bool]:
        return (yield from self._kvm_tdp_mmu_age_gfn_range(kvm, as_id, start, end, False))

    def kvm_tdp_mmu_test_age_gfn(self, kvm: Kvm, as_id: int, start: int,
                                 end: int) -> Generator[Op, int, bool]:
        return (yield from self._kvm_tdp_mmu_age_gfn_range(kvm, as_id, start, end, True))

    def _kvm_tdp_mmu_age_gfn_range(self, kvm: Kvm, as_id: int, start: int, end: int,
                                   test_only: bool) -> Generator[Op, int, bool]:
        """``__kvm_tdp_mmu_age_gfn_range``: no mmu_lock and no root references; one RCU
        read-side section (``guard(rcu)()``) keeps every root and page table the walk
        can reach from being freed, since both are freed through call_rcu()."""
        yield from rcu_read_lock()
        ret = yield from self.tdp_mmu_age_roots_rcu(kvm, as_id, start, end, test_only)
        yield from rcu_read_unlock()
        return ret

    @inline
    def tdp_mmu_age_roots_rcu(
        self, kvm: Kvm, as_id: int, start: int, end: int, test_only: bool,
        first: ListFirst = list_first_or_null_rcu, after: ListNext = list_next_or_null_rcu,
    ) -> Generator[Op, int, bool]:
        """``for_each_tdp_mmu_root_rcu(kvm, root, as_id, KVM_VALID_ROOTS)`` with the leaf
        walk as its body. The list can change under the walk (no lock excludes
        list_add_rcu/list_del_rcu), so every step along it is a scheduling point."""
        ret = False
        head = kvm.arch.tdp_mmu_roots
        pos = yield from first(head)
        while pos is not None:
            root = pos.container()
            if kvm_mmu_page_as_id(root) == as_id and not root.role.invalid:
                if (yield from self.tdp_mmu_age_leafs(kvm, root, start, end, test_only)):
                    ret = True
                    if test_only:
                        break  # return true
            pos = yield from after(head, pos)
        return ret

    def kvm_tdp_mmu_age_spte(self, kvm: Kvm, it: TdpIter) -> Generator[Op, int, TdpIter]:
        """``tdp_mmu_clear_spte_bits_atomic()``: the SPTE may have changed since the walk
        read it (zapped, frozen, replaced); whatever it holds now loses its Accessed bit
        and nothing else (FROZEN_SPTE has none)."""
        old_spte = yield from tdp_mmu_clear_spte_bits_atomic(it.sptep, shadow_accessed_mask)
        return it._replace(old_spte=old_spte)
