"""v5.13: the TDP MMU after Ben Gardon's April 2021 series (the RCU root list, a refcount_t
per root, roots torn down by the fast zap under the read lock), B02's era.

What v5.13 shipped, against the v6.9 base, from the v5.13 sources of tdp_mmu.c,
tdp_mmu.h and mmu.c (paraphrased in docs/corpus.md, "The v5.13 kernel"):

- c0e64238ac53 "Protect the tdp_mmu_roots list with RCU", 11cccf5c0472 "Make TDP MMU root
  refcount atomic", fb10129335ca "handle cmpxchg failure in kvm_tdp_mmu_get_root",
  cfc109979b3c "Refactor yield safe root iterator": the same RCU walk, list mutations under
  tdp_mmu_pages_lock and refcount_inc_not_zero() as v6.9 (inherited).
- Roots carry one reference per vCPU that loaded them and none for the TDP MMU (that one
  is edbdb43fc96b, v6.4): ``refcount_set(&root->tdp_mmu_root_count, 1)``.
- Roots are looked up and created under mmu_lock held for write
  (kvm_tdp_mmu_get_vcpu_root_hpa(), as in ``V6_8``) and freed under it
  (kvm_mmu_free_roots() takes the write lock; the read lock only since 576a15de8d29).
- 2bdb3d84cebc "Merge TDP MMU put and free root": the final kvm_tdp_mmu_put_root(kvm,
  root, shared) unlinks the root under tdp_mmu_pages_lock, *then zaps it inline*
  (zap_gfn_range() over everything, may not yield) and frees it with call_rcu().
- b7cccd397f31 "Fast invalidation for TDP MMU" and 4c6654bd160d "Tear down roots before
  kvm_mmu_zap_all_fast returns": kvm_tdp_mmu_invalidate_all_roots() takes a reference on
  every root whose count is not 0 and marks it invalid, under the write lock (no
  ``tdp_mmu_scheduled_root_to_zap``: that is 0df9dab891ff, v6.6; no async worker: that
  is v5.18's efd995dae5eb); kvm_mmu_zap_all_fast() then, under mmu_lock held for read,
  walks the invalid roots with a non-zero count (next_invalidated_root(), no reference
  taken: the invalidation's reference pins them), zaps each (may yield) and puts that
  reference.
- The request is kvm_reload_remote_mmus() (KVM_REQ_MMU_RELOAD, WAIT | NO_WAKEUP), which
  the vCPU services with kvm_mmu_unload(): every root is dropped, not only obsolete ones
  (KVM_REQ_MMU_FREE_OBSOLETE_ROOTS is 527d5cd7eece, v5.18). The model keeps the request's
  name but not its handler.
- kvm_mmu_uninit_tdp_mmu() only WARNs on a non-empty list and waits for RCU callbacks:
  there is no TDP MMU reference to put at teardown.

Applied on top of v5.13, because the corpus checks them as rows of their own and the
scenarios the rows run would otherwise fail on them (they are later fixes of 5.13 code):
7533377215b6 (B03, the mmu_notifier unmap walks the roots with the yield-safe iterator:
Nov 2021, v5.16-rc, Cc: stable; v5.13 itself walks them with ``for_each_tdp_mmu_root``),
04dc4e6ce274 + d62007edf01f (B04: kvm_tdp_mmu_get_root() no longer refuses invalid roots,
the valid-only iterators filter them instead, and the unmap walks all roots; v5.13's
get_root refuses invalid roots, which with 7533377215b6 alone is B04) and a955cad84cda
(B05: a fault on an invalidated root retries; v5.16-rc). All three are inherited from the
base model unchanged.
"""

from __future__ import annotations

from collections.abc import Generator

from tdpmmu.explore.runtime import Op, inline, world
from tdpmmu.kernel.bug import WARN_ON
from tdpmmu.kernel.lockdep import lockdep_assert_held_read, lockdep_assert_held_write
from tdpmmu.kernel.rcu import call_rcu, rcu_read_lock, rcu_read_unlock
from tdpmmu.kernel.rculist import list_first_or_null_rcu, list_for_each, list_next_or_null_rcu
from tdpmmu.kernel.refcount import refcount_dec_and_test, refcount_inc_not_zero, refcount_read
from tdpmmu.kernel.rwlock import read_lock, read_unlock
from tdpmmu.kvm.structs import Kvm, kvm_mmu_page, kvm_vcpu
from tdpmmu.kvm.tdp_mmu import Steps
from tdpmmu.kvm.versions.v6_8 import V6_8


