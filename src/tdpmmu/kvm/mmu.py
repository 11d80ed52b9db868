"""arch/x86/kvm/mmu/mmu.c (and mmu.h): loading, freeing and obsoleting vCPU roots,
the fast zap behind memslot updates, and the TDP page fault. Base: v6.9."""

from __future__ import annotations

from collections.abc import Generator

from tdpmmu.explore.runtime import Op, inline, world
from tdpmmu.kernel.atomic import READ_ONCE
from tdpmmu.kernel.bug import WARN_ON_ONCE
from tdpmmu.kernel.lockdep import lockdep_assert_held, lockdep_assert_held_read
from tdpmmu.kernel.memory import set_item
from tdpmmu.kernel.page import get_user_page, page, put_page
from tdpmmu.kernel.requests import kvm_make_all_cpus_request
from tdpmmu.kernel.rwlock import read_lock, read_unlock, write_lock, write_unlock
from tdpmmu.kernel.tlb import hyperv_flush_guest_mapping, tlb_flush_asid
from tdpmmu.kvm.structs import (
    INVALID_PAGE,
    KVM_MMU_NUM_PREV_ROOTS,
    KVM_MMU_ROOT_CURRENT,
    KVM_MMU_ROOT_PREVIOUS,
    KVM_MMU_ROOTS_ALL,
    KVM_REQ_MMU_FREE_OBSOLETE_ROOTS,
    PG_LEVEL_4K,
    VALID_PAGE,
    Kvm,
    kvm_mmu,
    kvm_mmu_page,
    kvm_page_fault,
    kvm_vcpu,
)
from tdpmmu.kvm.tdp_mmu import RET_PF_RETRY, TdpMmu, mapped_leaves

Steps = Generator[Op, int, None]

CURRENT = -1  # "slot" of mmu->root.hpa, beside prev_roots[0..2]
MIRROR = -2  # "slot" of mmu->mirror_root_hpa (v6.14)


def root_hpa(mmu: kvm_mmu, slot: int) -> kvm_mmu_page | None:
    """``mmu->root.hpa`` (slot CURRENT), ``mmu->mirror_root_hpa`` (MIRROR) or
    ``mmu->prev_roots[slot].hpa``."""
    if slot == MIRROR:
        return mmu.mirror_root_hpa  # type: ignore[no-any-return]
    return mmu.root.hpa if slot == CURRENT else mmu.prev_roots[slot]  # type: ignore[no-any-return]


def set_root_hpa(mmu: kvm_mmu, slot: int, hpa: kvm_mmu_page | None) -> None:
    if slot == CURRENT:
        mmu.root.hpa = hpa
    elif slot == MIRROR:
        mmu.mirror_root_hpa = hpa
    else:
        set_item(mmu, "prev_roots", slot, hpa)


