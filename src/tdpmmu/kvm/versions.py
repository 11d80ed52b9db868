"""Kernel versions: each is the base model (v6.9) minus the patches it predates.

Every class overrides only the functions the patch changed, and cites the commit.
"v6.8+p6" and "v6.8+p7" are the series' intermediate states (patch 8 not applied):
they never shipped, but the seed mail's question is about patch 7 alone. "v6.1" is the
async-worker era (v5.18..v6.5): roots are zapped by work items on a per-VM workqueue.
"""

from __future__ import annotations

from collections.abc import Generator
from enum import IntFlag
from typing import NamedTuple, cast

from tdpmmu.explore.runtime import Op, inline, world
from tdpmmu.kernel.atomic import xchg
from tdpmmu.kernel.bug import KVM_BUG_ON, WARN_ON, WARN_ON_ONCE
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
from tdpmmu.kernel.rwlock import held_for_read, read_lock, read_unlock, write_lock, write_unlock
from tdpmmu.kernel.spinlock import spin_lock, spin_unlock
from tdpmmu.kernel.workqueue import (
    INIT_WORK,
    alloc_workqueue,
    destroy_workqueue,
    flush_workqueue,
    queue_work,
    work_struct,
)
from tdpmmu.kvm.mmu import MIRROR
from tdpmmu.kvm.spte import (
    REMOVED_SPTE,
    is_last_spte,
    is_removed_spte,
    is_shadow_present_pte,
    shadow_accessed_mask,
)
from tdpmmu.kvm.structs import (
    PG_LEVEL_1G,
    VALID_PAGE,
    Kvm,
    RoleWord,
    kvm_mmu,
    kvm_mmu_page,
    kvm_page_fault,
    kvm_vcpu,
)
from tdpmmu.kvm.tdp_iter import SptePtr, TdpIter, kvm_tdp_mmu_write_spte, tdp_mmu_clear_spte_bits_atomic
from tdpmmu.kvm.tdp_mmu import (
    EBUSY,
    ListFirst,
    ListNext,
    Steps,
    kvm_mmu_page_as_id,
    kvm_mmu_role_as_id,
)
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




# =====================================================================================
# v6.14: TDX mirror roots (the TDX MMU prep series, merged for v6.14; TDX VMs themselves
# can be created from v6.16). Only what B13 needs: mirror roots beside the direct root,
# private faults into them, root types, and the external (S-EPT) hooks' lock rules.
# =====================================================================================

class KvmTdpMmuRootTypes(IntFlag):
    """``enum kvm_tdp_mmu_root_types`` (de86ef7bf50f, fabaa7650148)."""

    KVM_INVALID_ROOTS = 1 << 0
    KVM_DIRECT_ROOTS = 1 << 1
    KVM_MIRROR_ROOTS = 1 << 2


KVM_INVALID_ROOTS = KvmTdpMmuRootTypes.KVM_INVALID_ROOTS
KVM_DIRECT_ROOTS = KvmTdpMmuRootTypes.KVM_DIRECT_ROOTS
KVM_MIRROR_ROOTS = KvmTdpMmuRootTypes.KVM_MIRROR_ROOTS
KVM_VALID_ROOTS = KVM_DIRECT_ROOTS | KVM_MIRROR_ROOTS
KVM_ALL_ROOTS = KVM_VALID_ROOTS | KVM_INVALID_ROOTS
KVM_X86_TDX_VM = 5  # 9364789567f9


def kvm_has_mirrored_tdp(kvm: Kvm) -> bool:
    return bool(kvm.arch.vm_type == KVM_X86_TDX_VM)


def kvm_is_addr_direct(kvm: Kvm, gfn: int) -> bool:
    """mmu.h: no shared bit configured, or the address has it (a shared access)."""
    bits = kvm.arch.gfn_direct_bits
    return not bits or bool(gfn & bits)


def is_mirror_sp(sp: kvm_mmu_page) -> bool:
    return bool(sp.role.is_mirror)


def is_mirror_sptep(sptep: SptePtr) -> bool:
    return is_mirror_sp(sptep[0])


class RoleCopy(NamedTuple):
    """A ``union kvm_mmu_page_role`` by value (the kernel's local ``role``)."""

    word: RoleWord

    @property
    def smm(self) -> int:
        return self.word[2]