class V5_13(V6_8):
    """v5.13 (B02's era): one reference per vCPU, roots allocated and freed under the
    write lock, the final put zaps the root inline, the fast zap references the roots it
    invalidates and tears them down under the read lock. With the B03, B04 and B05 fixes
    applied (see the module docstring)."""

    NAME = "v5.13"
    CORPUS_ERA = True
    COMMIT = ("v5.13 (c0e64238ac53..2bdb3d84cebc, b7cccd397f31, 4c6654bd160d), "
              "with 7533377215b6, 04dc4e6ce274, d62007edf01f and a955cad84cda applied")
    ROOT_INITIAL_REFS = 1  # the vCPU's; the TDP MMU holds none until edbdb43fc96b (v6.4)
    # zap_gfn_range() over the whole root: min_level = root->role.level, one pass.
    ZAP_ROOT_LEVELS: tuple[int, ...] = (0,)

    # -- freeing (2bdb3d84cebc) -----------------------------------------------------------
    def kvm_tdp_mmu_put_root(self, kvm: Kvm, root: kvm_mmu_page, shared: bool = False) -> Steps:
        """``shared``: the caller holds mmu_lock for read (only the fast zap's teardown of
        invalidated roots does in the model); every other caller holds it for write."""
        self.kvm_lockdep_assert_mmu_lock_held(kvm, shared)
        if not (yield from refcount_dec_and_test(root.tdp_mmu_root_count)):
            return
        # No check that the root is invalid: a vCPU's put can be the last one of a
        # valid root (nothing else references it).
        WARN_ON(not root.tdp_mmu_page, "!root->tdp_mmu_page")
        yield from self.tdp_mmu_unlink_and_free_root(kvm, root, shared)

    @inline
    def tdp_mmu_unlink_and_free_root(self, kvm: Kvm, root: kvm_mmu_page, shared: bool = False) -> Steps:
        """Unlink under tdp_mmu_pages_lock, zap everything under the root without
        yielding, then free it after a grace period."""
        yield from self.tdp_mmu_unlink_root(kvm, root)
        yield from self.zap_gfn_range(kvm, root, False, shared)
        yield from call_rcu(root, self.tdp_mmu_free_sp_rcu_callback)

    def zap_gfn_range(self, kvm: Kvm, root: kvm_mmu_page, can_yield: bool, shared: bool) -> Steps:
        """``zap_gfn_range(kvm, root, 0, -1ull, can_yield, flush, shared)``, the whole range
        (zap_all): min_level is the root's level, so only the root's own entries are
        zapped, each freeing the tables under it. Not v6.9's tdp_mmu_zap_root(), whose
        refcount WARN and passes came with v5.18. (The notifier's ranged call is the base
        model's tdp_mmu_zap_leafs(); the TLB flush it returns is left out.)"""
        self.kvm_lockdep_assert_mmu_lock_held(kvm, shared)
        yield from rcu_read_lock()
        yield from self._tdp_mmu_zap_root(kvm, root, shared, root.role.level, can_yield)
        yield from rcu_read_unlock()

    # -- fast invalidation (b7cccd397f31, 4c6654bd160d) ----------------------------------
    def kvm_tdp_mmu_invalidate_all_roots(self, kvm: Kvm) -> Steps:
        """Every root whose count is not 0 gets a reference for the teardown and is marked
        invalid; already-invalid roots are referenced again, so that they are not freed
        before this fast zap is done with them."""
        if self.CONFIG_PROVE_LOCKING:
            lockdep_assert_held_write(kvm.mmu_lock)
        for pos in list_for_each(kvm.arch.tdp_mmu_roots):
            root = pos.container()
            self.fast_zap_visits(root)
            if (yield from refcount_inc_not_zero(root.tdp_mmu_root_count)):
                self.tdp_mmu_set_root_invalid(kvm, root)
                world().note(f"{root!r} invalid")

    def next_invalidated_root(
        self, kvm: Kvm, prev_root: kvm_mmu_page | None
    ) -> Generator[Op, int, kvm_mmu_page | None]:
        """The next root after ``prev_root`` that is invalid and whose count is not 0;
        no reference is taken (the caller holds rcu_read_lock())."""
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
        """With kvm_mmu_zap_all_fast()'s read_lock()/read_unlock() around it."""
        yield from read_lock(kvm.mmu_lock)
        lockdep_assert_held_read(kvm.mmu_lock)
        yield from rcu_read_lock()
        root = yield from self.next_invalidated_root(kvm, None)
        while root is not None:
            next_root = yield from self.next_invalidated_root(kvm, root)
            yield from rcu_read_unlock()
            yield from self.zap_gfn_range(kvm, root, True, True)
            # Put the reference kvm_tdp_mmu_invalidate_all_roots() took.
            yield from self.kvm_tdp_mmu_put_root(kvm, root, True)
            root = next_root
            yield from rcu_read_lock()
        yield from rcu_read_unlock()
        yield from read_unlock(kvm.mmu_lock)

    # -- the vCPU side of the request -------------------------------------------------------
    def kvm_mmu_free_obsolete_roots(self, vcpu: kvm_vcpu) -> Steps:
        """KVM_REQ_MMU_RELOAD: ``kvm_mmu_unload(vcpu)``, every root of the vCPU."""
        yield from self.kvm_mmu_unload(vcpu)

    # -- teardown ------------------------------------------------------------------------------
    @inline
    def tdp_mmu_uninit_put_roots(self, kvm: Kvm) -> Steps:
        """Nothing: the vCPUs' references were the only ones, and kvm_mmu_unload() put them."""
        yield from ()