class Mmu(TdpMmu):
    """mmu.c, v6.9."""

    # -- loading (notes §5.1–5.3) ---------------------------------------------------------
    def kvm_mmu_reload(self, vcpu: kvm_vcpu) -> Generator[Op, int, int]:
        if VALID_PAGE(vcpu.arch.mmu.root.hpa):
            return 0
        return (yield from self.kvm_mmu_load(vcpu))

    def kvm_mmu_load(self, vcpu: kvm_vcpu) -> Generator[Op, int, int]:
        # Memory caches are topped up without locks; special roots are for shadow MMUs.
        r = yield from self.mmu_alloc_direct_roots(vcpu)
        # kvm_mmu_load_pgd(), then the local TLB flush on every new root: "the
        # provenance of the root is unknown ... Flushing on alloc also allows KVM to skip
        # the TLB flush when freeing a root" (db01416b22d9); the reason zapping an
        # invalid or defunct root needs no remote flush.
        self.kvm_x86_flush_tlb_current(vcpu)
        return r

    # -- the vendor TLB flushes (svm.c), where TLBs are modeled (kernel/tlb.py) -----------
    @inline
    def kvm_x86_flush_tlb_current(self, vcpu: kvm_vcpu) -> None:
        """``svm_flush_tlb_current()`` since e5c972c1fada "KVM: SVM: Flush Hyper-V TLB
        when required" (v6.3, Cc stable 5.17+): under EnlightenedNptTlb the ASID flush
        leaves the translations the L0 derived from the NPT, so the loaded root's are
        flushed by hypercall first."""
        if vcpu.arch.tlb is None:
            return
        root = vcpu.arch.mmu.root.hpa
        if self.svm_hv_is_enlightened_tlb_enabled(vcpu) and VALID_PAGE(root):
            assert root is not None
            hyperv_flush_guest_mapping((v.arch.tlb for v in vcpu.kvm.vcpus), root.frame)
        self.svm_flush_tlb_asid(vcpu)

    @inline
    def svm_flush_tlb_asid(self, vcpu: kvm_vcpu) -> None:
        """``TLB_CONTROL_FLUSH_ASID``: the vCPU's guest-physical translations too, unless
        EnlightenedNptTlb limits it to guest-virtual ones (none in the model)."""
        if not self.svm_hv_is_enlightened_tlb_enabled(vcpu):
            tlb_flush_asid(vcpu.arch.tlb)

    def svm_hv_is_enlightened_tlb_enabled(self, vcpu: kvm_vcpu) -> bool:
        return bool(vcpu.kvm.arch.hv_enlightened_npt_tlb)

    def mmu_alloc_direct_roots(self, vcpu: kvm_vcpu) -> Generator[Op, int, int]:
        return (yield from self.kvm_tdp_mmu_alloc_root(vcpu))

    # -- freeing (notes §5.4–5.7) -------------------------------------------------------
    def tdp_roots_freed_shared(self, mmu: kvm_mmu) -> bool:
        """``is_tdp_mmu`` of kvm_mmu_free_roots(): free TDP MMU roots under mmu_lock held
        for read (576a15de8d29, patch 8 of the series)."""
        return bool(mmu.root_role.direct)

    def mmu_free_root_page(self, kvm: Kvm, mmu: kvm_mmu, slot: int) -> Steps:
        sp = root_hpa(mmu, slot)
        if not VALID_PAGE(sp):
            return
        assert sp is not None
        if sp.tdp_mmu_page:
            if self.tdp_roots_freed_shared(mmu):
                lockdep_assert_held_read(kvm.mmu_lock)
            yield from self.kvm_tdp_mmu_put_root(kvm, sp)
        set_root_hpa(mmu, slot, INVALID_PAGE)

    def kvm_mmu_free_roots(self, kvm: Kvm, mmu: kvm_mmu, roots_to_free: int) -> Steps:
        is_tdp_mmu = self.tdp_roots_freed_shared(mmu)
        WARN_ON_ONCE(roots_to_free & ~KVM_MMU_ROOTS_ALL, "roots_to_free & ~KVM_MMU_ROOTS_ALL")
        # Before taking mmu_lock, see if there is any real work (vCPU-private fields).
        free_active_root = bool(roots_to_free & KVM_MMU_ROOT_CURRENT) and VALID_PAGE(mmu.root.hpa)
        if not free_active_root and not any(
            roots_to_free & KVM_MMU_ROOT_PREVIOUS(i) and VALID_PAGE(mmu.prev_roots[i])
            for i in range(KVM_MMU_NUM_PREV_ROOTS)
        ):
            return
        if is_tdp_mmu:
            yield from read_lock(kvm.mmu_lock)
        else:
            yield from write_lock(kvm.mmu_lock)
        for i in range(KVM_MMU_NUM_PREV_ROOTS):
            if roots_to_free & KVM_MMU_ROOT_PREVIOUS(i):
                yield from self.mmu_free_root_page(kvm, mmu, i)
        if free_active_root:
            yield from self.mmu_free_root_page(kvm, mmu, CURRENT)
            mmu.root.hpa = INVALID_PAGE
            mmu.root.pgd = 0
        if is_tdp_mmu:
            yield from read_unlock(kvm.mmu_lock)
        else:
            yield from write_unlock(kvm.mmu_lock)

    def kvm_mmu_unload(self, vcpu: kvm_vcpu) -> Steps:
        yield from self.kvm_mmu_free_roots(vcpu.kvm, vcpu.arch.root_mmu, KVM_MMU_ROOTS_ALL)
        WARN_ON_ONCE(VALID_PAGE(vcpu.arch.root_mmu.root.hpa), "VALID_PAGE(vcpu->arch.root_mmu.root.hpa)")

    def kvm_mmu_destroy(self, vcpu: kvm_vcpu) -> Steps:
        """vCPU destruction (kvm_destroy_vcpus()): its roots were unloaded already."""
        yield from self.kvm_mmu_unload(vcpu)

    def is_obsolete_sp(self, kvm: Kvm, sp: kvm_mmu_page) -> bool:
        # TDP MMU pages ignore mmu_valid_gen.
        return bool(sp.role.invalid)

    def is_obsolete_root(self, kvm: Kvm, hpa: kvm_mmu_page | None) -> bool:
        if not VALID_PAGE(hpa):
            return False
        # A racy read of role.invalid is fine: the caller's reference pins the root
        # and a stale answer is fixed by the next FREE_OBSOLETE_ROOTS request.
        assert hpa is not None
        return self.is_obsolete_sp(kvm, hpa)

    def _kvm_mmu_free_obsolete_roots(self, kvm: Kvm, mmu: kvm_mmu) -> Steps:
        """``__kvm_mmu_free_obsolete_roots``."""
        roots_to_free = 0
        if self.is_obsolete_root(kvm, mmu.root.hpa):
            roots_to_free |= KVM_MMU_ROOT_CURRENT
        for i in range(KVM_MMU_NUM_PREV_ROOTS):
            if self.is_obsolete_root(kvm, mmu.prev_roots[i]):
                roots_to_free |= KVM_MMU_ROOT_PREVIOUS(i)
        if roots_to_free:
            yield from self.kvm_mmu_free_roots(kvm, mmu, roots_to_free)

    def kvm_mmu_free_obsolete_roots(self, vcpu: kvm_vcpu) -> Steps:
        yield from self._kvm_mmu_free_obsolete_roots(vcpu.kvm, vcpu.arch.root_mmu)

    def kvm_mmu_reset_context(self, vcpu: kvm_vcpu, smm: int) -> Steps:
        """CR0/CR4/EFER or SMM changes: drop the roots, recompute the role."""
        yield from self.kvm_mmu_unload(vcpu)
        vcpu.arch.mmu.root_role.smm = smm  # kvm_init_mmu()

    # -- fast zap (notes §5.9) ------------------------------------------------------------
    def kvm_mmu_zap_all_fast(self, kvm: Kvm) -> Steps:
        lockdep_assert_held(kvm.slots_lock)
        yield from write_lock(kvm.mmu_lock)
        kvm.arch.mmu_valid_gen = 0 if kvm.arch.mmu_valid_gen else 1
        yield from self.kvm_tdp_mmu_invalidate_all_roots(kvm)
        # In the same write-side critical section as the invalidation: a vCPU that
        # grabs a just-invalidated root must be told to drop it.
        yield from self.kvm_request_free_obsolete_roots(kvm)
        # kvm_zap_obsolete_pages(): shadow pages only; there are none with the TDP MMU.
        yield from write_unlock(kvm.mmu_lock)
        yield from self.kvm_tdp_mmu_zap_invalidated_roots(kvm)

    @inline
    def kvm_request_free_obsolete_roots(self, kvm: Kvm) -> Steps:
        """``kvm_make_all_cpus_request(kvm, KVM_REQ_MMU_FREE_OBSOLETE_ROOTS)``; the ghost
        flag the invalidation set ends here, wherever a version or mutant posts it."""
        yield from kvm_make_all_cpus_request(kvm, KVM_REQ_MMU_FREE_OBSOLETE_ROOTS, kvm.vcpus)
        kvm.obsolete_roots_unannounced = False

    def kvm_mmu_zap_all(self, kvm: Kvm) -> Steps:
        """mmu_notifier release (the mm exits) and VM destruction."""
        yield from write_lock(kvm.mmu_lock)
        yield from self.kvm_tdp_mmu_zap_all(kvm)
        yield from write_unlock(kvm.mmu_lock)

    # -- page fault (notes §5.8) ----------------------------------------------------------
    def is_page_fault_stale(self, vcpu: kvm_vcpu, fault: kvm_page_fault) -> bool:
        sp = vcpu.arch.mmu.root.hpa
        if sp is not None and self.is_obsolete_sp(vcpu.kvm, sp):
            return True
        if sp is None and KVM_REQ_MMU_FREE_OBSOLETE_ROOTS in vcpu.requests:
            return True
        return self.mmu_invalidate_retry_gfn(vcpu.kvm, fault.mmu_seq, fault.gfn)

    def mmu_invalidate_retry_gfn(self, kvm: Kvm, mmu_seq: int, gfn: int) -> bool:
        """An mmu_notifier invalidation covering ``gfn`` is running, or one completed
        since the fault sampled ``mmu_seq``: the pfn may be stale (include/linux/kvm_host.h)."""
        lockdep_assert_held(kvm.mmu_lock)
        if kvm.mmu_invalidate_in_progress and (
            kvm.mmu_invalidate_range_start <= gfn < kvm.mmu_invalidate_range_end
        ):
            return True
        return bool(kvm.mmu_invalidate_seq != mmu_seq)

    def kvm_faultin_pfn(self, vcpu: kvm_vcpu, fault: kvm_page_fault) -> Generator[Op, int, kvm_page_fault]:
        """Sample the notifier sequence, then resolve the pfn with gup (a page
        reference, dropped by kvm_release_pfn_clean() after the fault)."""
        mmu_seq = yield from READ_ONCE(vcpu.kvm, "mmu_invalidate_seq")
        # smp_rmb(): the sequence is read before the pfn.
        pfn = yield from get_user_page(vcpu.kvm.mm, fault.gfn)  # __gfn_to_pfn_memslot()
        return fault._replace(mmu_seq=mmu_seq, pfn=pfn)

    def kvm_release_pfn_clean(self, kvm: Kvm, pfn: page) -> Steps:
        if (yield from put_page(pfn)):
            self.check_page_unmapped(kvm, pfn)

    @inline
    def check_page_unmapped(self, kvm: Kvm, pfn: page) -> None:
        """Property: a freed page is mapped by no SPTE (KVM holds no page reference;
        the mmu_notifier must have zapped every SPTE before the mm lets it go)."""
        for gfn, sp in mapped_leaves(pfn):
            world().report("use-after-free",
                           f"{pfn!r} was freed while {sp!r} still maps it at gfn {gfn}")

    def kvm_tdp_mmu_page_fault(self, vcpu: kvm_vcpu, gfn: int) -> Generator[Op, int, int]:
        kvm = vcpu.kvm
        # kvm_mmu_do_page_fault(): the gfn without the shared bit (TDX), the address with it.
        fault = kvm_page_fault(gfn=gfn & ~kvm.arch.gfn_direct_bits, goal_level=PG_LEVEL_4K, addr=gfn)
        fault = yield from self.kvm_faultin_pfn(vcpu, fault)
        r = RET_PF_RETRY
        yield from read_lock(kvm.mmu_lock)
        if self.is_page_fault_stale(vcpu, fault):
            world().note("stale: RET_PF_RETRY")
        else:
            r = yield from self.kvm_tdp_mmu_map(vcpu, fault)
        yield from read_unlock(kvm.mmu_lock)
        yield from self.kvm_release_pfn_clean(kvm, fault.pfn)  # type: ignore[arg-type]
        return r

    # -- mmu_notifier unmap (notes §4.9) -------------------------------------------------
    def kvm_unmap_gfn_range(self, kvm: Kvm, as_id: int, start: int, end: int,
                            may_block: bool) -> Generator[Op, int, bool]:
        # The rmap walk is for shadow pages; there are none with the TDP MMU.
        return (yield from self.kvm_tdp_mmu_unmap_gfn_range(kvm, as_id, start, end, may_block, False))

    # -- mmu_notifier aging (kernel-protocol.md §5 B15) -------------------------------
    def kvm_age_gfn(self, kvm: Kvm, as_id: int, start: int, end: int) -> Generator[Op, int, bool]:
        # The rmap walk is for shadow pages; there are none with the TDP MMU.
        return (yield from self.kvm_tdp_mmu_age_gfn_range(kvm, as_id, start, end))

    def kvm_test_age_gfn(self, kvm: Kvm, as_id: int, start: int, end: int) -> Generator[Op, int, bool]:
        return (yield from self.kvm_tdp_mmu_test_age_gfn(kvm, as_id, start, end))

    # -- VM teardown (notes §5.11) ----------------------------------------------------------
    def kvm_mmu_uninit_vm(self, kvm: Kvm) -> Steps:
        yield from self.kvm_mmu_uninit_tdp_mmu(kvm)