class V6_14(Kernel):
    """v6.9 plus the TDX MMU prep series (merged for v6.14): a VM with mirrored TDP
    (``kvm_has_mirrored_tdp()``) gives each vCPU a mirror root beside its direct root;
    private faults map into the mirror root, and every change of a mirror SPTE is
    propagated to the external (S-EPT) page table through x86 ops that the model keeps
    as their locking rules only. Roots are matched by type; the fast zap and the
    mmu_notifier release leave valid mirror roots alone; uninit zaps them holding
    mmu_lock for write (35be969d1ef2, B13), because removing external SPTEs needs it."""

    NAME = "v6.14"
    COMMIT = ("35be969d1ef2 (Zap invalid roots with mmu_lock holding for write at uninit), "
              "fabaa7650148, 94faba8999b9, a89ecbb56bc7, df4af9f89cd8")

    # -- root types (de86ef7bf50f, fabaa7650148) ------------------------------------------
    @inline
    def tdp_mmu_root_match(self, root: kvm_mmu_page, only_valid: bool) -> bool:
        # The v6.9-shaped callers pass only_valid; v6.14's pass root types.
        types = only_valid if isinstance(only_valid, KvmTdpMmuRootTypes) else (
            KVM_VALID_ROOTS if only_valid else KVM_ALL_ROOTS)
        if WARN_ON_ONCE(not types & KVM_VALID_ROOTS, "!(types & KVM_VALID_ROOTS)"):
            return False
        if root.role.invalid and not types & KVM_INVALID_ROOTS:
            return False
        return bool(types & (KVM_MIRROR_ROOTS if is_mirror_sp(root) else KVM_DIRECT_ROOTS))

    # df4af9f89cd8: the mmu_notifier release zaps direct roots, valid or not; valid mirror
    # roots are torn down at uninit. (A root-types mask in only_valid's place.)
    ZAP_ALL_ROOTS = cast(bool, KVM_DIRECT_ROOTS | KVM_INVALID_ROOTS)

    def kvm_tdp_mmu_invalidate_roots(self, kvm: Kvm, root_types: KvmTdpMmuRootTypes) -> Steps:
        """kvm_tdp_mmu_invalidate_all_roots() with a root-type filter (a89ecbb56bc7)."""
        if WARN_ON_ONCE(root_types & KVM_INVALID_ROOTS, "root_types & KVM_INVALID_ROOTS"):
            root_types &= ~KVM_INVALID_ROOTS
        self.tdp_mmu_invalidate_lockdep(kvm)
        yield Op("kvm_tdp_mmu_invalidate_roots: walk roots")
        for pos in list_for_each(kvm.arch.tdp_mmu_roots):
            root = pos.container()
            if self.tdp_mmu_root_match(root, cast(bool, root_types)):
                self.tdp_mmu_invalidate_root(kvm, root)

    def kvm_tdp_mmu_invalidate_all_roots(self, kvm: Kvm) -> Steps:
        """The fast zap's call (kvm_mmu_zap_all_fast() is otherwise v6.9's): mirror roots
        cannot be fast-zapped, so it invalidates direct roots only."""
        yield from self.kvm_tdp_mmu_invalidate_roots(kvm, KVM_DIRECT_ROOTS)

    # -- zapping invalidated roots for read or write (35be969d1ef2) ------------------------
    def kvm_tdp_mmu_zap_invalidated_roots(self, kvm: Kvm, shared: bool = True) -> Steps:
        if shared:
            yield from read_lock(kvm.mmu_lock)
        else:
            yield from write_lock(kvm.mmu_lock)
        yield from self.zap_invalidated_roots_walk(kvm)
        if shared:
            yield from read_unlock(kvm.mmu_lock)
        else:
            yield from write_unlock(kvm.mmu_lock)

    @inline
    def zap_then_put_root(self, kvm: Kvm, root: kvm_mmu_page) -> Steps:
        # tdp_mmu_zap_root(kvm, root, shared): the model's loop body keeps v6.9's
        # signature, so `shared` is read back from how the caller took mmu_lock.
        yield from self.tdp_mmu_zap_root(kvm, root, held_for_read(kvm.mmu_lock))
        yield from self.kvm_tdp_mmu_put_root(kvm, root)

    @inline
    def tdp_mmu_uninit_put_roots(self, kvm: Kvm) -> Steps:
        yield from self.kvm_tdp_mmu_invalidate_roots(kvm, KVM_VALID_ROOTS)
        yield from self.kvm_tdp_mmu_zap_invalidated_roots(kvm, False)

    # -- mirror roots (fabaa7650148) -------------------------------------------------------
    def mmu_alloc_direct_roots(self, vcpu: kvm_vcpu) -> Generator[Op, int, int]:
        if kvm_has_mirrored_tdp(vcpu.kvm) and not VALID_PAGE(vcpu.arch.mmu.mirror_root_hpa):
            yield from self.kvm_tdp_mmu_alloc_root(vcpu, True)
        return (yield from super().mmu_alloc_direct_roots(vcpu))

    def kvm_tdp_mmu_alloc_root(self, vcpu: kvm_vcpu, mirror: bool = False) -> Generator[Op, int, int]:
        if not mirror:
            return (yield from super().kvm_tdp_mmu_alloc_root(vcpu))
        level, direct, smm, guest_mode, invalid, _ = vcpu.arch.mmu.root_role.word
        role = RoleCopy((level, direct, smm, guest_mode, invalid, True))  # role.is_mirror = true
        root = yield from self.tdp_mmu_get_or_alloc_root(vcpu, role)  # type: ignore[arg-type]
        vcpu.arch.mmu.mirror_root_hpa = root
        return 0

    def kvm_mmu_destroy(self, vcpu: kvm_vcpu) -> Steps:
        """The mirror root lives as long as the vCPU: not freed by kvm_mmu_unload()."""
        yield from super().kvm_mmu_destroy(vcpu)
        yield from read_lock(vcpu.kvm.mmu_lock)
        yield from self.mmu_free_root_page(vcpu.kvm, vcpu.arch.mmu, MIRROR)
        yield from read_unlock(vcpu.kvm.mmu_lock)

    def tdp_mmu_get_root_for_fault(self, vcpu: kvm_vcpu, fault: kvm_page_fault) -> kvm_mmu_page:
        if not kvm_is_addr_direct(vcpu.kvm, fault.addr):
            return vcpu.arch.mmu.mirror_root_hpa  # type: ignore[no-any-return]
        return super().tdp_mmu_get_root_for_fault(vcpu, fault)

    # -- external (S-EPT) page tables (77ac7079e66d, 94faba8999b9) -------------------------
    @inline
    def _tdp_mmu_set_spte_atomic(
        self, kvm: Kvm, it: TdpIter, new_spte: object
    ) -> Generator[Op, int, tuple[int, TdpIter]]:
        if is_mirror_sptep(it.sptep) and not is_removed_spte(new_spte):
            # Users of atomic zapping don't operate on mirror roots: bug the VM if seen.
            if KVM_BUG_ON(not is_shadow_present_pte(new_spte), kvm, "!is_shadow_present_pte(new_spte)"):
                return -EBUSY, it
            return (yield from self.set_external_spte_present(kvm, it, new_spte))
        return (yield from super()._tdp_mmu_set_spte_atomic(kvm, it, new_spte))

    @inline
    def set_external_spte_present(
        self, kvm: Kvm, it: TdpIter, new_spte: object
    ) -> Generator[Op, int, tuple[int, TdpIter]]:
        """Freeze the mirror SPTE while the external page table is updated (the TDX
        module call: link_external_spt / set_external_spte, which succeed here), then
        set it. ``old_spte`` is passed by value: a failed freeze does not refresh it."""
        lockdep_assert_held(kvm.mmu_lock)
        KVM_BUG_ON(is_shadow_present_pte(it.old_spte), kvm, "was_present")
        table, index = it.sptep
        yield Op("try_cmpxchg64", f"{table!r}[{index}]", f"{it.old_spte!r} -> {REMOVED_SPTE}")
        if table.spt[index] != it.old_spte:
            world().note(f"fails: now {table.spt[index]!r}")
            return -EBUSY, it
        kvm_tdp_mmu_write_spte(it.sptep, REMOVED_SPTE)
        yield Op("__kvm_tdp_mmu_write_spte", f"{table!r}[{index}]", f"{new_spte!r}")
        kvm_tdp_mmu_write_spte(it.sptep, new_spte)
        return 0, it

    @inline
    def tdp_mmu_set_spte(self, kvm: Kvm, sptep: SptePtr, old_spte: object, new_spte: object,
                         gfn: int, level: int) -> Generator[Op, int, object]:
        old_spte = yield from super().tdp_mmu_set_spte(kvm, sptep, old_spte, new_spte, gfn, level)
        # Users that do non-atomic setting of PTEs don't operate on mirror roots.
        if is_mirror_sptep(sptep):
            KVM_BUG_ON(is_shadow_present_pte(new_spte), kvm, "is_shadow_present_pte(new_spte)")
            self.remove_external_spte(kvm, gfn, old_spte, level)
        return old_spte

    @inline
    def handle_removed_pt_entry(self, kvm: Kvm, sp: kvm_mmu_page, gfn: int, old_spte: object,
                                shared: bool) -> Steps:
        yield from super().handle_removed_pt_entry(kvm, sp, gfn, old_spte, shared)
        if is_mirror_sp(sp):
            KVM_BUG_ON(shared, kvm, "shared")
            self.remove_external_spte(kvm, gfn, old_spte, sp.role.level)
        # After the loop, free_external_spt() hands the table back (no lock rule of its own).

    def remove_external_spte(self, kvm: Kvm, gfn: int, old_spte: object, level: int) -> None:
        """External SPTEs are 4K leaves; external tables go through free_external_spt()."""
        if not is_last_spte(old_spte, level):
            return
        # Zapping a leaf SPTE is allowed only when the write lock is held.
        lockdep_assert_held_write(kvm.mmu_lock)
        world().note(f"remove_external_spte(gfn {gfn})")  # the TDX module call


KERNELS: dict[str, type[Kernel]] = {
    k.NAME: k for k in (V6_1, V6_8, V6_8_P6, V6_8_P7, Kernel, V6_9_LocklessAging, V6_14)
}
DEFAULT_KERNEL = Kernel.NAME
