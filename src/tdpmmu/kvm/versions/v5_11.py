"""The pre-RCU-iterator era, modeled on v5.11 (B01)."""

from __future__ import annotations

from collections.abc import Generator

from tdpmmu.explore.runtime import Op, inline, world
from tdpmmu.kernel.bug import BUG_ON, WARN_ON
from tdpmmu.kernel.lockdep import lockdep_assert_held
from tdpmmu.kernel.lockedint import pre_dec, pre_inc
from tdpmmu.kernel.memory import kfree, next_name, set_name
from tdpmmu.kernel.rculist import list_add, list_del, list_empty, list_for_each, list_head
from tdpmmu.kernel.requests import kvm_check_request, kvm_make_all_cpus_request
from tdpmmu.kernel.rwlock import write_lock, write_unlock
from tdpmmu.kernel.sched import cond_resched_rwlock_write, need_resched
from tdpmmu.kvm.mmu import root_hpa, set_root_hpa
from tdpmmu.kvm.spte import (
    KVM_PAGES_PER_HPAGE,
    SHADOW_NONPRESENT_VALUE,
    SPTE_ENT_PER_PAGE,
    TDP_ROOT_LEVEL,
    is_last_spte,
    is_shadow_present_pte,
    make_spte,
)
from tdpmmu.kvm.structs import (
    INVALID_PAGE,
    KVM_REQ_MMU_RELOAD,
    PG_LEVEL_4K,
    VALID_PAGE,
    Kvm,
    kvm_mmu,
    kvm_mmu_page,
    kvm_page_fault,
    kvm_vcpu,
)
from tdpmmu.kvm.tdp_iter import TdpIter, kvm_tdp_mmu_write_spte, tdp_iter_next, tdp_iter_start, tdp_iter_valid
from tdpmmu.kvm.tdp_mmu import RET_PF_FIXED, RET_PF_RETRY, RET_PF_SPURIOUS, Steps, kvm_mmu_page_as_id
from tdpmmu.kvm.versions.v6_8 import V6_8


