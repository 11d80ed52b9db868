"""v5.16 as patched by the 5.16.19 stable release (B04, B05)."""

from __future__ import annotations

from collections.abc import Generator

from tdpmmu.explore.runtime import Op, inline
from tdpmmu.kernel.bug import WARN_ON
from tdpmmu.kernel.lockdep import lockdep_assert_held, lockdep_assert_held_read, lockdep_assert_held_write
from tdpmmu.kernel.rcu import call_rcu, rcu_read_lock, rcu_read_unlock
from tdpmmu.kernel.rculist import list_del_rcu, list_first_or_null_rcu, list_for_each, list_next_or_null_rcu
from tdpmmu.kernel.refcount import refcount_dec_and_test, refcount_inc_not_zero, refcount_read
from tdpmmu.kernel.rwlock import held_for_read, read_lock, read_unlock
from tdpmmu.kernel.spinlock import spin_lock, spin_unlock
from tdpmmu.kvm.structs import Kvm, kvm_mmu_page, kvm_vcpu
from tdpmmu.kvm.tdp_mmu import Steps
from tdpmmu.kvm.versions.v6_8 import V6_8


class V5_16(V6_8):
    """Linux 5.16.19: v5.16 (df0cc57e057f) with the stable backports of B04's fix, d62007edf01f
    "KVM: x86/mmu: Zap _all_ roots when unmapping gfn range in TDP MMU", and its preps
    04dc4e6ce274 "Move "invalid" check out of kvm_tdp_mmu_get_root()" and 83b83a02073e
    "Use common TDP MMU zap helper for MMU notifier unmap hook" (merged for v5.18-rc1, in
    5.16.19 as "[PATCH 5.16 0860/1017]"): the v5.16 tag itself still has B04's bug, which
    the mutant notifier-skips-invalid-roots puts back. B05's fix, a955cad84cda "Retry page
    fault if root is invalidated by memslot update" (with 18c841e1f411), is in v5.16, as
    is B03's, 7533377215b6.

    Before the asynchronous zap workers of v5.18 (22b94c4b63eb) and the TDP MMU's own
    root reference of v6.4 (edbdb43fc96b):
    - roots start with one reference, the vCPU's, and are found or created under mmu_lock
      held for write (``V6_8``'s kvm_tdp_mmu_get_vcpu_root_hpa, the same in 5.16) and
      freed under it;
    - the final put of *any* root, valid or not, unlinks it and zaps it right away,
      without yielding, under whatever mmu_lock mode the putter holds;
    - the fast zap's invalidation takes a reference to every root (valid or already
      invalid) and marks it invalid; kvm_tdp_mmu_zap_invalidated_roots() walks the list
      for invalid roots with a nonzero count (next_invalidated_root(): no reference of
      its own), zaps each and puts the invalidation's reference. No scheduled flag.
    - a root is zapped in one pass over its top-level entries (zap_gfn_range()'s zap_all;
      two passes came with 1b6043e8e584, v5.18);
    - the VM's uninit puts nothing: the vCPUs' last puts freed every root.
    """

    NAME = "v5.16.19"
    CORPUS_ERA = True
    COMMIT = ("v5.16 + 83b83a02073e, 04dc4e6ce274, d62007edf01f (stable 5.16.19); "
              "B05's a955cad84cda is in v5.16")
    ROOT_INITIAL_REFS = 1
    ZAP_ROOT_LEVELS: tuple[int, ...] = (0,)

    def kvm_tdp_mmu_put_root(self, kvm: Kvm, root: kvm_mmu_page) -> Steps:
        """The final put zaps the root after unlinking it (2bdb3d84cebc), with zap_gfn_range()
        not allowed to yield (v5.18's zap rework changed both). ``shared`` is the mmu_lock mode the
        caller holds (the kernel passes it down; the model reads it off the lock)."""
        lockdep_assert_held(kvm.mmu_lock)  # kvm_lockdep_assert_mmu_lock_held(kvm, shared)
        shared = held_for_read(kvm.mmu_lock)
        if not (yield from refcount_dec_and_test(root.tdp_mmu_root_count)):
            return
        WARN_ON(not root.tdp_mmu_page, "!root->tdp_mmu_page")
        yield from spin_lock(kvm.arch.tdp_mmu_pages_lock)
        yield from list_del_rcu(root.link)
        yield from spin_unlock(kvm.arch.tdp_mmu_pages_lock)
        yield from self.zap_gfn_range(kvm, root, False, shared)
        yield from call_rcu(root, self.tdp_mmu_free_sp_rcu_callback)

    def zap_gfn_range(self, kvm: Kvm, root: kvm_mmu_page, can_yield: bool, shared: bool) -> Steps:
        """``zap_gfn_range(kvm, root, 0, -1ull, can_yield, flush, shared)``, the whole range
        (zap_all): min_level is the root's level, so only the root's own entries are
        zapped, each freeing the tables under it. (The notifier's ranged call is the base
        model's tdp_mmu_zap_leafs(); the TLB flush it returns is left out.)"""
        self.kvm_lockdep_assert_mmu_lock_held(kvm, shared)
        yield from rcu_read_lock()
        yield from self._tdp_mmu_zap_root(kvm, root, shared, root.role.level, can_yield)
        yield from rcu_read_unlock()

    def kvm_tdp_mmu_invalidate_all_roots(self, kvm: Kvm) -> Steps:
        """Every root whose count is not zero gets a reference (put by
        kvm_tdp_mmu_zap_invalidated_roots()) and is marked invalid, already-invalid ones
        included (b7cccd397f31 "Fast invalidation for TDP MMU", v5.11)."""
        if self.CONFIG_PROVE_LOCKING:
            lockdep_assert_held_write(kvm.mmu_lock)
        for pos in list_for_each(kvm.arch.tdp_mmu_roots):
            root = pos.container()
            self.fast_zap_visits(root)
            if (yield from refcount_inc_not_zero(root.tdp_mmu_root_count)):
                self.tdp_mmu_set_root_invalid(kvm, root)

    def next_invalidated_root(self, kvm: Kvm,
                              prev_root: kvm_mmu_page | None) -> Generator[Op, int, kvm_mmu_page | None]:
        """The next root after ``prev_root`` (or the first) that is invalid and whose count
        is not zero; under rcu_read_lock(), and no reference taken: the invalidation's
        reference keeps it alive."""
        head = kvm.arch.tdp_mmu_roots
        if prev_root is not None:
            pos = yield from list_next_or_null_rcu(head, prev_root.link)
        else:
            pos = yield from list_first_or_null_rcu(head)
        while pos is not None:
            root = pos.container()
            if root.role.invalid and (yield from refcount_read(root.tdp_mmu_root_count)):
                return root  # type: ignore[no-any-return]
            pos = yield from list_next_or_null_rcu(head, pos)
        return None

    def kvm_tdp_mmu_zap_invalidated_roots(self, kvm: Kvm) -> Steps:
        """Takes the next root before zapping the current one, then zaps (yielding) and puts
        the invalidation's reference. In 5.16 kvm_mmu_zap_all_fast() takes mmu_lock for
        read around the call; the model takes it here, as v6.9 does."""
        yield from read_lock(kvm.mmu_lock)
        lockdep_assert_held_read(kvm.mmu_lock)
        yield from rcu_read_lock()
        root = yield from self.next_invalidated_root(kvm, None)
        while root is not None:
            next_root = yield from self.next_invalidated_root(kvm, root)
            yield from rcu_read_unlock()
            yield from self.zap_gfn_range(kvm, root, True, True)
            # Put the reference acquired in kvm_tdp_mmu_invalidate_all_roots().
            yield from self.kvm_tdp_mmu_put_root(kvm, root)
            root = next_root
            yield from rcu_read_lock()
        yield from rcu_read_unlock()
        yield from read_unlock(kvm.mmu_lock)

    @inline
    def tdp_mmu_uninit_put_roots(self, kvm: Kvm) -> Steps:
        """kvm_mmu_uninit_tdp_mmu() has nothing to put: the TDP MMU holds no reference."""
        yield from ()

    def kvm_mmu_free_obsolete_roots(self, vcpu: kvm_vcpu) -> Steps:
        """``kvm_check_request(KVM_REQ_MMU_RELOAD)`` -> kvm_mmu_unload(): every root is freed,
        obsolete or not (only obsolete ones since 527d5cd7eece "Zap only obsolete roots if
        a root shadow page is zapped", v5.18, which renamed the request; the model keeps
        one name, KVM_REQ_MMU_FREE_OBSOLETE_ROOTS, for both)."""
        yield from self.kvm_mmu_unload(vcpu)
