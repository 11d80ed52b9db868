"""Kernel versions: each is the base model (v6.9) minus the patches it predates.

Every class overrides only the functions the patch changed, and cites the commit.
"v6.8+p6" and "v6.8+p7" are the series' intermediate states (patch 8 not applied):
they never shipped, but the seed mail's question is about patch 7 alone. "v6.1" is the
async-worker era (v5.18..v6.5): roots are zapped by work items on a per-VM workqueue.
"""

from __future__ import annotations

from collections.abc import Generator

from tdpmmu.explore.runtime import Op, inline, world
from tdpmmu.kernel.atomic import xchg
from tdpmmu.kernel.bug import WARN_ON, WARN_ON_ONCE
from tdpmmu.kernel.lockdep import lockdep_assert_held, lockdep_assert_held_write
from tdpmmu.kernel.memory import set_name
from tdpmmu.kernel.rcu import rcu_read_lock, rcu_read_unlock
from tdpmmu.kernel.rculist import (
    list_add_rcu,
    list_first_or_null_rcu,
    list_for_each,
    list_next_or_null_rcu,
)
from tdpmmu.kernel.refcount import refcount_dec_and_test, refcount_set
from tdpmmu.kernel.rwlock import read_lock, read_unlock, write_lock, write_unlock
from tdpmmu.kernel.spinlock import spin_lock, spin_unlock
from tdpmmu.kernel.workqueue import (
    INIT_WORK,
    alloc_workqueue,
    destroy_workqueue,
    flush_workqueue,
    queue_work,
    work_struct,
)
from tdpmmu.kvm.spte import shadow_accessed_mask
from tdpmmu.kvm.structs import PG_LEVEL_1G, Kvm, kvm_mmu, kvm_mmu_page, kvm_vcpu
from tdpmmu.kvm.tdp_iter import TdpIter, tdp_mmu_clear_spte_bits_atomic
from tdpmmu.kvm.tdp_mmu import ListFirst, ListNext, Steps, kvm_mmu_page_as_id, kvm_mmu_role_as_id
from tdpmmu.kvm.x86 import Kernel


class V6_8_P7(Kernel):
    """v6.9 without patch 8, 576a15de8d29 "KVM: x86/mmu: Free TDP MMU roots while
    holding mmu_lock for read": every root is freed under mmu_lock held for write."""

    NAME = "v6.8+p7"
    COMMIT = "dab285e4ec73 (patch 7/8: alloc TDP MMU roots while holding mmu_lock for read)"

    def tdp_roots_freed_shared(self, mmu: kvm_mmu) -> bool:
        return False


class V6_8_P6(V6_8_P7):
    """Without patch 7, dab285e4ec73: after a miss under the read lock, the slow path
    retakes mmu_lock for *write* and rechecks with the valid-root iterator
    (f5238c2a60f1, "KVM: x86/mmu: Check for usable TDP MMU root while holding
    mmu_lock for read"; the '-' side of the seed mail's diff)."""

    NAME = "v6.8+p6"
    COMMIT = "f5238c2a60f1 (patch 6/8: check for a usable root while holding mmu_lock for read)"

    def kvm_tdp_mmu_try_get_root(self, vcpu: kvm_vcpu) -> Generator[Op, int, kvm_mmu_page | None]:
        role = vcpu.arch.mmu.root_role
        as_id = kvm_mmu_role_as_id(role)
        kvm = vcpu.kvm
        root = yield from self.tdp_mmu_next_root(kvm, None, True)
        while root is not None:
            if kvm_mmu_page_as_id(root) == as_id and root.role.word == role.word:
                return root  # the iterator's reference becomes the vCPU's
            root = yield from self.tdp_mmu_next_root(kvm, root, True)
        return None

    def kvm_tdp_mmu_alloc_root(self, vcpu: kvm_vcpu) -> Generator[Op, int, int]:
        mmu = vcpu.arch.mmu
        kvm = vcpu.kvm
        yield from read_lock(kvm.mmu_lock)
        root = yield from self.kvm_tdp_mmu_try_get_root(vcpu)
        yield from read_unlock(kvm.mmu_lock)
        if root is None:
            yield from write_lock(kvm.mmu_lock)
            # Recheck: another vCPU may have created a usable root since read_unlock.
            root = yield from self.kvm_tdp_mmu_try_get_root(vcpu)
            if root is None:
                root = yield from self.tdp_mmu_new_root(vcpu, mmu.root_role)
                yield from self.tdp_mmu_link_root(kvm, root)
            yield from write_unlock(kvm.mmu_lock)
        mmu.root.hpa = root
        mmu.root.pgd = 0
        return 0

    @inline
    def tdp_mmu_link_root(self, kvm: Kvm, root: kvm_mmu_page) -> Generator[Op, int, None]:
        """Before patch 7 the pages lock was taken just around list_add_rcu()."""
        yield from spin_lock(kvm.arch.tdp_mmu_pages_lock)
        yield from list_add_rcu(root.link, kvm.arch.tdp_mmu_roots)
        yield from spin_unlock(kvm.arch.tdp_mmu_pages_lock)