class V5_11(V6_8):
    """v5.11, the TDP MMU's first release (Ben Gardon's series, faaf05b00aec and
    neighbours, v5.10), with a889ea54b3da "KVM: x86/mmu: Ensure TDP MMU roots are freed
    after yield" (v5.11-rc): the yield-safe root iterator frees a root whose last
    reference it drops. What differs from v6.9 (kernel-protocol.md §5 B01, [T-5.11]):

    - ``mmu_lock`` is a spinlock (the rwlock here, always taken for write: page faults
      too); the roots list is a plain list (``list_add``/``list_del`` under mmu_lock, no
      RCU); ``root_count`` is an int changed under mmu_lock (``kvm_mmu_get_root`` /
      ``kvm_mmu_put_root``, mmu_internal.h); a root starts with one reference, its
      vCPU's, and the TDP MMU holds none (that came with edbdb43fc96b, v6.4);
    - whoever puts the last reference frees the root at once: unlink, zap, free;
    - no root is ever invalid: a memslot update's kvm_mmu_zap_all_fast() asks every vCPU
      to reload (KVM_REQ_MMU_RELOAD: kvm_mmu_unload()) and zaps every root with
      kvm_tdp_mmu_zap_all(), which yields, inside its mmu_lock section (faaf05b00aec);
      b7cccd397f31 (v5.13) brought invalid roots;
    - one zap, ``zap_gfn_range()``, zaps every SPTE wholly inside the range, a subtree at
      a time, and frees page tables at once; the mmu_notifier's unmap never yields.

    The file read is v5.11's tdp_mmu.c with the 5.11.y backports ed5e484b79e8 (a yield
    only after forward progress: without it the model's yield points could repeat
    forever at one gfn) and a835429cda91 (flush before yielding). Left as v6.9's:
    aging (it never yields either way), KVM_REQ_VM_DEAD (never made here)."""

    NAME = "v5.11"
    CORPUS_ERA = True
    COMMIT = "a889ea54b3da (KVM: x86/mmu: Ensure TDP MMU roots are freed after yield), v5.11"

    # -- root references: mmu_internal.h -------------------------------------------------
    def kvm_mmu_get_root(self, kvm: Kvm, sp: kvm_mmu_page) -> Steps:
        BUG_ON(not sp.root_count, "!sp->root_count")
        lockdep_assert_held(kvm.mmu_lock)
        yield from pre_inc(sp, "root_count")

    def kvm_mmu_put_root(self, kvm: Kvm, sp: kvm_mmu_page) -> Generator[Op, int, bool]:
        lockdep_assert_held(kvm.mmu_lock)
        return (yield from pre_dec(sp, "root_count")) == 0

    def tdp_mmu_root_refs(self, root: kvm_mmu_page) -> int:
        return int(root.root_count)

    def max_gfn_host(self) -> int:
        """``1ULL << (shadow_phys_bits - PAGE_SHIFT)``: the gfns a root can map, the range
        of the zaps that empty a root (the model's root spans more than ``--gfns``)."""
        return KVM_PAGES_PER_HPAGE(TDP_ROOT_LEVEL + 1)

    # -- tdp_mmu.c: freeing ------------------------------------------------------------------
    def tdp_mmu_put_root(self, kvm: Kvm, root: kvm_mmu_page) -> Steps:
        if (yield from self.kvm_mmu_put_root(kvm, root)):
            yield from self.kvm_tdp_mmu_free_root(kvm, root)

    def kvm_tdp_mmu_put_root(self, kvm: Kvm, root: kvm_mmu_page) -> Steps:
        """v6.9's name, for code shared with it: v5.11's put is tdp_mmu_put_root()."""
        yield from self.tdp_mmu_put_root(kvm, root)

    def kvm_tdp_mmu_free_root(self, kvm: Kvm, root: kvm_mmu_page) -> Steps:
        lockdep_assert_held(kvm.mmu_lock)
        WARN_ON(root.root_count, "root->root_count")
        WARN_ON(not root.tdp_mmu_page, "!root->tdp_mmu_page")
        yield from list_del(root.link)
        yield from self.zap_gfn_range(kvm, root, 0, self.max_gfn_host(), False, False)
        kfree(root)  # free_page(root->spt); kmem_cache_free(): no grace period

    def handle_removed_pt(self, kvm: Kvm, sp: kvm_mmu_page, shared: bool) -> Steps:
        """The non-leaf branch of __handle_changed_spte(): unlink the child table, clear
        and handle each entry, flush, free the table at once (every walker holds
        mmu_lock, so none can be in it)."""
        level = sp.role.level
        self.tdp_mmu_unlink_sp(kvm, sp, shared)  # list_del(&sp->link)
        for i in range(SPTE_ENT_PER_PAGE):
            old_child_spte = sp.spt[i]
            kvm_tdp_mmu_write_spte((sp, i), SHADOW_NONPRESENT_VALUE)  # WRITE_ONCE(*(pt + i), 0)
            yield from self.handle_changed_spte(kvm, sp.gfn + i * KVM_PAGES_PER_HPAGE(level),
                                                old_child_spte, SHADOW_NONPRESENT_VALUE, level, shared)
        world().note("kvm_flush_remote_tlbs_with_address()")
        kfree(sp)

    # -- tdp_mmu.c: the yield-safe root iterator ------------------------------------------
    # for_each_tdp_mmu_root_yield_safe(kvm, root):
    #     for (root = list_first_entry(roots); tdp_mmu_next_root_valid(kvm, root);
    #          root = tdp_mmu_next_root(kvm, root))
    # The model's call sites spell the loop as v6.9's tdp_mmu_next_root() calls (tdp_mmu.py):
    # here one call is the macro's step (for prev_root, or its initializer) and its condition.
    def tdp_mmu_next_root(
        self, kvm: Kvm, prev_root: kvm_mmu_page | None, only_valid: bool
    ) -> Generator[Op, int, kvm_mmu_page | None]:
        """No ``only_valid``: no root is invalid in v5.11."""
        if prev_root is None:
            pos = kvm.arch.tdp_mmu_roots.next  # list_first_entry()
        else:
            pos = prev_root.link.next  # list_next_entry(root, link), before the put
            yield from self.tdp_mmu_put_root(kvm, prev_root)
        return (yield from self.tdp_mmu_next_root_valid(kvm, pos))

    def tdp_mmu_next_root_valid(self, kvm: Kvm, pos: list_head) -> Generator[Op, int, kvm_mmu_page | None]:
        """The loop condition: take a reference unless the walk is back at the head."""
        lockdep_assert_held(kvm.mmu_lock)
        if pos == kvm.arch.tdp_mmu_roots:  # list_entry_is_head()
            return None
        root: kvm_mmu_page = pos.container()
        yield from self.kvm_mmu_get_root(kvm, root)
        return root

    # -- tdp_mmu.c: a vCPU's root ----------------------------------------------------------
    def mmu_alloc_direct_roots(self, vcpu: kvm_vcpu) -> Generator[Op, int, int]:
        """The TDP MMU branch: kvm_tdp_mmu_get_vcpu_root_hpa() takes mmu_lock itself."""
        root = yield from self.kvm_tdp_mmu_get_vcpu_root_hpa(vcpu)
        vcpu.arch.mmu.root.hpa = root
        return 0

    def kvm_tdp_mmu_get_vcpu_root_hpa(self, vcpu: kvm_vcpu) -> Generator[Op, int, kvm_mmu_page]:
        """With get_tdp_mmu_vcpu_root() (the model's hpa is the root itself)."""
        role = vcpu.arch.mmu.root_role
        kvm = vcpu.kvm
        yield from write_lock(kvm.mmu_lock)  # spin_lock()
        # Check for an existing root before allocating a new one (for_each_tdp_mmu_root:
        # the role word holds the address space). The walk has no scheduling point; in
        # an expression, its cursor ends with it (a cursor left in this frame would tell
        # apart states that differ in nothing else, as v6.9's tdp_mmu_recheck_roots says).
        found: kvm_mmu_page | None = next((root for root in (
            pos.container() for pos in list_for_each(kvm.arch.tdp_mmu_roots))
            if root.role.word == role.word), None)
        if found is not None:
            yield from self.kvm_mmu_get_root(kvm, found)
            yield from write_unlock(kvm.mmu_lock)
            return found
        root = self.tdp_mmu_alloc_sp(vcpu)  # alloc_tdp_mmu_page()
        set_name(root, next_name(kvm_mmu_page, "root"))
        self.tdp_mmu_init_sp(root, 0, role.word)
        root.root_count = 1
        yield from list_add(root.link, kvm.arch.tdp_mmu_roots)
        yield from write_unlock(kvm.mmu_lock)
        return root

    # -- mmu.c: a vCPU's roots -------------------------------------------------------------
    def mmu_free_root_page(self, kvm: Kvm, mmu: kvm_mmu, slot: int) -> Steps:
        sp = root_hpa(mmu, slot)
        if not VALID_PAGE(sp):
            return
        assert sp is not None
        if (yield from self.kvm_mmu_put_root(kvm, sp)):
            if sp.tdp_mmu_page:
                yield from self.kvm_tdp_mmu_free_root(kvm, sp)
            # else if (sp->role.invalid): kvm_mmu_prepare_zap_page(): shadow pages only
        set_root_hpa(mmu, slot, INVALID_PAGE)

    @inline
    def vcpu_enter_guest_requests(self, vcpu: kvm_vcpu) -> Generator[Op, int, bool]:
        if (yield from kvm_check_request(KVM_REQ_MMU_RELOAD, vcpu)):
            yield from self.kvm_mmu_unload(vcpu)
        return False

    # -- zapping -------------------------------------------------------------------------------
    def kvm_mmu_zap_all_fast(self, kvm: Kvm) -> Steps:
        """Memslot deletion (kvm_mmu_invalidate_zap_pages_in_memslot()): every vCPU is
        told to reload its roots and every root is zapped, in one mmu_lock section that
        the zap may break (cond_resched_lock())."""
        yield from write_lock(kvm.mmu_lock)  # spin_lock()
        kvm.arch.mmu_valid_gen = 0 if kvm.arch.mmu_valid_gen else 1
        yield from kvm_make_all_cpus_request(kvm, KVM_REQ_MMU_RELOAD, kvm.vcpus)  # kvm_reload_remote_mmus()
        # kvm_zap_obsolete_pages(): shadow pages only; there are none with the TDP MMU.
        yield from self.kvm_tdp_mmu_zap_all(kvm)
        yield from write_unlock(kvm.mmu_lock)

    def kvm_tdp_mmu_zap_all(self, kvm: Kvm) -> Steps:
        if (yield from self.kvm_tdp_mmu_zap_gfn_range(kvm, 0, self.max_gfn_host())):
            world().note("kvm_flush_remote_tlbs()")

    def kvm_tdp_mmu_zap_gfn_range(self, kvm: Kvm, start: int, end: int) -> Generator[Op, int, bool]:
        """``__kvm_tdp_mmu_zap_gfn_range(kvm, start, end, true)``."""
        flush = False
        root = yield from self.tdp_mmu_next_root(kvm, None, False)
        while root is not None:
            flush = yield from self.zap_gfn_range(kvm, root, start, end, True, flush)
            root = yield from self.tdp_mmu_next_root(kvm, root, False)
        return flush

    def zap_gfn_range(self, kvm: Kvm, root: kvm_mmu_page, start: int, end: int,
                      can_yield: bool, flush: bool) -> Generator[Op, int, bool]:
        """Zap every present SPTE in [start, end) that maps nothing outside it (a table
        whole, with its subtree); True if a TLB flush is due."""
        it = tdp_iter_start(root, PG_LEVEL_4K, start)  # tdp_root_for_each_pte()
        while tdp_iter_valid(it, end):
            if can_yield:
                it = yield from self.tdp_mmu_iter_cond_resched(kvm, it, flush, False)
                if it.yielded:
                    flush = False
                    it = tdp_iter_next(it)
                    continue
            if not is_shadow_present_pte(it.old_spte) or (
                (it.gfn < start or it.gfn + KVM_PAGES_PER_HPAGE(it.level) > end)
                and not is_last_spte(it.old_spte, it.level)
            ):
                it = tdp_iter_next(it)
                continue
            it = yield from self.tdp_mmu_iter_set_spte(kvm, it, SHADOW_NONPRESENT_VALUE)
            flush = True
            it = tdp_iter_next(it)
        return flush

    def tdp_mmu_iter_cond_resched(
        self, kvm: Kvm, it: TdpIter, flush: bool, shared: bool
    ) -> Generator[Op, int, TdpIter]:
        """No RCU: the walk holds mmu_lock, and restarts from the root after a yield."""
        if it.next_last_level_gfn == it.yielded_gfn:  # ed5e484b79e8
            return it
        if not (yield from need_resched()):  # || spin_needbreak(&kvm->mmu_lock)
            return it
        if flush:
            world().note("kvm_flush_remote_tlbs()")
        yield from cond_resched_rwlock_write(kvm.mmu_lock, resched=True)  # cond_resched_lock()
        WARN_ON(it.gfn > it.next_last_level_gfn, "iter->gfn > iter->next_last_level_gfn")
        return it._replace(yielded=True)

    def kvm_unmap_gfn_range(self, kvm: Kvm, as_id: int, start: int, end: int,
                            may_block: bool) -> Generator[Op, int, bool]:
        """kvm_unmap_hva_range() -> kvm_tdp_mmu_zap_hva_range(): the hva walk
        (kvm_tdp_mmu_handle_hva_range()) visits every root with the yield-safe iterator
        and zaps without yielding. One memslot covers the range (gfn == hva), in address
        space 0: roots of address space 1 map none of it."""
        ret = False
        root = yield from self.tdp_mmu_next_root(kvm, None, False)
        while root is not None:
            if kvm_mmu_page_as_id(root) == as_id:
                ret |= yield from self.zap_gfn_range(kvm, root, start, end, False, False)
            root = yield from self.tdp_mmu_next_root(kvm, root, False)
        return ret

    # -- page faults: direct_page_fault() and kvm_tdp_mmu_map() --------------------------
    def kvm_tdp_mmu_page_fault(self, vcpu: kvm_vcpu, gfn: int) -> Generator[Op, int, int]:
        """direct_page_fault(): mmu_lock (the spinlock) around the map; a fault retries
        only when an mmu_notifier invalidation raced with it (no root is ever stale)."""
        kvm = vcpu.kvm
        fault = kvm_page_fault(gfn=gfn & ~kvm.arch.gfn_direct_bits, goal_level=PG_LEVEL_4K, addr=gfn)
        fault = yield from self.kvm_faultin_pfn(vcpu, fault)
        r = RET_PF_RETRY
        yield from write_lock(kvm.mmu_lock)  # spin_lock()
        if self.mmu_invalidate_retry_gfn(kvm, fault.mmu_seq, fault.gfn):  # mmu_notifier_retry()
            world().note("mmu_notifier_retry: RET_PF_RETRY")
        else:
            # make_mmu_pages_available(): shadow pages only.
            r = yield from self.kvm_tdp_mmu_map(vcpu, fault)
        yield from write_unlock(kvm.mmu_lock)
        yield from self.kvm_release_pfn_clean(kvm, fault.pfn)  # type: ignore[arg-type]
        return r

    def kvm_tdp_mmu_map(self, vcpu: kvm_vcpu, fault: kvm_page_fault) -> Generator[Op, int, int]:
        """Plain SPTE writes: mmu_lock excludes every other writer."""
        kvm = vcpu.kvm
        root = vcpu.arch.mmu.root.hpa
        if WARN_ON(not VALID_PAGE(root), "!VALID_PAGE(vcpu->arch.mmu->root_hpa)"):
            return RET_PF_RETRY
        if WARN_ON(not (root.tdp_mmu_page and root.root_count), "!is_tdp_mmu_root(vcpu->kvm, root_hpa)"):
            return RET_PF_RETRY
        it = tdp_iter_start(root, PG_LEVEL_4K, fault.gfn)  # tdp_mmu_for_each_pte()
        while tdp_iter_valid(it, fault.gfn + 1):
            if it.level == fault.goal_level:
                break
            if not is_shadow_present_pte(it.old_spte):
                sp = self.tdp_mmu_alloc_sp(vcpu)
                self.tdp_mmu_init_child_sp(sp, it)
                _, it = yield from self.tdp_mmu_link_sp(kvm, it, sp, False)
            it = tdp_iter_next(it)
        if WARN_ON(it.level != fault.goal_level, "iter.level != level"):
            return RET_PF_RETRY
        return (yield from self.tdp_mmu_map_handle_target_level(vcpu, fault, it))

    def tdp_mmu_map_handle_target_level(self, vcpu: kvm_vcpu, fault: kvm_page_fault,
                                        it: TdpIter) -> Generator[Op, int, int]:
        new_spte = make_spte(fault.pfn)  # type: ignore[arg-type]
        if new_spte == it.old_spte:
            return RET_PF_SPURIOUS
        yield from self.tdp_mmu_iter_set_spte(vcpu.kvm, it, new_spte)
        return RET_PF_FIXED

    # -- VM teardown -------------------------------------------------------------------------
    def kvm_mmu_uninit_tdp_mmu(self, kvm: Kvm) -> Steps:
        """Every root went with its last vCPU reference: nothing to put, nothing to wait for."""
        WARN_ON(not list_empty(kvm.arch.tdp_mmu_roots), "!list_empty(&kvm->arch.tdp_mmu_roots)")
        yield from ()

