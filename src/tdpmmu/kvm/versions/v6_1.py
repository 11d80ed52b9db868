"""The async-worker era (v5.18..v6.5), modeled on v6.1 (B07)."""

from __future__ import annotations

from collections.abc import Generator

from tdpmmu.explore.runtime import Op, inline, world
from tdpmmu.kernel.atomic import xchg
from tdpmmu.kernel.bug import WARN_ON, WARN_ON_ONCE
from tdpmmu.kernel.lockdep import lockdep_assert_held, lockdep_assert_held_write
from tdpmmu.kernel.memory import set_name
from tdpmmu.kernel.rculist import list_for_each
from tdpmmu.kernel.refcount import refcount_dec_and_test, refcount_set
from tdpmmu.kernel.rwlock import read_lock, read_unlock
from tdpmmu.kernel.workqueue import (
    INIT_WORK,
    alloc_workqueue,
    destroy_workqueue,
    flush_workqueue,
    queue_work,
    work_struct,
)
from tdpmmu.kvm.structs import Kvm, kvm_mmu_page
from tdpmmu.kvm.tdp_mmu import Steps
from tdpmmu.kvm.versions.v6_8 import V6_8


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