class V6_8(V6_8_P6):
    """Before the series: roots are looked up and created in one write-side critical
    section, kvm_tdp_mmu_get_vcpu_root_hpa() called by mmu_alloc_direct_roots() under
    write_lock(mmu_lock); tdp_mmu_zap_root() zaps in two passes (1G, then root level)
    until 8ca983631f3c (patch 1/8)."""

    NAME = "v6.8"
    COMMIT = "v6.8 (before 8ca983631f3c..576a15de8d29)"
    ZAP_ROOT_LEVELS = (PG_LEVEL_1G, 0)

    def mmu_alloc_direct_roots(self, vcpu: kvm_vcpu) -> Generator[Op, int, int]:
        kvm = vcpu.kvm
        mmu = vcpu.arch.mmu
        yield from write_lock(kvm.mmu_lock)
        # make_mmu_pages_available(): shadow pages only.
        root = yield from self.kvm_tdp_mmu_get_vcpu_root_hpa(vcpu)
        mmu.root.hpa = root
        mmu.root.pgd = 0
        yield from write_unlock(kvm.mmu_lock)
        return 0

    def kvm_tdp_mmu_get_vcpu_root_hpa(self, vcpu: kvm_vcpu) -> Generator[Op, int, kvm_mmu_page]:
        role = vcpu.arch.mmu.root_role
        kvm = vcpu.kvm
        lockdep_assert_held_write(kvm.mmu_lock)
        # for_each_tdp_mmu_root(): valid and invalid roots; role.word holds `invalid`.
        for pos in list_for_each(kvm.arch.tdp_mmu_roots):
            root = pos.container()
            lockdep_assert_held_write(kvm.mmu_lock)
            if kvm_mmu_page_as_id(root) != kvm_mmu_role_as_id(role):
                continue
            if root.role.word == role.word and (yield from self.kvm_tdp_mmu_get_root(root)):
                return root  # type: ignore[no-any-return]
        root = yield from self.tdp_mmu_new_root(vcpu, role)
        yield from self.tdp_mmu_link_root(kvm, root)
        return root


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


class V6_1(V6_8):
    """The async-worker era, v5.18..v6.5 (modeled on v6.1): invalidated roots, and valid
    roots whose last reference is put ("defunct" roots), are zapped by work items on a
    per-VM unbound workqueue; kvm_tdp_mmu_zap_invalidated_roots() is flush_workqueue().
    Roots start with one reference (the vCPU's): the TDP MMU holds none of its own until
    edbdb43fc96b (v6.4). Introduced by efd995dae5eb "KVM: x86/mmu: Zap defunct roots via
    asynchronous worker" and 22b94c4b63eb "KVM: x86/mmu: Zap invalidated roots via
    asynchronous worker" (v5.18), removed by 0df9dab891ff "KVM: x86/mmu: Stop zapping
    invalidated TDP MMU roots asynchronously" (v6.6). Root allocation and freeing take
    mmu_lock for write and the zap runs in two passes (1b6043e8e584), as in ``V6_8``."""

    NAME = "v6.1"
    COMMIT = "v6.1 (zap workers of efd995dae5eb and 22b94c4b63eb, v5.18..v6.5)"
    ROOT_INITIAL_REFS = 1
    # How many work items of tdp_mmu_zap_wq may run at once in the model (its worker
    # daemons); the kernel's unbound workqueue runs far more (see kernel/workqueue.py).
    TDP_MMU_ZAP_WQ_WORKERS = 1

    def kvm_mmu_init_tdp_mmu(self, kvm: Kvm) -> None:
        super().kvm_mmu_init_tdp_mmu(kvm)
        wq = alloc_workqueue("kvm", "WQ_UNBOUND|WQ_MEM_RECLAIM|WQ_CPU_INTENSIVE", 0,
                             self.TDP_MMU_ZAP_WQ_WORKERS)
        set_name(wq, "kvm.arch.tdp_mmu_zap_wq")  # traces: not the VM's "kvm"
        kvm.arch.tdp_mmu_zap_wq = wq

    @inline
    def tdp_mmu_uninit_put_roots(self, kvm: Kvm) -> Steps:
        # destroy_workqueue() also waits for any queued work items: the zaps of the
        # roots the vCPUs' last puts made defunct.
        yield from destroy_workqueue(kvm.arch.tdp_mmu_zap_wq)

    def tdp_mmu_zap_root_work(self, work: work_struct) -> Steps:
        root = work.container()
        kvm = root.tdp_mmu_async_data
        yield from read_lock(kvm.mmu_lock)
        # No TLB flush: vCPUs flush when they load a new root. The worker holds only
        # the reference it was gifted; it puts it once the root is zapped.
        yield from self.zap_then_put_root(kvm, root)
        yield from read_unlock(kvm.mmu_lock)

    def tdp_mmu_schedule_zap_root(self, kvm: Kvm, root: kvm_mmu_page) -> Steps:
        root.tdp_mmu_async_data = kvm
        INIT_WORK(root.tdp_mmu_async_work, self.tdp_mmu_zap_root_work)
        yield from queue_work(kvm.arch.tdp_mmu_zap_wq, root.tdp_mmu_async_work)

    def kvm_tdp_root_mark_invalid(self, root: kvm_mmu_page) -> Generator[Op, int, bool]:
        """Set role.invalid with an xchg of role.word; True if it was already set."""
        return bool((yield from xchg(root.role, "invalid", True)))

    def kvm_tdp_mmu_put_root(self, kvm: Kvm, root: kvm_mmu_page) -> Steps:
        # kvm_lockdep_assert_mmu_lock_held(kvm, shared): the model passes no `shared`
        # (Paolo's v6.7 cleanup removed it), so either mode.
        lockdep_assert_held(kvm.mmu_lock)
        if not (yield from refcount_dec_and_test(root.tdp_mmu_root_count)):
            return
        WARN_ON(not root.tdp_mmu_page, "!root->tdp_mmu_page")
        if not (yield from self.kvm_tdp_root_mark_invalid(root)):
            # A valid root lost its last reference: it is defunct. It gets an extra
            # reference, gifted to the worker that zaps it (readers cannot take one: it
            # is invalid now; writers that yield may, so the worker's put is not always
            # the last one).
            yield from refcount_set(root.tdp_mmu_root_count, 1)
            yield from self.tdp_mmu_schedule_zap_root(kvm, root)
            return
        yield from self.tdp_mmu_unlink_and_free_root(kvm, root)

    def kvm_tdp_mmu_invalidate_all_roots(self, kvm: Kvm) -> Steps:
        """Every valid root gets a reference for its worker, is marked invalid and
        scheduled (22b94c4b63eb). Already-invalid roots have their work item already."""
        if self.CONFIG_PROVE_LOCKING:
            lockdep_assert_held_write(kvm.mmu_lock)
        for pos in list_for_each(kvm.arch.tdp_mmu_roots):
            root = pos.container()
            self.fast_zap_visits(root)
            if not root.role.invalid and not WARN_ON_ONCE(
                not (yield from self.kvm_tdp_mmu_get_root(root)), "!kvm_tdp_mmu_get_root(root)"
            ):
                self.tdp_mmu_set_root_invalid(kvm, root)
                world().note(f"{root!r} invalid")
                yield from self.tdp_mmu_schedule_zap_root(kvm, root)

    def kvm_tdp_mmu_zap_invalidated_roots(self, kvm: Kvm) -> Steps:
        yield from flush_workqueue(kvm.arch.tdp_mmu_zap_wq)


KERNELS: dict[str, type[Kernel]] = {
    k.NAME: k for k in (V6_1, V6_8, V6_8_P6, V6_8_P7, Kernel, V6_9_LocklessAging)
}
DEFAULT_KERNEL = Kernel.NAME
